"""Time per stage of a finished DAG run, from Snakemake's per-rule `benchmark:` files, and each
job's start-up (process start to the stage's arguments: interpreter and imports) from the
"start-up:" line of its log (results/logs/<same path>.log; blank where a job has none).

    python benchmarks/stage_times.py [results]      # prints Markdown tables for BENCHMARKS.md

The first table has a row per job, the second a row per stage (a rule; RL per method:
`rl/<algo>/*`) with its jobs' count, summed seconds and summed start-up. Stages that ran in
parallel (-c2) overlap, so the sum exceeds the wall-clock time.
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
    tsvs = sorted((results / "benchmarks").rglob("*.tsv"))
    if not tsvs:
        # e.g. `results` given where the run's outputs are under `results/countdown`
        nested = sorted(str(b.parent) for b in results.glob("*/benchmarks") if any(b.rglob("*.tsv")))
        hint = f"; a run's outputs are in {', '.join(nested)}" if nested else ""
        raise SystemExit(f"stage_times: no Snakemake benchmark files (*.tsv) under {results / 'benchmarks'}{hint}")
    rows = []
    for tsv in tsvs:
        df = pd.read_csv(tsv, sep="\t")
        job = tsv.relative_to(results / "benchmarks").with_suffix("")
        rows.append({"job": str(job), "seconds": float(df["s"].iloc[-1]), "max_rss_mb": float(df["max_rss"].iloc[-1]),
                     "startup_s": startup_s(results / "logs" / job.with_suffix(".log"))})
    out = pd.DataFrame(rows)
    out["share"] = out["seconds"] / out["seconds"].sum()
    return out


def stage_of(job: str) -> str:
    """The stage a job belongs to: its rule's folder (`evaluate/*/*`), RL per method (`rl/rloo/*`)."""
    parts = job.split("/")
    keep = 2 if parts[0] == "rl" else 1
    return "/".join(parts[:keep] + ["*"] * (len(parts) - keep))


def by_stage(df: pd.DataFrame) -> pd.DataFrame:
    """Jobs, summed seconds and summed start-up per stage, the slowest first."""
    g = df.assign(stage=df["job"].map(stage_of)).groupby("stage")
    out = pd.DataFrame({"jobs": g.size(), "seconds": g["seconds"].sum(), "startup_s": g["startup_s"].sum(min_count=1)})
    return out.sort_values("seconds", ascending=False).reset_index()


def main() -> None:
    results = Path(sys.argv[1] if len(sys.argv) > 1 else "results")
    df = stage_times(results)
    print("| job | seconds | start-up s | share | max RSS (MB) |\n|---|---:|---:|---:|---:|")
    for r in df.itertuples():
        up = "" if pd.isna(r.startup_s) else f"{r.startup_s:.1f}"
        print(f"| {r.job} | {r.seconds:.1f} | {up} | {r.share:.0%} | {r.max_rss_mb:.0f} |")
    print(f"| **sum** | {df['seconds'].sum():.1f} | {df['startup_s'].sum():.1f} | | |")
    print("\n| stage | jobs | seconds | start-up s | share |\n|---|---:|---:|---:|---:|")
    for r in by_stage(df).itertuples():
        up = "" if pd.isna(r.startup_s) else f"{r.startup_s:.1f}"
        print(f"| {r.stage} | {r.jobs} | {r.seconds:.1f} | {up} | {r.seconds / df['seconds'].sum():.0%} |")


if __name__ == "__main__":
    main()
