"""Tests of the Countdown testbed (pipeline/countdown.py): the exhaustive search against an
independent brute force, problem generation, and the checker's ground truth on hand-worked
responses."""
from __future__ import annotations

import copy
import itertools
import json
import random

import pytest

from pipeline import data_prep
from pipeline.config import ConfigError, load_preset, merge_configs, validate_config
from pipeline.countdown import (CountdownSpec, apply_op, check_response, final_values, generate_split,
                                make_problem, reachable, reference_solution, solutions)
from pipeline.task import judge
from pipeline.utils import read_jsonl

OPS = ("+", "-", "*")
# 2 3 4 -> 24. By hand: 2*3=6, 6*4=24 | 3*4=12, 12*2=24 | 2*4=8, 8*3=24. After 2+3=5 the numbers
# 5 4 give 9, 1 or 20: a dead end (a pit), though every line is right.
META = {"numbers": [2, 3, 4], "target": 24, "operators": list(OPS), "value_max": 99, "path": [[2, "*", 3, 6], [6, "*", 4, 24]]}
GOOD = "2*3=6\n6*4=24\n#### 24"


def naive_final_values(numbers, value_max):
    """Every end value, by trying every order of the numbers and every pairing: an
    enumeration that shares nothing with `moves` / `final_values`."""
    if len(numbers) == 1:
        return {numbers[0]}
    out = set()
    for i, j in itertools.permutations(range(len(numbers)), 2):
        a, b = numbers[i], numbers[j]
        rest = [x for k, x in enumerate(numbers) if k not in (i, j)]
        for c in (a + b, a - b, a * b):
            if 0 <= c <= value_max:
                out |= naive_final_values(rest + [c], value_max)
    return out


@pytest.mark.parametrize("a, op, b, expected", [(3, "+", 4, 7), (3, "-", 4, None), (4, "-", 4, 0), (9, "*", 9, 81),
                                                (12, "*", 9, None), (50, "+", 49, 99)])
def test_apply_op_keeps_results_in_range(a, op, b, expected):
    assert apply_op(a, op, b, 99) == expected


def test_final_values_by_hand():
    assert final_values((2, 3), OPS, 99) == {5, 1, 6}      # 3-2; 2-3 is below 0
    assert final_values((1, 1), OPS, 99) == {2, 0, 1}
    assert final_values((9, 9), OPS, 80) == {18, 0}        # 81 leaves [0, 80]
    assert final_values((2, 3), ("+",), 99) == {5}


def test_final_values_match_a_brute_force():
    rng = random.Random(0)
    for _ in range(40):
        numbers = [rng.randint(1, 9) for _ in range(rng.randint(2, 4))]
        assert final_values(tuple(sorted(numbers)), OPS, 99) == naive_final_values(numbers, 99), numbers


def test_solutions_by_hand():
    paths = {tuple(map(tuple, p)) for p in solutions([2, 3, 4], 24, OPS, 99)}
    assert paths == {((3, "*", 2, 6), (6, "*", 4, 24)), ((4, "*", 3, 12), (12, "*", 2, 24)),
                     ((4, "*", 2, 8), (8, "*", 3, 24))}
    assert solutions([5, 4], 24, OPS, 99) == []
    assert reachable([4, 2, 3], 24, OPS, 99) and not reachable([5, 4], 24, OPS, 99)


@pytest.mark.parametrize("response, valid, legal, first_error, outcome, stated", [
    (GOOD, [True, True, True], [True, True, True], None, True, True),
    ("3*4=12\n12*2=24\n#### 24", [True, True, True], [True, True, True], None, True, True),
    # every line right, but 5 and 4 cannot make 24: the first step is the error (a pit)
    ("2+3=5\n5*4=20\n#### 20", [False, False, False], [True, True, True], 0, False, False),
    # made-up arithmetic that states the target: outcome 0 (never the stated answer alone)
    ("2+3=5\n5*4=24\n#### 24", [False, False, False], [True, False, False], 0, False, True),
    ("2*3=6\n6+4=10\n#### 10", [True, False, False], [True, True, True], 1, False, False),
    ("2*2=4\n4*3=12\n#### 12", [False, False, False], [False, True, False], 0, False, False),  # one 2 only
    ("2*3=6\n6*4=24", [True, True], [True, True], 2, False, False),                       # no answer line
    ("2*3=6\n6*4=24\n#### 24\n1+1=2", [True, True, True, False], [True, True, True, False], 3, False, True),
    ("2*3=6\n#### 6", [True, False], [True, False], 1, False, False),                     # a number unused
    ("2 * 3 = 6\n6*4=24\n#### 24", [True, True, True], [True, True, True], None, True, True),  # spaces are fine
    ("3-4=-1\n#### 24", [False, False], [False, False], 0, False, True),                  # below 0: no match
])
def test_check_response_by_hand(response, valid, legal, first_error, outcome, stated):
    j = check_response(response, META)
    assert j["step_valid"] == valid and j["step_legal"] == legal
    assert j["first_error"] == first_error
    assert j["outcome"] is outcome and j["process_correct"] is outcome
    assert j["final_value_correct"] is stated


def test_repeated_numbers_and_the_value_cap():
    meta = {"numbers": [3, 3, 2], "target": 11, "operators": list(OPS), "value_max": 10}
    assert check_response("3*3=9\n9+2=11\n#### 11", meta)["step_legal"] == [True, False, False]  # 11 > 10
    meta = {**meta, "value_max": 99}
    assert check_response("3*3=9\n9+2=11\n#### 11", meta)["outcome"] is True                  # two 3s given
    assert check_response("3*3=9\n9*3=27\n#### 27", meta)["step_legal"][1] is False             # no third 3


def test_generated_problems_are_solvable_distinct_and_seeded():
    spec = CountdownSpec(n_numbers=(3, 4))
    train = generate_split(300, spec, seed=1, split="train")
    test = generate_split(50, spec, seed=2, split="test", exclude={r["problem"] for r in train})
    assert len({r["problem"] for r in train}) == 300
    assert not {r["problem"] for r in train} & {r["problem"] for r in test}
    for r in train + test:
        m = r["meta"]
        assert 3 <= len(m["numbers"]) <= 4 and all(1 <= x <= 9 for x in m["numbers"])
        assert r["problem"] == " ".join(map(str, m["numbers"])) + f" -> {m['target']}" and r["answer"] == str(m["target"])
        assert r["solution"] == reference_solution(m) and check_response(r["solution"], m)["outcome"] is True
    assert generate_split(300, spec, seed=1, split="train") == train
    # targets are uniform over what the numbers reach, so hard targets are common: few solutions each
    counts = [len(solutions(r["meta"]["numbers"], r["meta"]["target"], OPS, 99)) for r in train]
    assert sorted(counts)[len(counts) // 2] <= 4


def test_make_problem_without_plus_draws_until_a_target_exists():
    rng = random.Random(3)
    spec = CountdownSpec(n_numbers=(2, 2), number_max=3, value_max=5, operators=("*",))
    for _ in range(20):
        r = make_problem(rng, spec)
        a, b = r["meta"]["numbers"]
        assert a * b <= 5 and r["meta"]["target"] == a * b


def test_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown operators"):
        CountdownSpec(operators=("/",))
    with pytest.raises(ValueError, match="n_numbers"):
        CountdownSpec(n_numbers=(1, 3))


COUNTDOWN = load_preset("config/countdown.yaml")


def test_data_prep_draws_countdown_splits_and_judge_uses_its_checker(tmp_path):
    cfg = merge_configs(copy.deepcopy(COUNTDOWN), {"task": {"countdown": {"sizes": {"train": 400, "val": 30, "test": 30, "ood": 20}}}})
    data_prep.main(["--cfg", json.dumps({"task": cfg["task"], "seed": cfg["seed"]}), "--out", str(tmp_path)])
    splits = {s: read_jsonl(tmp_path / f"{s}.jsonl") for s in ("train", "val", "test", "ood")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 400, "val": 30, "test": 30, "ood": 20}
    assert not {r["problem"] for r in splits["train"]} & {r["problem"] for s in ("val", "test", "ood") for r in splits[s]}
    assert all(len(r["meta"]["numbers"]) == 5 for r in splits["ood"])
    r = splits["test"][0]
    assert judge(r, r["solution"], cfg["task"]) == {**check_response(r["solution"], r["meta"]), "outcome": 1, "n_steps": len(r["meta"]["path"]) + 1}
    # the stated target alone is not enough: the arithmetic is checked
    assert judge(r, f"#### {r['answer']}", cfg["task"])["outcome"] == 0


def test_countdown_config_errors_name_the_key():
    bad = merge_configs(copy.deepcopy(COUNTDOWN), {"task": {"countdown": {"n_numbers": [4, 3]}}})
    with pytest.raises(ConfigError, match=r"task\.countdown\.n_numbers: range \[4, 3\] is empty"):
        validate_config(bad)
    bad = merge_configs(copy.deepcopy(COUNTDOWN), {"task": {"countdown": {"ood_n_numbers": [1, 5]}}})
    with pytest.raises(ConfigError, match=r"task\.countdown\.ood_n_numbers"):
        validate_config(bad)


def test_countdown_preset_plans_the_whole_dag_with_step_tables(tmp_path):
    """The preset's default target is the tiny DAG on the new task: SFT tiers, table 4 and the
    step claims exist because the testbed's checker gives ground truth."""
    from conftest import REPO, snakemake

    proc = snakemake(tmp_path, "-n", "-c2", "--configfile", str(REPO / "config" / "countdown.yaml"))
    text = proc.stdout + proc.stderr
    for rule in ("data_prep", "sft", "mc_label", "train_rm", "verify_tables", "claims", "table2", "table3"):
        assert f"rule {rule}:" in text, rule
    assert "results/countdown/table4.csv" in text and "results/countdown/mc/medium/train.agreement.csv" in text


def test_countdown_dag_labels_rollouts_with_the_checker(tmp_path):
    """A real run of the first stages on Countdown (a few SFT steps): the rollouts carry the
    checker's ground truth, and MC labelling reports its agreement with it."""
    from conftest import REPO, snakemake

    (tmp_path / "small.yaml").write_text(
        "task: {countdown: {sizes: {train: 400, val: 16, test: 16, ood: 16}}}\n"
        "sft: {max_steps: 30, eval_every: 15, eval_prompts: 16, tiers: {weak: 0.9, medium: 0.95, strong: 0.99}}\n"
        "rollouts: {n_prompts: 4, n_samples: 4}\n"
        "mc_label: {n_prompts: 4, n_cov: 2, n_mc: 2}\n")
    snakemake(tmp_path, "-c2", "results/countdown/mc/medium/train.jsonl", "--configfile",
              str(REPO / "config" / "countdown.yaml"), str(tmp_path / "small.yaml"))
    out = tmp_path / "results" / "countdown"
    records = {r["id"]: r for r in read_jsonl(out / "data" / "train.jsonl")}
    rows = read_jsonl(out / "rollouts" / "medium" / "train.jsonl")
    assert len(rows) == 16
    for row in rows:
        truth = check_response(row["response"], records[row["id"]]["meta"])
        assert {k: row[k] for k in ("step_valid", "step_legal", "first_error")} == \
               {k: truth[k] for k in ("step_valid", "step_legal", "first_error")}
        assert row["outcome"] == int(truth["outcome"])
    assert (out / "mc" / "medium" / "train.agreement.csv").read_text().startswith("label")


def test_mc_labels_judge_completions_by_the_checker_not_the_stated_answer(tmp_path):
    """MC labelling judges each completed prefix with the task's checker: after made-up
    arithmetic that states the target, no completion can be right. (It once judged the stated
    answer alone, so every completion of such a prefix counted as reaching the target.)"""
    from conftest import save_tiny_policy
    from pipeline import mc_label
    from pipeline.modeling import build_char_tokenizer
    from pipeline.steps import split_steps_with_ends
    from pipeline.task import format_prompt
    from pipeline.utils import write_jsonl

    record = {"id": "countdown-train-0", "problem": "2 3 4 -> 24", "answer": "24", "source": "countdown",
              "split": "train", "meta": META, "solution": GOOD}
    write_jsonl(tmp_path / "train.jsonl", [record])
    tok = build_char_tokenizer()
    response = "2+3=5\n5*4=24\n#### 24\n"  # 5*4 is 20: the target is stated, not reached
    steps, ends = split_steps_with_ends(response, "\n")
    prompt = format_prompt(record, COUNTDOWN["task"])
    row = {"id": record["id"], "sample_idx": 0, "policy": "medium", "prompt": prompt, "response": response,
           "response_ids": tok(response, add_special_tokens=False)["input_ids"], "finished": False,
           "steps": steps, "step_ends": ends, "answer": "24", **judge(record, response, COUNTDOWN["task"])}
    assert row["outcome"] == 0 and row["final_value_correct"]
    write_jsonl(tmp_path / "rollouts.jsonl", [row])
    cfg = {"mc_label": {**COUNTDOWN["mc_label"], "n_prompts": 1, "n_cov": 1, "n_mc": 4},
           "task": COUNTDOWN["task"], "seed": 0, "sampling": {**COUNTDOWN["sampling"], "max_new_tokens": 2}}
    mc_label.main(["--cfg", json.dumps(cfg), "--rollouts", str(tmp_path / "rollouts.jsonl"), "--records",
                   str(tmp_path / "train.jsonl"), "--completer", str(save_tiny_policy(tmp_path / "policy")),
                   "--out", str(tmp_path / "mc.jsonl")])
    (labels,) = read_jsonl(tmp_path / "mc.jsonl")
    assert labels["mc_sampled"] == [True] * len(steps) and labels["n_correct"] == [0] * len(steps)
