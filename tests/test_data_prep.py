"""The data-prep stage on both paths: the testbed generator and real-data loaders (local
files in the real formats; no network)."""
from __future__ import annotations

import copy
import json

import pytest
import yaml

from pipeline import data_prep
from pipeline.config import REPO, SCHEMA_PATH, load_preset, merge_configs, validate_config
from pipeline.task import answer_text, cot_end, format_prompt, judge
from pipeline.testbed import running_values
from pipeline.utils import read_jsonl

DATA = REPO / "tests" / "data"
TINY = load_preset()  # validated: the schema's defaults filled in


def run_stage(cfg: dict, out) -> dict:
    data_prep.main(["--cfg", json.dumps({"task": cfg["task"], "seed": cfg["seed"]}), "--out", str(out)])
    return json.loads((out / "summary.json").read_text())


def test_testbed_splits_are_disjoint_sized_and_ood_is_longer(tmp_path):
    cfg = merge_configs(copy.deepcopy(TINY), {"task": {"arith": {"sizes": {"train": 500, "val": 50, "test": 60, "ood": 40}}}})
    summary = run_stage(cfg, tmp_path)
    assert summary == {"train": 500, "val": 50, "test": 60, "ood": 40}
    splits = {s: read_jsonl(tmp_path / f"{s}.jsonl") for s in summary}
    problems = {s: {r["problem"] for r in rows} for s, rows in splits.items()}
    assert not problems["train"] & (problems["test"] | problems["val"] | problems["ood"])
    lo, hi = TINY["task"]["arith"]["ood_chain_len"]
    assert all(lo <= len(r["meta"]["ops"]) <= hi for r in splits["ood"])
    # every reference solution is judged correct with a correct process
    for r in splits["test"]:
        j = judge(r, r["solution"], cfg["task"])
        assert j["outcome"] == 1 and j["process_correct"]
    # same seed, same bytes
    run_stage(cfg, tmp_path / "again")
    assert (tmp_path / "again" / "test.jsonl").read_bytes() == (tmp_path / "test.jsonl").read_bytes()


def test_real_data_path_builds_common_records_from_local_files(tmp_path):
    cfg = merge_configs(copy.deepcopy(TINY), {
        "task": {"name": "math", "grader": "math", "step_delimiter": "\n\n",
                 "prompt_template": "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}.\n",
                 "sources": {"train": {"name": "gsm8k", "path": str(DATA / "gsm8k_sample.jsonl")},
                             "val": {"name": "math500", "path": str(DATA / "math500_sample.jsonl")},
                             "test": {"name": "math500", "path": str(DATA / "math500_sample.jsonl"), "limit": 1}}},
        "policies": {"llama": "meta-llama/Llama-3.1-8B-Instruct"},
        "rl": {"base_policy": "llama"}, "rollouts": {"policy": "llama"}, "eval": {"splits": ["test"]},
        "mc_label": {"seed_policy": "llama", "completer": "llama"},
        "rm": {"init_policy": "llama", "data_policy": "llama"}, "verify": {"generators": ["llama"], "likelihood_verifiers": ["llama"]},
        "search": {"policy": "llama", "verifiers": ["prm_se", "pav", "loglik_llama"]},
        # tiny.yaml's factors grid names testbed policies (weak vs medium responses): redefine it
        "ablations": {"factors": {"grid": [{"dedup": [True]}]}}})
    validate_config(cfg)
    summary = run_stage(cfg, tmp_path)
    assert summary["test"] == 1 and summary["train"] >= 1 and summary["val"] >= 1
    for split in summary:
        for r in read_jsonl(tmp_path / f"{split}.jsonl"):
            assert {"id", "problem", "answer", "source", "split"} <= set(r) and r["split"] == split
    rec = read_jsonl(tmp_path / "train.jsonl")[0]
    assert format_prompt(rec, cfg["task"]).endswith("within \\boxed{}.\n")
    # the math grader judges a boxed answer against the reference
    assert judge(rec, f"Step one.\n\nSo the answer is \\boxed{{{rec['answer']}}}.", cfg["task"])["outcome"] == 1
    assert judge(rec, "Step one.\n\nSo the answer is \\boxed{-12345}.", cfg["task"])["outcome"] == 0


SMALL = {"train": 300, "val": 30, "test": 40, "ood": 30}
SPLIT_NAMES = ("train", "val", "test", "ood")


def arith_cfg(**arith) -> dict:
    return merge_configs(copy.deepcopy(TINY), {"task": {"arith": {"sizes": SMALL, **arith}}})


def test_value_format_data_are_unchanged(tmp_path):
    # tiny.yaml as it is (no answer_format key) and with an explicit answer_format: value make
    # the same bytes, and no record mentions the option
    summary = run_stage(arith_cfg(), tmp_path / "plain")
    explicit = arith_cfg(answer_format="value")
    assert explicit["task"]["arith"]["answer_format"] == "value"
    validate_config(explicit)
    assert run_stage(explicit, tmp_path / "explicit") == summary
    for split in SPLIT_NAMES:
        plain = (tmp_path / "plain" / f"{split}.jsonl").read_bytes()
        assert (tmp_path / "explicit" / f"{split}.jsonl").read_bytes() == plain
        assert b"answer_format" not in plain and b"final_value" not in plain
    # the first test record, byte for byte as data prep wrote it before answer_format existed:
    # 6-0=6, 6-4=2, 2-8=-6%10=4, 4-7=-3%10=7
    first = (tmp_path / "plain" / "test.jsonl").read_text().splitlines()[0]
    assert first == ('{"answer": "7", "id": "arith-test-0", "meta": {"modulus": 10, "operands": [6, 0, 4, 8, 7], '
                     '"ops": ["-", "-", "-", "-"]}, "problem": "6-0-4-8-7=?", "solution": '
                     '"6-0=6\\n6-4=2\\n2-8=4\\n4-7=7\\n#### 7", "source": "arith", "split": "test"}')


def test_longform_data_one_value_per_operation(tmp_path):
    cfg = arith_cfg(answer_format="longform")
    validate_config(cfg)
    summary = run_stage(cfg, tmp_path / "long")
    assert summary == SMALL
    run_stage(arith_cfg(), tmp_path / "value")
    for split in SPLIT_NAMES:
        long = read_jsonl(tmp_path / "long" / f"{split}.jsonl")
        value = read_jsonl(tmp_path / "value" / f"{split}.jsonl")
        # the same problems, ids and splits: only the answer format differs
        assert [(r["id"], r["problem"]) for r in long] == [(r["id"], r["problem"]) for r in value]
        for lr, vr in zip(long, value):
            meta = lr["meta"]
            assert meta == {**vr["meta"], "answer_format": "longform"}
            values = lr["answer"].split()
            assert len(values) == len(meta["ops"])  # one running value per operation
            assert values == [str(v) for v in running_values(meta["operands"], meta["ops"], 10)[1:]]
            assert values[-1] == vr["answer"]
            assert lr["solution"] == vr["solution"].rsplit("\n", 1)[0] + "\n#### " + lr["answer"]
    # first test record by hand: 6-0-4-8-7 -> 6, 2, 4, 7
    first = read_jsonl(tmp_path / "long" / "test.jsonl")[0]
    assert first["answer"] == "6 2 4 7"
    assert first["solution"] == "6-0=6\n6-4=2\n2-8=4\n4-7=7\n#### 6 2 4 7"
    lo, hi = TINY["task"]["arith"]["ood_chain_len"]
    assert {len(r["answer"].split()) for r in read_jsonl(tmp_path / "long" / "ood.jsonl")} <= set(range(lo, hi + 1))
    task_cfg = cfg["task"]
    for r in read_jsonl(tmp_path / "long" / "test.jsonl"):
        # the reference solution is judged right, with a right process and final value
        j = judge(r, r["solution"], task_cfg)
        assert j["outcome"] == 1 and j["process_correct"] and j["final_value_correct"]
        # JEPO's a* is the whole long-form answer line, and it ends the reference solution
        cut = cot_end(r["solution"], task_cfg)
        assert answer_text(r, task_cfg) == "#### " + r["answer"] == r["solution"][cut:]
        # the value-format answer line alone (just the final value) is wrong in longform
        short = r["solution"][:cut] + "#### " + r["answer"].split()[-1]
        j = judge(r, short, task_cfg)
        assert j["outcome"] == 0 and j["final_value_correct"] and not j["process_correct"]


def test_jepo_longform_preset(tmp_path):
    cfg = load_preset(REPO / "config" / "jepo_longform.yaml")
    assert cfg["out_dir"] == "results/longform"
    assert cfg["task"]["arith"]["answer_format"] == "longform"
    assert cfg["rl"]["algos"] == ["rloo", "jepo"]
    assert cfg["task"]["arith"]["sizes"] == TINY["task"]["arith"]["sizes"]  # the rest is tiny's
    assert cfg["rl"]["iterations"] == TINY["rl"]["iterations"]
    # the longest long-form reference (OOD chains) plus EOS fits the sampling budget, and the
    # longest prompt + response fits the model's context
    small = merge_configs(cfg, {"task": {"arith": {"sizes": SMALL}}})
    run_stage(small, tmp_path)
    rows = [r for split in SPLIT_NAMES for r in read_jsonl(tmp_path / f"{split}.jsonl")]
    assert all(r["meta"]["answer_format"] == "longform" for r in rows)
    longest = max(len(r["solution"]) + 1 for r in rows)  # character tokenizer, + EOS
    assert longest == 8 * max(cfg["task"]["arith"]["ood_chain_len"]) + 4 + 1
    assert longest <= cfg["sampling"]["max_new_tokens"]
    assert max(len(format_prompt(r, cfg["task"])) + len(r["solution"]) + 1 for r in rows) \
        <= cfg["model"]["max_position_embeddings"]
