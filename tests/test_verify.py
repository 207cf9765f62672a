"""Verifier evaluation: selection rules, voting, subset averaging and step localisation,
checked against hand computation."""
from __future__ import annotations

import math

import pytest

from pipeline.verify import (draw_subsets, fit_threshold, localisation, m_best_of_n, m_majority, m_oracle, m_random,
                             m_weighted_vote, pick_best, predicted_first_error, step_verification, subset_accuracy,
                             table1, table4, vote, vote_weight, wide_table1)


def test_pick_best_takes_the_earliest_maximum():
    assert pick_best([0.1, 0.7, 0.7, 0.2]) == 1
    assert pick_best([-math.inf, -3.0]) == 1
    assert pick_best([5.0]) == 0


def test_majority_and_weighted_vote_by_hand():
    assert vote(["3", "5", "3", None]) == 0          # "3" has 2 votes, first seen at 0
    assert vote(["5", "3", "3", "5"]) == 0           # tie 2-2: the answer seen first wins
    assert vote([None, "7", None]) == 1              # unanswered samples do not vote
    assert vote([None, None]) is None
    # weighted: "3" = 0.9 against "5" = 0.4 + 0.4 = 0.8 -> "3"; with 0.5 for "3" -> "5" (0.8) wins
    assert vote(["3", "5", "5"], [0.9, 0.4, 0.4]) == 0
    assert vote(["3", "5", "5"], [0.5, 0.4, 0.4]) == 1


def test_vote_weight_is_sigmoid_of_the_logit():
    assert vote_weight(0.3, True) == 0.3                          # a probability is sigmoid(logit) already
    assert vote_weight(0.0, False) == 0.5
    assert vote_weight(2.0, False) == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert vote_weight(-800.0, False) == pytest.approx(0.0)      # no overflow
    assert vote_weight(-math.inf, True) == 0.0 and vote_weight(-math.inf, False) == 0.0


def test_draw_subsets_sizes_determinism_and_full_pool():
    subs = draw_subsets(8, 3, n_subsets=5, n_prompts=4, seed=0)
    assert len(subs) == 5 and all(len(d) == 4 for d in subs)
    assert all(len(set(idx)) == 3 and idx == sorted(idx) and max(idx) < 8 for d in subs for idx in d)
    assert subs == draw_subsets(8, 3, n_subsets=5, n_prompts=4, seed=0)
    assert subs != draw_subsets(8, 3, n_subsets=5, n_prompts=4, seed=1)
    assert draw_subsets(8, 8, n_subsets=5, n_prompts=2, seed=0) == [[list(range(8))] * 2]  # one draw: the pool
    with pytest.raises(ValueError):
        draw_subsets(4, 5, 1, 1, 0)


POOLS = [  # two prompts, pools of 4
    {"outcome": [1, 0, 0, 1], "answer": ["7", "2", "2", "7"], "rm": [0.2, 0.9, 0.1, 0.3]},
    {"outcome": [0, 0, 0, 1], "answer": ["1", "1", None, "4"], "rm": [0.6, 0.5, 0.0, 0.55]},
]
DRAWS = [[[0, 1], [2, 3]], [[1, 2], [0, 1]]]  # draws[d][prompt]


def test_subset_accuracy_by_hand():
    # random: draw 0 = (1/2 + 1/2) / 2 = 0.5; draw 1 = (0 + 0) / 2 = 0 -> mean 0.25, std (n-1) = 0.3536
    mean, std = subset_accuracy(POOLS, DRAWS, m_random)
    assert mean == pytest.approx(0.25) and std == pytest.approx(math.sqrt(2 * 0.25 ** 2))
    # oracle: draw 0 = (1 + 1)/2 = 1; draw 1 = (0 + 0)/2 = 0
    assert subset_accuracy(POOLS, DRAWS, m_oracle)[0] == pytest.approx(0.5)
    # RM best-of-2: p0 {0: .2, 1: .9} -> 1 (wrong); p1 {2: .0, 3: .55} -> 3 (right); draw 0 = 0.5
    #               p0 {1: .9, 2: .1} -> 1 (wrong); p1 {0: .6, 1: .5} -> 0 (wrong); draw 1 = 0
    assert subset_accuracy(POOLS, DRAWS, m_best_of_n("rm"))[0] == pytest.approx(0.25)
    # majority: p0 {7, 2} tie -> "7" (sample 0, right); p1 {None, 4} -> "4" right; draw 0 = 1
    #           p0 {2, 2} -> wrong; p1 {1, 1} -> wrong; draw 1 = 0
    assert subset_accuracy(POOLS, DRAWS, m_majority)[0] == pytest.approx(0.5)
    # weighted vote with probabilities: p0 draw 0: "7" 0.2 vs "2" 0.9 -> wrong; p1 draw 0: "4" 0.55 -> right
    # draw 1: p0 "2" only -> wrong; p1 "1" only -> wrong
    assert subset_accuracy(POOLS, DRAWS, m_weighted_vote("rm", True))[0] == pytest.approx(0.25)


def test_table1_perfect_verifier_matches_oracle_and_random_matches_pass1():
    pools = {"gen": [{"outcome": o, "answer": [str(x) for x in o], "perfect:min": [float(x) for x in o],
                      "perfect:last": [float(x) for x in o]}
                     for o in ([1, 0, 0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0, 0, 1], [1, 1, 1, 0, 1, 1, 1, 1])]}
    rms = {"perfect": {"aggs": ["last", "min"], "best": "last", "prob": True, "flops": 5.0}}
    long = table1(pools, rms, [2, 8], n_subsets=50, seed=0)
    cell = long.set_index(["method", "N"])
    for n in (2, 8):
        assert cell.loc[("perfect (best: last)", n), "accuracy"] == pytest.approx(cell.loc[("oracle (pass@N)", n), "accuracy"])
        assert cell.loc[("random (pass@1)", n), "accuracy"] == pytest.approx(
            sum(sum(p["outcome"]) / 8 for p in pools["gen"]) / 3, abs=0.06 if n == 2 else 1e-12)
    assert cell.loc[("oracle (pass@N)", 8), "accuracy"] == 1.0 and cell.loc[("oracle (pass@N)", 8), "std"] == 0.0
    wide = wide_table1(long).set_index("method")
    assert list(wide.columns[:2]) == ["gen@2", "gen@8"]
    assert wide.loc["perfect (best: last)", "rm_flops"] == 5.0 and wide.loc["majority vote", "rm_flops"] == 0.0
    assert wide.loc["oracle (pass@N)", "avg"] == pytest.approx(wide.loc["oracle (pass@N)", ["gen@2", "gen@8"]].mean())


def test_first_error_localisation_by_hand():
    assert predicted_first_error([0.9, 0.4, 0.8], 0.5) == 1
    assert predicted_first_error([0.9, 0.6], 0.5) is None
    # errors at 1 (found) and 3 (missed); error-free: one right, one flagged at 2 -> 0.5, 0.5, F1 0.5
    m = localisation([1, None, 2, None], [1, None, None, 3])
    assert (m["acc_error"], m["acc_correct"], m["f1"]) == (0.5, 0.5, 0.5)
    assert m["n_error"] == 2 and m["n_correct"] == 2
    assert localisation([0, None], [0, None])["f1"] == 1.0


def test_fit_threshold_separates_and_step_verification_by_hand():
    scores = [[0.9, 0.2, 0.3], [0.8, 0.9]]
    truth = [1, None]
    thr = fit_threshold(scores, truth)
    assert 0.2 < thr < 0.8  # any threshold in between localises both perfectly
    rows = [{"first_error": 1, "outcome": 0}, {"first_error": None, "outcome": 1}, {"first_error": 0, "outcome": 1}]
    m = step_verification([[0.9, 0.2, 0.3], [0.8, 0.9], [0.7, 0.9]], rows, 0.5)
    # steps: truth [1,0,0 | 1,1 | 0,0]; scores [.9,.2,.3 | .8,.9 | .7,.9]
    # positives {.9, .8, .9} vs negatives {.2, .3, .7, .9}: each .9 beats three and ties one (3.5),
    # .8 beats three (3) -> (3.5 + 3 + 3.5) / 12
    assert m["step_auroc"] == pytest.approx(10 / 12)
    # localisation: row 0 found (1), row 2 missed (None vs 0) -> acc_error 0.5; row 1 clean -> 1.0
    assert m["acc_error"] == 0.5 and m["acc_correct"] == 1.0 and m["f1"] == pytest.approx(2 / 3)
    # right answer, wrong process: only row 2, missed
    assert m["acc_right_answer_wrong_process"] == 0.0 and m["n_right_answer_wrong_process"] == 1


def test_localisation_f1_is_nan_when_a_class_is_absent():
    # only error-free solutions: acc_correct is defined, acc_error and F1 are not (ProcessBench: nan)
    m = localisation([None, None, 1], [None, None, None])
    assert m["acc_correct"] == pytest.approx(2 / 3) and math.isnan(m["acc_error"]) and math.isnan(m["f1"])
    assert (m["n_error"], m["n_correct"]) == (0, 3)
    # only solutions with an error, even all localised exactly: F1 is still undefined
    m = localisation([0, 2], [0, 2])
    assert m["acc_error"] == 1.0 and math.isnan(m["acc_correct"]) and math.isnan(m["f1"])
    assert (m["n_error"], m["n_correct"]) == (2, 0)
    assert math.isnan(localisation([], [])["f1"])


def test_localisation_f1_by_hand():
    # errors at 0 (found), 2 (found), 1 (flagged at 0: wrong) -> acc_error 2/3;
    # error-free: one clean, one flagged -> acc_correct 1/2; F1 = 2 (2/3)(1/2) / (2/3 + 1/2) = 4/7
    m = localisation([0, 2, 0, None, 1], [0, 2, 1, None, None])
    assert m["acc_error"] == pytest.approx(2 / 3) and m["acc_correct"] == 0.5
    assert m["f1"] == pytest.approx(4 / 7)
    # both classes present, both accuracies 0: F1 is 0, not nan
    assert localisation([None, 0], [1, None])["f1"] == 0.0


@pytest.mark.parametrize("truth, missing, counts", [
    ([None, None, None], "no solutions with an error", "0 solutions with an error and 3 error-free"),
    ([1, 0, 2], "no error-free solutions", "3 solutions with an error and 0 error-free"),
])
def test_fit_threshold_refuses_a_one_class_calibration_set(truth, missing, counts):
    scores = [[0.9, 0.2, 0.3], [0.8, 0.9], [0.4, 0.7, 0.6]]
    with pytest.raises(ValueError) as e:
        fit_threshold(scores, truth, source="results/verify/scores/prm_he/calib.jsonl")
    msg = str(e.value)
    assert missing in msg and counts in msg and "results/verify/scores/prm_he/calib.jsonl" in msg
    with pytest.raises(ValueError, match=missing):  # without a source the message still says what is wrong
        fit_threshold(scores, truth)


def test_table4_names_the_calibration_file_of_a_one_class_set():
    pools = {"gen": [{"rows": [{"first_error": 1, "outcome": 0}, {"first_error": None, "outcome": 1}],
                      "rm:steps": [[0.9, 0.2], [0.8, 0.9]]}]}
    calib = {"rm": [{"step_scores": [0.9, 0.8], "first_error": None},
                    {"step_scores": [], "first_error": 0},  # no steps: dropped, so only error-free rows remain
                    {"step_scores": [0.7], "first_error": None}]}
    with pytest.raises(ValueError, match=r"scores/rm/calib\.jsonl.*no solutions with an error.*0 solutions with an "
                                         r"error and 2 error-free"):
        table4(pools, calib, ["rm"], {"rm": "scores/rm/calib.jsonl"})
    # a two-class calibration set fits; test pools with errors only give F1 nan, not 0
    calib["rm"][1]["step_scores"] = [0.1]
    t4 = table4({"gen": [{"rows": [{"first_error": 1, "outcome": 0}], "rm:steps": [[0.9, 0.2]]}]}, calib, ["rm"])
    assert t4.loc[0, "acc_error"] == 1.0 and math.isnan(t4.loc[0, "acc_correct"]) and math.isnan(t4.loc[0, "f1"])


def _verify_stage_inputs(tmp_path, pool_first_errors, calib_first_errors):
    """Files for `pipeline.verify.main`: one generator's pool (one prompt), one reward model's
    scores dir and metrics; step scores are 0.9 up to the first error, then 0.1."""
    import json

    def steps(fe):
        return [0.9 if fe is None or h < fe else 0.1 for h in range(3)]

    def write(path, rows):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    pool = [{"id": "p0", "sample_idx": i, "outcome": int(fe is None), "response": f"1+1=2\n#### {2 if fe is None else 3}",
             "first_error": fe} for i, fe in enumerate(pool_first_errors)]
    write(tmp_path / "pool.jsonl", pool)
    sd = tmp_path / "scores"
    sd.mkdir()
    (sd / "meta.json").write_text(json.dumps({"kind": "prm", "scores_are_probabilities": True}))
    write(sd / "gen.jsonl", [{"id": "p0", "sample_idx": r["sample_idx"], "step_scores": steps(r["first_error"])}
                             for r in pool])
    write(sd / "calib.jsonl", [{"id": f"c{i}", "sample_idx": 0, "step_scores": steps(fe), "first_error": fe,
                                "outcome": int(fe is None)} for i, fe in enumerate(calib_first_errors)])
    (tmp_path / "metrics.json").write_text(json.dumps({"total_flops": 1.0, "auroc_min": 0.5}))
    cfg = {"verify": {"n_values": [1], "n_subsets": 2}, "task": {"name": "arith", "grader": "exact"}, "seed": 0}
    return ["--cfg", json.dumps(cfg), "--pools", f"gen={tmp_path / 'pool.jsonl'}", "--scores", f"rm={sd}",
            "--rm-metrics", f"rm={tmp_path / 'metrics.json'}", "--table1", str(tmp_path / "table1.csv"),
            "--plot", str(tmp_path / "bon.png"), "--table4", str(tmp_path / "table4.csv")]


def test_verify_main_threads_the_calibration_path_into_the_error(tmp_path):
    from pipeline.verify import main
    argv = _verify_stage_inputs(tmp_path, [None, 1], [1, 2, 0])
    with pytest.raises(ValueError, match=r"calib\.jsonl.*no error-free solutions.*3 solutions with an error and 0"):
        main(argv)
    assert str(tmp_path / "scores" / "calib.jsonl") in str(pytest.raises(ValueError, main, argv).value)
    assert not (tmp_path / "table4.csv").exists()


def test_verify_main_writes_an_undefined_f1_as_an_empty_cell(tmp_path):
    import pandas as pd
    from pipeline.verify import main
    # calibration has both classes; the pool has only solutions with an error (and no right answer)
    main(_verify_stage_inputs(tmp_path, [1, 2], [None, 1, 2]))
    header, row = (tmp_path / "table4.csv").read_text().splitlines()
    cell = dict(zip(header.split(","), row.split(",")))
    # the same missing-value spelling as the file's other undefined metrics
    assert cell["f1"] == "" and cell["acc_correct"] == "" and cell["acc_right_answer_wrong_process"] == ""
    assert cell["acc_error"] == "1.0000" and cell["n_correct"] == "0"
    assert math.isnan(pd.read_csv(tmp_path / "table4.csv").loc[0, "f1"])


def test_within_group_auroc_ignores_between_prompt_difficulty():
    from pipeline.metrics import auroc, within_group_auroc
    # prompt a is easy (all scores high), b hard; inside each prompt the scores rank wrongly
    scores = [0.9, 0.8, 0.3, 0.2]
    labels = [0, 1, 0, 1]
    groups = ["a", "a", "b", "b"]
    assert within_group_auroc(scores, labels, groups) == 0.0
    # pooled: positives {.8, .2} vs negatives {.9, .3}: .8 > .3 only -> 1/4
    assert auroc(scores, labels) == 0.25
    # a group with one label is skipped; none mixed -> None
    assert within_group_auroc([0.1, 0.9, 0.5], [0, 1, 1], ["a", "a", "c"]) == 1.0
    assert within_group_auroc([0.1, 0.9], [1, 1], ["a", "a"]) is None


def test_best_aggregation_prefers_within_prompt_auroc():
    from pipeline.verify import best_aggregation
    m = {"auroc_min": 0.9, "auroc_last": 0.6, "within_prompt_auroc_min": 0.5, "within_prompt_auroc_last": 0.7}
    assert best_aggregation(m, ["min", "last"]) == "last"
    assert best_aggregation({"auroc_min": 0.9, "auroc_last": 0.6}, ["min", "last"]) == "min"
    assert best_aggregation({"auroc_min": 0.7, "auroc_last": 0.7}, ["min", "last"]) == "min"  # first on ties
