"""Step-level beam search (`pipeline/search.py`): the pure search on toy problems with a known
answer (counts of expansions checked by hand), the sampler's step stopping on a tiny real
model, and the stage end to end on a tiny policy with untrained reward models."""
from __future__ import annotations

import json
import random
from collections import Counter

import pytest
import torch

from pipeline.config import load_preset
from conftest import MODEL_SECTION, scaled_tiny_llama
from pipeline.modeling import build_char_tokenizer, save_policy
from pipeline.rewards import HeadRewardModel
from pipeline.sampler import HFSampler
from pipeline.search import Step, beam_search, pick_final, truncate_after
from pipeline.testbed import ArithSpec, generate_split
from pipeline.utils import read_json, read_jsonl

# --------------------------------------------------------------------------- toy problems

TARGET = "31415926"


def digit_expand(seed: int, p_right: float = 0.3):
    """Each candidate next step is one digit: the target's next digit with probability
    `p_right`, otherwise a uniform digit (seeded, deterministic). A candidate that completes
    len(TARGET) digits is finished. Records (number of requests, n) per call."""
    rng = random.Random(seed)
    calls = []

    def expand(requests, n):
        calls.append((len(requests), n))
        out = []
        for _, steps in requests:
            h = len(steps)
            digits = [TARGET[h] if rng.random() < p_right else str(rng.randrange(10)) for _ in range(n)]
            out.append([Step(d, 1, h + 1 == len(TARGET)) for d in digits])
        return out

    return expand, calls


def prefix_score(requests):
    """A toy process verifier: how many leading characters agree with the target."""
    out = []
    for _, steps, _ in requests:
        text = "".join(steps)
        out.append(next((i for i, (a, b) in enumerate(zip(text, TARGET)) if a != b), min(len(text), len(TARGET))))
    return out


def exact_score(requests):
    return [float("".join(steps) == TARGET) for _, steps, _ in requests]


def solved(results):
    best, _ = pick_final([r["pool"] for r in results], exact_score)
    return [b is not None and "".join(r["pool"][b]["steps"]) == TARGET for r, b in zip(results, best)]


def test_search_finds_the_target_where_best_of_one_does_not():
    n = 8
    expand, calls = digit_expand(seed=0)
    results = beam_search(n, expand, prefix_score, beam_width=4, n_candidates=3, max_steps=len(TARGET))
    # a prompt fails only when a round's 12 candidates all miss (about 0.63^12 per round per prompt)
    assert sum(solved(results)) >= 6
    # best-of-1: one sample per step and no selection (a digit is right w.p. 0.37 -> 0.37^8)
    expand1, _ = digit_expand(seed=0)
    results1 = beam_search(n, expand1, prefix_score, beam_width=1, n_candidates=1, max_steps=len(TARGET))
    assert not any(solved(results1))
    # every prompt is expanded by the same batched call in every round
    assert calls[0] == (n, 12)                          # round 1: one empty beam x B*C
    assert all(c == (n * 4, 3) for c in calls[1:])      # then B live beams x C (none finish early)
    assert len(calls) == len(TARGET)
    for r in results:                                   # 12 + 7 * 12 one-token candidates
        assert r["generated_tokens"] == r["n_generated"] == 12 * len(TARGET)
        assert len(r["pool"]) == 4 and all(c["finished"] for c in r["pool"])
        assert r["rounds"] == len(TARGET)


def first_beam_finishes_expand():
    """Candidate j of a request is "<h>.<j>"; from round 2 on, candidate 0 of each prompt's first
    live beam is finished. With score -j the top candidates are all j = 0, so exactly one kept
    candidate finishes per round and the beam shrinks by one."""
    calls = []

    def expand(requests, n):
        calls.append([(p, len(steps)) for p, steps in requests])
        out, seen = [], set()
        for p, steps in requests:
            first = p not in seen
            seen.add(p)
            out.append([{"text": f"{len(steps)}.{j}", "n_tokens": 2, "finished": bool(steps) and first and j == 0}
                        for j in range(n)])
        return out

    return expand, calls


def minus_index_score(requests):
    return [-float(steps[-1].split(".")[1]) for _, steps, _ in requests]


def test_beam_shrinks_as_candidates_finish():
    expand, calls = first_beam_finishes_expand()
    results = beam_search(2, expand, minus_index_score, beam_width=4, n_candidates=3, max_steps=10)
    # requests per round, per prompt: 1 (the empty beam), then 4, 3, 2, 1 live beams
    per_round = [sum(p == 0 for p, _ in c) for c in calls]
    assert per_round == [1, 4, 3, 2, 1]
    assert [len(c) for c in calls] == [2, 8, 6, 4, 2]   # both prompts in every call
    for r in results:
        # candidates: 12 + 4*3 + 3*3 + 2*3 + 1*3 = 42, two tokens each
        assert r["n_generated"] == 42 and r["generated_tokens"] == 84
        assert r["rounds"] == 5
        pool = r["pool"]
        assert len(pool) == 4 and all(c["finished"] for c in pool)
        assert [len(c["steps"]) for c in pool] == [2, 3, 4, 5]   # one finished per round from round 2
        assert all(c["score"] == 0.0 for c in pool)
        # round 1 kept the first 4 of 12 tied-by-rank candidates: ties break by candidate order
        assert pool[0]["steps"] == ["0.0", "1.0"]


def test_ties_keep_candidate_order():
    kept = []

    def expand(requests, n):
        kept.append([steps for _, steps in requests])
        return [[Step(f"{len(steps)}{j}", 1, False) for j in range(n)] for _, steps in requests]

    beam_search(1, expand, lambda reqs: [0.0] * len(reqs), beam_width=3, n_candidates=2, max_steps=2)
    assert kept[1] == [["00"], ["01"], ["02"]]          # round 1: 6 tied candidates, first 3 kept


def test_max_steps_is_respected_and_live_beams_join_the_pool():
    expand, calls = first_beam_finishes_expand()
    results = beam_search(1, expand, minus_index_score, beam_width=4, n_candidates=3, max_steps=3)
    assert len(calls) == 3
    pool = results[0]["pool"]
    # rounds 2 and 3 each finished one candidate; the 2 live beams join unfinished with their score
    assert [c["finished"] for c in pool] == [True, True, False, False]
    assert [len(c["steps"]) for c in pool] == [2, 3, 3, 3]
    assert results[0]["n_generated"] == 12 + 4 * 3 + 3 * 3
    assert max(len(c["steps"]) for c in pool) <= 3


def test_beam_search_checks_its_callbacks():
    with pytest.raises(ValueError, match="candidates"):
        beam_search(1, lambda reqs, n: [[Step("a", 1, False)]], lambda reqs: [0.0] * len(reqs),
                    beam_width=2, n_candidates=2, max_steps=1)
    with pytest.raises(ValueError, match="scores"):
        beam_search(1, lambda reqs, n: [[Step("a", 1, False)] * n for _ in reqs], lambda reqs: [0.0],
                    beam_width=2, n_candidates=2, max_steps=1)


def test_pick_final_takes_the_highest_first_on_ties():
    pools = [[{"steps": ["a"], "finished": True}, {"steps": ["b"], "finished": True},
              {"steps": ["c"], "finished": False}], [], [{"steps": ["d"], "finished": True}]]
    table = {"a": 0.2, "b": 0.7, "c": 0.7, "d": -1.0}
    seen = []

    def final(reqs):
        seen.append(reqs)
        return [table[steps[0]] for _, steps, _ in reqs]

    best, scores = pick_final(pools, final)
    assert best == [1, None, 0]
    assert scores == [[0.2, 0.7, 0.7], [], [-1.0]]
    assert len(seen) == 1 and [p for p, _, _ in seen[0]] == [0, 0, 0, 2]   # one batched call


@pytest.mark.parametrize("text, delim, expected", [
    ("1+2=3\n", "\n", ("1+2=3\n", False)),
    ("1+2=3\n4", "\n", ("1+2=3\n", True)),
    ("#### 3", "\n", ("#### 3", False)),
    ("a\n\nb\n\n", "\n\n", ("a\n\n", True)),
])
def test_truncate_after(text, delim, expected):
    assert truncate_after(text, delim) == expected


# --------------------------------------------------------------------------- sampler stop

TINY = {**MODEL_SECTION, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2, "max_position_embeddings": 128,
        "tie_word_embeddings": False}
PROMPTS = ["3+4*2=?\n", "1+2=?\n", "9*9-1+5=?\n"]


def stepwise_tiny_llama(tok):
    """A random tiny Llama that emits newlines and EOS often: their output rows get the mean
    final hidden state's direction added, so their logits are raised in most contexts."""
    m = scaled_tiny_llama(tok, TINY)
    ids = [tok(p, add_special_tokens=False)["input_ids"][:6] for p in (PROMPTS[0], PROMPTS[2])]
    with torch.no_grad():
        mu = m.model(input_ids=torch.tensor(ids)).last_hidden_state.reshape(-1, TINY["hidden_size"]).mean(0)
        direction = mu / mu.norm() ** 2
        m.lm_head.weight[tok.convert_tokens_to_ids("\n")] += 4.0 * direction
        m.lm_head.weight[tok.eos_token_id] += 1.5 * direction
    return m


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return stepwise_tiny_llama(tok)


def cut_at(ids: list[int], tok, stop: str) -> list[int]:
    """The shortest token prefix whose text contains `stop` (all of `ids` if none does)."""
    for k in range(1, len(ids) + 1):
        if stop in tok.decode(ids[:k], skip_special_tokens=True):
            return ids[:k]
    return ids


@pytest.mark.parametrize("stop", ["\n", "two characters"])
def test_hf_stop_ends_rows_at_the_delimiter(model, tok, stop):
    prefixes = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    kw = dict(n=8, temperature=1.0, max_new_tokens=30, seed=0)
    free = HFSampler(model, tok, batch_size=64, progress=False).generate_from_prefixes(prefixes, **kw)
    if stop == "two characters":  # a stop spread over two tokens: the most common pair in these samples
        pairs = Counter(g.text[i:i + 2] for gs in free for g in gs for i in range(len(g.text) - 1))
        stop = pairs.most_common(1)[0][0]
    s = HFSampler(model, tok, batch_size=64, progress=False)
    gens = s.generate_from_prefixes(prefixes, stop=stop, **kw)
    flat = [g for gs in gens for g in gs]
    n_stopped = 0
    for g, f in zip(flat, [g for gs in free for g in gs]):
        assert g.text == tok.decode(g.token_ids, skip_special_tokens=True)
        assert g.text.count(stop) <= 1
        if g.finished:                                   # EOS before any delimiter
            assert g.token_ids[-1] == tok.eos_token_id and stop not in g.text
        elif stop in g.text:                             # stopped at the delimiter, which is kept
            assert g.text.endswith(stop) and g.token_ids[-1] != tok.eos_token_id
            n_stopped += 1
        else:                                            # cut at the length limit
            assert len(g.token_ids) == kw["max_new_tokens"]
        # the same random stream as without stop, cut where the delimiter completes
        assert g.token_ids == cut_at(f.token_ids, tok, stop)
    assert n_stopped >= 3 and any(g.finished for g in flat)
    assert s.compute.generated_tokens == sum(len(g.token_ids) for g in flat)
    assert s.compute.prompt_tokens == sum(map(len, prefixes)) and s.compute.samples == len(flat)
    assert s.compute.flops == 2.0 * s.n_params * (s.compute.prompt_tokens + s.compute.generated_tokens)


class _VocabTok:
    """A stand-in merging tokenizer: one string per id."""
    all_special_ids = [0, 1]

    def __init__(self, vocab):
        self.vocab = vocab

    def __len__(self):
        return len(self.vocab)

    def batch_decode(self, seqs, skip_special_tokens=False):
        return ["".join(self.vocab[i] for i in s) for s in seqs]


def test_stop_masks_cover_merged_tokens_and_are_cached(tok):
    vocab = ["<pad>", "</s>", "a", ".\n", "\n\n", "\n", "b\nc", "\n\n\n"]
    s = HFSampler(torch.nn.Linear(1, 1), _VocabTok(vocab), progress=False)
    full, tail = s._stop_masks("\n", 10, "cpu")
    assert full.tolist() == [False, False, False, True, True, True, True, True, False, False]
    assert not tail.any()
    full, tail = s._stop_masks("\n\n", 10, "cpu")
    assert torch.nonzero(full).flatten().tolist() == [4, 7]
    assert torch.nonzero(tail).flatten().tolist() == [5]   # "\n" may complete a "\n\n"
    assert s._stop_masks("\n\n", 10, "cpu")[0] is full    # computed once
    # the char tokenizer: "\n" is the only stop token
    c = HFSampler(torch.nn.Linear(1, 1), tok, progress=False)
    full, tail = c._stop_masks("\n", len(tok), "cpu")
    assert torch.nonzero(full).flatten().tolist() == [tok.convert_tokens_to_ids("\n")] and not tail.any()


def test_vllm_stop_passes_the_delimiter_and_keeps_finished_for_eos(monkeypatch):
    """vLLM's glue with a stand-in `vllm` module (a fake at a true external boundary: vLLM needs a
    GPU and is not installed here): stop strings go into SamplingParams (kept in the output),
    and a completion that ended at the stop string is not finished."""
    import sys
    import types
    from types import SimpleNamespace

    from pipeline.sampler import Generation, VLLMSampler

    class LLM:
        def __init__(self, **kw):
            self.params = None

        def get_tokenizer(self):
            return None

        def generate(self, prompts, params, use_tqdm=True):
            self.params = params
            outs = [SimpleNamespace(text="1+2=3\n", token_ids=(5, 6, 7), finish_reason="stop", stop_reason="\n"),
                    SimpleNamespace(text="#### 3", token_ids=(8, 9, 2), finish_reason="stop", stop_reason=None),
                    SimpleNamespace(text="1+2", token_ids=(5, 6), finish_reason="length", stop_reason=None)]
            return [SimpleNamespace(prompt_token_ids=p["prompt_token_ids"], outputs=outs) for p in prompts]

    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams = LLM, lambda **kw: kw
    monkeypatch.setitem(sys.modules, "vllm", mod)
    s = VLLMSampler("/models/p", n_params=10)
    gens = s.generate_from_prefixes([[1, 2]], n=3, temperature=1.0, max_new_tokens=8, seed=0, stop="\n")
    assert s.llm.params == [{"n": 3, "temperature": 1.0, "top_p": 1.0, "max_tokens": 8, "seed": 0, "stop": ["\n"],
                             "include_stop_str_in_output": True}]
    assert gens[0] == [Generation("1+2=3\n", [5, 6, 7], False), Generation("#### 3", [8, 9, 2], True),
                       Generation("1+2", [5, 6], False)]
    assert s.compute.generated_tokens == 8
    s.generate_from_prefixes([[1, 2]], n=3, max_new_tokens=8)           # no stop: the old SamplingParams
    assert "stop" not in s.llm.params[0]


# --------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def stage_dirs(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("search")
    save_policy(stepwise_tiny_llama(tok), tok, d / "policy")
    HeadRewardModel.init_from_policy(str(d / "policy"), "prm").save(d / "prm")
    HeadRewardModel.init_from_policy(str(d / "policy"), "pav", {"prover_k": 4, "alpha": 0.5}).save(d / "pav")
    HeadRewardModel.init_from_policy(str(d / "policy"), "orm").save(d / "orm")
    records = generate_split(4, ArithSpec(), seed=0, split="test")
    with open(d / "test.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return d


def run_stage(d, verifier, out, **search):
    from pipeline.search import main

    cfg = {"seed": 0, "task": {"name": "arith", "grader": "exact", "step_delimiter": "\n"},
           "sampling": {"backend": "hf", "batch_size": 64, "max_new_tokens": 24, "progress": False, "decode": "own"},
           "search": {**load_preset()["search"], "beam_width": 2, "n_candidates": 2, "max_steps": 4, "temperature": 1.0,
                      "dedupe": True, "aggregation": "last", **search}}
    main(["--cfg", json.dumps(cfg), "--policy", str(d / "policy"), "--verifier", str(d / verifier),
          "--final", str(d / "orm"), "--records", str(d / "test.jsonl"), "--out", str(out)])
    return read_jsonl(out), read_json(out.with_suffix(".summary.json"))


@pytest.mark.parametrize("verifier, search", [("prm", {"aggregation": "min", "n_prompts": 3}),
                                              ("pav", {"aggregation": "last", "alpha": 0.2})])
def test_stage_end_to_end(stage_dirs, tmp_path, verifier, search):
    rows, summary = run_stage(stage_dirs, verifier, tmp_path / "search.jsonl", **search)
    n = search.get("n_prompts", 4)
    assert len(rows) == n
    for r in rows:
        for key in ("id", "prompt", "response", "steps", "outcome", "generated_tokens", "finished",
                    "verifier_score", "final_score", "pool_size", "first_error"):
            assert key in r, key
        assert r["response"] == "".join(r["steps"]) and r["outcome"] in (0, 1)
        assert r["generated_tokens"] > 0 and 1 <= r["pool_size"] <= 2 and 1 <= r["rounds"] <= 4
        assert len(r["steps"]) <= 4
        assert all(s.count("\n") <= 1 for s in r["steps"])
        assert all(s.endswith("\n") for s in r["steps"][:-1])
    assert summary["n_prompts"] == n and summary["beam_width"] == 2 and summary["n_candidates"] == 2
    assert summary["accuracy"] == sum(r["outcome"] for r in rows) / n
    # every generated token is in the sampler's compute, and the per-prompt counts add up to it
    total = sum(r["generated_tokens"] for r in rows)
    assert summary["generated_tokens"] == summary["compute"]["generated_tokens"] == total > 0
    assert summary["verifier_compute"]["scored_tokens"] > 0 and summary["final_compute"]["scored_tokens"] > 0
    assert summary["alpha"] == (0.2 if verifier == "pav" else None)


def test_stage_is_deterministic(stage_dirs, tmp_path):
    a, _ = run_stage(stage_dirs, "pav", tmp_path / "a.jsonl")
    b, _ = run_stage(stage_dirs, "pav", tmp_path / "b.jsonl")
    assert a == b


def test_dedupe_skips_copies_of_a_better_candidate():
    kept = []

    def expand(requests, n):  # every beam proposes the same two steps, "a" three times then "b"
        kept.append([steps for _, steps in requests])
        return [[Step("a" if j < n - 1 else "b", 1, False) for j in range(n)] for _ in requests]

    def score(reqs):  # "a" scores above "b"
        return [1.0 if steps[-1] == "a" else 0.5 for _, steps, _ in reqs]

    beam_search(1, expand, score, beam_width=3, n_candidates=4, max_steps=2)
    assert kept[1] == [["a"], ["a"], ["a"]]            # without dedupe: three copies of one prefix
    kept.clear()
    beam_search(1, expand, score, beam_width=3, n_candidates=4, max_steps=2, dedupe=True)
    assert kept[1] == [["a"], ["b"]]                   # distinct prefixes only: the beam narrows to 2
