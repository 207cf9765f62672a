"""Kills of the whole smoke DAG at three points (issue 15): the session's smoke run (conftest's
`smoke_dir`) is SIGKILLed during SFT after its first checkpoint, during an RL job after its first
checkpoint and inside the table 2 job, and recovered each time the documented way
(`snakemake --unlock`, then the same command). This test reruns, uninterrupted, in a copy of
that run, what was killed and resumed, and compares it with the recovered outputs byte for byte
(table 2 in every column but wall time):
- table 2 from the same inputs;
- SFT, with the rule's own command and config, from scratch until 40 steps after the point the
  recovered run resumed from (and at least until its weak tier): the same curve, loss and val
  pass@1 at every evaluation, and the same weak-tier weights. The schedule (constant after
  warm-up), the batches (a function of the step) and the evaluations do not depend on
  `sft.max_steps`, so the shorter run is the longer one's beginning; running the rest of it
  too would cost a minute of CI and test the same resumed state;
- the resumed RL jobs, with the rollouts, MC labels and the two reward models RL reads rerun
  beside them (Snakemake's --forcerun on their rules, from the recovered SFT policies): the
  same bytes. That is also the determinism check: the same job run twice in different
  processes gives the same bytes.
Rerunning only those jobs instead of a second smoke DAG keeps the check at a fraction of its
cost (issue 17)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from conftest import SMOKE, snakemake, untimed_rl_metrics
from pipeline.config import load_preset

pytestmark = pytest.mark.slow

SMOKE_ARGS = ("--configfile", str(SMOKE))
RERUN_RULES = ("rollouts", "mc_label", "train_rm", "rl")
SAME_BYTES = ["rollouts/medium/train.jsonl", "mc/medium/train.jsonl",
              "rm/pav/model/model.safetensors", "rm/implicit_ce_inst/model/model.safetensors"]


def test_killed_jobs_rerun_uninterrupted_give_the_recovered_results(smoke_dir, tmp_path):
    logs = smoke_dir / "results" / "logs"
    resumed_sft = re.search(r"resumed from \S+ \(step (\d+)\)", (logs / "sft.log").read_text())
    assert resumed_sft, "the smoke run's SFT did not resume from its checkpoint"
    resumed = sorted(f.parent.name for f in logs.glob("rl/*/s0.log") if "resumed from" in f.read_text())
    assert resumed, "no RL job of the smoke run resumed from its checkpoint"

    run = tmp_path / "rerun"
    shutil.copytree(smoke_dir, run, symlinks=True)
    # table 2 from the same inputs (the recovered run's table 2 job was killed once)
    snakemake(run, "-c1", "results/table2.csv", *SMOKE_ARGS, "--forcerun", "table2")
    a, b = (pd.read_csv(d / "results" / "table2.csv").drop(columns="wall_s") for d in (smoke_dir, run))
    pd.testing.assert_frame_equal(a, b, check_exact=True)

    # SFT uninterrupted (the rule's command: sections as cfg_json passes them, its 2 threads)
    recovered = json.loads((smoke_dir / "results/models/sft/sft_metrics.json").read_text())
    cfg = load_preset(SMOKE)
    weak = recovered["tiers"]["weak"]
    steps = max(int(resumed_sft.group(1)) + 2 * int(cfg["sft"]["eval_every"]), weak["step"] if weak["reached"] else 0)
    stage = {k: cfg[k] for k in ("sft", "model", "task", "sampling", "seed")}
    stage["sft"] = {**stage["sft"], "max_steps": steps}
    data, sft_out = smoke_dir / "results" / "data", tmp_path / "sft"
    subprocess.run([sys.executable, "-m", "pipeline.sft", "--cfg", json.dumps(stage), "--train", str(data / "train.jsonl"),
                    "--val", str(data / "val.jsonl"), "--out", str(sft_out), "--ckpt", str(tmp_path / "sft_ckpt"),
                    "--threads", "2", "--log", str(tmp_path / "sft.log")], check=True, capture_output=True)
    assert "resumed from" not in (tmp_path / "sft.log").read_text()  # really uninterrupted
    curve = json.loads((sft_out / "sft_metrics.json").read_text())["curve"]
    assert curve and curve[-1]["step"] == steps
    assert curve == recovered["curve"][:len(curve)]
    if weak["reached"]:
        assert ((sft_out / "weak/model.safetensors").read_bytes()
                == (smoke_dir / "results/models/sft/weak/model.safetensors").read_bytes())

    targets = ["results/rollouts/medium/train.jsonl", "results/mc/medium/train.jsonl", "results/rm/pav/metrics.json",
               "results/rm/implicit_ce_inst/metrics.json", *[f"results/rl/{algo}/s0/metrics.jsonl" for algo in resumed]]
    snakemake(run, "-c2", *targets, *SMOKE_ARGS, "--forcerun", *RERUN_RULES)
    rerun_logs = run / "results" / "logs"
    assert "resumed from" in (rerun_logs / "sft.log").read_text()  # SFT was not rerun: the recovered policies
    for rel in SAME_BYTES:
        assert (run / "results" / rel).read_bytes() == (smoke_dir / "results" / rel).read_bytes(), rel
    for algo in resumed:
        assert "resumed from" not in (rerun_logs / "rl" / algo / "s0.log").read_text()
        a, b = (d / "results" / "rl" / algo / "s0" for d in (smoke_dir, run))
        assert (a / "policy/model.safetensors").read_bytes() == (b / "policy/model.safetensors").read_bytes(), algo
        assert untimed_rl_metrics(a) == untimed_rl_metrics(b), algo
