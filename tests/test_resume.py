"""Kill the RL stage midway, rerun it, and check it resumes from its checkpoint and ends
exactly where an uninterrupted run ends (same metrics, same weights)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline.config import load_preset
from conftest import SMOKE

pytestmark = pytest.mark.slow
TIMING_KEYS = {"wall_s", "iter_s"}


def rl_cmd(cfg: dict, smoke_dir: Path, out: Path, ckpt: Path) -> list[str]:
    stage_cfg = {k: cfg[k] for k in ("rl", "task", "sampling", "seed")}
    return [sys.executable, "-m", "pipeline.rl", "--cfg", json.dumps(stage_cfg), "--algo", "rloo",
            "--policy", str(smoke_dir / "results/models/sft/medium"), "--data", str(smoke_dir / "results/data"),
            "--out", str(out), "--ckpt", str(ckpt), "--threads", "1"]


def metrics(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def test_rl_resumes_after_kill_and_matches_uninterrupted_run(smoke_dir, tmp_path):
    cfg = load_preset(SMOKE)
    cfg["rl"].update(iterations=8, checkpoint_every=2, eval_every=4)

    full_out = tmp_path / "full"
    subprocess.run(rl_cmd(cfg, smoke_dir, full_out, tmp_path / "ck_full"), check=True, capture_output=True)

    out, ckpt = tmp_path / "killed", tmp_path / "ck_killed"
    proc = subprocess.Popen(rl_cmd(cfg, smoke_dir, out, ckpt), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    latest = ckpt / "latest.json"
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and json.loads(latest.read_text())["step"] >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "RL finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(latest.read_text())["step"]
    assert 4 <= killed_at < 8
    assert not (out / "policy").exists() and not (out / "metrics.jsonl").exists()  # no partial outputs

    resumed = subprocess.run(rl_cmd(cfg, smoke_dir, out, ckpt), check=True, capture_output=True, text=True)
    assert f"resumed from {ckpt}/step{killed_at:07d}" in resumed.stderr
    assert metrics(out) == metrics(full_out)
    a = load_file(out / "policy" / "model.safetensors")
    b = load_file(full_out / "policy" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not ckpt.exists()  # resume state removed once the run has finished


def test_changed_config_does_not_resume_stale_checkpoint(smoke_dir, tmp_path):
    cfg = load_preset(SMOKE)
    cfg["rl"].update(iterations=2, checkpoint_every=1, eval_every=2)
    ckpt = tmp_path / "ck"
    ckpt.mkdir()
    (ckpt / "latest.json").write_text(json.dumps({"tag": "step0000001", "step": 1, "config_hash": "other"}))
    run = subprocess.run(rl_cmd(cfg, smoke_dir, tmp_path / "out", ckpt), check=True, capture_output=True, text=True)
    assert "ignoring checkpoint" in run.stderr and "resumed from" not in run.stderr
    assert len(metrics(tmp_path / "out")) == 3


def test_rl_with_kl_penalty_logs_a_finite_nonnegative_kl(smoke_dir, tmp_path):
    cfg = load_preset(SMOKE)
    cfg["rl"].update(iterations=2, checkpoint_every=5, eval_every=2, kl_coef=0.05, ppo_epochs=2)
    subprocess.run(rl_cmd(cfg, smoke_dir, tmp_path / "out", tmp_path / "ck"), check=True, capture_output=True)
    rows = metrics(tmp_path / "out")
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        # k3 is >= 0 per token; after the first update the policy has moved, so KL > 0
        assert r["kl"] is not None and 0.0 <= r["kl"] < 1.0
    assert rows[2]["kl"] > 0.0
