"""Stage: result tables and plots.

table2: one row per policy (base, then each RL method), one column per eval split
(mean pass@1 over k samples), `avg` over splits, greedy accuracy per split, and the RL
training samples and FLOPs spent. Also plots validation pass@1 against RL iteration.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from .utils import atomic_path, read_json, read_jsonl, setup_logging

log = logging.getLogger("pipeline.tables")


def table2_frame(evals: dict[str, dict], summaries: dict[str, dict], splits: list[str]) -> pd.DataFrame:
    """`evals[method]`: an evaluate.py output; `summaries[method]`: an rl.py summary (absent for base)."""
    rows = []
    for method, ev in evals.items():
        row = {"method": method}
        for s in splits:
            row[s] = ev["splits"][s]["pass1"]
        row["avg"] = sum(row[s] for s in splits) / len(splits)
        for s in splits:
            if "greedy" in ev["splits"][s]:
                row[f"{s}_greedy"] = ev["splits"][s]["greedy"]
        summ = summaries.get(method)
        row["train_samples"] = summ["rl_samples"] if summ else 0
        row["train_flops"] = summ["rl_flops"] if summ else 0.0
        rows.append(row)
    return pd.DataFrame(rows)


def write_csv(df: pd.DataFrame, path: str) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")


def plot_val_curves(curves: dict[str, list[dict]], path: str, x: str = "iteration") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, rows in curves.items():
        pts = [(r[x], r["val_pass1"]) for r in rows if r.get("val_pass1") is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
    ax.set_xlabel("RL iteration" if x == "iteration" else x)
    ax.set_ylabel("validation pass@1")
    ax.set_title("Validation accuracy during RL")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--eval", nargs="+", required=True, help="METHOD=eval.json pairs, base first")
    p.add_argument("--rl", nargs="*", default=[], help="METHOD=rl_dir pairs (summary.json, metrics.jsonl)")
    p.add_argument("--splits", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--plot", required=True)
    p.add_argument("--log", default=None)
    args = p.parse_args(argv)
    setup_logging(args.log)
    evals = {m: read_json(f) for m, f in (kv.split("=", 1) for kv in args.eval)}
    rl_dirs = dict(kv.split("=", 1) for kv in args.rl)
    summaries = {m: read_json(Path(d) / "summary.json") for m, d in rl_dirs.items()}
    df = table2_frame(evals, summaries, args.splits)
    write_csv(df, args.out)
    plot_val_curves({m: read_jsonl(Path(d) / "metrics.jsonl") for m, d in rl_dirs.items()}, args.plot)
    log.info("\n%s", df.to_string(index=False))


if __name__ == "__main__":
    main()
