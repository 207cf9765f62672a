"""Ablation grids (issue 6): grid expansion and config checks, the train_rm options the grids use
(subsampling, dedup, extra step labels), the table by hand, and through Snakemake: every grid
plans one job per cell and shares the upstream artifacts (dry runs), one grid built for real."""
from __future__ import annotations

import copy
import json
import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from pipeline.ablation_table import bon_columns, cell_labels, grid_frame, label_agreement, plot_grid, rl_row, rm_row
from pipeline.config import REPO, ConfigError, ablation_grid, is_default_cell, load_preset, merge_configs, validate_config
from pipeline.modeling import build_char_tokenizer, build_tiny_llama, save_policy
from pipeline.train_rm import (attach_step_labels, balance_rows, dedup_rows, implicit_examples, step_label_loss, subsample_rows,
                               train_implicit)
from conftest import MODEL_SECTION, SMOKE, TRAINER, snakemake

TINY_CFG = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())


def with_change(change: dict) -> dict:
    return merge_configs(copy.deepcopy(TINY_CFG), change)


# ---- grids and config ----------------------------------------------------------------------

def test_grid_is_the_union_of_block_products_with_defaults_filled():
    cfg = with_change({"ablations": {"implicit_prm": {"grid": [
        {"loss": ["ce", "dpo"], "beta": [0.05, 0.5]},
        {"responses_per_instruction": [1, 4], "instruction_frac": [0.5, 1.0]}]}}})
    df = ablation_grid(validate_config(cfg), "implicit_prm")
    assert list(df.columns) == ["loss", "beta", "responses_per_instruction", "instruction_frac"]
    # 4 + 4 cells, (ce, 0.05, 4, 1.0) in both blocks: 7, in declaration order
    assert [tuple(r) for r in df.itertuples(index=False)] == [
        ("ce", 0.05, 4, 1.0), ("ce", 0.5, 4, 1.0), ("dpo", 0.05, 4, 1.0), ("dpo", 0.5, 4, 1.0),
        ("ce", 0.05, 1, 0.5), ("ce", 0.05, 1, 1.0), ("ce", 0.05, 4, 0.5)]
    assert df["responses_per_instruction"].dtype == "int64" and df["beta"].dtype == "float64"
    # the main config's own cell: every axis at its default (each loss is its own main model)
    assert [is_default_cell(cfg, "implicit_prm", r) for r in df.to_dict("records")] == [
        True, False, True, False, False, False, False]
    one = ablation_grid(with_change({"ablations": {"vineppo": {"grid": {"k": [2, 3]}}}}), "vineppo")
    assert list(one["k"]) == [2, 3]


def test_presets_declare_small_grids():
    for preset in (load_preset(), load_preset(SMOKE)):
        for grid in ("implicit_prm", "mc_label", "pav_rl", "vineppo", "factors"):
            assert 1 <= len(ablation_grid(preset, grid)) <= 8, grid


@pytest.mark.parametrize("change, message", [
    ({"implicit_prm": {"grid": {"responses_per_instruction": [8]}}},
     "config key ablations.implicit_prm.grid: responses_per_instruction 8 exceeds the 4"),
    ({"implicit_prm": {"grid": {"loss": ["dpo"], "responses_per_instruction": [1]}}},
     "config key ablations.implicit_prm.grid: loss 'dpo' trains on (correct, incorrect) pairs"),
    ({"implicit_prm": {"grid": {"beta": [0]}}}, "config key ablations.implicit_prm.grid.beta.0: 0 is less than"),
    ({"implicit_prm": {"grid": {"lr": [0.1]}}}, "config key ablations.implicit_prm.grid.lr: unknown key"),
    ({"implicit_prm": {"grid": [{"beta": [0.1]}, {"loss": ["ipo"]}]}},
     "config key ablations.implicit_prm.grid.1.loss.0: 'ipo' is not one of"),
    ({"mc_label": {"grid": {"n_cov": [9]}}}, "config key ablations.mc_label.grid: n_cov 9 exceeds"),
    ({"factors": {"grid": {"data_policy": ["huge"]}}}, "config key ablations.factors.grid: data_policy 'huge'"),
    ({"factors": {"loss": "nca", "grid": {"step_labels": [True]}}}, "config key ablations.factors.loss: 'nca'"),
    ({"bogus": {"grid": {}}}, "config key ablations.bogus: unknown key"),
])
def test_bad_ablation_config_names_the_key(change, message):
    with pytest.raises(ConfigError) as err:
        validate_config(with_change({"ablations": change}))
    assert message in str(err.value)


def test_pav_rl_grid_needs_the_pav():
    cfg = with_change({"ablations": {"pav_rl": {"grid": {"alpha": [1.0]}}}})
    cfg["rl"]["pav"].pop("rm")
    cfg["rl"]["algos"] = ["rloo"]
    with pytest.raises(ConfigError, match="config key ablations.pav_rl.grid: PAV-RL cells read the PAV"):
        validate_config(cfg)


# ---- train_rm options ----------------------------------------------------------------------

def rows_for(n_inst: int, n_resp: int) -> list[dict]:
    return [{"id": f"p{i}", "sample_idx": j, "response_ids": [1 + i, 2 + j], "step_ends": [1]}
            for i in range(n_inst) for j in range(n_resp)]


def test_subsample_rows_draws_nested_subsets_of_the_same_rollouts():
    rows = rows_for(4, 4)
    assert subsample_rows(rows) == rows
    assert subsample_rows(rows, 4, 1.0) == rows  # every response of every instruction
    half = subsample_rows(rows, 2, 0.5, seed=0)
    assert len(half) == 4 and {r["id"] for r in half} == {"p0", "p1"}  # the first round(0.5 * 4) instructions
    one = subsample_rows(rows, 1, 0.5, seed=0)
    assert len(one) == 2 and all(r in half for r in one)  # fewer responses: a subset of more
    assert {r["id"] for r in subsample_rows(rows, None, 0.1)} == {"p0"}  # at least one instruction
    with pytest.raises(ValueError, match="instruction_frac"):
        subsample_rows(rows, 1, 0.0)


def test_dedup_rows_keeps_the_first_of_identical_responses_per_instruction():
    rows = [{"id": "a", "response_ids": [1, 2]}, {"id": "a", "response_ids": [1, 2]}, {"id": "b", "response_ids": [1, 2]},
            {"id": "a", "response_ids": [3]}]
    assert dedup_rows(rows) == [rows[0], rows[2], rows[3]]


def test_balance_rows_keeps_the_minority_and_as_many_of_the_majority_per_instruction():
    rows = ([{"id": "a", "outcome": 1, "k": i} for i in range(3)] + [{"id": "a", "outcome": 0, "k": 3}]
            + [{"id": "b", "outcome": 1, "k": 4}, {"id": "b", "outcome": 1, "k": 5}]   # one outcome: dropped
            + [{"id": "c", "outcome": 0, "k": 6}, {"id": "c", "outcome": 1, "k": 7}])
    kept = balance_rows(rows, seed=0)
    ks = [r["k"] for r in kept]
    assert ks == sorted(ks)                                   # order kept
    a = [r for r in kept if r["id"] == "a"]
    assert len(a) == 2 and sorted(r["outcome"] for r in a) == [0, 1] and a[-1]["k"] == 3
    assert not [r for r in kept if r["id"] == "b"]
    assert [r["k"] for r in kept if r["id"] == "c"] == [6, 7]
    assert balance_rows(rows, seed=0) == kept                 # seeded
    draws = {tuple(r["k"] for r in balance_rows(rows, seed=s) if r["id"] == "a") for s in range(20)}
    assert len(draws) > 1                                     # the majority's subset is a random draw


def test_step_label_loss_by_hand():
    # 4 response tokens with rewards [0.5, -1, 2, 0]; steps end after tokens 2 and 3, the last step
    # runs through EOS: q = [0.5 - 1, 0.5 - 1 + 2 + 0] = [-0.5, 1.5]; targets [0, 1]
    tr = [torch.tensor([0.5, -1.0, 2.0, 0.0])]
    ex = [{"step_token_ends": [2, 3], "response_ids": [7, 8, 9, 2], "step_targets": [0.0, 1.0]}]
    expected = (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(-1.5))) / 2  # BCE(-0.5, 0), BCE(1.5, 1)
    assert step_label_loss(tr, ex).item() == pytest.approx(expected, rel=1e-6)
    assert step_label_loss(tr, [dict(ex[0], step_targets=None)]) is None  # no labels in the batch


TINY = {**MODEL_SECTION, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 2, "max_position_embeddings": 128}


def test_implicit_prm_trains_with_extra_step_labels(tmp_path):
    from pipeline.rewards import ImplicitPRM

    tok = build_char_tokenizer()
    save_policy(build_tiny_llama(tok, TINY, seed=0), tok, tmp_path / "policy")
    prm = ImplicitPRM.init_from_policy(str(tmp_path / "policy"), {"beta": 0.5})

    def row(pid, idx, response, outcome):
        ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ends = [i + 1 for i, c in enumerate(response) if c == "\n"] + [len(response)]
        return {"id": pid, "sample_idx": idx, "prompt": "3+4*2=?\n", "response_ids": ids, "step_ends": ends,
                "outcome": outcome}

    rows = [row("a", 0, "3+4=7\n7*2=4\n#### 4", 1), row("a", 1, "3+4=8\n8*2=6\n#### 6", 0)]
    ex = implicit_examples(rows, tok)
    mc = [{"id": "a", "sample_idx": 1, "he": [0, 0, 0], "q_hat": [0.0, 0.0, 0.0]}]  # only the wrong one is labelled
    assert attach_step_labels(ex, rows, mc, "he") == 1
    assert "step_targets" not in ex[0] and ex[1]["step_targets"] == [0.0, 0.0, 0.0]
    rmc = {**TRAINER, "batch_size": 2, "epochs": 6, "lr": 0.003, "implicit_lr": 0.003, "warmup_steps": 0,
           "schedule": "constant", "grad_clip": 1.0, "zero_stage": 0, "bf16": False}
    losses, _ = train_implicit(prm, ex, rmc, "ce", seed=0, step_coef=1.0)
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    first_step = [s[0] for s in prm.step_scores(ex)]
    assert first_step[1] < first_step[0]  # the labelled wrong first step now gets the lower q
    with pytest.raises(ValueError, match="pairs"):
        train_implicit(prm, ex, rmc, "dpo", seed=0, step_coef=1.0)


# ---- the table, by hand --------------------------------------------------------------------

def test_rm_row_reads_the_metrics():
    m = {"auroc_min": 0.7, "step_auroc": 0.6, "total_flops": 3.0, "n_examples": 10, "ablation": {"n_instructions": 5}}
    row = rm_row({"loss": "ce", "beta": 0.05}, m)
    assert row["loss"] == "ce" and row["auroc_min"] == 0.7 and row["n_instructions"] == 5
    assert math.isnan(row["auroc_last"])


def test_bon_columns_by_hand():
    assert bon_columns({"weak": 0.5, "strong": 0.7}, 64) == {"bon64_weak": 0.5, "bon64_strong": 0.7,
                                                               "bon64_avg": pytest.approx(0.6)}
    row = rm_row({"loss": "ce"}, {"auroc_min": 0.7}, bon_columns({"weak": 0.25}, 4))
    assert row["bon4_weak"] == row["bon4_avg"] == 0.25 and row["auroc_min"] == 0.7


def test_best_of_n_columns_by_hand(tmp_path):
    """Two prompts, pools of 2 (N = 2: one draw, the whole pool). By the min of the step scores
    the verifier picks the right sample of p1 and the wrong one of p2 (0.5); by the last step it
    picks both right (1.0). The cell's held-out within-prompt AUROC decides which aggregation."""
    rows = [{"id": "p1", "sample_idx": 0, "outcome": 1, "response": "a"},
            {"id": "p1", "sample_idx": 1, "outcome": 0, "response": "b"},
            {"id": "p2", "sample_idx": 0, "outcome": 0, "response": "c"},
            {"id": "p2", "sample_idx": 1, "outcome": 1, "response": "d"}]
    steps = {("p1", 0): [0.9, 0.8], ("p1", 1): [0.95, 0.1], ("p2", 0): [0.7], ("p2", 1): [0.2, 0.9]}
    (tmp_path / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    scores = tmp_path / "scores"
    scores.mkdir()
    (scores / "gen.jsonl").write_text("".join(json.dumps({"id": i, "sample_idx": k, "step_scores": s}) + "\n"
                                             for (i, k), s in steps.items()))
    (scores / "meta.json").write_text(json.dumps({"scores_are_probabilities": True}))
    from pipeline.verify import load_pool

    by_last = {"within_prompt_auroc_last": 0.9, "within_prompt_auroc_min": 0.6}
    by_min = {"within_prompt_auroc_last": 0.6, "within_prompt_auroc_min": 0.9}
    files = {"m_last": by_last, "m_min": by_min, f"{scores}/meta.json": {"scores_are_probabilities": True}}
    cells = [{"cell": {"loss": "ce"}, "files": {"metrics": "m_last", "scores": str(scores)}},
             {"cell": {"loss": "dpo"}, "files": {"metrics": "m_min", "scores": str(scores)}}]
    bon = {"pools": {"gen": load_pool(tmp_path / "gen.jsonl", {"grader": "exact"})[0]}, "n": 2, "n_subsets": 8,
           "seed": 0}
    df = grid_frame("implicit_prm", cells, load=lambda kind, path: files[path], bon=bon)
    assert df["bon2_gen"].tolist() == [1.0, 0.5] and df["bon2_avg"].tolist() == [1.0, 0.5]


def test_label_agreement_by_hand():
    # two seeds; truth per step: seed 1 all valid [1, 1], seed 2 wrong from step 1: [1, 0]
    rows = [{"first_error": None, "he": [1, 1], "q_hat": [0.5, 1.0]},
            {"first_error": 1, "he": [1, 0], "q_hat": [0.25, 0.0]}]
    a = label_agreement(rows, prover_k=2)
    # HE [1, 1, 1, 0] vs truth [1, 1, 1, 0]: 4/4
    assert a["he_accuracy"] == 1.0
    # SE [0.5, 1, 0.25, 0]: positives {0.5, 1, 0.25} all above the negative 0: AUROC 1
    assert a["se_auroc"] == 1.0
    # Q_Bo2 = 1 - (1 - q)^2 = [0.75, 1, 0.4375, 0] >= 0.5 -> [1, 1, 0, 0] vs [1, 1, 1, 0]: 3/4
    assert a["qbok_accuracy"] == 0.75
    assert label_agreement(rows, prover_k=4)["qbok_accuracy"] == 1.0  # 1 - 0.75^4 = 0.68 >= 0.5


def test_rl_row_and_grid_frame_by_hand(tmp_path):
    runs = [[{"iteration": 0, "val_pass1": 0.4}, {"iteration": 5, "val_pass1": 0.5}],
            [{"iteration": 0, "val_pass1": 0.4}, {"iteration": 5, "val_pass1": 0.7}]]
    summaries = [{"rl_samples": 100, "rl_flops": 2.0, "wall_s": 10.0}, {"rl_samples": 100, "rl_flops": 4.0, "wall_s": 20.0}]
    evals = [{"splits": {"test": {"pass1": 0.5}, "ood": {"pass1": 0.1}}},
             {"splits": {"test": {"pass1": 0.7}, "ood": {"pass1": 0.3}}}]
    row = rl_row({"alpha": 1.0}, summaries, runs, evals, ["test", "ood"])
    assert row["val_final"] == pytest.approx(0.6) and row["test"] == pytest.approx(0.6)
    assert row["ood"] == pytest.approx(0.2) and row["avg"] == pytest.approx(0.4)
    # per-seed avgs 0.3 and 0.5: sample std = 0.1414
    assert row["spread"] == pytest.approx(math.sqrt(0.02)) and row["rl_flops"] == 3.0 and row["wall_s"] == 15.0
    files = {"r0": {"summary": summaries[0], "metrics": runs[0]}, "r1": {"summary": summaries[1], "metrics": runs[1]},
             "e0": evals[0], "e1": evals[1]}
    cells = [{"cell": {"alpha": 1.0}, "files": {"runs": ["r0", "r1"], "evals": ["e0", "e1"]}},
             {"cell": {"alpha": 3.0}, "files": {"runs": ["r1"], "evals": ["e1"]}}]
    df = grid_frame("pav_rl", cells, load=lambda kind, path: files[path], splits=["test", "ood"])
    assert list(df["alpha"]) == [1.0, 3.0] and list(df["n_seeds"]) == [2, 1]
    assert df["avg"].tolist() == pytest.approx([0.4, 0.5]) and df["spread"].tolist()[1] == 0.0
    mc = pd.DataFrame({"n_mc": [4, 8], "n_cov": [2, 2], "auroc": [0.5, 0.7]})
    assert cell_labels(mc, ["n_mc", "n_cov"]) == ["n_mc=4, n_cov=2", "n_mc=8, n_cov=2"]  # ints stay ints
    plot_grid(df, "pav_rl", ["alpha"], str(tmp_path / "g.png"))
    assert (tmp_path / "g.png").stat().st_size > 5_000


# ---- through Snakemake: one job per cell, shared upstream artifacts (dry runs) ---------------

def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    proc = snakemake(workdir, "-n", "-c2", *args)
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    jobs = {}
    for line in text[text.index("Job stats:"):].splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m or m.group(1) == "total":
            break
        jobs[m.group(1)] = int(m.group(2))
    return jobs


def overlay(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_implicit_grid_cells_share_the_rollouts(tmp_path):
    # a 2x2 loss x beta grid: 4 implicit PRMs (the two default-beta cells are the main
    # rm/implicit_<loss>), trained on the rollouts one plain reward model needs: no extra sampling
    beta = load_preset()["rm"]["implicit_beta"]
    grid = overlay(tmp_path, {"ablations": {"implicit_prm": {"grid": {"loss": ["ce", "dpo"], "beta": [beta, 10 * beta]}}}})
    plain = planned_jobs(tmp_path, "results/rm/implicit_ce/metrics.json")
    jobs = planned_jobs(tmp_path, "results/ablations/implicit_prm.csv", "--configfile", grid)
    assert jobs.get("train_rm", 0) + jobs["ablation_implicit_prm"] == 4 and jobs["ablation_implicit_prm"] == 2
    assert jobs["rollouts"] == plain["rollouts"] == 2 and "mc_label" not in jobs and jobs["ablation_table"] == 1
    # subsampling cells are training jobs too: 2 x 2 more, still no sampling
    sub = overlay(tmp_path, {"ablations": {"implicit_prm": {"grid": [
        {"loss": ["ce", "dpo"], "beta": [beta, 10 * beta]},
        {"responses_per_instruction": [2, 3], "instruction_frac": [0.5, 1.0]}]}}})
    jobs = planned_jobs(tmp_path, "results/ablations/implicit_prm.csv", "--configfile", sub)
    assert jobs["ablation_implicit_prm"] == 6 and jobs["rollouts"] == 2


def test_mc_grid_shares_seed_rollouts_and_labels_across_prover_k(tmp_path):
    mc = load_preset()["mc_label"]
    m, c = mc["n_mc"], mc["n_cov"]
    grid = overlay(tmp_path, {"ablations": {"mc_label": {"grid": [{"n_mc": [m, m + 1], "n_cov": [c, c - 1]},
                                                                   {"n_mc": [m + 1], "n_cov": [c - 1], "prover_k": [1, 16]}]}}})
    jobs = planned_jobs(tmp_path, "results/ablations/mc_label.csv", "--configfile", grid)
    # (n_mc, n_cov) pairs: 4 labellings, the main config's being the main mc/medium/train; 6 cells: 6
    # PAVs, the default one the main rm/pav; one set of seed rollouts (train) and the held-out ones
    assert jobs["ablation_mc_label"] + jobs["mc_label"] == 4 and jobs["mc_label"] == 1
    assert jobs["ablation_mc_pav"] + jobs["train_rm"] == 6 and jobs["train_rm"] == 1
    assert jobs["rollouts"] == 2


def test_rl_grids_share_the_base_policy_and_the_pav(tmp_path):
    rl = load_preset()["rl"]
    alpha, k = rl["pav"]["alpha"], rl["vineppo"]["k"]
    grid = overlay(tmp_path, {"ablations": {"pav_rl": {"seeds": [0], "grid": {"alpha": [alpha, alpha + 1, alpha + 2]}},
                                            "vineppo": {"seeds": [0], "grid": {"k": [k, k + 1]}}}})
    jobs = planned_jobs(tmp_path, "results/ablations/pav_rl.csv", "results/ablations/vineppo.csv", "--configfile", grid)
    # the main config's alpha and K are the main rl/pav/s0 and rl/vineppo/s0 (when those methods are
    # in rl.algos); the other 3 cells are ablation runs; one SFT and one PAV for all of them
    main = sum(a in rl["algos"] for a in ("pav", "vineppo"))
    assert jobs["ablation_rl"] == 5 - main and jobs.get("rl", 0) == main
    assert jobs["ablation_rl_evaluate"] == 5 - main and jobs.get("evaluate", 0) == main
    assert jobs["sft"] == 1 and jobs["train_rm"] == 1 and jobs["ablation_table"] == 2 and "rollouts" in jobs


def test_factors_grid_adds_only_what_each_factor_needs(tmp_path):
    jobs = planned_jobs(tmp_path, "results/ablations/factors.csv")
    # the weak policy's rollouts (one more rollouts job), the MC labels of the medium rollouts for
    # the step-label cell; 3 ablation models + the default cell (the main rm/implicit_ce)
    assert jobs["rollouts"] == 3 and jobs["mc_label"] == 1
    assert jobs["ablation_factors"] == 3 and jobs["train_rm"] == 1


def test_every_smoke_grid_plans(tmp_path):
    targets = [f"results/ablations/{g}.csv" for g in ("implicit_prm", "mc_label", "pav_rl", "vineppo", "factors")]
    jobs = planned_jobs(tmp_path, *targets, "--configfile", str(SMOKE))
    assert jobs["ablation_table"] == 5 and jobs["ablation_implicit_prm"] == 3 and jobs["ablation_factors"] == 3
    assert jobs["ablation_mc_label"] == 1 and jobs["ablation_mc_pav"] == 1 and jobs["ablation_rl"] == 2


# ---- one grid for real ---------------------------------------------------------------------

@pytest.mark.slow
def test_smoke_implicit_grid_builds_end_to_end(smoke_dir, tmp_path):
    # a copy of the session's smoke run (file times and Snakemake's metadata kept, so nothing of it
    # reruns): the grid adds only its own cells, their pool scores and the table, where a fresh
    # folder would redo data, SFT, rollouts and pools
    smoke_dir = Path(shutil.copytree(smoke_dir, tmp_path / "run", symlinks=True))
    snakemake(smoke_dir, "-c2", "results/ablations/implicit_prm.csv", "--configfile", str(SMOKE))
    res = smoke_dir / "results"
    df = pd.read_csv(res / "ablations" / "implicit_prm.csv")
    cfg = load_preset(SMOKE)
    assert len(df) == len(ablation_grid(cfg, "implicit_prm")) == 4
    assert df["auroc_min"].between(0, 1).all() and (df["total_flops"] > 0).all()
    # the default cell is the main DAG's implicit PRM; the one-response cell pays for half the data
    main = json.loads((res / "rm" / "implicit_ce_inst" / "metrics.json").read_text())
    assert df.loc[0, "auroc_min"] == pytest.approx(main["auroc_min"], abs=1e-4)
    sub = df[df["responses_per_instruction"] == 1].iloc[0]
    n_prompts = cfg["rollouts"]["n_prompts"]
    assert sub["n_instructions"] == n_prompts
    cell = res / "ablations/implicit_prm/loss~ce_inst/beta~0.05/responses_per_instruction~1/instruction_frac~1.0"
    m = json.loads((cell / "metrics.json").read_text())
    assert m["ablation"]["n_rows"] == n_prompts and m["data_fraction"] == pytest.approx(
        m["ablation"]["n_rows"] / m["ablation"]["n_rows_available"])
    assert (res / "ablations" / "implicit_prm.png").stat().st_size > 5_000
    # best-of-N at table1's largest N on each generator's pool; the default cell's equals what
    # table1's own code gives the main implicit PRM on the same pools and subset draws
    from pipeline.verify import attach_scores, best_aggregation, load_pool, score_aggregations, table1

    vc = cfg["verify"]
    n = max(vc["n_values"])
    bon_cols = [f"bon{n}_{g}" for g in vc["generators"]] + [f"bon{n}_avg"]
    assert all(c in df.columns for c in bon_cols) and df[bon_cols].stack().between(0, 1).all()
    pools = {g: load_pool(res / "verify/pools" / f"{g}.jsonl", cfg["task"])[0] for g in vc["generators"]}
    scores = res / "verify/scores/implicit_ce_inst"
    prob = json.loads((scores / "meta.json").read_text())["scores_are_probabilities"]
    best = best_aggregation(main, score_aggregations(prob))
    for g in vc["generators"]:
        attach_scores(pools[g], scores / f"{g}.jsonl", "m", score_aggregations(prob))
    long = table1(pools, {"m": {"aggs": [best], "best": best, "prob": prob, "flops": 0.0}}, [n], vc["n_subsets"],
                  cfg["seed"])
    picked = long[(long["method"] == f"m (best: {best})")].set_index("generator")["accuracy"]
    for g in vc["generators"]:
        assert df.loc[0, f"bon{n}_{g}"] == pytest.approx(picked[g], abs=5e-5)  # the csv keeps 4 decimals
    assert planned_jobs(smoke_dir, "results/ablations/implicit_prm.csv", "--configfile", str(SMOKE)) == {}
    # another beta for one cell: that cell's training and the table, nothing sampled, nothing else retrained
    grid = cfg["ablations"]["implicit_prm"]["grid"]
    changed = overlay(smoke_dir, {"ablations": {"implicit_prm": {"grid": [dict(grid[0], beta=[0.05, 0.2]), *grid[1:]]}}})
    assert planned_jobs(smoke_dir, "results/ablations/implicit_prm.csv", "--configfile", str(SMOKE), changed) == {
        "ablation_implicit_prm": 1, "ablation_rm_scores": 1, "ablation_table": 1}
