"""Sampler throughput against batch size, measured side by side in one run.

    python benchmarks/bench_sampler.py [--policy results/models/sft/medium] [--prompts 1024]

Prints generated tokens/s per batch size and the ratio to the smallest batch; this is what
`sampling.batch_size` in config/tiny.yaml is chosen from. Without --policy it uses a
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
    print(f"{len(prompts)} prompts, max_new_tokens={cfg['sampling']['max_new_tokens']}, threads={args.threads}")
    print("| batch size | seconds | generated tokens/s | ratio to first |\n|---:|---:|---:|---:|")
    for bs in args.batch_sizes:
        sampler = HFSampler(model, tok, batch_size=bs, progress=False)
        sampler.generate(prompts[:bs], n=1, max_new_tokens=8, seed=0)  # warm-up
        sampler.compute.generated_tokens = 0
        t0 = time.perf_counter()
        sampler.generate(prompts, n=1, temperature=1.0, max_new_tokens=cfg["sampling"]["max_new_tokens"], seed=1)
        dt = time.perf_counter() - t0
        tps = sampler.compute.generated_tokens / dt
        base = base or tps
        print(f"| {bs} | {dt:.2f} | {tps:.0f} | {tps / base:.2f}x |")


if __name__ == "__main__":
    main()
