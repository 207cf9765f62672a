"""Stage: the online-RL results table (table2) and validation curves, over several seeds.

Inputs: for every method one evaluate.py JSON per seed (`--eval METHOD=a.json,b.json`),
and for every RL method one RL run directory per seed, in the same seed order
(`--rl METHOD=dir_a,dir_b`; each holds summary.json and metrics.jsonl). `base` (the
starting policy) has evals but no RL runs.

table2.csv has one row per method (base first, then the others in --eval order):

  method, n_seeds       the method and how many seeds it was run with
  <split>               pass@1 on that eval split (mean over k samples), mean over seeds
  <split>_greedy        greedy accuracy on that split, mean over seeds (if the evals have it)
  <split>_final_value   with --final-value (long-form answers): the share of samples whose
                        final value is right, mean over seeds
  avg                   mean over splits of the <split> columns
  spread                sample std (ddof=1) over seeds of each seed's own split-average
                        (0.0 with one seed); avg_min / avg_max: its min and max over seeds
  train_samples         RL samples generated (auxiliary MC samples included), mean over seeds
  train_flops           RL FLOPs, mean over seeds
  wall_s                RL wall-clock seconds, mean over seeds (0 for base)
  iters_to_target       sample efficiency. The target is the reference method's (--reference,
  samples_to_target     default rloo) final validation pass@1, mean over its seeds. On a
  efficiency_vs_ref     method's mean validation curve (mean over seeds at each iteration
                        where every seed was validated) the first iteration reaching the
                        target, the mean cumulative samples at that iteration, and
                        reference's iterations / this method's iterations (2.0 = reached it in
                        half the iterations; the reference itself is 1.0). "not reached" if the
                        curve never gets there; empty for base, and for every row when the
                        reference is not among the RL methods.

The plot shows validation pass@1 against RL iteration and against cumulative training FLOPs:
the mean over seeds per method with a min-max band, the target (dashed) and the base
policy's validation pass@1 (dotted, iteration 0 of the reference's runs).
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import pandas as pd

from .rl_summary import (NOT_REACHED, efficiency, final_val, first_reaching, iterations_to_target, mean, mean_curve,
                         seed_summary)
from .utils import parse_pairs, read_json, read_jsonl, save_figure, setup_logging, write_csv

log = logging.getLogger("pipeline.table2")

def table2_frame(evals: dict[str, list[dict]], summaries: dict[str, list[dict]],
                 metrics: dict[str, list[list[dict]]], splits: list[str], reference: str = "rloo",
                 final_value: bool = False) -> pd.DataFrame:
    """`evals[method]`: one evaluate.py output per seed; `summaries[method]` / `metrics[method]`:
    one rl.py summary.json / metrics.jsonl per seed, same order (RL methods only).
    `final_value`: also report `<split>_final_value`, the share of samples whose final value is
    right (long-form answers, where pass1 is the whole answer line's exact match)."""
    target = final_val(metrics[reference]) if reference in metrics else math.nan
    ref_iters = iterations_to_target(mean_curve(metrics[reference]), target) if reference in metrics else None

    greedy = [s for s in splits if any("greedy" in ev["splits"][s] for evs in evals.values() for ev in evs)]
    cols = ["method", "n_seeds"]
    for s in splits:
        cols += [s, f"{s}_greedy"] if s in greedy else [s]
        cols += [f"{s}_final_value"] if final_value else []
    cols += ["avg", "spread", "avg_min", "avg_max", "train_samples", "train_flops", "wall_s",
             "iters_to_target", "samples_to_target", "efficiency_vs_ref"]

    order = sorted(evals, key=lambda m: m != "base")  # stable: base first, the rest in given order
    rows = []
    for method in order:
        evs = evals[method]
        row = {"method": method, "n_seeds": len(evs)}
        for s in splits:
            row[s] = mean(ev["splits"][s]["pass1"] for ev in evs)
            if s in greedy:
                g = [ev["splits"][s].get("greedy") for ev in evs]
                row[f"{s}_greedy"] = mean(g) if None not in g else math.nan
            if final_value:
                fv = [ev["splits"][s].get("final_value_pass1") for ev in evs]
                row[f"{s}_final_value"] = mean(fv) if None not in fv else math.nan
        row.update(seed_summary(evs, summaries.get(method, []), splits))
        if method in metrics and not math.isnan(target):
            p = first_reaching(mean_curve(metrics[method]), target)
            row["iters_to_target"] = NOT_REACHED if p is None else p.iteration
            row["samples_to_target"] = NOT_REACHED if p is None else p.samples
            row["efficiency_vs_ref"] = efficiency(ref_iters, None if p is None else p.iteration)
        else:  # base, or no reference to compare with
            row["iters_to_target"] = row["samples_to_target"] = row["efficiency_vs_ref"] = None
        rows.append(row)
    df = pd.DataFrame(rows, columns=cols)
    for c in ("iters_to_target", "samples_to_target", "efficiency_vs_ref"):  # numbers, text or empty
        df[c] = pd.Series([r[c] for r in rows], dtype=object)
    df.attrs.update(target=target, reference=reference)
    return df


# -----------------------------------------------------------------------------
# outputs

def plot_val_curves(metrics: dict[str, list[list[dict]]], path: str, target: float | None = None,
                    base_val: float | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for i, (method, runs) in enumerate(metrics.items()):
        curve = mean_curve(runs)
        color = f"C{i}"
        for ax, x in zip(axes, ("iteration", "flops")):
            pts = [p for p in curve if x == "iteration" or p.flops > 0]  # log axis: drop the untrained point
            xs = [getattr(p, x) for p in pts]
            ax.plot(xs, [p.val for p in pts], marker="o", ms=3, color=color, label=f"{method} ({len(runs)} seeds)")
            ax.fill_between(xs, [p.lo for p in pts], [p.hi for p in pts], color=color, alpha=0.2, lw=0)
    for ax in axes:
        if target is not None and math.isfinite(target):
            ax.axhline(target, ls="--", color="k", lw=1, label="target (reference final)")
        if base_val is not None:
            ax.axhline(base_val, ls=":", color="gray", lw=1.5, label="base (iteration 0)")
        ax.grid(alpha=0.3)
    axes[0].set_xlabel("RL iteration")
    axes[1].set_xlabel("cumulative training FLOPs")
    axes[1].set_xscale("log")
    axes[0].set_ylabel("validation pass@1")
    if metrics or base_val is not None:
        axes[0].legend(fontsize=8)
    seeds = sorted({len(runs) for runs in metrics.values()}) or [0]
    n = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
    fig.suptitle(f"Validation pass@1 during RL: mean over {n} seeds, band = min-max over seeds")
    save_figure(fig, path)


# -----------------------------------------------------------------------------
# CLI

def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eval", nargs="+", required=True, help="METHOD=eval_seed1.json,eval_seed2.json,... (base first)")
    p.add_argument("--rl", nargs="*", default=[], help="METHOD=rl_dir_seed1,rl_dir_seed2,... (same seed order)")
    p.add_argument("--splits", nargs="+", required=True)
    p.add_argument("--reference", default="rloo", help="method whose final validation pass@1 is the target")
    p.add_argument("--final-value", action="store_true",
                   help="add <split>_final_value columns (long-form answers: the final value alone)")
    p.add_argument("--out", required=True)
    p.add_argument("--plot", required=True)
    p.add_argument("--log", default=None)
    args = p.parse_args(argv)
    setup_logging(args.log)

    eval_paths, rl_dirs = parse_pairs(args.eval, "--eval"), parse_pairs(args.rl, "--rl")
    for m, dirs in rl_dirs.items():
        if m not in eval_paths:
            raise SystemExit(f"--rl {m}: no --eval entry for this method")
        if len(dirs) != len(eval_paths[m]):
            raise SystemExit(f"{m}: {len(eval_paths[m])} eval files but {len(dirs)} RL runs (one each per seed)")
    evals = {m: [read_json(f) for f in fs] for m, fs in eval_paths.items()}
    summaries = {m: [read_json(Path(d) / "summary.json") for d in ds] for m, ds in rl_dirs.items()}
    metrics = {m: [read_jsonl(Path(d) / "metrics.jsonl") for d in ds] for m, ds in rl_dirs.items()}
    if args.reference not in metrics:
        log.warning("reference %r is not among the RL methods %s: no sample-efficiency columns",
                    args.reference, list(metrics))

    df = table2_frame(evals, summaries, metrics, args.splits, args.reference, args.final_value)
    write_csv(df, args.out)
    target = df.attrs["target"]
    # base's validation pass@1 = iteration 0 of the reference's runs (of any RL method without one)
    src = metrics.get(args.reference) or next(iter(metrics.values()), [])
    base_val = next((p.val for p in mean_curve(src) if p.iteration == 0), None)
    plot_val_curves(metrics, args.plot, target, base_val)
    log.info("target (%s final validation pass@1): %.4f", args.reference, target)
    with pd.option_context("display.width", 200, "display.max_columns", None):
        log.info("\n%s", df.to_string(index=False))


if __name__ == "__main__":
    main()
