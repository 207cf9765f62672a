"""Time per stage of a finished DAG run, from Snakemake's per-rule `benchmark:` files, and each
job's start-up (process start to the stage's arguments: interpreter and imports) from the
"start-up:" line of its log (results/logs/<same path>.log; blank where a job has none).

    python benchmarks/stage_times.py [results]      # prints a Markdown table for BENCHMARKS.md

Stages that ran in parallel (-c2) overlap, so the sum exceeds the wall-clock time.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd


STARTUP = re.compile(r"start-up: ([0-9.]+) s")


def startup_s(log: Path) -> float | None:
    """The first "start-up:" figure in a job's log (a multi-rank job logs rank 0's)."""
    if not log.exists():
        return None
    m = STARTUP.search(log.read_text(errors="replace"))
    return float(m.group(1)) if m else None


def stage_times(results: Path) -> pd.DataFrame:
    rows = []
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        df = pd.read_csv(tsv, sep="\t")
        job = tsv.relative_to(results / "benchmarks").with_suffix("")
        rows.append({"job": str(job), "seconds": float(df["s"].iloc[-1]), "max_rss_mb": float(df["max_rss"].iloc[-1]),
                     "startup_s": startup_s(results / "logs" / job.with_suffix(".log"))})
    out = pd.DataFrame(rows)
    out["share"] = out["seconds"] / out["seconds"].sum()
    return out


def main() -> None:
    results = Path(sys.argv[1] if len(sys.argv) > 1 else "results")
    df = stage_times(results)
    print("| job | seconds | start-up s | share | max RSS (MB) |\n|---|---:|---:|---:|---:|")
    for r in df.itertuples():
        up = "" if pd.isna(r.startup_s) else f"{r.startup_s:.1f}"
        print(f"| {r.job} | {r.seconds:.1f} | {up} | {r.share:.0%} | {r.max_rss_mb:.0f} |")
    print(f"| **sum** | {df['seconds'].sum():.1f} | {df['startup_s'].sum():.1f} | | |")


if __name__ == "__main__":
    main()
