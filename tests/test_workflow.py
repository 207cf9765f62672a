"""End-to-end: the smoke DAG through the real Snakemake CLI, its outputs, incremental
reruns, determinism across two clean runs, and config validation at DAG build."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.config import load_preset
from conftest import SMOKE, SMOKE_TARGETS, run_smoke, snakemake

pytestmark = pytest.mark.slow


def planned_jobs(workdir: Path, *extra: str) -> dict[str, int]:
    """Job counts per rule of a dry run (empty when there is nothing to do)."""
    proc = snakemake(workdir, "-n", "-c2", *SMOKE_TARGETS, "--configfile", str(SMOKE), *extra)
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    stats = text[text.index("Job stats:"):]
    jobs = {}
    for line in stats.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m or m.group(1) == "total":
            if jobs:
                break
            continue
        jobs[m.group(1)] = int(m.group(2))
    return jobs


def overlay(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_smoke_dag_builds_table2_and_rollouts(smoke_dir):
    cfg = load_preset(SMOKE)
    res = smoke_dir / "results"
    table = pd.read_csv(res / "table2.csv")
    assert list(table["method"]) == ["base", "rloo", "grpo"]
    for col in ["test", "ood", "avg", "test_greedy", "ood_greedy", "train_samples", "train_flops"]:
        assert col in table.columns
    assert table[["test", "ood", "avg"]].apply(lambda c: c.between(0, 1)).all().all()
    assert table["avg"].tolist() == pytest.approx(((table["test"] + table["ood"]) / 2).tolist(), abs=1e-4)
    rl = cfg["rl"]
    expected_samples = rl["iterations"] * rl["prompts_per_iter"] * rl["samples_per_prompt"]
    assert table.loc[table.method == "base", "train_samples"].item() == 0
    assert (table.loc[table.method != "base", "train_samples"] == expected_samples).all()
    assert (table.loc[table.method != "base", "train_flops"] > 0).all()
    assert (res / "plots" / "rl_val_curves.png").stat().st_size > 1000

    # seed rollouts: one row per (prompt, sample), graded, split into steps, ground-truth labels
    rows = [json.loads(line) for line in (res / "rollouts" / "medium" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == cfg["rollouts"]["n_prompts"] * cfg["rollouts"]["n_samples"]
    for r in rows:
        assert r["outcome"] in (0, 1)
        assert len(r["step_valid"]) == len(r["steps"]) == len(r["step_ends"])
        assert "".join(r["steps"]) == r["response"][: r["step_ends"][-1]] if r["steps"] else True
        if r["process_correct"]:
            assert r["outcome"] == 1
    assert any(r["outcome"] for r in rows) and not all(r["outcome"] for r in rows)

    # MC labels: n_cov seed rollouts of n_prompts prompts, one Q_hat per step, agreement table
    mc = cfg["mc_label"]
    labels = [json.loads(line) for line in (res / "mc" / "medium" / "train.jsonl").read_text().splitlines()]
    assert len(labels) == mc["n_prompts"] * mc["n_cov"]
    for r in labels:
        assert len(r["q_hat"]) == len(r["he"]) == len(r["adv_bok"]) == len(r["steps"])
        assert all(0 <= q <= 1 for q in r["q_hat"]) and 0 <= r["v0"] <= 1
        assert r["q_hat"][-1] == r["outcome"] or not r["steps"][-1].startswith("####")  # exact last step
    agreement = pd.read_csv(res / "mc" / "medium" / "train.agreement.csv")
    assert len(agreement) == 3 and agreement["accuracy"].between(0, 1).all()
    mc_summary = json.loads((res / "mc" / "medium" / "train.summary.json").read_text())
    assert mc_summary["compute"]["generated_tokens"] > 0 and mc_summary["compute"]["flops"] > 0

    # head reward models: trained, scored on held-out rollouts, compute charged
    for name in cfg["rm"]["models"]:
        m = json.loads((res / "rm" / name / "metrics.json").read_text())
        assert {"auroc_min", "auroc_last", "auroc_mean", "step_auroc"} <= set(m)
        # implicit scores are log-ratios and PAV's are Q + alpha * A: no product of probabilities
        assert ("auroc_product" in m) == (not name.startswith("implicit") and name != "pav")
        assert m["train_flops"] > 0 and m["total_flops"] == pytest.approx(m["train_flops"] + m["data_flops"])
        assert (res / "rm" / name / "model" / "rm_meta.json").exists()
    orm_cost = json.loads((res / "rm" / "orm" / "metrics.json").read_text())["data_flops"]
    pav_cost = json.loads((res / "rm" / "pav" / "metrics.json").read_text())["data_flops"]
    assert pav_cost == pytest.approx(orm_cost + mc_summary["compute"]["flops"])  # MC labelling is charged

    # verifier evaluation: best-of-N / voting per generator x N, step verification per reward model
    vc = cfg["verify"]
    t1 = pd.read_csv(res / "table1.csv").set_index("method")
    cells = [f"{g}@{n}" for g in vc["generators"] for n in vc["n_values"]]
    assert list(t1.columns[: len(cells)]) == cells and {"avg", "spread", "rm_flops"} <= set(t1.columns)
    for cell in cells:
        assert t1.loc["oracle (pass@N)", cell] >= t1[cell].max() - 1e-9  # nothing beats the oracle
    for name in cfg["rm"]["models"]:
        best = [m for m in t1.index if m.startswith(f"{name} (best: ")]
        assert len(best) == 1 and any(m.startswith(f"{name} weighted vote") for m in t1.index)
        assert t1.loc[best[0], "rm_flops"] == json.loads((res / "rm" / name / "metrics.json").read_text())["total_flops"]
    assert t1.loc["majority vote", "rm_flops"] == 0
    for g in vc["generators"]:  # random at N = pool size is the pool's pass@1
        pool = json.loads((res / "verify" / "pools" / f"{g}.summary.json").read_text())
        assert pool["n_samples"] == vc["pool_size"] and pool["n_prompts"] == vc["n_prompts"]
        assert t1.loc["random (pass@1)", f"{g}@{vc['pool_size']}"] == pytest.approx(pool["pass1"], abs=1e-4)
    long = pd.read_csv(res / "table1_long.csv")
    assert (long.loc[long["N"] == vc["pool_size"], "std"] == 0).all()  # one draw at N = pool size
    assert (long.loc[long["N"] < vc["pool_size"], "n_draws"] == vc["n_subsets"]).all()
    t4 = pd.read_csv(res / "table4.csv").set_index("rm")
    assert list(t4.index) == cfg["rm"]["models"]
    assert t4["step_auroc"].between(0, 1).all() and t4["f1"].between(0, 1).all()
    n_pool = len(vc["generators"]) * vc["n_prompts"] * vc["pool_size"]
    assert t4["n_solutions"].nunique() == 1 and 0 < t4["n_solutions"].iloc[0] <= n_pool  # the same solutions
    assert (res / "plots" / "bon_accuracy.png").stat().st_size > 10_000

    # beam search against best-of-N: the ORM's best-of-N curve and one row per verifier x width
    t3 = pd.read_csv(res / "table3.csv")
    bon = t3[t3["verifier"] == "orm"]
    assert list(bon["N"].astype(int)) == [1, 2, 4, 8][: len(bon)] and bon["N"].max() == vc["pool_size"]
    assert bon["tokens_per_prompt"].is_monotonic_increasing
    beams = t3[t3["verifier"] != "orm"]
    sc = cfg["search"]
    assert sorted(beams["verifier"]) == sorted(sc["verifiers"] * len(sc["beam_widths"]))
    assert (beams["tokens_per_prompt"] > 0).all() and beams["efficiency_vs_bon"].gt(0).all()
    for v in sc["verifiers"]:
        s = json.loads((res / "search" / f"{v}_b{sc['beam_widths'][0]}.summary.json").read_text())
        assert s["n_prompts"] == vc["n_prompts"] and 0 <= s["accuracy"] <= s["pool_any_correct"] <= 1
        assert s["compute"]["generated_tokens"] == s["generated_tokens"] > 0
    assert (res / "plots" / "search_vs_bon.png").stat().st_size > 10_000

    # RL metrics: one row per iteration plus the iteration-0 validation point
    metrics = [json.loads(line) for line in (res / "rl" / "rloo" / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == list(range(rl["iterations"] + 1))
    assert metrics[-1]["val_pass1"] is not None

    # every rule has its log and benchmark file; no temporary or checkpoint leftovers
    for rule_file in ["data_prep", "sft", "table2", "rl/rloo", "rl/grpo", "evaluate/base", "rollouts/medium_train",
                      "mc_label/medium_train", "train_rm/pav", "bon_pool/strong", "score_pool/implicit_dpo",
                      "verify_tables", "beam_search/pav_b2", "table3"]:
        assert (res / "logs" / f"{rule_file}.log").exists(), rule_file
        assert (res / "benchmarks" / f"{rule_file}.tsv").exists(), rule_file
    leftovers = [p for p in res.rglob("*") if (p.name.endswith(".tmp") or p.name.startswith("."))
                 and p.name != ".snakemake_timestamp"]  # Snakemake's marker for directory outputs
    assert leftovers == []
    assert not list((res / "checkpoints").rglob("latest.json"))


def test_second_run_has_nothing_to_do(smoke_dir):
    assert planned_jobs(smoke_dir) == {}


def test_changed_config_reruns_exactly_the_dependent_rules(smoke_dir, tmp_path):
    # an RL knob: both RL runs, their evaluations and the table; not data, SFT, base eval
    rl_change = overlay(tmp_path, "rl", {"rl": {"lr": 0.0001}})
    assert planned_jobs(smoke_dir, "--configfile", str(SMOKE), str(rl_change)) == {
        "rl": 2, "evaluate": 2, "table2": 1}
    # another method's knob, or the list of methods growing, reruns none of the existing runs
    other = overlay(tmp_path, "vine", {"rl": {"vineppo_k": 3}})
    assert planned_jobs(smoke_dir, "--configfile", str(SMOKE), str(other)) == {}
    # an eval knob: the three evaluations and the table only
    eval_change = overlay(tmp_path, "ev", {"eval": {"k": 3}})
    assert planned_jobs(smoke_dir, "--configfile", str(SMOKE), str(eval_change)) == {"evaluate": 3, "table2": 1}
    # a rollouts knob: the rollouts and the MC labels built on them
    ro_change = overlay(tmp_path, "ro", {"rollouts": {"n_samples": 3}})
    assert planned_jobs(smoke_dir, "--configfile", str(SMOKE), str(ro_change)) == {
        "rollouts": 2, "mc_label": 1, "train_rm": 7, "score_pool": 7, "verify_tables": 1,  # train and held-out rollouts
        "beam_search": 2, "table3": 1}
    # an MC knob: the labelling and the reward models trained on its labels (not the ORM)
    mc_change = overlay(tmp_path, "mc", {"mc_label": {"n_mc": 3}})
    assert planned_jobs(smoke_dir, "--configfile", str(SMOKE), str(mc_change)) == {
        "mc_label": 1, "train_rm": 3, "score_pool": 3, "verify_tables": 1, "beam_search": 2, "table3": 1}
    # a reward-model knob: the reward models only
    rm_change = overlay(tmp_path, "rm", {"rm": {"lr": 0.001}})
    assert planned_jobs(smoke_dir, "--configfile", str(SMOKE), str(rm_change)) == {
        "train_rm": 7, "score_pool": 7, "verify_tables": 1, "beam_search": 2, "table3": 1}
    # how pools are evaluated: the tables only, no rescoring; the pools themselves: sample, score, tables
    ver_change = overlay(tmp_path, "ver", {"verify": {"n_subsets": 4}})
    assert planned_jobs(smoke_dir, "--configfile", str(SMOKE), str(ver_change)) == {"verify_tables": 1, "table3": 1}
    pool_change = overlay(tmp_path, "pool", {"verify": {"temperature": 0.8}})
    assert planned_jobs(smoke_dir, "--configfile", str(SMOKE), str(pool_change)) == {
        "bon_pool": 3, "score_pool": 7, "verify_tables": 1, "table3": 1}
    # a search knob: the beam searches and their table only
    search_change = overlay(tmp_path, "search", {"search": {"n_candidates": 2}})
    assert planned_jobs(smoke_dir, "--configfile", str(SMOKE), str(search_change)) == {"beam_search": 2, "table3": 1}
    # an SFT knob: everything downstream of SFT, but not data prep
    sft_change = overlay(tmp_path, "sft", {"sft": {"lr": 0.002}})
    assert planned_jobs(smoke_dir, "--configfile", str(SMOKE), str(sft_change)) == {
        "sft": 1, "rollouts": 2, "mc_label": 1, "train_rm": 7, "rl": 2, "evaluate": 3, "table2": 1,
        "bon_pool": 3, "score_pool": 7, "verify_tables": 1, "beam_search": 2, "table3": 1}


def test_two_clean_runs_give_identical_tables(smoke_dir, tmp_path):
    other = run_smoke(tmp_path / "smoke_b")
    assert (other / "results" / "table2.csv").read_bytes() == (smoke_dir / "results" / "table2.csv").read_bytes()
    for rel in ["rollouts/medium/train.jsonl", "data/train.jsonl", "mc/medium/train.jsonl", "table1.csv", "table3.csv",
                "table4.csv"]:
        assert (other / "results" / rel).read_bytes() == (smoke_dir / "results" / rel).read_bytes(), rel


def test_report_collects_tables_and_plots(smoke_dir):
    report = smoke_dir / "report.html"
    snakemake(smoke_dir, "--report", str(report), *SMOKE_TARGETS, "--configfile", str(SMOKE))
    html = report.read_text(errors="replace")
    assert report.stat().st_size > 100_000
    for name in ("table1.csv", "table2.csv", "table3.csv", "table4.csv", "bon_accuracy.png", "search_vs_bon.png",
                 "rl_val_curves.png"):
        assert name in html, name
