"""Training step time with micro batches and with data-parallel ranks, against one process
taking one forward per batch, side by side in one run.

    python benchmarks/bench_data_parallel.py [--steps 20] [--batch 64] [--micro 16] [--cores 2]

Times `engine.train_batch` on SFT steps of the tiny preset's model (config/tiny.yaml `model`,
batches of testbed solutions), in fresh processes:
- one process, `--cores` threads, one forward per batch (the baseline);
- one process, `--cores` threads, forwards of `--micro` accumulated to the batch;
- `torch.distributed.run` with 2 ranks (gloo), `--cores`/2 threads each, one forward per rank.
The first two steps of each run are left out (warm-up). On a CPU the ranks share the cores,
so the DP row measures the cost of splitting (all-reduce, smaller matmuls), not a speed-up; on
GPUs each rank has its own device.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time


def worker(args) -> None:
    import torch

    from pipeline.config import load_preset
    from pipeline.data_prep import arith_splits
    from pipeline.engine import build_engine, is_main, train_batch
    from pipeline.modeling import build_char_tokenizer, build_tiny_llama
    from pipeline.sft import encode_examples, sft_loss

    torch.set_num_threads(args.threads)
    cfg = load_preset()
    task = {**cfg["task"], "arith": {**cfg["task"]["arith"], "sizes": {"test": 1, "val": 1, "ood": 1, "train": 2000}}}
    tok = build_char_tokenizer()
    train = encode_examples(arith_splits(task, 0)["train"], tok, task)
    model = build_tiny_llama(tok, cfg["model"], 0)
    engine = build_engine(model, {**cfg["sft"], "micro_batch_size": args.micro}, total_steps=args.steps,
                          batch_size=args.batch)
    times = []
    for step in range(args.steps):
        batch = random.Random(step).sample(train, args.batch)
        t0 = time.perf_counter()
        train_batch(engine, batch, [len(y) for _, y in batch],
                    lambda ex: (sft_loss(engine, ex, tok.pad_token_id)[0], {}, None),
                    engine.train_micro_batch_size_per_gpu())
        times.append(time.perf_counter() - t0)
    if is_main():
        warm = times[2:]
        print("RESULT " + json.dumps({"step_s": sum(warm) / len(warm), "micro": engine.train_micro_batch_size_per_gpu(),
                                      "accumulation": engine.gradient_accumulation_steps()}), flush=True)


def run(label: str, cmd: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--micro", type=int, default=16)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        micro = None if args.micro <= 0 else args.micro
        args.micro = micro
        return worker(args)
    me = [os.path.abspath(__file__), "--worker", "--steps", str(args.steps), "--batch", str(args.batch)]
    rows = {
        "one forward per batch": run("base", [sys.executable, *me, "--threads", str(args.cores), "--micro", "0"]),
        f"micro batches of {args.micro}": run("micro", [sys.executable, *me, "--threads", str(args.cores), "--micro",
                                                        str(args.micro)]),
        "2 ranks (gloo), one forward each": run("dp", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                      "--nproc-per-node=2", *me, "--threads",
                                                      str(max(1, args.cores // 2)), "--micro", "0"]),
    }
    base = rows["one forward per batch"]["step_s"]
    print(f"SFT step, batch {args.batch}, tiny model, {args.cores} cores, {args.steps} steps (first 2 left out)")
    print(f"{'setup':<36} {'micro x acc':>12} {'s/step':>8} {'vs base':>8}")
    for name, r in rows.items():
        print(f"{name:<36} {str(r['micro']) + ' x ' + str(r['accumulation']):>12} {r['step_s']:8.3f} "
              f"{r['step_s'] / base:7.2f}x")


if __name__ == "__main__":
    main()
