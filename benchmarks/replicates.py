"""Whole-experiment replicates: table 2 and its RL claims on several result folders, each the
same config with another top-level `seed` (new data, another SFT path, another base policy:
the variance a fresh machine adds, and more). Prints, per replicate, every method's test and OOD
pass@1 and each RL claim's difference with its within-run interval, then the spread of the
point estimates across replicates: what a conclusion must survive. For the accuracy claims it
also pools the replicates with a two-level bootstrap (replicates resampled, then within each the
test prompts, paired, and each method's seeds): an interval with the whole experiment's
variance in it, the base policy's included.

    snakemake -c2 results/table2.csv                                         # replicate 0 (seed 0)
    snakemake -c2 R1/table2.csv --config seed=1 out_dir=R1                   # replicate 1
    python benchmarks/replicates.py results R1 [R2 ...]
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

from pipeline.claims import RL_CLAIMS, bootstrap, paired_draw, pass1_matrix, resample, rl_claims, verdict


def read_run(out: Path) -> tuple[dict[str, list[dict]], dict[str, list[list[dict]]]]:
    """Evaluations per method (base included) and RL metrics per algorithm, over seeds."""
    evals: dict[str, list[dict]] = {}
    for path in sorted((out / "eval").glob("*/s*.json")):
        evals.setdefault(path.parent.name, []).append(json.loads(path.read_text()))
    metrics: dict[str, list[list[dict]]] = {}
    for path in sorted((out / "rl").glob("*/s*/metrics.jsonl")):
        metrics.setdefault(path.parent.parent.name, []).append(
            [json.loads(line) for line in path.read_text().splitlines()])
    return evals, metrics


def mean_pass1(evs: list[dict], split: str) -> float:
    mat = pass1_matrix(evs, split)
    return sum(map(sum, mat)) / sum(map(len, mat))


def pooled_difference(pairs: list[tuple[list[list[float]], list[list[float]]]], n_boot: int, seed: int
                      ) -> tuple[float, float, float]:
    """Mean over replicates of mean(a) - mean(b), each replicate's ([seed][prompt] a, b); the
    interval resamples replicates, then in each the prompts (shared by a and b) and each
    method's seeds (`paired_draw`)."""
    point = sum(paired_draw(a, b) for a, b in pairs) / len(pairs)

    def stat(rng: random.Random) -> float:
        picked = [pairs[i] for i in resample(rng, len(pairs))]
        return sum(paired_draw(a, b, rng) for a, b in picked) / len(picked)
    return (point, *bootstrap(stat, n_boot, seed))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="result folders, one per replicate")
    p.add_argument("--split", default="test")
    p.add_argument("--ood", default="ood")
    p.add_argument("--n-boot", type=int, default=2000)
    args = p.parse_args(argv)
    runs = {str(r): read_run(r) for r in args.runs}
    methods = list(dict.fromkeys(m for evals, _ in runs.values() for m in evals))
    print(f"| method | {' | '.join(f'{r} {args.split} / {args.ood}' for r in runs)} |")
    print("|---|" + "---|" * len(runs))
    for m in methods:
        cells = [f"{mean_pass1(ev[m], args.split):.3f} / {mean_pass1(ev[m], args.ood):.3f}" if m in ev else ""
                 for ev, _ in runs.values()]
        print(f"| {m} | {' | '.join(cells)} |")
    print()
    points: dict[str, list[float]] = {}
    print(f"| claim | {' | '.join(runs)} | spread of the point over replicates | pooled (two-level bootstrap) |")
    print("|---|" + "---|" * (len(runs) + 2))
    thresholds = {c[3]: (c[0], c[1], c[2], c[7]) for c in RL_CLAIMS}
    rows = {r: {x["claim"]: x for x in rl_claims(ev, mt, args.split, args.n_boot, 0)} for r, (ev, mt) in runs.items()}
    for claim in dict.fromkeys(c[3] for c in RL_CLAIMS):
        got = [rows[r].get(claim) for r in runs]
        if not any(got):
            continue
        points[claim] = [x["ours"] for x in got if x]
        cells = [f"{x['ours']:+.3f} [{x['ci_lo']:+.3f}, {x['ci_hi']:+.3f}] {x['verdict']}" if x else "" for x in got]
        spread = (f"{min(points[claim]):+.3f} .. {max(points[claim]):+.3f} (sd {statistics.stdev(points[claim]):.3f})"
                  if len(points[claim]) > 1 else "")
        a, b, kind, threshold = thresholds[claim]
        pooled = ""
        if kind == "accuracy" and all(a in ev and b in ev for ev, _ in runs.values()):
            est = pooled_difference([(pass1_matrix(ev[a], args.split), pass1_matrix(ev[b], args.split))
                                     for ev, _ in runs.values()], args.n_boot, 0)
            pooled = f"{est[0]:+.3f} [{est[1]:+.3f}, {est[2]:+.3f}] {verdict(est[1], est[2], threshold)}"
        print(f"| {claim} | {' | '.join(cells)} | {spread} | {pooled} |")


if __name__ == "__main__":
    main()
