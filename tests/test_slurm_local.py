"""The SLURM profile on a real SLURM: tests/slurm/run_local_slurm.sh starts a one-node cluster on
this machine (Debian's slurmctld/slurmd/munge, installed when missing; needs root), runs the
smoke DAG through sbatch, then scancels a running RL job after its first checkpoint and checks
that the profile's retries resume it from that checkpoint and the DAG completes.

Opt-in (9-11 minutes on 2 cores, installs packages, starts daemons):
    RUN_SLURM=1 .venv/bin/python -m pytest -m slurm tests/test_slurm_local.py
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "slurm" / "run_local_slurm.sh"

pytestmark = [pytest.mark.slurm, pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("RUN_SLURM") != "1",
                                 reason="starts a real one-node SLURM (root, apt); set RUN_SLURM=1")]


def test_smoke_dag_and_cancelled_rl_job_on_real_slurm(tmp_path):
    env = {**os.environ, "WORK": str(tmp_path / "local_slurm")}
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=3600, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "OK: smoke DAG" in out and "resumed from" in out, out[-3000:]
