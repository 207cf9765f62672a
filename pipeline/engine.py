"""Training through DeepSpeed: the one place every trainer (SFT, RL, later reward models)
gets its optimizer, schedule, ZeRO stage, precision and checkpoints.

On this CPU testbed it runs ZeRO stage 0 with the gloo backend in a single process; on GPU
nodes the same code takes ZeRO-3 and bf16 from config, launched by `deepspeed`/`torchrun`
(which set RANK/WORLD_SIZE; we only fill them in for a plain `python -m` run).

Checkpoints for resume live outside Snakemake's outputs (so a failed job's outputs can be
deleted without losing them), are keyed by a hash of the stage config (so a changed config
never resumes a stale run), and are published by atomically rewriting `latest.json` after
DeepSpeed has finished writing the tag directory: a kill mid-save leaves the previous
checkpoint in charge.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
from pathlib import Path

import torch

from .utils import read_json, write_json

log = logging.getLogger("pipeline.engine")


def init_distributed() -> None:
    """Initialise torch.distributed for DeepSpeed.

    Under a launcher (`deepspeed`, `torchrun`, SLURM) RANK/WORLD_SIZE/MASTER_* are set and the
    usual env rendezvous is used. A plain single-process run rendezvouses through a private
    temporary file instead of a TCP port, so two jobs on one node (-c2 running RLOO and GRPO
    side by side) can never race for the same port."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if "RANK" in os.environ:
        deepspeed.init_distributed(dist_backend=backend, verbose=False)
        return
    # DeepSpeed checks these are set (else it tries MPI discovery); the file rendezvous ignores them
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="0")
    fd, path = tempfile.mkstemp(prefix="ds_rendezvous_")
    os.close(fd)
    os.unlink(path)  # FileStore creates it; unique name per process
    atexit.register(lambda: os.path.exists(path) and os.unlink(path))
    deepspeed.init_distributed(dist_backend=backend, verbose=False, init_method=f"file://{path}", rank=0,
                               world_size=1)


def lr_lambda(warmup: int, total: int, schedule: str):
    """Linear warmup, then constant or cosine decay to 10% (the implicit PRM code's schedule)."""
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine" and total > warmup:
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0
    return f


def build_engine(model, train_cfg: dict, total_steps: int, micro_batch_size: int):
    """Wrap `model` in a DeepSpeed engine with AdamW and a warmup schedule.

    train_cfg keys: lr, weight_decay, betas, warmup_steps, schedule, grad_clip, zero_stage, bf16.
    """
    init_distributed()
    import deepspeed

    optimizer = torch.optim.AdamW(model.parameters(), lr=float(train_cfg["lr"]),
                                  betas=tuple(train_cfg.get("betas", (0.9, 0.95))),
                                  weight_decay=float(train_cfg.get("weight_decay", 0.0)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(int(train_cfg.get("warmup_steps", 0)), total_steps, train_cfg.get("schedule", "constant")))
    ds_config = {
        "train_micro_batch_size_per_gpu": int(micro_batch_size),
        "gradient_accumulation_steps": 1,
        "gradient_clipping": float(train_cfg.get("grad_clip", 1.0)),
        "zero_optimization": {"stage": int(train_cfg.get("zero_stage", 0))},
        "bf16": {"enabled": bool(train_cfg.get("bf16", False))},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    return engine


def config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def rng_state() -> dict:
    import numpy as np

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(engine, ckpt_dir: str | Path, step: int, cfg_hash: str, client_state: dict,
                    extra_engines: dict | None = None) -> None:
    """Save `engine` (and any `extra_engines`, e.g. PRIME's online PRM, each under
    ckpt_dir/<name>/) at one tag, then publish the tag once: a kill between the saves leaves
    the previous checkpoint of every engine in charge, so they can never resume out of step."""
    ckpt_dir = Path(ckpt_dir)
    tag = f"step{step:07d}"
    for name, extra in (extra_engines or {}).items():
        extra.save_checkpoint(str(ckpt_dir / name), tag=tag, client_state={}, save_latest=False)
    # our state travels under one key: DeepSpeed adds reserved keys of its own to the
    # client state it returns, and refuses them when they are passed back in.
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"pipeline_state": client_state, "rng": rng_state()},
                           save_latest=False)
    write_json(ckpt_dir / "latest.json", {"tag": tag, "step": step, "config_hash": cfg_hash})
    for d in [ckpt_dir, *(ckpt_dir / name for name in (extra_engines or {}))]:
        for old in d.glob("step*"):  # keep only the published checkpoint
            if old.name != tag:
                shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint %s saved to %s", tag, ckpt_dir)


def load_checkpoint(engine, ckpt_dir: str | Path, cfg_hash: str, extra_engines: dict | None = None) -> dict | None:
    """Restore engine (+ `extra_engines`, as saved) + RNG from the published checkpoint;
    returns its client state, or None when there is nothing (valid) to resume."""
    latest = Path(ckpt_dir) / "latest.json"
    if not latest.exists():
        return None
    meta = read_json(latest)
    if meta.get("config_hash") != cfg_hash:
        log.warning("ignoring checkpoint in %s: written for a different config", ckpt_dir)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        return None
    _, client_state = engine.load_checkpoint(str(ckpt_dir), tag=meta["tag"], load_optimizer_states=True,
                                             load_lr_scheduler_states=True)
    if client_state is None or "pipeline_state" not in client_state:
        raise RuntimeError(f"checkpoint {ckpt_dir}/{meta['tag']} could not be loaded")
    for name, extra in (extra_engines or {}).items():
        path, _ = extra.load_checkpoint(str(Path(ckpt_dir) / name), tag=meta["tag"], load_optimizer_states=True,
                                        load_lr_scheduler_states=True)
        if path is None:
            raise RuntimeError(f"checkpoint {ckpt_dir}/{name}/{meta['tag']} could not be loaded")
    set_rng_state(client_state["rng"])
    log.info("resumed from %s/%s (step %d)", ckpt_dir, meta["tag"], meta["step"])
    return client_state["pipeline_state"]
