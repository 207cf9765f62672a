"""MC labelling: shared-prefix completions against the naive way, side by side in one run.

    python benchmarks/bench_mc_prefix.py --policy results/models/sft/medium \
        --rollouts results/rollouts/medium/train.jsonl [--seeds 128] [--n-mc 8]

Both ways sample n_mc completions from every step-boundary prefix of the same seed
rollouts with the same decode loop (`HFSampler.generate_from_prefixes`); the shared way
encodes each prefix once and copies its KV cache n_mc times, the naive way encodes n_mc
copies. Prints tokens computed (prefill + generated) and wall time, and their ratios.
"""
from __future__ import annotations

import argparse
import time

import torch

from pipeline.mc_values import select_seeds
from pipeline.modeling import load_policy
from pipeline.sampler import HFSampler
from pipeline.steps import step_token_ends
from pipeline.utils import read_jsonl


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--policy", required=True)
    p.add_argument("--rollouts", required=True)
    p.add_argument("--seeds", type=int, default=128, help="seed rollouts to label")
    p.add_argument("--n-mc", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_policy(args.policy)
    seeds = select_seeds(read_jsonl(args.rollouts), 10**9, 10**9)[: args.seeds]
    prefixes = []
    for r in seeds:
        ids = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        ends = step_token_ends(tok, r["response_ids"], r["step_ends"])
        prefixes += [ids + r["response_ids"][:e] for e in ends[:-1]]
    print(f"{len(seeds)} seed rollouts, {len(prefixes)} prefixes, n_mc={args.n_mc}, threads={args.threads}")
    results = {}
    for share in (False, True, False, True):  # alternate to even out machine noise; keep the best
        s = HFSampler(model, tok, batch_size=args.batch_size, progress=False)
        t0 = time.perf_counter()
        s.generate_from_prefixes(prefixes, n=args.n_mc, temperature=1.0, max_new_tokens=48, seed=0, share_prefix=share)
        dt = time.perf_counter() - t0
        tokens = s.compute.prompt_tokens + s.compute.generated_tokens
        best = results.get(share)
        if best is None or dt < best[1]:
            results[share] = (tokens, dt, s.compute.prompt_tokens, s.compute.generated_tokens)
    (nt, nd, npf, ng), (st, sd, spf, sg) = results[False], results[True]
    print("| way | prefill tokens | generated tokens | tokens computed | wall s |\n|---|---:|---:|---:|---:|")
    print(f"| naive (n_mc copies encoded) | {npf} | {ng} | {nt} | {nd:.2f} |")
    print(f"| shared prefix (one prefill, KV cache copied) | {spf} | {sg} | {st} | {sd:.2f} |")
    print(f"| **ratio naive / shared** | {npf / spf:.2f}x | | **{nt / st:.2f}x** | **{nd / sd:.2f}x** |")


if __name__ == "__main__":
    main()
