"""Kills of the whole smoke DAG at three points (issue 15): the session's smoke run (conftest's
`smoke_dir`) is SIGKILLed during SFT after its first checkpoint, during an RL job after its first
checkpoint and inside the table 2 job, and recovered each time the documented way
(`snakemake --unlock`, then the same command). This test reruns, uninterrupted, in a copy of
that run, every job that was killed and resumed (SFT, the resumed RL jobs, table 2) and the data,
rollouts, MC labels and the two reward models RL reads; the uninterrupted outputs equal the
recovered ones byte for byte (table 2 in every column but wall time). That is also the
determinism check: the same job run twice in different processes gives the same bytes.

Rerunning only those jobs (Snakemake's --forcerun on their rules) instead of a second smoke DAG
keeps the check and halves its cost (issue 17)."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest

from conftest import SMOKE, snakemake, untimed_rl_metrics

pytestmark = pytest.mark.slow

SMOKE_ARGS = ("--configfile", str(SMOKE))
RERUN_RULES = ("data_prep", "sft", "rollouts", "mc_label", "train_rm", "rl")
SAME_BYTES = ["data/train.jsonl", "rollouts/medium/train.jsonl", "mc/medium/train.jsonl",
              "rm/pav/model/model.safetensors", "rm/implicit_ce_inst/model/model.safetensors",
              *[f"models/sft/{t}/model.safetensors" for t in ("weak", "medium", "strong")]]


def test_killed_jobs_rerun_uninterrupted_give_the_recovered_results(smoke_dir, tmp_path):
    logs = smoke_dir / "results" / "logs"
    assert "resumed from" in (logs / "sft.log").read_text()
    resumed = sorted(f.parent.name for f in logs.glob("rl/*/s0.log") if "resumed from" in f.read_text())
    assert resumed, "no RL job of the smoke run resumed from its checkpoint"

    run = tmp_path / "rerun"
    shutil.copytree(smoke_dir, run, symlinks=True)
    # table 2 from the same inputs (the recovered run's table 2 job was killed once)
    snakemake(run, "-c1", "results/table2.csv", *SMOKE_ARGS, "--forcerun", "table2")
    a, b = (pd.read_csv(d / "results" / "table2.csv").drop(columns="wall_s") for d in (smoke_dir, run))
    pd.testing.assert_frame_equal(a, b, check_exact=True)

    targets = ["results/data/train.jsonl", "results/models/sft/medium", "results/rollouts/medium/train.jsonl",
               "results/mc/medium/train.jsonl", "results/rm/pav/metrics.json", "results/rm/implicit_ce_inst/metrics.json",
               *[f"results/rl/{algo}/s0/metrics.jsonl" for algo in resumed]]
    snakemake(run, "-c2", *targets, *SMOKE_ARGS, "--forcerun", *RERUN_RULES)
    rerun_logs = run / "results" / "logs"
    assert "resumed from" not in (rerun_logs / "sft.log").read_text()  # really uninterrupted
    for rel in SAME_BYTES:
        assert (run / "results" / rel).read_bytes() == (smoke_dir / "results" / rel).read_bytes(), rel
    for algo in resumed:
        assert "resumed from" not in (rerun_logs / "rl" / algo / "s0.log").read_text()
        a, b = (d / "results" / "rl" / algo / "s0" for d in (smoke_dir, run))
        assert (a / "policy/model.safetensors").read_bytes() == (b / "policy/model.safetensors").read_bytes(), algo
        assert untimed_rl_metrics(a) == untimed_rl_metrics(b), algo
