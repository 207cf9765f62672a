"""Stage: the table and plot of one ablation grid (results/ablations/<grid>.csv and .png).

`--cells` is a JSON list with one entry per grid cell, in grid order:
`{"cell": {axis: value, ...}, "files": {...}}` (workflow/rules/ablations.smk writes it). The
files a cell has depend on the grid:

  implicit_prm, factors   metrics: the trained implicit PRM's metrics.json (pipeline.train_rm);
                          scores: its pipeline.score_pool directory over the best-of-N pools
                          (with --pools; the table then has best-of-N accuracy)
  mc_label                labels: the cell's MC labels JSONL; label_summary: its .summary.json;
                          pav: metrics.json of the PAV trained on them with the cell's prover K
  pav_rl, vineppo         runs: one RL run directory per seed (summary.json, metrics.jsonl);
                          evals: one pipeline.evaluate JSON per seed, same order

Columns: the grid's axes, then
  reward models   n_examples, n_instructions (what the cell trained on), held-out solution AUROC
                  per aggregation (auroc_min / _last / _mean), within-prompt AUROC (min / last),
                  step_auroc (testbed), final_loss, train / data / total FLOPs, wall_s; with
                  --pools, best-of-N accuracy at N = --bon-n on each generator's pool
                  (bon<N>_<generator>, as table1 computes it) and their mean (bon<N>_avg)
  MC labels       n_seed_rollouts, n_prefixes, label_flops, label_generated_tokens; on the testbed
                  the labels' agreement with the true prefix correctness: he_accuracy, se_auroc,
                  qbok_accuracy and qbok_auroc (Q_BoK = 1 - (1 - Q_hat)^K at the cell's K, >= 0.5);
                  then the PAV's pav_auroc_last, pav_within_prompt_auroc_last, pav_step_auroc,
                  pav_total_flops (labelling included)
  RL              n_seeds, val_final (mean over seeds of the last validation pass@1), per eval
                  split the mean pass@1, avg (mean over splits), spread (std over seeds of each
                  seed's avg, 0 with one seed), rl_samples, rl_flops, wall_s (means over seeds)

The plot has one group of bars per cell: the grid's headline columns (PLOT_COLUMNS).
"""
from __future__ import annotations

import argparse
import json
import logging
import math

import pandas as pd

from .metrics import auroc
from .mc_values import best_of_k, prefix_truth
from .rl_summary import final_val, mean, seed_summary
from .utils import read_json, read_jsonl, save_figure, setup_logging, write_csv
from .verify import best_of_n_accuracy, load_pool

log = logging.getLogger("pipeline.ablation_table")

RM_GRIDS = ("implicit_prm", "factors")
RL_GRIDS = ("pav_rl", "vineppo")
GRIDS = RM_GRIDS + ("mc_label",) + RL_GRIDS
RM_COLUMNS = ("n_examples", "n_instructions", "auroc_min", "auroc_last", "auroc_mean", "within_prompt_auroc_min",
              "within_prompt_auroc_last", "step_auroc", "final_loss", "train_flops", "data_flops", "total_flops",
              "wall_s")
PLOT_COLUMNS = {"implicit_prm": ("auroc_min", "within_prompt_auroc_min", "step_auroc"),
                "factors": ("auroc_min", "within_prompt_auroc_min", "step_auroc"),
                "mc_label": ("se_auroc", "qbok_accuracy", "pav_auroc_last", "pav_step_auroc"),
                "pav_rl": ("val_final", "avg"), "vineppo": ("val_final", "avg")}
NAN = math.nan


# -----------------------------------------------------------------------------
# pure rows (tests/test_ablations.py checks them against hand-computed values)

def rm_row(cell: dict, metrics: dict, bon: dict | None = None) -> dict:
    """A reward-model cell: its axes, what pipeline.train_rm measured, then its best-of-N
    accuracies (`bon_columns`) when given."""
    row = dict(cell)
    for k in RM_COLUMNS:
        row[k] = metrics.get(k, NAN)
    row["n_instructions"] = metrics.get("ablation", {}).get("n_instructions", NAN)
    row.update(bon or {})
    return row


def bon_columns(accuracy: dict[str, float], n: int) -> dict:
    """{generator: best-of-N accuracy} -> bon<N>_<generator> columns and their mean bon<N>_avg
    (the Implicit PRM paper's ablations report best-of-N averaged over generators)."""
    out = {f"bon{n}_{g}": a for g, a in accuracy.items()}
    out[f"bon{n}_avg"] = mean(accuracy.values()) if accuracy else NAN
    return out


def label_agreement(rows: list[dict], prover_k: int) -> dict:
    """How MC labels agree with the true prefix correctness (testbed): HE accuracy, SE AUROC, and
    the accuracy and AUROC of the Best-of-K prover's Q_BoK = 1 - (1 - Q_hat)^K (>= 0.5)."""
    truth = prefix_truth(rows)
    he = [int(x) for r in rows for x in r["he"]]
    se = [float(x) for r in rows for x in r["q_hat"]]
    bok = [best_of_k(q, prover_k) for q in se]
    both = 0 < sum(truth) < len(truth)
    return {"he_accuracy": sum(int(a == t) for a, t in zip(he, truth)) / len(truth),
            "se_auroc": auroc(se, truth) if both else NAN,
            "qbok_accuracy": sum(int((b >= 0.5) == t) for b, t in zip(bok, truth)) / len(truth),
            "qbok_auroc": auroc(bok, truth) if both else NAN}


def mc_row(cell: dict, label_summary: dict, label_rows: list[dict], pav_metrics: dict) -> dict:
    """An MC-labelling cell: labelling cost, agreement with the truth at the cell's prover K (when
    the rows carry the testbed's `first_error`), and the PAV trained on the labels."""
    row = dict(cell)
    comp = label_summary["compute"]
    row.update(n_seed_rollouts=label_summary.get("n_seed_rollouts", len(label_rows)),
               n_prefixes=label_summary.get("n_prefixes", NAN), label_flops=comp["flops"],
               label_generated_tokens=comp["generated_tokens"])
    if label_rows and "first_error" in label_rows[0]:
        row.update(label_agreement(label_rows, int(cell["prover_k"])))
    else:
        row.update(he_accuracy=NAN, se_auroc=NAN, qbok_accuracy=NAN, qbok_auroc=NAN)
    for k in ("auroc_last", "auroc_min", "within_prompt_auroc_last", "step_auroc", "total_flops"):
        row[f"pav_{k}"] = pav_metrics.get(k, NAN)
    return row


def rl_row(cell: dict, summaries: list[dict], runs: list[list[dict]], evals: list[dict], splits: list[str]) -> dict:
    """An RL cell over its seeds: final validation pass@1, pass@1 per eval split, avg, spread,
    samples, FLOPs and wall time (means over seeds)."""
    row = dict(cell)
    row["n_seeds"] = len(evals)
    row["val_final"] = final_val(runs)
    for s in splits:
        row[s] = mean(ev["splits"][s]["pass1"] for ev in evals)
    agg = seed_summary(evals, summaries, splits)  # table2's own aggregation over seeds
    row.update(avg=agg["avg"], spread=agg["spread"], rl_samples=agg["train_samples"], rl_flops=agg["train_flops"],
               wall_s=agg["wall_s"])
    return row


def grid_frame(grid: str, cells: list[dict], load=None, splits: list[str] | None = None,
               bon: dict | None = None) -> pd.DataFrame:
    """One row per cell, in the given order. `load(kind, path)` reads a file (kind: json, jsonl,
    run); the default reads from disk. A test passes a dict lookup. `bon` (RM grids):
    {"pools": {generator: load_pool pools}, "n", "n_subsets", "seed"} adds best-of-N columns
    from each cell's `scores` directory."""
    if grid not in GRIDS:
        raise ValueError(f"unknown ablation grid {grid!r}; known: {GRIDS}")
    load = load or _load
    rows = []
    for c in cells:
        f = c["files"]
        if grid in RM_GRIDS:
            metrics = load("json", f["metrics"])
            acc = None
            if bon is not None:
                meta = load("json", f"{f['scores']}/meta.json")
                acc = bon_columns({g: best_of_n_accuracy(pools, f"{f['scores']}/{g}.jsonl", f"cell{len(rows)}", metrics,
                                                         bool(meta["scores_are_probabilities"]), int(bon["n"]),
                                                         int(bon["n_subsets"]), int(bon["seed"]))
                                   for g, pools in bon["pools"].items()}, int(bon["n"]))
            rows.append(rm_row(c["cell"], metrics, acc))
        elif grid == "mc_label":
            rows.append(mc_row(c["cell"], load("json", f["label_summary"]), load("jsonl", f["labels"]),
                               load("json", f["pav"])))
        else:
            runs = [load("run", d) for d in f["runs"]]
            rows.append(rl_row(c["cell"], [r["summary"] for r in runs], [r["metrics"] for r in runs],
                               [load("json", e) for e in f["evals"]], list(splits or [])))
    return pd.DataFrame(rows)


def _load(kind: str, path: str):
    if kind == "json":
        return read_json(path)
    if kind == "jsonl":
        return read_jsonl(path)
    return {"summary": read_json(f"{path}/summary.json"), "metrics": read_jsonl(f"{path}/metrics.jsonl")}


# -----------------------------------------------------------------------------
# outputs

def cell_labels(df: pd.DataFrame, axes: list[str]) -> list[str]:
    """"axis=value, ..." per row, each value in its column's own type (iterrows would upcast an
    all-numeric row to float: n_mc=4.0)."""
    return [", ".join(f"{a}={df[a].iloc[i]}" for a in axes) for i in range(len(df))]


def plot_grid(df: pd.DataFrame, grid: str, axes: list[str], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in PLOT_COLUMNS[grid] + tuple(c for c in df.columns if c.startswith("bon") and c.endswith("_avg"))
            if c in df.columns and df[c].notna().any()]
    labels = cell_labels(df, axes)
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.45 * len(df) * max(1, len(cols)) ** 0.5))
    height = 0.8 / max(1, len(cols))
    for j, c in enumerate(cols):
        ys = [i + (j - (len(cols) - 1) / 2) * height for i in range(len(df))]
        ax.barh(ys, df[c].astype(float).fillna(0.0), height=height, label=c, color=f"C{j}")
    ax.set_yticks(range(len(df)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    if grid not in RL_GRIDS:
        ax.axvline(0.5, ls="--", color="gray", lw=1, label="chance (AUROC 0.5)")
    ax.set_xlabel("AUROC / accuracy" if grid not in RL_GRIDS else "pass@1")
    ax.grid(axis="x", alpha=0.3)
    if cols:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"ablation grid: {grid} ({len(df)} cells)")
    save_figure(fig, path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", required=True, choices=GRIDS)
    p.add_argument("--axes", nargs="+", required=True, help="the grid's axes (the first columns)")
    p.add_argument("--cells", required=True, help="JSON list of {cell, files} (or @file.json)")
    p.add_argument("--splits", nargs="*", default=[], help="RL grids: the eval splits")
    p.add_argument("--pools", nargs="*", default=[], help="RM grids: generator=pool.jsonl (best-of-N columns)")
    p.add_argument("--bon-n", type=int, default=None, help="N of the best-of-N columns (default: the pool size)")
    p.add_argument("--bon-subsets", type=int, default=8, help="subset draws per N below the pool size")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset draws (table1's)")
    p.add_argument("--grader", default="math", help="answer extraction of the pools (task.grader)")
    p.add_argument("--out", required=True)
    p.add_argument("--plot", required=True)
    p.add_argument("--log", default=None)
    args = p.parse_args(argv)
    setup_logging(args.log)
    cells = json.loads(open(args.cells[1:]).read() if args.cells.startswith("@") else args.cells)
    bon = None
    if args.pools and args.grid in RM_GRIDS:
        pools = {}
        for spec in args.pools:
            g, _, path = spec.partition("=")
            pools[g] = load_pool(path, {"grader": args.grader})[0]
        size = len(next(iter(pools.values()))[0]["outcome"])
        bon = {"pools": pools, "n": args.bon_n or size, "n_subsets": args.bon_subsets, "seed": args.seed}
    df = grid_frame(args.grid, cells, splits=args.splits, bon=bon)
    write_csv(df, args.out)
    plot_grid(df, args.grid, args.axes, args.plot)
    with pd.option_context("display.width", 200, "display.max_columns", None):
        log.info("%s:\n%s", args.grid, df.to_string(index=False))


if __name__ == "__main__":
    main()
