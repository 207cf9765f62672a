"""Kills of the whole DAG at three points (issue 15): during SFT after its first checkpoint,
during an RL job after its first checkpoint, and inside the table job. After each SIGKILL of
Snakemake's process group, the documented recovery (`snakemake --unlock`, then the same command)
resumes; the final table 2 equals the uninterrupted smoke run's in every column but wall time."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, SMOKE, snakemake

pytestmark = pytest.mark.slow

CMD = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-c2", "results/table2.csv",
       "--configfile", str(SMOKE)]


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


def table(path: Path) -> list[dict]:
    with open(path) as f:
        return [{k: v for k, v in row.items() if k != "wall_s"} for row in csv.DictReader(f)]


def test_three_kills_resume_to_the_uninterrupted_table(smoke_dir, tmp_path):
    for marker in ("results/checkpoints/sft/latest.json", "results/checkpoints/rl/*/s0/latest.json",
                   "results/logs/table2.log"):
        assert run_until(tmp_path, marker), f"the run finished before {marker}"
        snakemake(tmp_path, "--unlock")
    snakemake(tmp_path, "-c2", "results/table2.csv", "--configfile", str(SMOKE))
    logs = (tmp_path / "results" / "logs")
    assert "resumed from" in (logs / "sft.log").read_text()
    assert any("resumed from" in f.read_text() for f in logs.glob("rl/*/*.log"))
    assert table(tmp_path / "results" / "table2.csv") == table(smoke_dir / "results" / "table2.csv")
