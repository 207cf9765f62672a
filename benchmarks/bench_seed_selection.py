"""MC labelling seed selection: `random` (every step boundary) against `first_pit` (each seed
labelled only up to its first pit), side by side in one run on the same seeds.

    python benchmarks/bench_seed_selection.py [--preset config/tiny.yaml] [--out /tmp/bench_pit]

Runs the real stage (`pipeline.mc_label.main`) twice on the DAG's seed rollouts and completer
(results/rollouts/<seed_policy>/<split>.jsonl, results/models/sft/<completer>; build them with
`snakemake -c2 results/mc/medium/train.jsonl` first) and prints prefixes labelled, tokens,
FLOPs, wall time and the labels' agreement with the testbed's true step correctness.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pipeline.config import load_preset
from pipeline.mc_label import main as mc_label_main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", nargs="*", default=[], help="overlays merged over config/tiny.yaml")
    p.add_argument("--out", default="/tmp/bench_seed_selection")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    cfg = load_preset(*args.preset)
    mc = cfg["mc_label"]
    res = Path(cfg["out_dir"])
    rollouts = res / "rollouts" / mc["seed_policy"] / f"{mc['split']}.jsonl"
    completer = cfg.get("policies", {}).get(mc["completer"], res / "models" / "sft" / mc["completer"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for how in ("random", "first_pit"):
        cfg["mc_label"]["seed_selection"] = how
        stage_cfg = json.dumps({k: cfg[k] for k in ("mc_label", "task", "sampling", "seed")})
        t0 = time.perf_counter()
        mc_label_main(["--cfg", stage_cfg, "--rollouts", str(rollouts), "--records", str(res / "data" / f"{mc['split']}.jsonl"),
                       "--completer", str(completer),
                       "--out", str(out / f"{how}.jsonl"), "--threads", str(args.threads)])
        wall = time.perf_counter() - t0
        s = json.loads((out / f"{how}.summary.json").read_text())
        agree = {a["label"]: a for a in s.get("agreement", [])}
        rows[how] = (s["n_prefixes"], s["compute"]["generated_tokens"], s["compute"]["flops"], wall,
                     agree.get("HE (any completion right)", {}).get("accuracy"),
                     agree.get("SE >= 0.5", {}).get("auroc"))
    print(f"{mc['n_prompts']} prompts x n_cov={mc['n_cov']} seeds, n_mc={mc['n_mc']}, threads={args.threads}")
    print("| seed selection | prefixes labelled | generated tokens | FLOPs | wall s | HE accuracy | SE AUROC |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for how, (n, g, f, w, acc, au) in rows.items():
        print(f"| {how} | {n} | {g} | {f:.3g} | {w:.1f} | {acc:.3f} | {au:.3f} |")
    (rn, rg, rf, rw, *_), (pn, pg, pf, pw, *_) = rows["random"], rows["first_pit"]
    print(f"| **ratio random / first_pit** | {rn / pn:.2f}x | {rg / pg:.2f}x | {rf / pf:.2f}x | {rw / pw:.2f}x | | |")


if __name__ == "__main__":
    main()
