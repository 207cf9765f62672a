"""Tests of the sampler interface (`pipeline/sampler.py`): the HF backend on a tiny random
Llama, and the vLLM backend's glue code against a stand-in `vllm` module."""
from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest

import torch

from conftest import MODEL_SECTION, scaled_tiny_llama
from pipeline.flops import count_params
from pipeline.modeling import build_char_tokenizer, build_tiny_llama
from pipeline.sampler import (Generation, HFSampler, VLLMSampler, _strip_after_eos, make_sampler, new_token_limits,
                             sample_rows)

TINY = {**MODEL_SECTION, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2, "max_position_embeddings": 64}
PROMPTS = ["3+4*2=?\n", "1+2=?\n", "9*9-1+5=?\n"]


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return scaled_tiny_llama(tok, TINY)


def sampler(model, tok, batch_size=4):
    return HFSampler(model, tok, batch_size=batch_size, progress=False)


def ids_of(gens):
    return [[g.token_ids for g in gs] for gs in gens]


# --------------------------------------------------------------------------- HF backend


def test_same_seed_same_samples_different_seed_different(model, tok):
    a = sampler(model, tok).generate(PROMPTS, n=3, max_new_tokens=12, seed=7)
    b = sampler(model, tok).generate(PROMPTS, n=3, max_new_tokens=12, seed=7)
    c = sampler(model, tok).generate(PROMPTS, n=3, max_new_tokens=12, seed=8)
    assert ids_of(a) == ids_of(b)
    assert [[g.text for g in gs] for gs in a] == [[g.text for g in gs] for gs in b]
    assert ids_of(a) != ids_of(c)
    # the n samples of one prompt differ from each other
    assert len({tuple(g.token_ids) for g in a[0]}) == 3


def test_same_seed_independent_of_call_history(model, tok):
    s = sampler(model, tok)
    first = s.generate(PROMPTS, n=2, max_new_tokens=8, seed=3)
    s.generate(PROMPTS, n=2, max_new_tokens=8, seed=99)
    torch.rand(5)
    assert ids_of(s.generate(PROMPTS, n=2, max_new_tokens=8, seed=3)) == ids_of(first)


def test_n_samples_per_prompt_and_generation_invariants(model, tok):
    max_new = 16
    gens = sampler(model, tok, batch_size=4).generate(PROMPTS, n=4, max_new_tokens=max_new, seed=0)
    assert len(gens) == len(PROMPTS)
    assert all(len(gs) == 4 for gs in gens)
    eos = tok.eos_token_id
    flat = [g for gs in gens for g in gs]
    for g in flat:
        assert isinstance(g, Generation)
        assert g.text == tok.decode(g.token_ids, skip_special_tokens=True)
        if g.finished:                                      # ends at its first EOS, padding dropped
            assert g.token_ids[-1] == eos and eos not in g.token_ids[:-1]
            assert len(g.token_ids) <= max_new
        else:                                               # cut at the length limit
            assert eos not in g.token_ids and len(g.token_ids) == max_new
    # with this seed both branches occur (an EOS before the limit, and rows cut at the limit)
    assert any(g.finished and len(g.token_ids) < max_new for g in flat)
    assert not all(g.finished for g in flat)


def test_token_and_flop_accounting(model, tok):
    s = sampler(model, tok, batch_size=4)       # 3 prompts x 3 samples = 9 rows: batches of 4, 4, 1
    gens = s.generate(PROMPTS, n=3, max_new_tokens=10, seed=1)
    c = s.compute
    n_gen = sum(len(g.token_ids) for gs in gens for g in gs)
    n_prompt = 3 * sum(len(p) for p in PROMPTS)   # char tokenizer: one token per character, per sample
    assert n_prompt == 3 * (8 + 6 + 10)
    assert c.generated_tokens == n_gen
    assert c.prompt_tokens == n_prompt
    assert c.samples == 9
    assert s.n_params == count_params(model) == sum(p.numel() for p in model.parameters())
    assert c.flops == 2.0 * s.n_params * (n_prompt + n_gen)
    assert c.trained_tokens == 0 and c.scored_tokens == 0
    # a second call accumulates
    gens2 = s.generate(PROMPTS[:1], n=1, max_new_tokens=5, seed=2)
    assert c.generated_tokens == n_gen + len(gens2[0][0].token_ids)
    assert c.prompt_tokens == n_prompt + 8 and c.samples == 10


def test_greedy_is_deterministic_and_seed_free(model, tok):
    s = sampler(model, tok)
    a = s.generate(PROMPTS, n=2, greedy=True, max_new_tokens=12, seed=0)
    b = s.generate(PROMPTS, n=2, greedy=True, max_new_tokens=12, seed=123)
    t0 = s.generate(PROMPTS, n=1, temperature=0.0, max_new_tokens=12, seed=5)
    assert ids_of(a) == ids_of(b)
    assert all(gs[0].token_ids == gs[1].token_ids for gs in a)
    assert [gs[0].token_ids for gs in t0] == [gs[0].token_ids for gs in a]
    # greedy continuation is the argmax of the model's logits, token by token
    prompt_ids = tok(PROMPTS[0], add_special_tokens=False)["input_ids"]
    seq = list(prompt_ids)
    with torch.no_grad():
        for _ in range(5):
            seq.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    assert a[0][0].token_ids[:5] == seq[len(prompt_ids):]


def test_sampling_matches_the_model_distribution(model, tok):
    """First-token frequencies over 3000 samples at temperature T match softmax(logits / T),
    with no hidden truncation (such as a default top-k of 50). A Pearson chi-square statistic
    has mean = dof under the right distribution; a 6-sigma bound (dof + 6 sqrt(2 dof)) keeps a
    seeded run far from a false alarm, while the wrong temperature scores 300-5000 here."""
    prompt, N = PROMPTS[0], 3000
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    for T in (0.7, 1.5):
        gens = sampler(model, tok, batch_size=N).generate([prompt], n=N, temperature=T, max_new_tokens=1, seed=0)
        first = [g.token_ids[0] for g in gens[0]]
        counts = torch.bincount(torch.tensor(first), minlength=len(tok)).double()

        def chi2(p):
            expected = p.double() * N
            big = expected >= 5                        # pool the rare tokens into one cell
            stat = ((counts[big] - expected[big]) ** 2 / expected[big]).sum()
            stat += (counts[~big].sum() - expected[~big].sum()) ** 2 / expected[~big].sum()
            return stat.item(), int(big.sum())

        stat, dof = chi2(torch.softmax(logits / T, -1))
        assert stat < dof + 6 * (2 * dof) ** 0.5, (T, stat, dof)
        wrong, wdof = chi2(torch.softmax(logits, -1))   # temperature ignored: detectably different
        assert wrong > wdof + 6 * (2 * wdof) ** 0.5


def test_top_p_keeps_only_the_nucleus(model, tok):
    prompt = PROMPTS[0]
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1], -1)
    p_sorted, order = probs.sort(descending=True)
    # the nucleus: the most likely tokens up to and including the one whose cumulative mass reaches 0.5
    size = int((p_sorted.cumsum(0) < 0.5).sum()) + 1
    nucleus = set(order[:size].tolist())
    assert 2 < size < 50
    gens = sampler(model, tok, batch_size=2000).generate([prompt], n=2000, top_p=0.5, max_new_tokens=1, seed=0)
    used = {g.token_ids[0] for g in gens[0]}
    assert used <= nucleus
    assert len(used) >= size - 1      # and the nucleus is really sampled from, not just its top


def test_evaluation_samples_within_its_top_p(model, tok):
    """eval.top_p reaches the sampler: with a nucleus of one token every sample is the greedy
    response (and at top_p 1 they are not)."""
    from pipeline.config import load_preset
    from pipeline.evaluate import evaluate_policy
    from pipeline.testbed import ArithSpec, generate_split

    class Recording(HFSampler):
        def generate(self, *args, **kwargs):
            gens = super().generate(*args, **kwargs)
            self.drawn.append(ids_of(gens))
            return gens

    task = load_preset()["task"]
    records = generate_split(4, ArithSpec.from_cfg(task["arith"]), seed=1, split="test")
    for top_p in (1e-9, 1.0):
        rec = Recording(model, tok, batch_size=16, progress=False)
        rec.drawn = []
        res = evaluate_policy(rec, records, task, k=3, temperature=1.0, top_p=top_p, max_new_tokens=8, seed=0,
                              greedy=True)
        assert res["top_p"] == top_p
        sampled, greedy = rec.drawn
        same = [s == g * 3 for s, g in zip(sampled, greedy)]
        assert all(same) if top_p < 1 else not any(same)


def test_left_padding_does_not_change_greedy_output(model, tok):
    s = sampler(model, tok)
    short = PROMPTS[1]
    alone = s.generate([short], greedy=True, max_new_tokens=12)
    batched = s.generate([short, "1+2+3+4+5*6-7*8=?\n"], greedy=True, max_new_tokens=12)
    assert alone[0][0].token_ids == batched[0][0].token_ids


def test_sampling_leaves_global_rng_alone(model, tok):
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    sampler(model, tok).generate(PROMPTS, n=2, max_new_tokens=6, seed=0)
    assert torch.equal(torch.rand(4), expected)


def test_training_mode_restored(model, tok):
    s = sampler(model, tok)
    model.train()
    s.generate(PROMPTS[:1], max_new_tokens=2)
    assert model.training
    model.eval()
    s.generate(PROMPTS[:1], max_new_tokens=2)
    assert not model.training


@pytest.mark.parametrize("ids, expected", [
    ([5, 6, 2, 0, 0], [5, 6, 2]),     # up to and including EOS (2); padding (0) after it dropped
    ([5, 2, 7, 2], [5, 2]),           # the first EOS ends the response
    ([2, 0, 0], [2]),
    ([5, 0, 6, 2, 0], [5, 0, 6, 2]),  # a pad id before EOS is a generated token: kept
    ([5, 6], [5, 6]),
    ([], []),
])
def test_strip_after_eos(ids, expected):
    assert _strip_after_eos(ids, eos_id=2, pad_id=0) == expected


# transformers' generate pads a row only after that row's EOS; a row without EOS ran to
# max_new_tokens and every token in it was sampled, including any that equal the pad id.
def test_strip_after_eos_keeps_sampled_pad_ids_without_eos():
    assert _strip_after_eos([5, 6, 0, 0], eos_id=2, pad_id=0) == [5, 6, 0, 0]


def test_generated_pad_tokens_are_kept_and_counted(tok):
    # An untied model with a zero LM head has all-zero logits; greedy argmax then picks id 0,
    # which is <pad>, at every step, and never EOS: the model generated 5 tokens.
    cfg = {**TINY, "tie_word_embeddings": False}
    m = build_tiny_llama(tok, cfg, seed=0)
    with torch.no_grad():
        m.lm_head.weight.zero_()
    s = sampler(m, tok)
    gen = s.generate(["1+2=?\n"], greedy=True, max_new_tokens=5)[0][0]
    assert gen.finished is False
    assert gen.token_ids == [tok.pad_token_id] * 5          # actual: []
    assert s.compute.generated_tokens == 5                  # actual: 0
    assert s.compute.flops == 2.0 * s.n_params * (6 + 5)    # actual: 2 * n_params * 6


def test_strip_after_eos_pad_equals_eos():
    # pad == eos (load_policy's fallback when a tokenizer has no pad token)
    assert _strip_after_eos([5, 6, 2, 2, 2], eos_id=2, pad_id=2) == [5, 6, 2]
    assert _strip_after_eos([5, 6], eos_id=2, pad_id=2) == [5, 6]


def test_make_sampler(model, tok):
    s = make_sampler({"backend": "hf", "batch_size": 7, "progress": False, "decode": "generate"}, model=model, tokenizer=tok)
    assert isinstance(s, HFSampler) and s.batch_size == 7 and s.model is model and s.decode == "generate"
    with pytest.raises(ValueError, match="backend"):
        make_sampler({"backend": "sglang"}, model=model, tokenizer=tok)


# ------------------------------------------------ prefix completions: sorted batches, compaction
# `generate_from_prefixes` batches prefixes longest first (`sort`) and drops finished rows
# from the running batch (`compact`); `sort=False, compact=False` is the earlier loop.

PREFIXES = ["3+4*2=?\n", "1+2=?\n", "9*9-1+5=?\n", "7-3=?\n2", "5*5=?\n25-", "8=?\n", "2*3*4-1=?\n2*3=6\n"]


@pytest.fixture(scope="module")
def eos_model(tok):
    """A random tiny Llama whose EOS logit is scaled up, so that greedy rows end at EOS after
    different numbers of tokens (8, 4, 20, 4, 2, 7, 7 of at most 20 for PREFIXES)."""
    m = build_tiny_llama(tok, {**TINY, "tie_word_embeddings": False}, seed=0)
    with torch.no_grad():
        m.lm_head.weight[tok.eos_token_id] *= 3
    return m


@pytest.fixture
def prefix_ids(tok):
    return [tok(p, add_special_tokens=False)["input_ids"] for p in PREFIXES]


@pytest.fixture
def compactions(monkeypatch):
    """Counts the rows kept when finished rows are dropped from a KV cache (either decode
    loop's `select`)."""
    from pipeline.decoding import KVDecoder
    from pipeline.sampler import _HFStepper

    calls = []
    for cls in (KVDecoder, _HFStepper):
        def spy(self, indices, _original=cls.select):
            calls.append(len(indices))
            return _original(self, indices)

        monkeypatch.setattr(cls, "select", spy)
    return calls


def test_prefix_greedy_lengths_vary(eos_model, tok, prefix_ids):
    gens = sampler(eos_model, tok, 64).generate_from_prefixes(prefix_ids, temperature=0, max_new_tokens=20)
    lengths = [gs[0].token_ids for gs in gens]
    assert len({len(t) for t in lengths}) >= 4 and all(gs[0].finished for gs in gens if len(gs[0].token_ids) < 20)


@pytest.mark.parametrize("sort", [False, True])
def test_compaction_gives_identical_greedy_outputs(eos_model, tok, prefix_ids, compactions, sort):
    kw = dict(n=3, temperature=0, max_new_tokens=20, sort=sort)
    plain = sampler(eos_model, tok, 9).generate_from_prefixes(prefix_ids, compact=False, **kw)
    assert compactions == []
    compacted = sampler(eos_model, tok, 9).generate_from_prefixes(prefix_ids, compact=True, **kw)
    assert compactions, "no row was dropped: the test does not exercise compaction"
    assert [[g.token_ids for g in gs] for gs in compacted] == [[g.token_ids for g in gs] for gs in plain]
    assert compacted == plain
    # and each prefix's completion is its own greedy continuation, whatever batch it was in
    for p, gs in zip(prefix_ids, compacted):
        alone = sampler(eos_model, tok, 9).generate_from_prefixes([p], temperature=0, max_new_tokens=20,
                                                                  sort=False, compact=False)
        assert gs[0].token_ids == alone[0][0].token_ids


def test_compaction_keeps_sampled_outputs(eos_model, tok, prefix_ids, compactions):
    """A row keeps its own random numbers when other rows leave the batch (`sample_rows`),
    so compaction does not change sampled completions either."""
    kw = dict(n=4, temperature=1.0, max_new_tokens=20, seed=3)
    plain = sampler(eos_model, tok, 8).generate_from_prefixes(prefix_ids, compact=False, **kw)
    compacted = sampler(eos_model, tok, 8).generate_from_prefixes(prefix_ids, compact=True, **kw)
    assert compactions
    assert compacted == plain


def test_sorted_batches_restore_the_callers_order(eos_model, tok, prefix_ids):
    # batch_size 6 with n=3: two prefixes per batch, so sorting changes every batch
    kw = dict(n=3, max_new_tokens=20, seed=5)
    greedy = {sort: sampler(eos_model, tok, 6).generate_from_prefixes(prefix_ids, temperature=0, sort=sort, **kw)
              for sort in (False, True)}
    assert greedy[True] == greedy[False]
    # sampled: output i belongs to prefix i. The batches depend only on the prefixes' lengths
    # (a stable sort), so a permutation of prefixes of distinct lengths permutes the outputs.
    distinct = [p for i, p in enumerate(prefix_ids) if len(p) not in {len(q) for q in prefix_ids[:i]}]
    assert len(distinct) >= 5
    perm = [3, 0, 4, 1, 2] + list(range(5, len(distinct)))
    a = sampler(eos_model, tok, 6).generate_from_prefixes(distinct, temperature=1.0, **kw)
    b = sampler(eos_model, tok, 6).generate_from_prefixes([distinct[i] for i in perm], temperature=1.0, **kw)
    assert b == [a[i] for i in perm]
    assert len(a) == len(distinct) and all(len(gs) == 3 for gs in a)


def test_prefix_sampling_is_deterministic(eos_model, tok, prefix_ids):
    kw = dict(n=4, temperature=1.0, max_new_tokens=20)
    s = sampler(eos_model, tok, 8)
    a = s.generate_from_prefixes(prefix_ids, seed=11, **kw)
    torch.rand(3)
    b = sampler(eos_model, tok, 8).generate_from_prefixes(prefix_ids, seed=11, **kw)
    c = s.generate_from_prefixes(prefix_ids, seed=11, **kw)
    assert a == b == c
    assert a != s.generate_from_prefixes(prefix_ids, seed=12, **kw)
    assert len({tuple(g.token_ids) for gs in a for g in gs}) > len(prefix_ids)  # copies differ


# ------------------------------------------------ per-prefix token limits
# A prefix that is most of a response has only the rest of the response's budget left
# (VinePPO's values, beam search): its rows stop there instead of drawing tokens that the
# caller would cut off.

def test_new_token_limits():
    assert new_token_limits(5, 3) == [5, 5, 5]
    assert new_token_limits([1, 4], 2) == [1, 4]
    assert new_token_limits(5, 0) == []
    with pytest.raises(ValueError, match="3 limits for 2 prefixes"):
        new_token_limits([1, 2, 3], 2)
    with pytest.raises(ValueError, match=">= 1"):
        new_token_limits([3, 0], 2)
    with pytest.raises(ValueError, match=">= 1"):
        new_token_limits(0, 2)


@pytest.mark.parametrize("compact", [True, False])
@pytest.mark.parametrize("decode", ["own", "generate"])
def test_per_prefix_limits_cut_rows_where_they_would_be_cut(eos_model, tok, prefix_ids, compact, decode):
    """Each row stops after its own prefix's limit, with the same tokens up to there as the run
    with one shared limit (a row's random numbers are its own), and draws fewer tokens."""
    kw = dict(n=3, temperature=1.0, seed=7, compact=compact)
    limits = [3, 20, 1, 5, 12, 2, 8]
    free = HFSampler(eos_model, tok, batch_size=9, progress=False, decode=decode).generate_from_prefixes(
        prefix_ids, max_new_tokens=20, **kw)
    s = HFSampler(eos_model, tok, batch_size=9, progress=False, decode=decode)
    cut = s.generate_from_prefixes(prefix_ids, max_new_tokens=limits, **kw)
    assert any(len(g.token_ids) > lim for gs, lim in zip(free, limits) for g in gs), "no row ran past its limit"
    for gs_free, gs_cut, lim in zip(free, cut, limits):
        for f, c in zip(gs_free, gs_cut):
            assert c.token_ids == f.token_ids[:lim]
            assert c.finished == (bool(c.token_ids) and c.token_ids[-1] == tok.eos_token_id)
    assert s.compute.generated_tokens == sum(len(g.token_ids) for gs in cut for g in gs)
    assert s.compute.generated_tokens < sum(len(g.token_ids) for gs in free for g in gs)


@pytest.mark.parametrize("share", [True, False])
def test_prefix_token_counts_match_returned_tokens(eos_model, tok, prefix_ids, compactions, share):
    s = sampler(eos_model, tok, 8)
    max_new = 20
    gens = s.generate_from_prefixes(prefix_ids, n=4, temperature=0.7, max_new_tokens=max_new, seed=2,
                                    share_prefix=share)
    assert compactions
    flat = [g for gs in gens for g in gs]
    assert s.compute.generated_tokens == sum(len(g.token_ids) for g in flat)
    assert s.compute.prompt_tokens == (1 if share else 4) * sum(map(len, prefix_ids))
    assert s.compute.samples == len(flat) == 4 * len(prefix_ids)
    assert s.compute.flops == 2.0 * s.n_params * (s.compute.prompt_tokens + s.compute.generated_tokens)
    for g in flat:
        assert g.text == tok.decode(g.token_ids, skip_special_tokens=True)
        if g.finished:
            assert g.token_ids[-1] == tok.eos_token_id and tok.eos_token_id not in g.token_ids[:-1]
        else:
            assert tok.eos_token_id not in g.token_ids and len(g.token_ids) == max_new
    assert any(g.finished for g in flat) and not all(g.finished for g in flat)


@pytest.mark.parametrize("stop", ["\n", "l"])
def test_stop_is_honoured_with_compaction(eos_model, tok, prefix_ids, compactions, stop):
    kw = dict(n=4, temperature=1.0, max_new_tokens=20, seed=0)
    free = sampler(eos_model, tok, 8).generate_from_prefixes(prefix_ids, **kw)
    compactions.clear()
    s = sampler(eos_model, tok, 8)
    gens = s.generate_from_prefixes(prefix_ids, stop=stop, **kw)
    assert compactions
    assert gens == sampler(eos_model, tok, 8).generate_from_prefixes(prefix_ids, stop=stop, compact=False, **kw)
    n_stopped = 0
    for g, f in zip((g for gs in gens for g in gs), (f for fs in free for f in fs)):
        if g.finished:
            assert g.token_ids[-1] == tok.eos_token_id and stop not in g.text
        elif stop in g.text:                      # char tokenizer: the stop is the last token
            assert g.text.endswith(stop) and g.text.count(stop) == 1
            n_stopped += 1
        else:
            assert len(g.token_ids) == kw["max_new_tokens"]
        # the same draws as without stop, cut where the stop appears
        cut = next((k + 1 for k, t in enumerate(f.token_ids) if stop in tok.decode([t])), len(f.token_ids))
        assert g.token_ids == f.token_ids[:cut]
    assert n_stopped >= 3
    assert s.compute.generated_tokens == sum(len(g.token_ids) for gs in gens for g in gs)


def test_sample_rows_keeps_each_rows_draws_and_the_distribution(model, tok):
    logits = torch.randn(6, 40) * 2
    at = torch.tensor([1, 4, 5])
    torch.manual_seed(0)
    full = sample_rows(logits, 1.0, 1.0, 6)
    torch.manual_seed(0)
    assert torch.equal(sample_rows(logits[at], 1.0, 1.0, 6, at), full[at])
    assert torch.equal(sample_rows(logits, 0.0, 1.0, 6), logits.argmax(-1))
    # token frequencies follow softmax(logits / T) (as in test_sampling_matches_the_model_distribution)
    N, T = 4000, 0.8
    row = torch.randn(len(tok)) * 2
    torch.manual_seed(1)
    counts = torch.bincount(sample_rows(row.expand(N, -1), T, 1.0, N), minlength=len(tok)).double()
    expected = torch.softmax(row / T, -1).double() * N
    big = expected >= 5
    stat = ((counts[big] - expected[big]) ** 2 / expected[big]).sum() + \
        (counts[~big].sum() - expected[~big].sum()) ** 2 / expected[~big].sum()
    dof = int(big.sum())
    assert stat < dof + 6 * (2 * dof) ** 0.5
    # top-p: only the nucleus is drawn
    p_sorted, order = torch.softmax(row, -1).sort(descending=True)
    nucleus = set(order[: int((p_sorted.cumsum(0) < 0.5).sum()) + 1].tolist())
    assert set(sample_rows(row.expand(N, -1), 1.0, 0.5, N).tolist()) <= nucleus


# --------------------------------------------------------------------------- vLLM backend
# vLLM is an external GPU-only engine that cannot be installed here, so these tests replace
# the `vllm` module by a stand-in in sys.modules (the true external boundary). They check
# the glue: what the sampler passes to vLLM and how it converts vLLM's outputs.


class _FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.n = kwargs["n"]


class _FakeTokenizer:
    """A character-code tokenizer standing in for the engine's HF tokenizer."""

    def __init__(self):
        self.calls = []

    def __call__(self, texts, add_special_tokens=True):
        self.calls.append(add_special_tokens)
        return {"input_ids": [[ord(c) for c in t] for t in texts]}


class _FakeLLM:
    instances: list = []

    def __init__(self, **kwargs):
        self.init_kwargs = kwargs
        self.calls = []
        _FakeLLM.instances.append(self)

    def get_tokenizer(self):
        if not hasattr(self, "tokenizer"):
            self.tokenizer = _FakeTokenizer()
        return self.tokenizer

    def generate(self, prompts, params, use_tqdm=True):
        # vLLM's RequestOutput: prompt_token_ids, and n CompletionOutputs with text,
        # token_ids (a tuple/array in vLLM) and finish_reason ("stop" or "length")
        # vLLM accepts one SamplingParams for all prompts or a list with one per prompt
        self.calls.append((list(prompts), params))
        per_prompt = params if isinstance(params, list) else [params] * len(prompts)
        assert len(per_prompt) == len(prompts)
        results = []
        for p, sp in zip(prompts, per_prompt):
            p = p if isinstance(p, str) else "".join(map(chr, p["prompt_token_ids"]))
            outs = [SimpleNamespace(text=f"{p}#{j}", token_ids=tuple(range(10, 11 + j)),
                                    finish_reason="stop" if j % 2 == 0 else "length") for j in range(sp.n)]
            results.append(SimpleNamespace(prompt_token_ids=list(range(len(p))), outputs=outs))
        return results


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.LLM = _FakeLLM
    mod.SamplingParams = _FakeSamplingParams
    _FakeLLM.instances = []
    monkeypatch.setitem(sys.modules, "vllm", mod)
    return mod


def test_vllm_sampler_passes_sampling_params_and_converts_outputs(fake_vllm):
    s = VLLMSampler("/models/p", tensor_parallel_size=2, gpu_memory_utilization=0.5, n_params=1000)
    llm = _FakeLLM.instances[0]
    assert llm.init_kwargs["model"] == "/models/p"
    assert llm.init_kwargs["tensor_parallel_size"] == 2
    assert llm.init_kwargs["gpu_memory_utilization"] == 0.5
    assert llm.init_kwargs["trust_remote_code"] is False
    assert s.tokenizer is llm.tokenizer

    gens = s.generate(["abc", "de"], n=3, temperature=0.7, top_p=0.9, max_new_tokens=11, seed=42)
    prompts, params = llm.calls[0]
    # token ids encoded as the HF path does, without special tokens (a template's own BOS is not doubled)
    assert prompts == [{"prompt_token_ids": [97, 98, 99]}, {"prompt_token_ids": [100, 101]}]
    assert llm.tokenizer.calls == [False]
    # one SamplingParams per prompt, each with its own seed (a shared seed would give every
    # prompt the same random stream): seed * 1_000_003 + prompt index
    assert [sp.kwargs for sp in params] == [
        {"n": 3, "temperature": 0.7, "top_p": 0.9, "max_tokens": 11, "seed": 42 * 1_000_003 + i} for i in range(2)]
    assert len(gens) == 2 and all(len(gs) == 3 for gs in gens)
    assert gens[0][0] == Generation("abc#0", [10], True)
    assert gens[0][1] == Generation("abc#1", [10, 11], False)
    assert gens[1][2] == Generation("de#2", [10, 11, 12], True)
    assert all(type(g.token_ids) is list for gs in gens for g in gs)
    # tokens: each prompt is prefilled once per sample: 3*3 + 3*2 = 15 prompt tokens;
    # generated 1+2+3 per prompt = 12; flops = 2 * 1000 * (15 + 12) = 54000
    c = s.compute
    assert (c.prompt_tokens, c.generated_tokens, c.samples) == (15, 12, 6)
    assert c.flops == 54000.0


def test_vllm_sampler_greedy_uses_temperature_zero(fake_vllm):
    s = VLLMSampler("/models/p", n_params=10)
    s.generate(["x"], n=1, temperature=0.9, top_p=0.5, max_new_tokens=4, seed=1, greedy=True)
    params = _FakeLLM.instances[0].calls[0][1]
    assert [sp.kwargs for sp in params] == [{"n": 1, "temperature": 0.0, "top_p": 1.0, "max_tokens": 4, "seed": 1_000_003}]


def test_vllm_sampler_without_vllm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)   # makes `import vllm` raise ImportError
    with pytest.raises(ImportError, match=r"\.\[gpu\]"):
        VLLMSampler("/models/p", n_params=1)


class _FakeV1LLM(_FakeLLM):
    """Like vLLM's V1 `LLM` (the only engine from vLLM 0.11 on; the default since 0.8): its
    `llm_engine` wraps an engine-core client and has no `model_executor.driver_worker`
    (vllm-project/vllm#16607, huggingface/trl#3859)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.llm_engine = SimpleNamespace(engine_core=SimpleNamespace())


def test_make_sampler_vllm_counts_params_with_v1_engine(fake_vllm, tok, tmp_path):
    from pipeline.modeling import save_policy

    fake_vllm.LLM = _FakeV1LLM
    m = build_tiny_llama(tok, TINY, seed=0)
    save_policy(m, tok, tmp_path / "policy")
    s = make_sampler({"backend": "vllm", "gpu_memory_utilization": 0.85, "vllm_dtype": "float32",
                      "vllm_enforce_eager": True, "vllm_kv_cache_gib": 0.5}, model_path=str(tmp_path / "policy"))
    assert s.n_params == count_params(m)   # e.g. read from the checkpoint vLLM loaded
    kw = _FakeLLM.instances[-1].init_kwargs  # the config keys reach the engine
    assert (kw["dtype"], kw["enforce_eager"], kw["kv_cache_memory_bytes"]) == ("float32", True, 2**29)


# --------------------------------------------------------------------------- vLLM weight sync
# FAKE of the GPU-only vLLM engine: `_FakeVLLMModel` stands in for the model inside vLLM's driver
# worker (llm.llm_engine.model_executor.driver_worker.worker.model_runner.model) and implements only
# what sync_weights touches, `load_weights(weights=iterable of (HF name, tensor))`; the fake `LLM`
# only records `reset_prefix_cache` / `apply_model`. Real vLLM maps HF names onto fused layers;
# this fake copies by name. What is tested is our side: which tensors are sent, in which form.


class _FakeVLLMModel(torch.nn.Module):
    def __init__(self, hf_model):
        super().__init__()
        # every name, tied ones included (real vLLM skips or ties `lm_head.weight` itself)
        self.params = {n: torch.zeros_like(p) for n, p in hf_model.named_parameters(remove_duplicate=False)}
        self.lazy = []  # whether each (name, tensor) arrived through an iterator (not a list)

    def load_weights(self, weights):
        self.lazy.append(not isinstance(weights, list))
        loaded = set()
        for name, t in weights:
            self.params[name].copy_(t)
            loaded.add(name)
        return loaded


class _FakeEngineLLM:
    def __init__(self, model, in_process=True):
        self.model = model
        if in_process:  # vLLM V1 with VLLM_ENABLE_V1_MULTIPROCESSING=0 (colocated)
            worker = SimpleNamespace(model_runner=SimpleNamespace(model=model))
            executor = SimpleNamespace(driver_worker=SimpleNamespace(worker=worker))
            self.llm_engine = SimpleNamespace(model_executor=executor)
        else:  # the engine core in another process: no driver model here
            self.llm_engine = SimpleNamespace(engine_core=SimpleNamespace())
        self.prefix_resets = 0
        self.rpc = []

    def reset_prefix_cache(self):
        self.prefix_resets += 1

    def apply_model(self, func):  # vLLM runs func(model) in each worker and returns their results
        self.rpc.append(func)
        return [func(self.model)]


def _sampler_over(llm, tp=1):
    s = VLLMSampler.__new__(VLLMSampler)  # no engine start: the fake engine is attached directly
    s.llm, s.tensor_parallel_size = llm, tp
    return s


def test_vllm_sync_weights_in_process_loads_every_parameter_lazily(tok):
    policy = build_tiny_llama(tok, TINY, seed=3)
    fake = _FakeVLLMModel(policy)
    s = _sampler_over(_FakeEngineLLM(fake))
    n = s.sync_weights(policy)
    named = dict(policy.named_parameters(remove_duplicate=False))
    # a tied output layer is sent under its own name too: vLLM's in-place reload repacks a layer
    # only once its weights have come
    assert "lm_head.weight" in named and "lm_head.weight" not in dict(policy.named_parameters())
    assert n == len(named)
    assert all(torch.equal(fake.params[k], v) for k, v in named.items())
    assert fake.lazy == [True]  # streamed: under ZeRO-3 one parameter is gathered at a time
    assert s.llm.prefix_resets == 1  # KV cached under the old weights is dropped
    with torch.no_grad():  # a training step later: the next sync carries the new weights
        next(policy.parameters()).add_(1.0)
    s.sync_weights(policy)
    assert torch.equal(fake.params[next(iter(named))], next(policy.parameters()))
    assert s.llm.prefix_resets == 2


def test_vllm_sync_weights_to_workers_in_other_processes(tok):
    """Tensor parallel (or a multiprocess engine): the weights go to the CPU and through
    apply_model to every worker."""
    policy = build_tiny_llama(tok, TINY, seed=4)
    fake = _FakeVLLMModel(policy)
    s = _sampler_over(_FakeEngineLLM(fake, in_process=False), tp=2)
    assert s.sync_weights(list(policy.named_parameters())) == len(dict(policy.named_parameters()))
    assert len(s.llm.rpc) == 1 and fake.lazy == [False]
    assert all(t.device.type == "cpu" for _, t in s.llm.rpc[0].weights)
    assert all(torch.equal(fake.params[k], v) for k, v in policy.named_parameters())


class _FakeReloadingWorker:
    """vLLM's worker with in-place reload (`reload_weights(weights_iterator=...)`): it restores
    each layer's checkpoint-format parameters, loads, and repacks; here it records the call and
    loads by name."""

    def __init__(self, model):
        self.model_runner = SimpleNamespace(model=model)
        self.reloads = 0

    def reload_weights(self, weights_iterator=None):
        self.reloads += 1
        self.model_runner.model.load_weights(weights=weights_iterator)


def test_vllm_sync_weights_reloads_in_place_where_vllm_can(tok, monkeypatch):
    # the CPU build repacks every linear weight after loading, so only reload_weights is right there
    import pipeline.sampler as sampler_module

    monkeypatch.setattr(sampler_module, "vllm_has_reload", lambda: True)
    policy = build_tiny_llama(tok, TINY, seed=5)
    fake = _FakeVLLMModel(policy)
    llm = _FakeEngineLLM(fake)
    worker = _FakeReloadingWorker(fake)
    llm.llm_engine.model_executor.driver_worker.worker = worker
    s = _sampler_over(llm)
    assert s.sync_weights(policy) == len(dict(policy.named_parameters(remove_duplicate=False)))
    assert worker.reloads == 1 and fake.lazy == [True]
    assert all(torch.equal(fake.params[k], v) for k, v in policy.named_parameters())
    # workers in other processes: the same reload through collective_rpc, with CPU tensors
    calls = []
    remote = _FakeEngineLLM(fake, in_process=False)
    remote.collective_rpc = lambda method, kwargs: calls.append((method, kwargs))
    _sampler_over(remote, tp=2).sync_weights(policy)
    assert [c[0] for c in calls] == ["reload_weights"] and remote.rpc == []
    assert [n for n, _ in calls[0][1]["weights_iterator"]] == list(dict(policy.named_parameters(remove_duplicate=False)))
    # without in-place reload (an older vLLM's worker has no reload_weights) the model's
    # load_weights is called directly
    llm.llm_engine.model_executor.driver_worker.worker = SimpleNamespace(model_runner=worker.model_runner)
    s.sync_weights(policy)
    assert worker.reloads == 1 and fake.lazy == [True, True]


def test_vllm_driver_model_paths():
    from pipeline.sampler import vllm_driver_model

    m = _FakeVLLMModel(torch.nn.Linear(2, 2))
    assert vllm_driver_model(_FakeEngineLLM(m)) is m
    assert vllm_driver_model(_FakeEngineLLM(m, in_process=False)) is None
    v0 = SimpleNamespace(llm_engine=SimpleNamespace(model_executor=SimpleNamespace(
        driver_worker=SimpleNamespace(model_runner=SimpleNamespace(model=m)))))
    assert vllm_driver_model(v0) is m  # vLLM V0's path
