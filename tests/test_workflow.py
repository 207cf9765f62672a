"""End-to-end: the smoke DAG through the real Snakemake CLI, its outputs, incremental
reruns and config validation at DAG build (determinism: tests/test_kill_resume.py)."""
from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.config import load_preset
from conftest import SMOKE, SMOKE_TARGETS, snakemake

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
    rl = cfg["rl"]
    assert list(table["method"]) == ["base", "rloo", "grpo", "prime", "prime_frozen", "pav", "vineppo", "ppo", "jepo"]
    assert list(table["method"]) == ["base"] + rl["algos"]
    for col in ["test", "ood", "avg", "spread", "test_greedy", "ood_greedy", "train_samples", "train_flops", "wall_s",
                "iters_to_target", "samples_to_target", "efficiency_vs_ref", "n_seeds"]:
        assert col in table.columns
    assert table[["test", "ood", "avg"]].apply(lambda c: c.between(0, 1)).all().all()
    assert table["avg"].tolist() == pytest.approx(((table["test"] + table["ood"]) / 2).tolist(), abs=1e-4)
    assert (table["n_seeds"] == len(rl["seeds"])).all() and (table["spread"] == 0).all()  # one smoke seed
    expected_samples = rl["iterations"] * rl["prompts_per_iter"] * rl["samples_per_prompt"]
    t = table.set_index("method")
    assert t.loc["base", "train_samples"] == 0
    # every policy sample is counted; VinePPO also pays for its auxiliary MC rollouts
    assert (t.drop(["base", "vineppo"])["train_samples"] == expected_samples).all()
    assert t.loc["vineppo", "train_samples"] > expected_samples
    assert (t.drop("base")["train_flops"] > 0).all() and (t.drop("base")["wall_s"] > 0).all()
    assert float(t.loc["rloo", "efficiency_vs_ref"]) == 1.0  # the reference reaches its own final accuracy
    assert (res / "plots" / "rl_val_curves.png").stat().st_size > 10_000
    # each method's own signals are logged per iteration
    own = {"prime": ["kept_frac", "prm_loss", "process_reward_mean", "process_adv_abs", "outcome_adv_abs"], "prime_frozen": ["kept_frac"],
           "pav": ["prover_adv_mean"], "jepo": ["answer_logp_mean"], "vineppo": ["aux_samples"],
           "ppo": ["value_loss", "value_mean", "value_mse"]}
    for algo in rl["algos"]:
        rows = [json.loads(line) for line in (res / "rl" / algo / "s0" / "metrics.jsonl").read_text().splitlines()]
        assert [m["iteration"] for m in rows] == list(range(rl["iterations"] + 1)), algo
        assert rows[-1]["val_pass1"] is not None
        for key in own.get(algo, []):
            assert all(key in m for m in rows[1:]), (algo, key)
        # tokens drawn per iteration: only VinePPO draws auxiliary ones
        assert all(m["sampled_tokens"] > 0 and (m["aux_tokens"] > 0) == (algo == "vineppo") for m in rows[1:]), algo
    prime = [json.loads(line) for line in (res / "rl/prime/s0/metrics.jsonl").read_text().splitlines()][1:]
    assert all(0 <= m["kept_frac"] <= 1 for m in prime) and any(m["prm_loss"] is not None for m in prime)
    assert json.loads((res / "rl/pav/s0/summary.json").read_text())["reward_model"].endswith("rm/pav/model")

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
    # the untrained likelihood baselines: their mean and worst step, no training compute
    for p in vc["likelihood_verifiers"]:
        name = f"loglik_{p}"
        m = json.loads((res / "rm" / name / "metrics.json").read_text())
        assert m["kind"] == "likelihood" and m["total_flops"] == 0 and 0 <= m["within_prompt_auroc_mean"] <= 1
        assert {f"{name} (best: {m_})" for m_ in ("mean", "min")} & set(t1.index)
        assert {f"{name} (mean)", f"{name} (min)", f"{name} (best: mean)", f"{name} (best: min)"} & set(t1.index)
        assert sum(m_.startswith(f"{name} (") for m_ in t1.index) == 2  # mean and min, one of them marked best
        assert (t1.loc[[m_ for m_ in t1.index if m_.startswith(f"{name} (")], "family"] == "untrained best-of-N").all()
    t4 = pd.read_csv(res / "table4.csv").set_index("rm")
    assert list(t4.index) == cfg["rm"]["models"] + [f"loglik_{p}" for p in vc["likelihood_verifiers"]]
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

    # the verdict table: every paper's claim with an interval around our number and a verdict
    claims = pd.read_csv(res / "claims.csv")
    assert {"PRIME is more sample-efficient than outcome-only RLOO", "PRIME's online PRM beats a frozen one",
            "PAV-RL is more sample-efficient than outcome-only RL", "VinePPO beats PPO (value network) in accuracy per iteration",
            "JEPO (no verifier) is within a few points of verifier RL",
            "Implicit PRM (best of its losses) at least matches the Math-Shepherd MC-PRM",
            "PAV beam search is more compute-efficient than ORM best-of-N",
            "PAV-guided search is more accurate than Q-value (PRM) search",
            "CE works with one response per instruction",
            "More responses per instruction help more than more instructions"} <= set(claims["claim"])
    scaling = claims[claims["source"] == "ablations"].set_index("claim")
    n = cfg["rollouts"]["n_prompts"]  # 1 response x every instruction against 2 x half of them
    assert f"CE on 1 response x {n} instructions - random" in scaling.loc["CE works with one response per instruction",
                                                                         "measure"]
    assert f"CE on 2 responses x {n // 2} instructions - 1 x {n}" in scaling.loc[
        "More responses per instruction help more than more instructions", "measure"]
    assert (scaling["n_seeds"].astype(str) == "1").all()
    assert set(claims["verdict"]) <= {"reproduced", "not reproduced", "inconclusive"}
    ok = claims.dropna(subset=["ci_lo", "ci_hi"])
    assert len(ok) == len(claims) and (ok["ci_lo"] <= ok["ci_hi"]).all()  # (a percentile interval need not hold the point)
    steps = claims[claims["source"] == "table4"]
    assert len(steps) == len(t4) and steps["ours"].round(4).tolist() == t4["step_auroc"].round(4).tolist()

    # every rule has its log and benchmark file; no temporary or checkpoint leftovers
    for rule_file in ["data_prep", "sft", "table2", "rl/rloo/s0", "rl/prime/s0", "rl/jepo/s0", "evaluate/base/s0", "rollouts/medium_train",
                      "mc_label/medium_train", "train_rm/pav", "bon_pool/strong", "score_pool/implicit_dpo",
                      "verify_tables", "beam_search/pav_b2", "table3"]:
        assert (res / "logs" / f"{rule_file}.log").exists(), rule_file
        assert (res / "benchmarks" / f"{rule_file}.tsv").exists(), rule_file
    leftovers = [p for p in res.rglob("*") if (p.name.endswith(".tmp") or p.name.startswith("."))
                 and p.name != ".snakemake_timestamp"]  # Snakemake's marker for directory outputs
    assert leftovers == []
    assert not list((res / "checkpoints").rglob("latest.json"))


def test_every_stage_job_imported_with_the_collector_held(smoke_dir):
    """Snakemake starts stages as `python -m pipeline.<stage>`, so each job's imports ran with the
    garbage collector off and were frozen after (pipeline/__init__.py): its log says how many."""
    frozen = {}
    for log in (smoke_dir / "results" / "logs").rglob("*.log"):
        m = re.search(r"start-up: [0-9.]+ s from process start to the stage's arguments; (\d+) objects",
                      log.read_text(errors="replace"))
        if m:
            frozen[str(log.relative_to(smoke_dir / "results" / "logs"))] = int(m.group(1))
    assert len(frozen) > 30 and any(k.startswith("rl/") for k in frozen), sorted(frozen)
    assert all(n > 0 for n in frozen.values()), frozen
    assert frozen["rl/rloo/s0.log"] > 100_000, frozen  # torch and transformers


def test_second_run_has_nothing_to_do(smoke_dir):
    assert planned_jobs(smoke_dir) == {}


# (what a config change should rerun, the change, the jobs a dry run over it plans)
RERUN_CASES = [
    ("an RL knob: every RL run, its evaluation and the table; not data, SFT, base eval",
     {"rl": {"lr": 0.0002}}, {"rl": 8, "evaluate": 8, "table2": 1, "claims": 1}),
    *[("one method's knob reruns that method only", {"rl": change}, {"rl": 1, "evaluate": 1, "table2": 1, "claims": 1})
      for change in ({"vineppo": {"k": 3}}, {"pav": {"alpha": 1.0}}, {"jepo": {"sup_coef": 0.5}}, {"ppo": {"lam": 0.9}})],
    ("PRIME's knobs rerun PRIME and its frozen-PRM ablation",
     {"rl": {"prime": {"gamma": 0.9}}}, {"rl": 2, "evaluate": 2, "table2": 1, "claims": 1}),
    ("fewer methods rerun none of the existing runs", {"rl": {"algos": ["rloo", "jepo"]}}, {"table2": 1, "claims": 1}),
    ("one more seed reruns none of the existing runs",
     {"rl": {"seeds": [0, 1]}}, {"rl": 8, "evaluate": 9, "table2": 1, "claims": 1}),
    # no RL job (and not claims.csv, whose reference is fixed per claim) reads it
    ("the sample-efficiency reference is the table's", {"rl": {"reference": "grpo"}}, {"table2": 1}),
    ("an eval knob: every evaluation and the table only", {"eval": {"k": 3}}, {"evaluate": 9, "table2": 1, "claims": 1}),
    # (train and held-out rollouts; the likelihood baseline's held-out metrics and calibration scores;
    # PAV-RL and PRIME-frozen, which read reward models trained on them; claims.csv's data-scaling pair)
    ("a rollouts knob: the rollouts and everything built on them", {"rollouts": {"n_samples": 3}},
     {"rollouts": 2, "mc_label": 1, "train_rm": 7, "likelihood_verifier": 1, "score_pool": 8, "verify_tables": 1,
      "beam_search": 3, "table3": 1, "rl": 2, "evaluate": 2, "table2": 1, "claims": 1,
      "ablation_implicit_prm": 2, "ablation_rm_scores": 2}),
    ("an MC knob: the labelling and the reward models trained on its labels (not the ORM), PAV-RL",
     {"mc_label": {"n_mc": 3}},
     {"mc_label": 1, "train_rm": 3, "score_pool": 3, "verify_tables": 1, "beam_search": 2, "table3": 1,
      "rl": 1, "evaluate": 1, "table2": 1, "claims": 1}),
    # (the ORM picks every beam's answer; PAV-RL and PRIME frozen read reward models)
    ("a reward-model knob: the reward models and what reads them", {"rm": {"lr": 0.001}},
     {"train_rm": 7, "score_pool": 7, "verify_tables": 1, "beam_search": 3, "table3": 1,
      "rl": 2, "evaluate": 2, "table2": 1, "claims": 1, "ablation_implicit_prm": 2, "ablation_rm_scores": 2}),
    ("how pools are evaluated: the tables only, no rescoring",
     {"verify": {"n_subsets": 4}}, {"verify_tables": 1, "table3": 1, "claims": 1}),
    ("the pools themselves: sample, score, tables", {"verify": {"temperature": 0.8}},
     {"bon_pool": 3, "score_pool": 8, "verify_tables": 1, "table3": 1, "claims": 1, "ablation_rm_scores": 2}),
    ("a search knob: the beam searches and their table only",
     {"search": {"n_candidates": 2}}, {"beam_search": 3, "table3": 1, "claims": 1}),
    ("an SFT knob: everything downstream of SFT, but not data prep", {"sft": {"lr": 0.002}},
     {"sft": 1, "rollouts": 2, "mc_label": 1, "train_rm": 7, "rl": 8, "evaluate": 9, "table2": 1,
      "bon_pool": 3, "likelihood_verifier": 1, "score_pool": 8, "verify_tables": 1, "beam_search": 3, "table3": 1,
      "claims": 1, "ablation_implicit_prm": 2, "ablation_rm_scores": 2}),
]


def test_changed_config_reruns_exactly_the_dependent_rules(smoke_dir, tmp_path):
    # each case is one dry run: a Snakemake start-up and DAG build, about 3 s on one core; two at
    # a time use the core the slow tests otherwise leave idle (dry runs take no lock)
    def plan(i: int) -> dict[str, int]:
        change = overlay(tmp_path, f"case{i}", RERUN_CASES[i][1])
        return planned_jobs(smoke_dir, "--configfile", str(SMOKE), str(change))

    with ThreadPoolExecutor(2) as pool:
        planned = list(pool.map(plan, range(len(RERUN_CASES))))
    wrong = [f"{why} {change}: planned {got}, expected {want}"
             for (why, change, want), got in zip(RERUN_CASES, planned) if got != want]
    assert not wrong, "\n".join(wrong)


def test_report_collects_tables_and_plots(smoke_dir):
    report = smoke_dir / "report.html"
    snakemake(smoke_dir, "--report", str(report), *SMOKE_TARGETS, "--configfile", str(SMOKE))
    html = report.read_text(errors="replace")
    assert report.stat().st_size > 100_000
    for name in ("table1.csv", "table2.csv", "table3.csv", "table4.csv", "bon_accuracy.png", "search_vs_bon.png",
                 "rl_val_curves.png"):
        assert name in html, name
