"""Compare RL runs of two result folders method by method: per-iteration metrics (wall-clock
fields aside) and the trained weights. Used to check that a refactor leaves a method's numbers
bit-identical, and to say by how much a deliberate fix moved them.

    python benchmarks/compare_rl_runs.py OLD/results NEW/results rloo grpo prime prime_frozen
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from safetensors.torch import load_file

from pipeline.rl import TIMING_KEYS as WALL


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in WALL} for r in rows]


def compare(old: Path, new: Path) -> dict:
    m_old, m_new = metrics(old), metrics(new)
    diffs = []
    for a, b in zip(m_old, m_new):
        for k in sorted(set(a) | set(b)):
            x, y = a.get(k), b.get(k)
            if x != y and not (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)):
                diffs.append((a["iteration"], k, x, y))
    w_old, w_new = load_file(old / "policy/model.safetensors"), load_file(new / "policy/model.safetensors")
    max_abs = max(float((w_old[k].float() - w_new[k].float()).abs().max()) for k in w_old)
    final_old = next(r["val_pass1"] for r in reversed(m_old) if "val_pass1" in r)
    final_new = next(r["val_pass1"] for r in reversed(m_new) if "val_pass1" in r)
    return {"metrics_equal": not diffs and len(m_old) == len(m_new), "n_metric_diffs": len(diffs),
            "first_diff": diffs[0] if diffs else None, "weights_bitwise_equal": max_abs == 0.0,
            "max_abs_weight_diff": max_abs, "final_val_pass1": (final_old, final_new),
            "keys_only_new": sorted(set(m_new[-1]) - set(m_old[-1]))}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old", type=Path, help="results folder of the reference code")
    p.add_argument("new", type=Path, help="results folder of the changed code")
    p.add_argument("methods", nargs="+")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for m in args.methods:
        r = compare(args.old / "rl" / m / f"s{args.seed}", args.new / "rl" / m / f"s{args.seed}")
        print(f"{m:14s} {json.dumps(r)}")


if __name__ == "__main__":
    main()
