"""Kills of the whole smoke DAG at three points (issue 15): during SFT after its first
checkpoint, during an RL job after its first checkpoint, and inside the table 2 job. After each
SIGKILL of Snakemake's process group, the documented recovery (`snakemake --unlock`, then the
same command) resumes. The finished run equals the session's uninterrupted smoke run: table 2
in every column but wall time, every RL policy's weights, the two reward models RL reads and the
data, rollouts and MC labels byte for byte. This is also the determinism check (two runs in clean
folders give the same results). It builds only table 2's part of the smoke DAG (25 of its jobs,
about two thirds of its time; all three kill points are on it): tables 1, 3, 4 and claims.csv
add pools, seven reward models and beam search, sampled and trained by the same code."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pandas as pd

from conftest import REPO, SMOKE, snakemake
from pipeline.config import load_preset

pytestmark = pytest.mark.slow

TARGETS = ["results/table2.csv"]
CMD = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-c2", *TARGETS, "--configfile", str(SMOKE)]


def run_until(workdir: Path, marker: str, timeout: float = 900) -> bool:
    """Start the documented command; SIGKILL its whole process group as soon as `marker` (a path
    under workdir, glob allowed) exists. False if the run finished first."""
    proc = subprocess.Popen(CMD, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < timeout:
        if any(workdir.glob(marker)):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.05)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"no {marker} within {timeout} s")
    return False


def test_three_kills_resume_to_the_uninterrupted_results(smoke_dir, tmp_path):
    for marker in ("results/checkpoints/sft/latest.json", "results/checkpoints/rl/*/s0/latest.json",
                   "results/logs/table2.log"):
        assert run_until(tmp_path, marker), f"the run finished before {marker}"
        snakemake(tmp_path, "--unlock")
    snakemake(tmp_path, "-c2", *TARGETS, "--configfile", str(SMOKE))
    logs = tmp_path / "results" / "logs"
    assert "resumed from" in (logs / "sft.log").read_text()
    assert any("resumed from" in f.read_text() for f in logs.glob("rl/*/*.log"))
    # everything but the measured wall time is identical
    a, b = (pd.read_csv(d / "results" / "table2.csv").drop(columns="wall_s") for d in (smoke_dir, tmp_path))
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    for algo in load_preset(SMOKE)["rl"]["algos"]:
        pa, pb = (d / "results" / "rl" / algo / "s0" / "policy" / "model.safetensors" for d in (smoke_dir, tmp_path))
        assert pa.read_bytes() == pb.read_bytes(), algo
    for rel in ["rollouts/medium/train.jsonl", "data/train.jsonl", "mc/medium/train.jsonl",
                "rm/pav/model/model.safetensors", "rm/implicit_ce_inst/model/model.safetensors"]:
        assert (tmp_path / "results" / rel).read_bytes() == (smoke_dir / "results" / rel).read_bytes(), rel
