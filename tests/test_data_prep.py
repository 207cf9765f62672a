"""The data-prep stage on both paths: the testbed generator and real-data loaders (local
files in the real formats; no network)."""
from __future__ import annotations

import copy
import json

import yaml

from pipeline import data_prep
from pipeline.config import REPO, merge_configs, validate_config
from pipeline.task import format_prompt, judge
from pipeline.utils import read_jsonl

DATA = REPO / "tests" / "data"
TINY = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())


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
        "rm": {"init_policy": "llama", "data_policy": "llama"}, "verify": {"generators": ["llama"]},
        "search": {"policy": "llama"}})
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
