"""Sampler throughput against batch size and decode loop, measured side by side in one run.

    python benchmarks/bench_sampler.py [--policy results/models/sft/medium] [--prompts 1024]
        [--decode own generate] [--repeats 3]

Prints generated tokens/s per batch size and decode loop (`sampling.decode`: the own loop of
pipeline/decoding.py, or transformers' `generate`), best of `--repeats` runs interleaved, the
ratio to the first row, and how many samples the two loops drew identically (same seeds); this
is what `sampling.batch_size` and `sampling.decode` in config/tiny.yaml are chosen from. Without --policy it uses a
randomly initialised tiny Llama of the tiny preset's shape (throughput does not depend on
the weights, only on how long responses are, so pass a trained policy for real numbers).
"""
from __future__ import annotations

import argparse
import time

import torch

from pipeline.config import load_preset
from pipeline.data_prep import arith_splits
from pipeline.modeling import build_char_tokenizer, build_tiny_llama, load_policy
from pipeline.sampler import HFSampler
from pipeline.task import format_prompt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--policy", default=None)
    p.add_argument("--prompts", type=int, default=1024)
    p.add_argument("--split", default="train", help="testbed split to draw prompts from")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 512])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--decode", nargs="+", default=["own", "generate"], choices=["own", "generate"])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_preset()
    if args.policy:
        model, tok = load_policy(args.policy)
    else:
        tok = build_char_tokenizer()
        model = build_tiny_llama(tok, cfg["model"], seed=0)
    records = arith_splits(cfg["task"], seed=0)[args.split][: args.prompts]
    prompts = [format_prompt(r, cfg["task"]) for r in records]
    base = None
    max_new = cfg["sampling"]["max_new_tokens"]
    print(f"{len(prompts)} prompts, max_new_tokens={max_new}, threads={args.threads}, best of {args.repeats}")
    print("| batch size | decode | seconds | generated tokens/s | ratio to first | same samples as first way |")
    print("|---:|---|---:|---:|---:|---:|")
    for bs in args.batch_sizes:
        samplers = {way: HFSampler(model, tok, batch_size=bs, progress=False, decode=way) for way in args.decode}
        best, outs = {}, {}
        for _ in range(args.repeats):
            for way, sampler in samplers.items():
                sampler.generate(prompts[:bs], n=1, max_new_tokens=8, seed=0)  # warm-up
                before = sampler.compute.generated_tokens
                t0 = time.perf_counter()
                outs[way] = sampler.generate(prompts, n=1, temperature=1.0, max_new_tokens=max_new, seed=1)
                dt = time.perf_counter() - t0
                tokens = sampler.compute.generated_tokens - before
                best[way] = min(best.get(way, (dt, tokens)), (dt, tokens))
        first = outs[args.decode[0]]
        for way in args.decode:
            dt, tokens = best[way]
            tps = tokens / dt
            base = base or tps
            same = sum(a[0].token_ids == b[0].token_ids for a, b in zip(first, outs[way]))
            print(f"| {bs} | {way} | {dt:.2f} | {tps:.0f} | {tps / base:.2f}x | {same} / {len(prompts)} |")

if __name__ == "__main__":
    main()
