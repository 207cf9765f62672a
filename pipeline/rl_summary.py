"""Summaries of RL runs over seeds: mean validation curves, final validation pass@1, sample
efficiency against a reference method, per-seed result rows. Library code shared by table 2
(`pipeline.table2`) and the ablation tables (`pipeline.ablation_table`); pure functions,
checked by hand in tests/test_tables.py.
"""
from __future__ import annotations

import math
import statistics
from typing import NamedTuple

NOT_REACHED = "not reached"
TOL = 1e-9  # the reference's mean curve equals the target at its last point up to rounding


class CurvePoint(NamedTuple):
    iteration: int
    val: float      # mean validation pass@1 over seeds
    samples: float  # mean cumulative training samples
    flops: float    # mean cumulative training FLOPs
    lo: float       # min over seeds of validation pass@1
    hi: float       # max over seeds


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def mean_curve(runs: list[list[dict]]) -> list[CurvePoint]:
    """`runs`: one metrics.jsonl (list of rows) per seed. Returns the mean validation curve,
    one point per iteration at which every seed has a val_pass1, sorted by iteration."""
    by_iter = []
    for rows in runs:
        by_iter.append({r["iteration"]: r for r in rows if r.get("val_pass1") is not None})
    common = sorted(set.intersection(*(set(d) for d in by_iter))) if by_iter else []
    curve = []
    for it in common:
        rows = [d[it] for d in by_iter]
        vals = [r["val_pass1"] for r in rows]
        curve.append(CurvePoint(it, mean(vals), mean(r["samples"] for r in rows), mean(r["flops"] for r in rows),
                                min(vals), max(vals)))
    return curve


def final_val(runs: list[list[dict]]) -> float:
    """Mean over seeds of each seed's last validation pass@1."""
    return mean([r["val_pass1"] for r in rows if r.get("val_pass1") is not None][-1] for rows in runs)


def first_reaching(curve: list[CurvePoint], target: float) -> CurvePoint | None:
    """The first point of `curve` whose mean validation pass@1 is >= target, or None."""
    return next((p for p in curve if p.val >= target - TOL), None)


def iterations_to_target(curve: list[CurvePoint], target: float) -> int | None:
    p = first_reaching(curve, target)
    return None if p is None else p.iteration


def efficiency(ref_iters: int | None, iters: int | None) -> float | str:
    """Reference's iterations-to-target over this method's: > 1 means fewer iterations needed."""
    if iters is None:
        return NOT_REACHED
    if ref_iters is None:
        return math.nan
    if iters == 0:  # the target is at or below the starting policy: reached without training
        return 1.0 if ref_iters == 0 else math.inf
    return ref_iters / iters


def seed_summary(evs: list[dict], summaries: list[dict], splits: list[str]) -> dict:
    """Over the seeds of one RL run (or the base policy, with no summaries): the mean of the
    per-split pass@1 (`avg`), its spread (std over seeds), min and max, and the mean training
    samples, FLOPs and wall time. Shared by table2 and the RL ablation grids."""
    seed_avgs = [mean(ev["splits"][s]["pass1"] for s in splits) for ev in evs]
    return {"avg": mean(mean(ev["splits"][s]["pass1"] for ev in evs) for s in splits),
            "spread": statistics.stdev(seed_avgs) if len(seed_avgs) > 1 else 0.0,
            "avg_min": min(seed_avgs), "avg_max": max(seed_avgs),
            "train_samples": mean(x["rl_samples"] for x in summaries) if summaries else 0.0,
            "train_flops": mean(x["rl_flops"] for x in summaries) if summaries else 0.0,
            "wall_s": mean(x["wall_s"] for x in summaries) if summaries else 0.0}
