"""Shared fixtures. The smoke DAG is built once per test session (about three minutes) and
reused by every workflow test that only reads its outputs. It is built the hard way: the
documented command is SIGKILLed three times (during SFT after its first checkpoint, during an RL
job after its first checkpoint, inside the table 2 job) and recovered each time with
`snakemake --unlock` and the same command, so every test of the outputs is also a test of the
recovery; tests/test_kill_resume.py reruns the killed jobs uninterrupted (SFT up to 40 steps
past its resume point) and compares."""
from __future__ import annotations

import contextlib
import gc
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.config import load_preset
from pipeline.rl import TIMING_KEYS as RL_TIMING_KEYS  # measured times: identical runs differ in these only

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "config" / "smoke.yaml"
# the validated tiny model section: hand-sized test models start from it, so every key is there
MODEL_SECTION = load_preset()["model"]
# the trainer keys every sft / rm / rl section holds once validated (engine.build_engine reads them
# strictly): hand-built train configs in tests start from the validated rm section's values
TRAINER = {k: load_preset()["rm"][k] for k in ("lr", "warmup_steps", "schedule", "weight_decay", "grad_clip", "zero_stage",
                                               "bf16", "offload_optimizer")}
SMOKE_TARGETS = ["results/table2.csv", "results/table1.csv", "results/table3.csv", "results/table4.csv", "results/claims.csv", "results/rollouts/medium/train.jsonl", "results/mc/medium/train.jsonl",
                 *[f"results/rm/{m}/metrics.json" for m in ("orm", "prm_he", "prm_se", "pav", "implicit_ce_inst",
                                                           "implicit_dpo", "implicit_kto")]]


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 1800) -> subprocess.CompletedProcess:
    """Run the real Snakemake CLI on this repo's Snakefile inside `workdir`."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


# where the session's smoke run is killed (paths under its folder, glob allowed), in order
KILL_MARKERS = ("results/checkpoints/sft/latest.json", "results/checkpoints/rl/*/s0/latest.json",
                "results/logs/table2.log")


def run_until(workdir: Path, cmd: list[str], marker: str, timeout: float = 900) -> bool:
    """Start `cmd` in `workdir`; SIGKILL its whole process group (Snakemake and every job) as soon
    as `marker` exists. False if the command finished first."""
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
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


def run_smoke(workdir: Path, kill_at: tuple[str, ...] = ()) -> Path:
    """The smoke DAG in `workdir`; killed at each of `kill_at` in turn and recovered the documented
    way (`snakemake --unlock`, then the same command)."""
    workdir.mkdir(parents=True, exist_ok=True)
    args = ["-c2", *SMOKE_TARGETS, "--configfile", str(SMOKE)]
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), *args]
    for marker in kill_at:
        assert run_until(workdir, cmd, marker), f"the smoke run finished before {marker}"
        snakemake(workdir, "--unlock")
    snakemake(workdir, *args)
    return workdir


@pytest.fixture(scope="session")
def smoke_dir(tmp_path_factory) -> Path:
    return run_smoke(tmp_path_factory.mktemp("smoke_a"), kill_at=KILL_MARKERS)


def untimed_rl_metrics(out: Path) -> list[dict]:
    """An RL run's metrics.jsonl rows (run folder `out`) without the measured times."""
    return [{k: v for k, v in json.loads(line).items() if k not in RL_TIMING_KEYS}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


@contextlib.contextmanager
def stage_process_state():
    """Run a stage's main() inside pytest without leaking what it sets for its own process:
    torch's thread count and the root logger's handlers (it logs to its --log file)."""
    threads, root = torch.get_num_threads(), logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        for h in root.handlers:
            if h not in handlers:
                h.close()
        root.handlers[:], root.level = handlers, level
        torch.set_num_threads(threads)


STAGE_MAINS = {"pipeline.rl": "pipeline.rl.train"}  # a package run with -m: its main's module


def run_stage_in_process(module: str, args: list[str], log: Path) -> str:
    """`python -m <module> <args>` as a call of the stage's main() in this process: the same code
    without an interpreter start-up and its imports (about 4 s a run). Returns the stage's log."""
    main = importlib.import_module(STAGE_MAINS.get(module, module)).main
    with stage_process_state():
        main([*args, "--log", str(log)])
    return log.read_text()


def scaled_tiny_llama(tok, model_cfg: dict, seed: int = 0, scale: float = 0.3):
    """A tiny Llama whose matrices are redrawn with std `scale`: the default init (std 0.02)
    gives near-uniform logits, so greedy decoding repeats one character and per-position
    log-probs barely differ; larger weights make outputs prompt-dependent, so bugs show."""
    from pipeline.modeling import build_tiny_llama

    m = build_tiny_llama(tok, model_cfg, seed=seed)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return m


def save_tiny_policy(out: Path, seed: int = 0) -> Path:
    """A real, loadable policy folder (char tokenizer, tiny Llama from the validated model section)."""
    from pipeline.modeling import build_char_tokenizer, build_tiny_llama, save_policy

    tok = build_char_tokenizer()
    save_policy(build_tiny_llama(tok, {**MODEL_SECTION, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1},
                                 seed=seed), tok, out)
    return out


def pytest_collection_finish(session):
    # what collection imported (torch, transformers, every test module) lives for the whole
    # session; frozen, the garbage collector stops rescanning it at every full collection, as a
    # stage process does after its imports (pipeline/__init__.py). The unit tests on 2 workers:
    # 152-163 s against 157-171 s (BENCHMARKS.md, issue 17)
    gc.freeze()
