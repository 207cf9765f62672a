"""Time per stage of a finished DAG run, from Snakemake's per-rule `benchmark:` files.

    python benchmarks/stage_times.py [results]      # prints a Markdown table for BENCHMARKS.md

Stages that ran in parallel (-c2) overlap, so the sum exceeds the wall-clock time.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd


def stage_times(results: Path) -> pd.DataFrame:
    rows = []
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        df = pd.read_csv(tsv, sep="\t")
        rows.append({"job": str(tsv.relative_to(results / "benchmarks").with_suffix("")),
                     "seconds": float(df["s"].iloc[-1]), "max_rss_mb": float(df["max_rss"].iloc[-1])})
    out = pd.DataFrame(rows)
    out["share"] = out["seconds"] / out["seconds"].sum()
    return out


def main() -> None:
    results = Path(sys.argv[1] if len(sys.argv) > 1 else "results")
    df = stage_times(results)
    print("| job | seconds | share | max RSS (MB) |\n|---|---:|---:|---:|")
    for r in df.itertuples():
        print(f"| {r.job} | {r.seconds:.1f} | {r.share:.0%} | {r.max_rss_mb:.0f} |")
    print(f"| **sum** | {df['seconds'].sum():.1f} | | |")


if __name__ == "__main__":
    main()
