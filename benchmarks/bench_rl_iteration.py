"""Time per RL iteration of each method against RLOO, side by side in one run.

    python benchmarks/bench_rl_iteration.py [--algos rloo grpo prime ...] [--iterations 4] [--preset ...]
        [--decode own generate] [--old-logprobs sampler forward] [--vineppo-dedupe true false]

Runs the real RL stage (`pipeline.rl.main`) for a few iterations of each algorithm from the
tiny preset's base policy (results/models/sft/<rl.base_policy>, results/data; build them with
`snakemake -c2 results/models/sft/medium results/rm/pav/metrics.json results/rm/implicit_ce/metrics.json`:
PAV-RL and PRIME-frozen read those reward models), validation disabled, and prints the mean iteration time,
samples and FLOPs per iteration (auxiliary rollouts included) and their ratios to RLOO. The
first iteration of each run is left out of the time (one-off warm-up).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from pipeline.config import load_preset, rl_reward_model
from pipeline.rl.train import main as rl_main


PHASES = ("sample_s", "batch_s", "logprob_s", "train_s")  # pipeline/rl/train.py's per-phase times
TOKENS = ("sampled_tokens", "aux_tokens")  # tokens drawn per iteration by the policy, and auxiliary ones


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--algos", nargs="+", default=None, help="default: the preset's rl.algos")
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--preset", nargs="*", default=[])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--decode", nargs="+", default=None, choices=["own", "generate"],
                   help="sampling.decode ways to time side by side (default: the preset's)")
    p.add_argument("--old-logprobs", nargs="+", default=None, choices=["sampler", "forward"],
                   help="rl.old_logprobs ways to time side by side (default: the preset's)")
    p.add_argument("--vineppo-dedupe", nargs="+", default=None, choices=["true", "false"],
                   help="rl.vineppo.dedupe_states ways to time side by side for VinePPO (default: the preset's)")
    args = p.parse_args()
    cfg = load_preset(*args.preset)
    rl = cfg["rl"]
    # no validation inside the timed iterations except the unavoidable last one, no checkpoints
    rl.update(iterations=args.iterations, eval_every=10**6, checkpoint_every=10**6, eval_prompts=1)
    res = Path(cfg["out_dir"])
    policy = cfg.get("policies", {}).get(rl["base_policy"], res / "models" / "sft" / rl["base_policy"])
    rows, phases = {}, {}
    decodes = args.decode or [cfg["sampling"]["decode"]]
    olds = args.old_logprobs or [rl["old_logprobs"]]
    dedupes = [d == "true" for d in args.vineppo_dedupe] if args.vineppo_dedupe else [rl["vineppo"]["dedupe_states"]]
    ways = [(d, o) for d in decodes for o in olds]
    runs = [(a, w, dd) for a in args.algos or rl["algos"] for w in ways
            for dd in (dedupes if a == "vineppo" else [rl["vineppo"]["dedupe_states"]])]
    with tempfile.TemporaryDirectory() as tmp:
        for algo, (decode, old), dedupe in runs:
            tags = ([f"{decode} decode"] if len(decodes) > 1 else []) + ([f"old log-probs: {old}"] if len(olds) > 1 else []) \
                + ([f"dedupe_states: {str(dedupe).lower()}"] if algo == "vineppo" and len(dedupes) > 1 else [])
            name = f"{algo} ({', '.join(tags)})" if tags else algo
            out = Path(tmp) / name
            rm = rl_reward_model(cfg, algo)
            stage_cfg = json.dumps({"rl": {**rl, "old_logprobs": old, "vineppo": {**rl["vineppo"], "dedupe_states": dedupe}},
                                    **{k: cfg[k] for k in ("task", "seed")},
                                    "sampling": {**cfg["sampling"], "decode": decode}})
            rl_main(["--cfg", stage_cfg, "--algo", algo, "--policy", str(policy), "--data", str(res / "data"),
                     "--out", str(out), "--ckpt", str(Path(tmp) / f"ck_{algo}"), "--threads", str(args.threads),
                     *(["--rm", str(res / "rm" / rm / "model")] if rm else [])])
            m = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
            timed = m[1:] or m  # the first iteration pays one-off warm-up (DeepSpeed op build, allocator)
            rows[name] = (sum(r["iter_s"] for r in timed) / len(timed), m[-1]["samples"] / len(m),
                          m[-1]["flops"] / len(m))
            phases[name] = {k: sum(r[k] for r in timed) / len(timed) for k in PHASES + TOKENS}
    print(f"{args.iterations} iterations (first one untimed) x {rl['prompts_per_iter']} prompts x {rl['samples_per_prompt']} samples, "
          f"vineppo_k={rl['vineppo']['k']}, threads={args.threads}")
    print("| method | s / iteration | samples / iteration | FLOPs / iteration | time vs first | FLOPs vs first |")
    print("|---|---:|---:|---:|---:|---:|")
    base = rows.get("rloo") or next(iter(rows.values()))
    for name, (t, s, f) in rows.items():
        print(f"| {name} | {t:.2f} | {s:.0f} | {f:.3g} | {t / base[0]:.2f}x | {f / base[2]:.1f}x |")
    print("\nWhere an iteration's time goes (seconds, share of the iteration):")
    print("| method | " + " | ".join(PHASES) + " |\n|---|" + "---:|" * len(PHASES))
    for name, ph in phases.items():
        t = rows[name][0]
        print(f"| {name} | " + " | ".join(f"{ph[k]:.2f} ({ph[k] / t:.0%})" for k in PHASES) + " |")
    print("\nTokens drawn per iteration, and what each cost (ms per token: sample_s over the policy's, batch_s over the auxiliary):")
    print("| method | sampled tokens | auxiliary tokens | ms / sampled token | ms / auxiliary token |\n|---|---:|---:|---:|---:|")
    for name, ph in phases.items():
        aux = f"{1e3 * ph['batch_s'] / ph['aux_tokens']:.3f}" if ph["aux_tokens"] else ""
        print(f"| {name} | {ph['sampled_tokens']:.0f} | {ph['aux_tokens']:.0f} | {1e3 * ph['sample_s'] / ph['sampled_tokens']:.3f} | {aux} |")
    if "rloo" not in phases:
        return
    # a method that is RLOO plus auxiliary completions, each drawn at RLOO's own cost per sampled
    # token: how close its time can come to RLOO's with this decode loop
    t_rloo, rloo_s_per_token = rows["rloo"][0], phases["rloo"]["sample_s"] / phases["rloo"]["sampled_tokens"]
    for name, ph in phases.items():
        if ph["aux_tokens"]:
            floor = t_rloo + ph["aux_tokens"] * rloo_s_per_token
            print(f"\n{name}: its auxiliary tokens at RLOO's cost per sampled token would take {floor:.2f} s per "
                  f"iteration, {floor / t_rloo:.2f}x RLOO (measured: {rows[name][0] / t_rloo:.2f}x)")


if __name__ == "__main__":
    main()
