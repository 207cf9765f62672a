"""Prefix completions (VinePPO values, MC labels): the decode loop before and after sorting
prefixes by length and dropping finished rows from the batch, side by side in one run.

    python benchmarks/bench_prefix_decode.py --policy results/models/sft/medium \
        --rollouts results/rollouts/medium/train.jsonl [--prompts 32] [--n 9] [--max-new-tokens 48]

The prefixes are those of one VinePPO iteration (`rl.vineppo_token_advantages`): each prompt
of the first `--prompts` prompts alone, and each of its rollouts cut at every step boundary
but the last. Every way samples `--n` completions of every prefix with
`HFSampler.generate_from_prefixes` and the same seed:
- old: `sort=False, compact=False`, the earlier loop (batches in the caller's order, a finished
  row is fed padding until its whole batch is done);
- sort: batches longest prefix first; compact: finished rows leave the batch; new: both.
Prints wall time (best of `--repeats`, the ways interleaved to even out machine noise),
generated tokens (what the caller gets), decode row-steps (rows fed to the model summed over
decode steps: the work the loop does, counted by a forward hook, machine-independent) and the
ratios to old; then checks that greedy completions are the same both ways.

Without --policy/--rollouts it uses a randomly initialised tiny Llama (config/tiny.yaml's
shape) and testbed prompts cut at random lengths: it runs anywhere, but a random model rarely
ends a row early, so the gain is small there; pass a trained policy for real numbers.
"""
from __future__ import annotations

import argparse
import random
import time

import torch

from pipeline.modeling import load_policy
from pipeline.sampler import HFSampler

WAYS = {"old": dict(sort=False, compact=False), "sort": dict(sort=True, compact=False),
        "compact": dict(sort=False, compact=True), "new": dict(sort=True, compact=True)}


def vineppo_prefixes(tok, rollouts: list[dict], n_prompts: int) -> list[list[int]]:
    """The prefixes one VinePPO iteration values, from the rollouts of the first n_prompts prompts."""
    from pipeline.steps import step_token_ends

    by_id: dict[str, list[dict]] = {}
    for r in rollouts:
        if r["id"] in by_id or len(by_id) < n_prompts:
            by_id.setdefault(r["id"], []).append(r)
    prefixes = []
    for rs in by_id.values():
        ids = tok(rs[0]["prompt"], add_special_tokens=False)["input_ids"]
        prefixes.append(list(ids))
        for r in rs:
            ends = step_token_ends(tok, r["response_ids"], r["step_ends"])
            prefixes += [ids + r["response_ids"][:e] for e in ends[:-1]]
    return prefixes


def random_setup(n_prompts: int, seed: int = 0):
    from pipeline.config import load_preset
    from pipeline.data_prep import arith_splits
    from pipeline.modeling import build_char_tokenizer, build_tiny_llama
    from pipeline.task import format_prompt

    cfg = load_preset()
    tok = build_char_tokenizer()
    model = build_tiny_llama(tok, cfg["model"], seed=0)
    rng = random.Random(seed)
    prefixes = []
    for r in arith_splits(cfg["task"], seed=0)["train"][:n_prompts]:
        ids = tok(format_prompt(r, cfg["task"]), add_special_tokens=False)["input_ids"]
        prefixes.append(list(ids))
        prefixes += [ids + [rng.randrange(3, len(tok)) for _ in range(rng.randrange(1, 30))] for _ in range(16)]
    return model, tok, prefixes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", default=None)
    p.add_argument("--rollouts", default=None)
    p.add_argument("--prompts", type=int, default=32, help="prompts of one RL iteration (rl.prompts_per_iter)")
    p.add_argument("--n", type=int, default=9, help="completions per prefix (VinePPO's K)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=512, help="sampling.batch_size (rows per batch)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--ways", nargs="+", default=list(WAYS), choices=list(WAYS))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.policy and args.rollouts:
        from pipeline.utils import read_jsonl

        model, tok = load_policy(args.policy)
        prefixes = vineppo_prefixes(tok, read_jsonl(args.rollouts), args.prompts)
    else:
        model, tok, prefixes = random_setup(args.prompts)
    model.eval()
    row_steps = [0]

    def count(_module, _args, kwargs):  # decode steps feed one token per row
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] == 1:
            row_steps[0] += ids.shape[0]

    model.register_forward_pre_hook(count, with_kwargs=True)
    lens = sorted(map(len, prefixes))
    print(f"{len(prefixes)} prefixes (length {lens[0]}-{lens[-1]}, median {lens[len(lens) // 2]}), n={args.n}, "
          f"max_new_tokens={args.max_new_tokens}, batch_size={args.batch_size}, threads={args.threads}")
    kw = dict(n=args.n, temperature=1.0, max_new_tokens=args.max_new_tokens, seed=0)
    HFSampler(model, tok, batch_size=args.batch_size, progress=False).generate_from_prefixes(
        prefixes[:64], n=args.n, max_new_tokens=8)  # warm-up: the first forward passes are slow
    best: dict[str, tuple] = {}
    for _ in range(args.repeats):
        for way in args.ways:
            s = HFSampler(model, tok, batch_size=args.batch_size, progress=False)
            row_steps[0] = 0
            t0 = time.perf_counter()
            s.generate_from_prefixes(prefixes, **kw, **WAYS[way])
            dt = time.perf_counter() - t0
            print(f"  {way}: {dt:.2f} s", flush=True)
            if way not in best or dt < best[way][0]:
                best[way] = (dt, s.compute.generated_tokens, row_steps[0])
    base = best[args.ways[0]]
    print(f"\n| way | wall s | generated tokens | decode row-steps | time ratio {args.ways[0]} / way "
          f"| row-steps ratio |\n|---|---:|---:|---:|---:|---:|")
    for way in args.ways:
        dt, gen, rs = best[way]
        print(f"| {way} ({', '.join(f'{k}={v}' for k, v in WAYS[way].items())}) | {dt:.2f} | {gen} | {rs} "
              f"| {base[0] / dt:.2f}x | {base[2] / rs:.2f}x |")
    greedy = {way: s.generate_from_prefixes(prefixes, **{**kw, "temperature": 0.0, "n": 1}, **WAYS[way])
              for way, s in ((w, HFSampler(model, tok, batch_size=args.batch_size, progress=False))
                             for w in ("old", "new"))}
    same = sum(a[0].token_ids == b[0].token_ids for a, b in zip(greedy["old"], greedy["new"]))
    print(f"\ngreedy completions identical old vs new: {same}/{len(prefixes)} prefixes")


if __name__ == "__main__":
    main()
