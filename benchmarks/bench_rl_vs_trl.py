"""The project's RL iteration against TRL's GRPOTrainer on the same policy and work, side by side.

    make bench-trl            # builds .venv-trl (the project + trl) once, then runs this
    .venv/bin/python benchmarks/bench_rl_vs_trl.py --trl-python .venv-trl/bin/python [--pairs 3]

Both sides start from the tiny preset's base policy (results/models/sft/<rl.base_policy>; build
it with `snakemake -c2 results/models/sft/medium`) and do one RL iteration's work per timed
unit: 32 prompts x 4 samples at temperature 1, up to `sampling.max_new_tokens` new tokens, the
old log-probs of the batch, then 2 optimizer steps of 64 samples (lr 1e-4, no KL, grad clip 1).
- ours: `pipeline.rl` with `--algo grpo` (the same advantage as TRL's GRPO), validation off;
  seconds per iteration from its metrics (`iter_s`).
- TRL: `GRPOTrainer` with `num_generations=4`, `per_device_train_batch_size=64`,
  `steps_per_generation=2` (one generation of 128 completions feeds 2 steps, so TRL computes the
  old log-probs with a forward; ours takes them from the sampling pass, `rl.old_logprobs:
  sampler`), `beta=0`, gradient checkpointing off (TRL's
  default is on; ours does not checkpoint, and a tiny model needs no memory saved); seconds
  between the ends of every second optimizer step. Its reward is the same grader (`pipeline.task.judge`).
Each side runs `--iterations` iterations in its own process, 2 threads, the first one untimed;
the sides alternate `--pairs` times and the table gives every pair's ratio. TRL is not a project
dependency: it lives only in .venv-trl.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def work(cfg: dict) -> dict:
    rl = cfg["rl"]
    return {"prompts": int(rl["prompts_per_iter"]), "samples": int(rl["samples_per_prompt"]),
            "max_new_tokens": int(cfg["sampling"]["max_new_tokens"]), "minibatch": int(rl["minibatch_size"]),
            "lr": float(rl["lr"]), "temperature": float(rl["temperature"]), "grad_clip": float(rl["grad_clip"])}


def run_ours(policy: Path, iterations: int, threads: int) -> list[float]:
    from pipeline.config import load_preset
    from pipeline.rl.train import main as rl_main

    cfg = load_preset()
    cfg["rl"].update(iterations=iterations, eval_every=10**6, checkpoint_every=10**6, eval_prompts=1, kl_coef=0.0,
                     ppo_epochs=1)
    stage_cfg = json.dumps({k: cfg[k] for k in ("rl", "task", "sampling", "seed")})
    with tempfile.TemporaryDirectory() as tmp:
        rl_main(["--cfg", stage_cfg, "--algo", "grpo", "--policy", str(policy),
                 "--data", str(Path(cfg["out_dir"]) / "data"), "--out", f"{tmp}/out", "--ckpt", f"{tmp}/ck",
                 "--threads", str(threads)])
        rows = [json.loads(line) for line in Path(f"{tmp}/out/metrics.jsonl").read_text().splitlines()][1:]
    return [r["iter_s"] for r in rows[1:]]


def run_trl(policy: Path, iterations: int, threads: int) -> list[float]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from pipeline.config import load_preset
    from pipeline.task import format_prompt, judge
    from pipeline.utils import read_jsonl

    torch.set_num_threads(threads)
    cfg = load_preset()
    w = work(cfg)
    task_cfg = cfg["task"]
    records = read_jsonl(Path(cfg["out_dir"]) / "data" / "train.jsonl")[: w["prompts"] * (iterations + 1)]
    by_prompt = {format_prompt(r, task_cfg): r for r in records}
    data = Dataset.from_list([{"prompt": p} for p in by_prompt])

    def reward(prompts, completions, **_):
        return [float(judge(by_prompt[p], c, task_cfg)["outcome"]) for p, c in zip(prompts, completions)]

    tok = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy)
    steps = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            steps.append(time.perf_counter())

    steps_per_gen = -(-w["prompts"] * w["samples"] // w["minibatch"])
    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(output_dir=tmp, use_cpu=True, bf16=False, seed=0, report_to=[], save_strategy="no",
                          logging_strategy="no", max_steps=steps_per_gen * iterations, learning_rate=w["lr"],
                          lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=w["grad_clip"], beta=0.0,
                          per_device_train_batch_size=w["minibatch"], gradient_accumulation_steps=1,
                          num_generations=w["samples"], steps_per_generation=steps_per_gen, num_iterations=1,
                          max_completion_length=w["max_new_tokens"], temperature=w["temperature"], top_p=1.0,
                          top_k=0, dataloader_num_workers=0, disable_tqdm=True, shuffle_dataset=False,
                          gradient_checkpointing=False)
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data,
                              processing_class=tok, callbacks=[Clock()])
        torch.set_num_threads(threads)
        trainer.train()
    ends = steps[steps_per_gen - 1::steps_per_gen]  # the end of each generation's last step
    return [b - a for a, b in zip(ends, ends[1:])]


def side(which: str, python: str, policy: Path, iterations: int, threads: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([python, __file__, "--side", which, "--policy", str(policy), "--iterations", str(iterations),
                          "--threads", str(threads)], cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the {which} side failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trl-python", default=str(REPO / ".venv-trl" / "bin" / "python"))
    p.add_argument("--policy", default=None, help="default: results/models/sft/<rl.base_policy>")
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--side", choices=["ours", "trl"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        times = (run_ours if args.side == "ours" else run_trl)(Path(args.policy), args.iterations, args.threads)
        print(json.dumps(times))
        return
    from pipeline.config import load_preset

    cfg = load_preset()
    policy = Path(args.policy or Path(cfg["out_dir"]) / "models" / "sft" / cfg["rl"]["base_policy"])
    if not (policy / "config.json").exists():
        raise SystemExit(f"no policy at {policy}: build it with `snakemake -c2 {policy}`")
    if not Path(args.trl_python).exists():
        raise SystemExit(f"no {args.trl_python}: `make bench-trl` builds .venv-trl")
    print(f"work per iteration: {work(cfg)}; {args.iterations} iterations per run (first untimed), "
          f"{args.threads} threads, policy {policy}")
    print("| pair | ours s / iteration | TRL s / iteration | ours / TRL |\n|---:|---:|---:|---:|")
    ratios = []
    for pair in range(1, args.pairs + 1):
        ours = statistics.mean(side("ours", sys.executable, policy, args.iterations, args.threads))
        trl = statistics.mean(side("trl", args.trl_python, policy, args.iterations, args.threads))
        ratios.append(ours / trl)
        print(f"| {pair} | {ours:.3f} | {trl:.3f} | {ours / trl:.2f} |", flush=True)
    print(f"\nours / TRL: mean {statistics.mean(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f}")


if __name__ == "__main__":
    main()
