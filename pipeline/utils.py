"""Shared plumbing for every stage: atomic artifact writes, JSONL, seeding, logging, stage CLIs.

Artifacts are never written in place. A killed job must leave either the old file or
nothing, never half a file that a later stage (or Snakemake's mtime check) would trust,
so every writer goes through `atomic_path` / `atomic_dir`: write to a temporary sibling,
then `os.replace` it onto the final name (atomic on POSIX within one filesystem).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from pipeline import imports_done

log = logging.getLogger("pipeline")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to `path`; on success rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; artifacts get normal modes
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to `path`; on success it replaces `path` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


class DataFileError(ValueError):
    """A data file that cannot be read as what it should hold; the message names file (and line)."""


def read_json(path: str | os.PathLike) -> Any:
    """One JSON document; a truncated, non-UTF-8 or garbage file is an error naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError as e:
        raise DataFileError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataFileError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            n += 1
    return n


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """One JSON object per line; a line that is not valid UTF-8 JSON, or not an object, is an error
    naming file:line."""
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataFileError(f"{path}:{lineno}: not UTF-8 text (byte {e.start} of the line)") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFileError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataFileError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def parse_pairs(pairs: list[str], flag: str, single: bool = False) -> dict:
    """Stage arguments of the form NAME=path1,path2,... (one per method, reward model or
    generator), in argument order: {"rloo": ["a", "b"]}, or with `single` {"orm": "dir"}. A
    malformed or repeated name is an error naming the flag."""
    out = {}
    for kv in pairs:
        name, sep, paths = kv.partition("=")
        if not sep or not name or not paths:
            raise SystemExit(f"{flag} {kv!r}: expected NAME=" + ("path" if single else "path1,path2,..."))
        if name in out:
            raise SystemExit(f"{flag}: {name!r} given twice")
        out[name] = paths if single else [x for x in paths.split(",") if x]
    return out


RECORD_FIELDS = ("id", "problem", "answer")  # what every stage that samples from records reads


def read_records(path: str | os.PathLike) -> list[dict]:
    """A records file (data/<split>.jsonl, pipeline.data_prep): its rows, each checked for the
    fields stages read, so a bad file fails here, before any model loads or sample is drawn. An
    empty file is an error too: it would otherwise make an empty artifact with pass@1 0."""
    rows = read_jsonl(path)
    if not rows:
        raise DataFileError(f"{path}: no records")
    for lineno, r in enumerate(rows, 1):
        missing = [k for k in RECORD_FIELDS if k not in r]
        if missing:
            raise DataFileError(f"{path}: record {lineno} (id {r.get('id')!r}) lacks {', '.join(missing)}")
    return rows


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one line (metrics logs). The caller rewrites the log atomically on resume."""
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(n: int) -> None:
    """Pin torch's intra-op threads: results on CPU are only reproducible for a fixed count."""
    import torch

    torch.set_num_threads(max(1, int(n)))


def check_finite(value: float, what: str, step: int | None = None) -> None:
    """Stop a stage with a clear message on a NaN/inf loss instead of training on garbage."""
    if not math.isfinite(value):
        where = f" at step {step}" if step is not None else ""
        raise FloatingPointError(f"{what} is {value}{where}; stopping (lower the learning rate or check the data)")


def setup_logging(log_file: str | None = None) -> None:
    # every stage's main() starts here once its imports are done (pipeline/__init__.py)
    imports_done()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    # under a multi-process launcher every rank logs; ranks other than 0 only their warnings,
    # each line tagged with its rank
    rank = int(os.environ.get("RANK", "0"))
    tag = f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s {tag}%(name)s %(levelname)s %(message)s", handlers=handlers, force=True)


def stage_parser(description: str) -> argparse.ArgumentParser:
    """Every stage CLI takes its config as one JSON object (`--cfg`), as the Snakefile passes it
    through `params`, so a changed config value is visible to Snakemake's params trigger."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--cfg", required=True, help="stage config as a JSON object (or @file.json)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--log", default=None, help="also write the log to this file")
    return p


# the CLI options through which stages name what they write (checked writable before any work)
OUTPUT_ARGS = ("out", "out_dir", "table1", "table4", "plot")
PROBE_BYTES = 1 << 20  # a full disk fails this write, not the one after hours of work


def check_writable(path: str | Path, what: str) -> None:
    """The folder that will receive `path` (atomic writes put a temporary beside it) exists or
    can be made, and takes a 1 MiB file: a read-only mount or a full disk is reported now,
    naming the option and the folder, instead of after the work."""
    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write_probe.")
        try:
            with os.fdopen(fd, "wb") as f:  # a buffered write loops over short writes: ENOSPC surfaces
                f.write(b"\0" * PROBE_BYTES)
        finally:
            os.unlink(probe)
    except OSError as e:
        raise SystemExit(f"{what} {path}: cannot write in {folder} ({e.strerror or e}); "
                         "free space or choose another out_dir before the work starts") from None


def start_stage(parser: argparse.ArgumentParser, argv=None) -> tuple[argparse.Namespace, dict]:
    """Parse a stage's CLI, set up logging and torch threads, and check every output can be
    written; returns (args, stage config)."""
    args = parser.parse_args(argv)
    cfg = parse_cfg(args.cfg)
    for name in OUTPUT_ARGS:
        if getattr(args, name, None):
            check_writable(getattr(args, name), "--" + name.replace("_", "-"))
    setup_logging(args.log)
    age = process_age_s()
    if age is not None:  # what every job pays before its work: the interpreter and the imports
        logging.getLogger("pipeline").info("start-up: %.1f s from process start to the stage's arguments; "
                                           "%d objects of the imports frozen", age, gc.get_freeze_count())
    set_threads(args.threads)
    return args, cfg


def process_age_s() -> float | None:
    """Seconds since this process started, from Linux's /proc (None where there is none).
    A job's log then says what its start-up cost (benchmarks/stage_times.py reads it)."""
    try:
        # field 22 of /proc/self/stat (starttime, clock ticks after boot); the name in field 2
        # is in parentheses and may hold spaces, so count from its closing one
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def parse_cfg(arg: str) -> dict:
    if arg.startswith("@"):
        try:
            text = Path(arg[1:]).read_text()
        except OSError as e:
            raise SystemExit(f"--cfg {arg}: cannot read the config file ({e.strerror})") from None
    else:
        text = arg
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--cfg is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise SystemExit("--cfg must be a JSON object")
    return cfg


def save_figure(fig, path: str | Path) -> None:
    """A matplotlib figure as PNG, laid out and written atomically, then closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_csv(df, path: str | Path) -> None:
    """A pandas frame as CSV, atomically: floats with 4 decimals (text in mixed columns as it is),
    no index."""
    # float_format only reaches float columns; the *_to_target columns mix numbers and text
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else v
    out = df.copy()
    for c in out.columns[out.dtypes == object]:
        out[c] = out[c].map(fmt)
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False, float_format="%.4f")
