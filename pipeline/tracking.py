"""Experiment tracking: the training stages' curves as TensorBoard event files (and, when asked
for and installed, an offline W&B run), a side channel beside the artifacts.

Nothing here changes what a stage writes to metrics.jsonl, summary.json or metrics.json: a
`Tracker` only copies numbers it is handed. Each stage puts its events next to its outputs
(`tensorboard/` in an RL run or reward-model folder, `models/tensorboard/sft` for SFT), so
`tensorboard --logdir results` shows every run. A stage that starts fresh clears its event
folder; one resumed from a checkpoint appends, hiding (TensorBoard's `purge_step`) the steps a
killed run logged after its last checkpoint.

Config: the optional `tracking` section (`tensorboard`, `wandb`; defaults in the schema). The
rules pass it only when it differs from the defaults (common.smk `tracking_view`), so a stage
without it tracks with TensorBoard.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import shutil
import time
from pathlib import Path

log = logging.getLogger("pipeline.tracking")


def tracking_flags(cfg: dict) -> dict:
    """The stage config's `tracking` section with the schema's defaults filled in (absent: the
    defaults, TensorBoard on, W&B off)."""
    from .config import apply_defaults, load_schema

    section = load_schema()["properties"]["tracking"]
    return apply_defaults(copy.deepcopy(cfg.get("tracking", {})), section)


class Tracker:
    """Scalars to TensorBoard (`torch.utils.tensorboard.SummaryWriter`, imported only when
    enabled) and optionally to an offline W&B run. Non-finite or non-numeric values are skipped.

    `enabled`: write TensorBoard events into `log_dir`; `wandb`: also log to W&B in offline mode
    (files under `log_dir/wandb`, never a network call) when `wandb` is importable. With neither,
    the tracker writes nothing. `resume_step`: None (or 0) starts fresh, removing `log_dir` first;
    a step S > 0 appends and tells TensorBoard to hide events of steps >= S from an earlier run."""

    def __init__(self, log_dir: str | Path, enabled: bool = True, wandb: bool = False,
                 resume_step: int | None = None, run_name: str | None = None, config: dict | None = None):
        self.log_dir = Path(log_dir)
        self._tb = None
        self._wandb = None
        if not (enabled or wandb):
            return
        if not resume_step:
            shutil.rmtree(self.log_dir, ignore_errors=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            _wait_to_sort_last(self.log_dir)
            self._tb = SummaryWriter(str(self.log_dir), purge_step=resume_step or None, flush_secs=30)
        if wandb:
            self._wandb = _wandb_run(self.log_dir, run_name, config)

    @property
    def active(self) -> bool:
        return self._tb is not None or self._wandb is not None

    def scalar(self, tag: str, value, step: int) -> bool:
        """Log one value; returns whether it was written (False for None, NaN, inf, non-numbers)."""
        if not self.active or value is None or isinstance(value, (bool, str, bytes)):
            return False
        try:
            v = float(value)  # ints, floats, numpy and one-element torch scalars
        except (TypeError, ValueError, RuntimeError):  # lists, dicts, bigger tensors
            return False
        if not math.isfinite(v):
            return False
        if self._tb is not None:
            self._tb.add_scalar(tag, v, int(step))
        if self._wandb is not None:
            self._wandb.log({tag: v}, step=int(step))
        return True

    def scalars(self, values: dict, step: int, prefix: str = "", skip: tuple = ()) -> list[str]:
        """Log every numeric entry of `values` (except the keys in `skip`) as `<prefix>/<key>`;
        returns the tags written."""
        written = []
        for key, value in values.items():
            if key in skip:
                continue
            tag = f"{prefix}/{key}" if prefix else str(key)
            if self.scalar(tag, value, step):
                written.append(tag)
        return written

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _wait_to_sort_last(log_dir: Path) -> None:
    """Wait (at most about a second) until a new event file would sort after every event file
    already in `log_dir`. TensorBoard reads a folder's files in name order and lets the later file
    win where steps overlap (the resumed run's `purge_step`), but a name is
    `events.out.tfevents.<seconds>.<host>.<pid>.<writer counter>`: two files begun in the same
    second sort by pid and counter as text ("10" < "9"), so a resume that starts within the
    second of the run it resumes could be shown the old values."""
    stamps = []
    for f in log_dir.glob("events.out.tfevents.*"):
        field = f.name.split(".")[3]
        if field.isdigit():
            stamps.append(int(field))
    if stamps:
        while int(time.time()) <= max(stamps):
            time.sleep(0.02)


def stage_tracker(cfg: dict, log_dir: str | Path, main: bool = True, resume_step: int | None = None,
                  run_name: str | None = None) -> Tracker:
    """The tracker a stage opens: the config's flags, writing on the main rank only."""
    flags = tracking_flags(cfg)
    return Tracker(log_dir, enabled=bool(flags["tensorboard"]) and main, wandb=bool(flags["wandb"]) and main,
                   resume_step=resume_step, run_name=run_name, config=cfg)


def _wandb_run(log_dir: Path, run_name: str | None, config: dict | None):
    """An offline W&B run under log_dir/wandb (a new one per start; `wandb sync` uploads it
    later if wanted), or None (with a warning) when wandb is not installed."""
    os.environ["WANDB_MODE"] = "offline"  # never a network call, whatever the environment says
    try:
        import wandb
    except ImportError:
        log.warning("tracking.wandb is set but wandb is not installed; TensorBoard only")
        return None
    return wandb.init(project="prm-rl-pipeline", name=run_name or log_dir.parent.name, dir=str(log_dir),
                      mode="offline", config=config)
