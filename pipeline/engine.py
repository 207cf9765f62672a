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

from .utils import check_finite, read_json, write_json

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

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not torch.cuda.is_available():
        # training never all-reduces through DeepSpeed's shared-memory op (only its inference
        # all-reduce does), which the CPU backend otherwise JIT-compiles when it starts: about a
        # minute per new venv, paid by the first job of every fresh checkout (issue 17)
        import deepspeed.ops

        compatible = getattr(deepspeed.ops, "__compatible_ops__", None)
        if isinstance(compatible, dict):
            compatible["deepspeed_shm_comm"] = False
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # a group made by someone else in this process (an in-process vLLM engine makes one):
        # DeepSpeed still checks the launcher's variables, so give it the group's own
        # (one process: rank 0; several: a launcher has set them, nothing to guess)
        if torch.distributed.get_world_size() == 1:
            for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
                os.environ.setdefault(key, value)
        return
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


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside torch.distributed."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process writes the stage's outputs (rank 0; every rank trains and samples)."""
    return rank_world()[0] == 0


def barrier() -> None:
    if rank_world()[1] > 1:
        torch.distributed.barrier()


def accumulation_steps(batch_size: int, micro_batch_size: int, world_size: int) -> int:
    """Micro steps each rank takes per optimizer step: its share of a `batch_size` batch
    (items rank, rank + world, ...) cut into forwards of at most `micro_batch_size`."""
    per_rank = -(-int(batch_size) // int(world_size))
    return max(1, -(-per_rank // int(micro_batch_size)))


def weights_finite(model) -> bool:
    """Whether every weight of `model` is finite, on every rank (under ZeRO-3 each rank checks
    its own partition, `ds_tensor`; the answers are all-reduced)."""
    ok = True
    with torch.no_grad():
        for p in model.parameters():
            t = getattr(p, "ds_tensor", None)
            t = p.data if t is None else t
            if t.numel() and not bool(torch.isfinite(t).all()):
                ok = False
                break
    if rank_world()[1] > 1:
        flag = torch.tensor([1.0 if ok else 0.0], device=next(model.parameters()).device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        ok = bool(flag.item() == 1.0)
    return ok


class NonFiniteWeights(FloatingPointError):
    """An optimizer step left a NaN or infinite weight: the stage stops before anything is saved."""


def train_batch(engine, items: list, weights: list[float], loss_fn, micro_batch_size: int, *, what: str = "loss",
                step: int | None = None, collect: bool = False, lr_key: str | None = None
                ) -> tuple[float, dict, list | None]:
    """One optimizer step on a batch whose objective is the weighted mean of per-micro-batch
    means: sum_m w_m * mean_m / sum_m w_m, with w_m = sum of `weights` of its items (e.g. their
    response tokens, so a token-mean loss stays a token mean over the whole batch).

    Every rank holds the whole batch (sampling is replicated), takes items rank, rank + world, ...
    and runs them in micro batches of `micro_batch_size`; micro batch m backpropagates
    mean_m * w_m * world / W (W the batch's total weight), because DeepSpeed averages the
    ranks' summed gradients. So any world size and micro-batch size give the gradient of the
    one-forward batch (to float rounding; bitwise when there is one rank and one micro batch).
    Every rank takes exactly `engine.gradient_accumulation_steps()` micro steps, the ones
    without items a real forward with weight 0, since DeepSpeed counts micro steps to its
    boundary and ZeRO-3 gathers parameters collectively.

    loss_fn(sub_items) -> (mean loss tensor, stats dict of per-item means, outputs list or None).
    Returns (batch loss, weighted-mean stats, with `collect` the outputs of every item in order).
    After the step the weights are checked: a NaN or inf weight (a finite loss does not rule one
    out, e.g. lr 1e6 with a zero advantage) stops the stage with NonFiniteWeights naming `what`,
    the step and `lr_key`, the config key to change, before a checkpoint or model can hold it."""
    rank, world = rank_world()
    gas = engine.gradient_accumulation_steps()
    total = float(sum(weights))
    mine = list(range(rank, len(items), world))
    chunks = [mine[s:s + micro_batch_size] for s in range(0, len(mine), micro_batch_size)]
    if len(chunks) > gas:
        raise ValueError(f"{len(items)} items need {len(chunks)} micro batches of {micro_batch_size} per rank, "
                         f"the engine accumulates {gas}: build it with accumulation_steps(...)")
    loss_sum, stat_sums, outputs = 0.0, {}, {}
    for c in range(gas):
        idx = chunks[c] if c < len(chunks) else []
        mean, stats, outs = loss_fn([items[i] for i in (idx or [0])])
        w = float(sum(weights[i] for i in idx))
        for k, v in stats.items():  # every rank ends with the same keys (all-reduced below)
            stat_sums[k] = stat_sums.get(k, 0.0) + (float(v) * w if idx else 0.0)
        if idx:
            check_finite(mean.item(), what, step)
            loss_sum += mean.item() * w
            if collect:
                outputs.update(zip(idx, outs))
        scale = w * world / total if total > 0 else 0.0
        engine.backward(mean * scale, scale_wrt_gas=False)
        engine.step()
    if not weights_finite(engine.module):
        where = f" at step {step}" if step is not None else ""
        raise NonFiniteWeights(f"{what}: the optimizer step{where} left non-finite weights; stopping before they are "
                               f"saved (lower {lr_key or 'the learning rate'}, or grad_clip)")
    keys = sorted(stat_sums)
    if world > 1:  # the batch's figures, the same on every rank
        vec = torch.tensor([loss_sum] + [stat_sums[k] for k in keys], dtype=torch.float64, device=engine.device)
        torch.distributed.all_reduce(vec)
        loss_sum, stat_sums = float(vec[0]), {k: float(v) for k, v in zip(keys, vec[1:])}
        if collect:
            parts = [None] * world
            torch.distributed.all_gather_object(parts, outputs)
            outputs = {k: v for part in parts for k, v in part.items()}
    denom = total if total > 0 else 1.0
    return (loss_sum / denom, {k: v / denom for k, v in stat_sums.items()},
            [outputs[i] for i in range(len(items))] if collect else None)


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


ADAM_BETAS = (0.9, 0.95)  # AdamW betas of every trainer (not a config key)


def deepspeed_config(train_cfg: dict, micro_batch_size: int, hidden_size: int | None = None,
                     accumulation_steps: int = 1) -> dict:
    """The DeepSpeed config of a trainer (a pure function of its config section).

    train_cfg keys: grad_clip, zero_stage, bf16, offload_optimizer. For ZeRO 1-3 the buckets are
    sized from the model's `hidden_size` as the HF Trainer's "auto" values are (reduce bucket
    hidden^2; ZeRO-3 prefetch 0.9 hidden^2, parameters under 10 hidden stay whole on every rank);
    without it DeepSpeed's defaults apply. ZeRO-3 gathers the 16-bit weights when a model is saved
    (`stage3_gather_16bit_weights_on_model_save`), and `offload_optimizer` keeps the Adam states in
    pinned CPU memory, so a 7-8B model trains on one 80 GB GPU."""
    stage = int(train_cfg["zero_stage"])
    zero: dict = {"stage": stage}
    if stage >= 1:
        zero.update(overlap_comm=True, contiguous_gradients=True)
        if hidden_size:
            zero["reduce_bucket_size"] = int(hidden_size) * int(hidden_size)
            if stage < 3:
                zero["allgather_bucket_size"] = int(hidden_size) * int(hidden_size)
        if train_cfg["offload_optimizer"]:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True, stage3_max_live_parameters=int(1e9),
                    stage3_max_reuse_distance=int(1e9), sub_group_size=int(1e9))
        if hidden_size:
            zero["stage3_prefetch_bucket_size"] = int(0.9 * int(hidden_size) * int(hidden_size))
            zero["stage3_param_persistence_threshold"] = 10 * int(hidden_size)
    elif train_cfg["offload_optimizer"] and stage == 0:
        raise ValueError("offload_optimizer needs ZeRO (zero_stage 1-3)")
    return {
        "train_micro_batch_size_per_gpu": int(micro_batch_size),
        "gradient_accumulation_steps": int(accumulation_steps),
        "gradient_clipping": float(train_cfg["grad_clip"]),
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": bool(train_cfg["bf16"])},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def build_engine(model, train_cfg: dict, total_steps: int, batch_size: int):
    """Wrap `model` in a DeepSpeed engine with AdamW and a warmup schedule, for optimizer steps
    on batches of `batch_size` items (`total_steps` of them). The batch is split over the ranks
    and, when `train_cfg["micro_batch_size"]` is smaller than a rank's share, accumulated over
    micro batches of that size (`train_batch` runs the step; the engine's
    `train_micro_batch_size_per_gpu()` is the forward size it uses).

    train_cfg keys (a validated sft / rm / rl section): lr, weight_decay, warmup_steps, schedule, grad_clip, zero_stage, bf16,
    offload_optimizer (DeepSpeed's CPU Adam then steps the optimizer; see `deepspeed_config`),
    micro_batch_size.
    """
    init_distributed()
    import deepspeed

    opt_kwargs = dict(lr=float(train_cfg["lr"]), betas=ADAM_BETAS,
                      weight_decay=float(train_cfg["weight_decay"]))
    if train_cfg["offload_optimizer"]:  # ZeRO-Offload steps the optimizer on the CPU
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(model.parameters(), adamw_mode=True, **opt_kwargs)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), **opt_kwargs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(int(train_cfg["warmup_steps"]), total_steps, train_cfg["schedule"]))
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    world = rank_world()[1]
    micro = min(int(train_cfg.get("micro_batch_size") or batch_size), -(-int(batch_size) // world))
    ds_config = deepspeed_config(train_cfg, micro, hidden_size=hidden,
                                 accumulation_steps=accumulation_steps(batch_size, micro, world))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    log.info("engine: %d rank(s), ZeRO %d, batch %d = per rank %d micro step(s) of <= %d", world,
             ds_config["zero_optimization"]["stage"], batch_size, ds_config["gradient_accumulation_steps"], micro)
    return engine


def is_zero3_partitioned(model) -> bool:
    """Whether `model`'s parameters are partitioned by ZeRO-3 (each rank holds a shard; the
    module's own tensors are empty placeholders until gathered)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def gathered_named_parameters(model, device: str | torch.device | None = None, remove_duplicate: bool = True):
    """(name, full tensor) for every parameter, one at a time: under ZeRO-3 each parameter is
    gathered from all ranks only while it is yielded (a collective: every rank must iterate),
    so at most one full tensor exists beyond the shards. The tensor is a copy (on `device` when
    given), safe to keep after the next one is gathered. Without ZeRO-3 it is the parameter
    itself (moved when `device` is given). Feeds vLLM weight sync and ZeRO-3 saves.
    `remove_duplicate=False`: a tied tensor once under each of its names (the input embedding
    and `lm_head.weight`), as vLLM's in-place reload needs to reprocess the output layer."""
    zero3 = is_zero3_partitioned(model)
    if zero3:
        import deepspeed
    for name, p in model.named_parameters(remove_duplicate=remove_duplicate):
        if zero3 and hasattr(p, "ds_id"):
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                yield name, p.data.detach().to(device or p.data.device, copy=True)
        else:
            yield name, (p.detach() if device is None else p.detach().to(device))


def full_state_dict(model) -> dict | None:
    """The complete state dict of a ZeRO-3-partitioned model, on the CPU (tied weights share one
    tensor, so `save_pretrained` stores them once); None when the model is not partitioned and
    its own `state_dict()` is already complete."""
    if not is_zero3_partitioned(model):
        return None
    keys = list(model.state_dict().keys())
    by_id: dict[int, torch.Tensor] = {}
    params = dict(model.named_parameters(remove_duplicate=False))
    gathered = dict(gathered_named_parameters(model, device="cpu"))
    for name, p in params.items():
        if name in gathered:
            by_id.setdefault(id(p), gathered[name])
    out = {}
    buffers = dict(model.named_buffers(remove_duplicate=False))
    for k in keys:
        if k in params:
            out[k] = by_id[id(params[k])]
        elif k in buffers:
            out[k] = buffers[k].detach().cpu()
    return out


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
    barrier()  # every rank's shard is on disk before the tag is published
    if not is_main():
        return
    # the size of every file of the tag, so a resume can tell a truncated or lost file before loading
    files = {str(f.relative_to(ckpt_dir)): f.stat().st_size
             for d in [ckpt_dir, *(ckpt_dir / name for name in (extra_engines or {}))]
             for f in sorted((d / tag).rglob("*")) if f.is_file()}
    write_json(ckpt_dir / "latest.json", {"tag": tag, "step": step, "config_hash": cfg_hash, "files": files})
    for d in [ckpt_dir, *(ckpt_dir / name for name in (extra_engines or {}))]:
        for old in d.glob("step*"):  # keep only the published checkpoint
            if old.name != tag:
                shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint %s saved to %s", tag, ckpt_dir)


def checkpoint_problem(ckpt_dir: Path) -> str | None:
    """Why the checkpoint published in `ckpt_dir` cannot be resumed (None: it can): latest.json
    unreadable or not what save_checkpoint writes, its tag folder missing, or a file of the tag
    missing or of another size than when it was saved (truncated)."""
    from .utils import DataFileError

    try:
        meta = read_json(ckpt_dir / "latest.json")
    except DataFileError as e:
        return str(e)
    if not (isinstance(meta, dict) and isinstance(meta.get("tag"), str) and isinstance(meta.get("step"), int)
            and isinstance(meta.get("config_hash"), str) and isinstance(meta.get("files"), dict)):
        return f"{ckpt_dir / 'latest.json'}: not a published checkpoint (tag, step, config_hash, files)"
    if not (ckpt_dir / meta["tag"]).is_dir():
        return f"{ckpt_dir / meta['tag']}: the published tag folder is missing"
    for rel, size in meta["files"].items():
        f = ckpt_dir / rel
        if not f.is_file():
            return f"{f}: missing"
        if f.stat().st_size != size:
            return f"{f}: {f.stat().st_size} bytes, {size} when saved (truncated or overwritten)"
    return None


def move_aside(ckpt_dir: Path) -> Path:
    """Rename an unreadable checkpoint folder to <name>.unreadable (replacing an older one), so the
    next run starts fresh and the files stay for a post-mortem."""
    aside = ckpt_dir.with_name(ckpt_dir.name + ".unreadable")
    shutil.rmtree(aside, ignore_errors=True)
    ckpt_dir.rename(aside)
    return aside


def load_checkpoint(engine, ckpt_dir: str | Path, cfg_hash: str, extra_engines: dict | None = None) -> dict | None:
    """Restore engine (+ `extra_engines`, as saved) + RNG from the published checkpoint;
    returns its client state, or None when there is nothing (valid) to resume: none, one for
    another config (deleted), or an unreadable one (moved aside with a warning naming it)."""
    ckpt_dir = Path(ckpt_dir)
    latest = ckpt_dir / "latest.json"
    if not latest.exists():
        return None
    try:
        meta = read_json(latest)
    except ValueError:  # unreadable: checkpoint_problem says why
        meta = None
    if isinstance(meta, dict) and isinstance(meta.get("config_hash"), str) and meta["config_hash"] != cfg_hash:
        log.warning("ignoring checkpoint in %s: written for a different config", ckpt_dir)
        barrier()  # every rank has looked before rank 0 deletes it
        if is_main():
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        barrier()
        return None
    problem = checkpoint_problem(ckpt_dir)
    barrier()  # every rank has looked before rank 0 moves anything
    if problem is not None:
        if is_main():
            log.warning("unreadable checkpoint, starting fresh: %s (moved aside to %s)", problem, move_aside(ckpt_dir))
        barrier()
        return None
    try:
        _, client_state = engine.load_checkpoint(str(ckpt_dir), tag=meta["tag"], load_optimizer_states=True,
                                                 load_lr_scheduler_states=True)
        if client_state is None or "pipeline_state" not in client_state:
            raise RuntimeError("DeepSpeed returned no client state")
        for name, extra in (extra_engines or {}).items():
            path, _ = extra.load_checkpoint(str(ckpt_dir / name), tag=meta["tag"], load_optimizer_states=True,
                                            load_lr_scheduler_states=True)
            if path is None:
                raise RuntimeError(f"{name}: DeepSpeed found nothing to load")
    except Exception as e:
        # the files had their saved sizes but do not load: part of the state may be in the
        # engine already, so this run cannot start fresh; the next one will
        aside = move_aside(ckpt_dir) if is_main() else ckpt_dir
        raise RuntimeError(f"checkpoint {ckpt_dir}/{meta['tag']} could not be loaded ({e}); moved aside to "
                           f"{aside}: rerun the job to start fresh") from e
    set_rng_state(client_state["rng"])
    log.info("resumed from %s/%s (step %d)", ckpt_dir, meta["tag"], meta["step"])
    return client_state["pipeline_state"]
