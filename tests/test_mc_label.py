"""MC labelling: label math by hand, the agreement table, step -> token mapping, and the
shared-prefix sampler path against the naive one."""
from __future__ import annotations

import pytest
import torch

from pipeline.mc_label import agreement_table
from pipeline.mc_values import (best_of_k, fill_after_pit, first_pit, hard_estimate, select_seeds, step_advantages,
                                step_labels)
from pipeline.metrics import auroc
from pipeline.modeling import build_char_tokenizer, build_tiny_llama
from pipeline.sampler import HFSampler
from pipeline.steps import split_steps_with_ends, step_token_ends
from conftest import MODEL_SECTION

TINY = {**MODEL_SECTION, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 2, "max_position_embeddings": 128}


def test_hard_estimate_and_best_of_k_by_hand():
    assert [hard_estimate(q) for q in (0.0, 0.125, 1.0)] == [0, 1, 1]
    # 1 - (1 - 0.5)^4 = 1 - 0.0625 = 0.9375 ; 1 - (1 - 0.25)^2 = 1 - 0.5625 = 0.4375
    assert best_of_k(0.5, 4) == pytest.approx(0.9375)
    assert best_of_k(0.25, 2) == pytest.approx(0.4375)
    assert best_of_k(0.0, 8) == 0.0 and best_of_k(1.0, 8) == 1.0 and best_of_k(0.3, 1) == pytest.approx(0.3)


def test_step_advantages_start_from_the_prompt_value():
    # Q = [0.75, 0.5, 1.0], V(x) = 0.5  ->  A = [0.75-0.5, 0.5-0.75, 1.0-0.5] = [0.25, -0.25, 0.5]
    assert step_advantages([0.75, 0.5, 1.0], 0.5) == pytest.approx([0.25, -0.25, 0.5])
    assert sum(step_advantages([0.75, 0.5, 1.0], 0.5)) == pytest.approx(1.0 - 0.5)  # telescopes to Q_H - V


def test_step_labels_by_hand():
    # n_mc = 4: counts [3, 0, 4] -> Q = [0.75, 0, 1]; V(x) = 2/4 = 0.5; K = 2
    lab = step_labels([3, 0, 4], 4, 2, 2)
    assert lab["q_hat"] == lab["se"] == [0.75, 0.0, 1.0]
    assert lab["he"] == [1, 0, 1]
    assert lab["v0"] == 0.5
    assert lab["adv"] == pytest.approx([0.25, -0.75, 1.0])
    # Q_Bo2 = 1 - (1-Q)^2 = [1 - 0.0625, 0, 1] = [0.9375, 0, 1]; V_Bo2 = 1 - 0.25 = 0.75
    assert lab["q_bok"] == pytest.approx([0.9375, 0.0, 1.0])
    assert lab["v0_bok"] == pytest.approx(0.75)
    assert lab["adv_bok"] == pytest.approx([0.1875, -0.9375, 1.0])


def test_agreement_table_by_hand():
    rows = [  # truth: steps before first_error are correct
        {"first_error": 1, "q_hat": [1.0, 0.25, 0.0], "he": [1, 1, 0], "se": [1.0, 0.25, 0.0], "q_bok": [1.0, 0.6, 0.0]},
        {"first_error": None, "q_hat": [0.5, 1.0], "he": [1, 1], "se": [0.5, 1.0], "q_bok": [0.9, 1.0]},
    ]
    table = agreement_table(rows).set_index("label")
    # truth = [1, 0, 0, 1, 1]; HE = [1, 1, 0, 1, 1] -> 4/5 right, catches 1 of 2 wrong, flags 0 of 3 right
    he = table.loc["HE (any completion right)"]
    assert he["accuracy"] == pytest.approx(0.8) and he["wrong_caught"] == 0.5 and he["correct_flagged"] == 0.0
    # SE >= 0.5 = [1, 0, 0, 1, 1] -> perfect
    se = table.loc["SE >= 0.5"]
    assert se["accuracy"] == 1.0 and se["wrong_caught"] == 1.0 and se["auroc"] == 1.0
    # Q_BoK >= 0.5 = [1, 1, 0, 1, 1]: the 0.6 is a false "correct"
    assert table.loc["Q_BoK >= 0.5", "accuracy"] == pytest.approx(0.8)


def test_auroc_by_hand_with_ties():
    # positives 0.35, 0.8 ; negatives 0.1, 0.4: pairs (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) -> 3/4
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert auroc([0.5, 0.5], [0, 1]) == 0.5  # a tie counts 1/2
    with pytest.raises(ValueError):
        auroc([0.1, 0.2], [1, 1])


def test_select_seeds_draws_n_cov_per_prompt_seeded_and_in_sample_order():
    rows = [{"id": i, "sample_idx": j} for i in ("a", "b", "c") for j in (3, 2, 0, 1)]
    picked = select_seeds(rows, 2, 2, seed=0)
    assert [r["id"] for r in picked] == ["a", "a", "b", "b"]  # first two prompts, two seeds each
    for pid in ("a", "b"):
        idx = [r["sample_idx"] for r in picked if r["id"] == pid]
        assert idx == sorted(idx) and len(set(idx)) == 2
    assert select_seeds(rows, 2, 2, seed=0) == picked  # deterministic
    draws = {tuple(r["sample_idx"] for r in select_seeds(rows, 1, 2, seed=s)) for s in range(30)}
    assert len(draws) > 1  # a random draw, not the first n_cov
    # a prompt's draw does not depend on how many prompts are selected
    assert select_seeds(rows, 3, 2, seed=5)[:4] == select_seeds(rows, 2, 2, seed=5)
    assert len(select_seeds(rows, 3, 9)) == 12  # n_cov above the pool takes the whole pool


def test_first_pit_and_fill_after_pit_by_hand():
    assert first_pit([3, 1, 0, None]) == 2
    assert first_pit([3, 1, 2]) is None
    assert first_pit([None, 0]) == 1
    # pit at step 1 of a finished wrong response: steps 2, 3 unsampled -> 0, exact last step = outcome 0
    assert fill_after_pit([4, 0, None, None], outcome=0, n_mc=4, finished=True) == [4, 0, 0, 0]
    # right answer despite a pit (e.g. a slip undone by *0): the exact last step keeps the outcome
    assert fill_after_pit([4, 0, None, None], outcome=1, n_mc=4, finished=True) == [4, 0, 0, 4]
    # no pit: every step sampled but the exact last one
    assert fill_after_pit([2, 3, None], outcome=1, n_mc=4, finished=True) == [2, 3, 4]
    # unfinished response (cut at max_new_tokens): its last step is sampled, not exact
    assert fill_after_pit([2, 0, None], outcome=0, n_mc=4, finished=False) == [2, 0, 0]
    with pytest.raises(ValueError):  # a gap without a pit before it is a bug upstream
        fill_after_pit([2, None, 1], outcome=0, n_mc=4, finished=False)


def test_step_token_ends_char_tokenizer_and_merging_tokenizer():
    tok = build_char_tokenizer()
    text = "3+4=7\n7*2=4\n#### 4"
    steps, ends = split_steps_with_ends(text)
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert step_token_ends(tok, ids, ends) == [6, 12, 18]  # one token per character

    class Merging:  # a tokenizer whose tokens span several characters (like BPE)
        vocab = {0: "3+4", 1: "=7\n", 2: "7*2=4\n", 3: "####", 4: " 4"}

        def decode(self, ids, skip_special_tokens=True):
            return "".join(self.vocab[i] for i in ids)

    assert step_token_ends(Merging(), [0, 1, 2, 3, 4], ends) == [2, 3, 5]


def test_shared_prefix_sampling_matches_naive_and_counts_prefill_once():
    tok = build_char_tokenizer()
    model = build_tiny_llama(tok, TINY, seed=0)
    prefixes = [tok(p, add_special_tokens=False)["input_ids"] for p in ("1+2=?\n", "9*9-3=?\n1*")]
    greedy = {}
    for share in (True, False):
        s = HFSampler(model, tok, batch_size=64, progress=False)
        out = s.generate_from_prefixes(prefixes, n=3, temperature=0, max_new_tokens=6, share_prefix=share)
        assert [len(g) for g in out] == [3, 3]
        greedy[share] = [[g.token_ids for g in gs] for gs in out]
        prefill = sum(len(p) for p in prefixes)
        assert s.compute.prompt_tokens == (prefill if share else 3 * prefill)
        assert s.compute.generated_tokens == sum(len(t) for gs in greedy[share] for t in gs)
        assert s.compute.samples == 6
    assert greedy[True] == greedy[False]
    # greedy completions of a prefix equal HF generate's greedy continuation
    ref = HFSampler(model, tok, batch_size=64, progress=False).generate(["1+2=?\n"], greedy=True, max_new_tokens=6)
    assert greedy[True][0][0] == ref[0][0].token_ids


def test_shared_prefix_sampling_is_seeded_and_leaves_global_rng_alone():
    tok = build_char_tokenizer()
    model = build_tiny_llama(tok, TINY, seed=1)
    prefixes = [tok("5-7=?\n", add_special_tokens=False)["input_ids"]]
    s = HFSampler(model, tok, batch_size=64, progress=False)
    torch.manual_seed(123)
    a = s.generate_from_prefixes(prefixes, n=4, temperature=1.0, max_new_tokens=5, seed=7)
    after = torch.rand(1)
    torch.manual_seed(123)
    b = s.generate_from_prefixes(prefixes, n=4, temperature=1.0, max_new_tokens=5, seed=7)
    assert torch.equal(after, torch.rand(1))
    assert [g.token_ids for g in a[0]] == [g.token_ids for g in b[0]]
    assert len({tuple(g.token_ids) for g in a[0]}) > 1  # the 4 copies draw different samples


@pytest.mark.slow
def test_first_pit_labels_each_seed_up_to_its_first_pit(smoke_dir, tmp_path):
    """The stage with seed_selection=first_pit on the smoke DAG's medium policy and rollouts,
    against the random (every boundary) labels the DAG made from the same seeds."""
    import json

    from pipeline.config import load_preset
    from pipeline.mc_label import main
    from pipeline.utils import read_jsonl

    from conftest import SMOKE

    res = smoke_dir / "results"
    cfg = load_preset(SMOKE)
    cfg["mc_label"]["seed_selection"] = "first_pit"
    out = tmp_path / "pit.jsonl"
    main(["--cfg", json.dumps({k: cfg[k] for k in ("mc_label", "task", "sampling", "seed")}),
          "--rollouts", str(res / "rollouts/medium/train.jsonl"), "--records", str(res / "data/train.jsonl"),
          "--completer", str(res / "models/sft/medium"),
          "--out", str(out)])
    pit_rows, full_rows = read_jsonl(out), read_jsonl(res / "mc/medium/train.jsonl")
    assert [(r["id"], r["sample_idx"]) for r in pit_rows] == [(r["id"], r["sample_idx"]) for r in full_rows]
    n_mc = cfg["mc_label"]["n_mc"]
    truncated = 0
    for r in pit_rows:
        sampled = r["mc_sampled"]
        n_sampled = sum(sampled)
        assert sampled == [True] * n_sampled + [False] * (len(sampled) - n_sampled)  # a prefix of the steps
        counts, exact_last = r["n_correct"], int(r["finished"])
        # labelling stopped exactly at the first zero count; later steps are 0 except an exact last step
        zero = next((h for h in range(n_sampled) if counts[h] == 0), None)
        if zero is None:
            assert n_sampled == len(counts) - exact_last
        else:
            assert n_sampled == zero + 1
            tail = counts[zero + 1:]
            if tail and exact_last:
                assert tail[-1] == r["outcome"] * n_mc
                tail = tail[:-1]
            assert tail == [0] * len(tail)
            truncated += len(tail)
        assert r["q_hat"] == [c / n_mc for c in counts]
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    full = json.loads((res / "mc/medium/train.summary.json").read_text())
    assert summary["seed_selection"] == "first_pit" and full["seed_selection"] == "random"
    assert truncated > 0  # the smoke policy does fall into pits
    assert summary["n_prefixes"] == full["n_prefixes"] - truncated
    assert summary["compute"]["generated_tokens"] < full["compute"]["generated_tokens"]


def test_prefix_success_counts_judges_each_distinct_completion_once_and_counts_as_naive():
    from pipeline.config import load_preset
    from pipeline.mc_values import prefix_success_counts
    from pipeline.task import format_prompt, judge
    from pipeline.testbed import ArithSpec, generate_split, reference_solution

    task_cfg = load_preset()["task"]
    tok = build_char_tokenizer()
    model = build_tiny_llama(tok, TINY, seed=0)
    records = generate_split(3, ArithSpec(), seed=0, split="test")
    prefixes, n_prompt, recs = [], [], []
    for r in records:
        prompt = tok(format_prompt(r, task_cfg), add_special_tokens=False)["input_ids"]
        solution = tok(reference_solution(r["meta"]), add_special_tokens=False)["input_ids"]
        for cut in (0, len(solution) // 2, len(solution)):  # the last: the whole right response
            prefixes.append(prompt + solution[:cut])
            n_prompt.append(len(prompt))
            recs.append(r)
    budget = len(prefixes[2]) - n_prompt[2]  # the first record's full solution: nothing may be added
    kw = dict(n=4, temperature=1.0, max_new_tokens=8, seed=3, response_budget=budget)
    counts = prefix_success_counts(HFSampler(model, tok, batch_size=64, progress=False), prefixes, n_prompt, recs,
                                   task_cfg, **kw)
    # the naive count: every completion decoded and judged on its own, from the same draws
    gens = HFSampler(model, tok, batch_size=64, progress=False).generate_from_prefixes(
        prefixes, n=4, temperature=1.0, max_new_tokens=8, seed=3)
    naive = []
    for p, n_p, r, gs in zip(prefixes, n_prompt, recs, gens):
        done = p[n_p:]
        keep = max(0, budget - len(done))
        naive.append(sum(judge(r, tok.decode(done + g.token_ids[:keep], skip_special_tokens=True), task_cfg)["outcome"]
                         for g in gs))
    assert counts == naive
    assert counts[2] == 4  # the right response with no room left is right in all 4
