"""The verdict table's statistics (pipeline/claims.py) against hand computation."""
from __future__ import annotations

import math
import random

import pandas as pd
import pytest

from pipeline.claims import (curve_gap, efficiency_ratio, family_pick, paired_difference, percentile,
                             prompt_difference, rl_claims, step_auroc_interval, verdict, verifier_claims)
from pipeline.metrics import auroc


def test_percentile_interpolates_like_numpy():
    xs = [4.0, 1.0, 3.0, 2.0]
    assert percentile(xs, 0.0) == 1.0 and percentile(xs, 1.0) == 4.0
    assert percentile(xs, 0.5) == pytest.approx(2.5)
    assert percentile(xs, 0.25) == pytest.approx(1.75)  # position 0.75 between 1 and 2
    assert math.isnan(percentile([], 0.5))


def test_verdict_needs_the_whole_interval_on_one_side():
    assert verdict(0.01, 0.2, 0.0) == "reproduced"
    assert verdict(-0.2, -0.01, 0.0) == "not reproduced"
    assert verdict(-0.05, 0.1, 0.0) == "inconclusive"
    assert verdict(1.6, 3.0, 1.5) == "reproduced" and verdict(0.4, 1.49, 1.5) == "not reproduced"
    assert verdict(math.nan, 1.0, 0.0) == "inconclusive"


def test_paired_difference_point_and_interval():
    # two methods, 2 identical seeds x 4 prompts: a is b + 0.25 everywhere, so every resample gives 0.25
    b = [[0.0, 0.5, 0.25, 0.75], [0.0, 0.5, 0.25, 0.75]]
    a = [[x + 0.25 for x in r] for r in b]
    point, lo, hi = paired_difference(a, b, 200, 0)
    assert point == pytest.approx(0.25) and lo == pytest.approx(0.25) and hi == pytest.approx(0.25)
    # with noise the interval brackets the point estimate and shrinks with more prompts
    rng = random.Random(1)
    def noisy(n, shift):
        return [[min(1, max(0, 0.5 + shift + rng.gauss(0, 0.3))) for _ in range(n)] for _ in range(3)]
    p, lo, hi = paired_difference(noisy(50, 0.1), noisy(50, 0.0), 400, 0)
    assert lo < p < hi
    p2, lo2, hi2 = paired_difference(noisy(800, 0.1), noisy(800, 0.0), 400, 0)
    assert hi2 - lo2 < hi - lo and lo2 > 0
    # seeds are resampled per method (independent runs): seed-to-seed spread widens the interval
    p3, lo3, hi3 = paired_difference([[0.5, 0.5], [0.9, 0.9]], [[0.5, 0.5], [0.5, 0.5]], 400, 0)
    assert p3 == pytest.approx(0.2) and lo3 == pytest.approx(0.0) and hi3 == pytest.approx(0.4)
    with pytest.raises(ValueError, match="different prompts"):
        paired_difference([[0.0, 1.0]], [[0.0]], 10, 0)


def curve(vals):
    return [{"iteration": i, "val_pass1": v, "samples": 128 * i, "flops": 1e9 * i} for i, v in enumerate(vals)]


def test_efficiency_ratio_and_curve_gap_by_hand():
    ref = [curve([0.4, 0.45, 0.5, 0.55, 0.6])]       # reference reaches its final 0.6 at iteration 4
    fast = [curve([0.4, 0.5, 0.6, 0.6, 0.62])]       # reaches 0.6 at iteration 2: 4 / 2 = 2x
    never = [curve([0.4, 0.41, 0.42, 0.43, 0.44])]
    assert efficiency_ratio(fast, ref) == pytest.approx(2.0)
    assert efficiency_ratio(ref, ref) == pytest.approx(1.0)
    assert efficiency_ratio(never, ref) == 0.0
    # mean gap over iterations 1-4 (0 is the shared start): (0.05 + 0.1 + 0.05 + 0.02) / 4
    assert curve_gap(fast, ref) == pytest.approx(0.055)


def test_step_auroc_interval_matches_the_unweighted_auroc():
    rng = random.Random(0)
    scores, truths = [], []
    for _ in range(60):
        n = rng.randint(1, 5)
        fe = rng.choice([None, *range(n)])
        t = [int(fe is None or h < fe) for h in range(n)]
        scores.append([rng.random() + 0.6 * x for x in t])
        truths.append(t)
    scores[0][0] = scores[1][0] = 0.5  # a tie across solutions
    point, lo, hi = step_auroc_interval(scores, truths, 300, 0)
    flat_s = [x for s in scores for x in s]
    flat_t = [x for t in truths for x in t]
    assert point == pytest.approx(auroc(flat_s, flat_t), abs=1e-12)
    assert 0.5 < lo < point < hi <= 1.0


def test_prompt_difference_is_paired():
    # b = a - 0.1 on every prompt: prompt difficulty varies a lot, but a paired resample sees none of it
    a = [0.2, 0.9, 0.5, 1.0, 0.1]
    b = [x - 0.1 for x in a]
    point, lo, hi = prompt_difference(a, b, 500, 0)
    assert point == pytest.approx(0.1) and lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    # differences d = [1, 0, 0, 1]: mean 0.5, resampled means within [0, 1]
    point, lo, hi = prompt_difference([1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0], 500, 0)
    assert point == pytest.approx(0.5) and 0.0 <= lo < point < hi <= 1.0


def eval_json(correct, k=4):
    return {"policy": "p", "splits": {"test": {"k": k, "pass1": sum(correct) / (k * len(correct)),
                                               "per_prompt_correct": correct}}}


def test_rl_claims_rows_and_verdicts():
    n = 200
    rng = random.Random(0)
    base = [rng.randint(0, 4) for _ in range(n)]
    strong = [min(4, c + 2) for c in base]  # far better on most prompts
    evals = {"rloo": [eval_json(base)] * 3, "prime": [eval_json(strong)] * 3, "prime_frozen": [eval_json(base)] * 3}
    metrics = {"rloo": [curve([0.4, 0.45, 0.5, 0.55, 0.6])] * 3, "prime": [curve([0.4, 0.5, 0.6, 0.6, 0.62])] * 3,
               "prime_frozen": [curve([0.4, 0.45, 0.5, 0.55, 0.6])] * 3}
    rows = {r["claim"]: r for r in rl_claims(evals, metrics, "test", 200, 0)}
    eff = rows["PRIME is more sample-efficient than outcome-only RLOO"]
    assert eff["ours"] == pytest.approx(2.0) and eff["verdict"] == "reproduced"  # identical seeds: no spread
    acc = rows["PRIME is more accurate than RLOO"]
    assert acc["ours"] == pytest.approx((sum(strong) - sum(base)) / (4 * n)) and acc["verdict"] == "reproduced"
    assert rows["PRIME's online PRM beats a frozen one"]["verdict"] == "reproduced"
    assert "PAV-RL is more accurate than outcome-only RL" not in rows  # methods not run give no row
    # an evaluation without per-prompt counts is an error naming the policy, not a silent seed-only interval
    with pytest.raises(ValueError, match="per_prompt_correct"):
        rl_claims({"rloo": [{"policy": "x", "splits": {"test": {"k": 4, "pass1": 0.5}}}], "prime": evals["prime"]},
                  metrics, "test", 10, 0)


def test_verifier_claims_pick_families_on_heldout_auroc_not_on_the_table():
    rows = []
    for pid in range(40):
        for method, acc in (("implicit_ce (best: min)", 0.6), ("implicit_dpo (best: min)", 0.9),
                            ("prm_se (best: min)", 0.5), ("loglik_medium (best: mean)", 0.55)):
            for n in (4, 64):
                rows.append({"method": method, "generator": "medium", "N": n, "prompt": f"p{pid:02d}",
                             "accuracy": acc + (0.1 if pid % 2 else -0.1)})
    prompts = pd.DataFrame(rows)
    rms = {"implicit_ce": {"kind": "implicit", "within_prompt_auroc_min": 0.7, "total_flops": 1e12},
           "implicit_dpo": {"kind": "implicit", "within_prompt_auroc_min": 0.6, "total_flops": 1e12},
           "prm_se": {"kind": "prm", "within_prompt_auroc_min": 0.6, "total_flops": 5e13},
           "loglik_medium": {"kind": "likelihood", "within_prompt_auroc_mean": 0.8, "total_flops": 0.0}}
    assert family_pick(rms, ("implicit",)) == "implicit_ce"  # DPO is better on the table, CE on held-out data
    out = {r["claim"]: r for r in verifier_claims(prompts, rms, "medium", 200, 0)}
    imp = out["Implicit PRM (best of its losses) at least matches the Math-Shepherd MC-PRM"]
    assert imp["ours"] == pytest.approx(0.1) and imp["verdict"] == "reproduced" and "50.0x" in imp["compute"]
    rms["prm_se"]["total_flops"] = 2e12  # only 2x the compute: the compute half of the claim fails
    out = {r["claim"]: r for r in verifier_claims(prompts, rms, "medium", 200, 0)}
    assert out["Implicit PRM (best of its losses) at least matches the Math-Shepherd MC-PRM"]["verdict"] == "not reproduced"
    base = out["A trained MC-PRM ranks better than the generator's own likelihood"]
    assert base["ours"] == pytest.approx(-0.05) and base["verdict"] == "not reproduced"


def test_data_scaling_pair_finds_equal_counts_of_the_same_loss():
    from pipeline.config import data_scaling_pair

    def cell(loss, rpi, frac, beta=0.05):
        return {"loss": loss, "beta": beta, "responses_per_instruction": rpi, "instruction_frac": frac}
    cells = [cell("ce", 4, 1.0), cell("ce", 1, 0.25), cell("dpo", 4, 0.25), cell("ce", 4, 0.5), cell("ce", 1, 1.0),
             cell("ce", 4, 0.25, beta=0.5), cell("ce", 4, 0.25)]
    # (1, 1.0) meets (4, 0.25) of the same loss and beta; DPO's, beta 0.5's and (4, 0.5) do not count
    assert data_scaling_pair(cells) == (4, 6)
    assert data_scaling_pair(cells[:6]) is None
    assert data_scaling_pair([cell("ce", 1, 1.0), cell("ce", 2, 0.5)]) == (0, 1)


def test_pool_prompt_accuracy_and_the_data_scaling_rows(tmp_path):
    """Two prompts of 4 samples; a model whose scores pick the right sample wherever it can, one
    that picks a wrong one: best-of-N accuracy by hand, then the two rows' differences."""
    import json

    from pipeline.claims import data_scaling_claims, pool_prompt_accuracy
    from pipeline.utils import write_jsonl

    outcomes = {"p0": [0, 1, 0, 0], "p1": [1, 1, 0, 0]}
    pools = {"medium": [{"id": pid, "outcome": o, "answer": ["x"] * 4,
                         "rows": [{"sample_idx": i} for i in range(4)]} for pid, o in outcomes.items()]}

    def model(name, good):
        d = tmp_path / name
        d.mkdir()
        write_jsonl(d / "medium.jsonl", [{"id": pid, "sample_idx": i, "step_scores": [float(o[i] if good else -o[i])]}
                                         for pid, o in outcomes.items() for i in range(4)])
        (d / "meta.json").write_text(json.dumps({"scores_are_probabilities": False}))
        return d
    metrics = {"within_prompt_auroc_min": 0.9}
    good = pool_prompt_accuracy(pools, model("good", True), "g", metrics, [4], 8, 0)
    bad = pool_prompt_accuracy(pools, model("bad", False), "b", metrics, [4], 8, 0)
    rand = pool_prompt_accuracy(pools, None, "random", None, [4], 8, 0)
    assert good == {"p0": 1.0, "p1": 1.0} and bad == {"p0": 0.0, "p1": 0.0}
    assert rand == {"p0": 0.25, "p1": 0.5}  # N = pool size: one draw, the mean outcome
    one_row, many_row = data_scaling_claims(bad, good, rand, 4, 256, "random", 100, 0)
    assert one_row["ours"] == pytest.approx(-0.375) and one_row["verdict"] == "not reproduced"
    assert "1 response x 256 instructions" in one_row["measure"]
    assert many_row["ours"] == pytest.approx(1.0) and many_row["verdict"] == "reproduced"
    assert "4 responses x 64 instructions" in many_row["measure"]


def test_replicates_script_pools_replicates_by_hand(tmp_path):
    """benchmarks/replicates.py on two hand-made replicates in which PRIME trails RLOO by exactly
    0.25 on every prompt and seed: each replicate's interval and the pooled one are that point."""
    import json
    import subprocess
    import sys

    from conftest import REPO

    def write_run(out, shift):
        for method, correct in (("rloo", 2), ("prime", 1), ("base", 1)):
            for seed in range(2):
                ev = {"policy": method, "splits": {s: {"k": 4, "pass1": correct / 4, "per_prompt_correct": [correct] * 5}
                                                   for s in ("test", "ood")}}
                (out / "eval" / method).mkdir(parents=True, exist_ok=True)
                (out / "eval" / method / f"s{seed}.json").write_text(json.dumps(ev))
                if method != "base":
                    run = out / "rl" / method / f"s{seed}"
                    run.mkdir(parents=True, exist_ok=True)
                    val = 0.5 + shift if method == "rloo" else 0.3
                    run.joinpath("metrics.jsonl").write_text("".join(
                        json.dumps({"iteration": i, "val_pass1": val if i else 0.3, "samples": 128 * i, "flops": 1e9 * i}) + "\n"
                        for i in (0, 5, 10)))
    for i in range(2):
        write_run(tmp_path / f"r{i}", 0.01 * i)
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "replicates.py"), str(tmp_path / "r0"),
                          str(tmp_path / "r1"), "--n-boot", "50"], capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("| PRIME is more accurate than RLOO"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1] == cells[2] == "-0.250 [-0.250, -0.250] not reproduced"
    assert cells[4] == "-0.250 [-0.250, -0.250] not reproduced"  # pooled over the two replicates
    assert "| rloo | 0.500 / 0.500 | 0.500 / 0.500 |" in out
