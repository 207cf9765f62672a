"""Stage: online RL of a policy, `python -m pipeline.rl --algo <method>`: one loop for every
method in `pipeline.registry.RL_METHODS` (PPO-style clipping, optional KL penalty to the initial
policy). The loop never branches on the method's name; a method is a `pipeline.rl.base.Method`.

Each iteration: draw `prompts_per_iter` training prompts, sample `samples_per_prompt` responses
from the current policy through the sampler interface, grade them, let the method turn them into
a `TrainBatch` (per-token advantages, the sequences trained on), compute old and reference
log-probs, optionally whiten the advantages (`rl.whiten_advantages`), and take PPO minibatch
steps through DeepSpeed. Metrics go to a JSONL log per iteration (with validation pass@1 every
`eval_every` iterations); checkpoints every `checkpoint_every` iterations make a killed job
resume where it left off. `--seed S` picks the run's seed (prompt order, sampling), so the same
config runs several seeds. Formulas: docs/METHODS.md.
"""
from __future__ import annotations

import json
import logging
import random
import shutil
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..engine import barrier, build_engine, config_hash, is_main, load_checkpoint, save_checkpoint, train_batch
from ..evaluate import evaluate_policy
from ..flops import Compute, count_params
from ..modeling import load_policy, save_policy
from ..registry import RL_METHODS, rl_reward_model
from ..sampler import HFSampler, VLLMSampler, make_sampler
from ..scoring import collate, join_responses, split_responses, token_logprobs
from ..task import format_prompt, judge
from ..tracking import stage_tracker
from ..utils import read_json, read_records, seed_everything, stage_parser, start_stage, write_json, write_jsonl
from .base import Context, Rollouts, load_method, mean_or_none
from .losses import kl_penalty, whiten

log = logging.getLogger("pipeline.rl")


def sampled_logprobs(encoded: list[list[int]], gens, prompt_ids, response_ids) -> list[torch.Tensor | None]:
    """Each training sequence's log-probs as the sampler recorded them while drawing it
    (`Generation.logprobs`), or None where the sequence is not one the sampler drew as is
    (a method may train on other tokens, e.g. JEPO's reference answers) or it recorded none.
    Matched on the prompt's and the response's token ids, so a method that filters or
    reorders samples (PRIME) still gets its rows' own values."""
    drawn = {}
    for p, gs in zip(encoded, gens):
        for g in gs:
            if g.logprobs is not None:
                drawn[(tuple(p), tuple(g.token_ids))] = g.logprobs
    out = []
    for p, r in zip(prompt_ids, response_ids):
        lp = drawn.get((tuple(p), tuple(r)))
        out.append(None if lp is None or len(lp) != len(r) else torch.tensor(lp, dtype=torch.float32))
    return out


def old_response_logprobs(model, prompt_ids, response_ids, pad_id, mb: int,
                          known: list[torch.Tensor | None], temperature: float = 1.0) -> tuple[list[torch.Tensor], int]:
    """Old log-probs for every sequence: `known` ones as they are (recorded at `temperature`),
    the rest by a forward at `temperature`. Returns them and the number of tokens the forward
    read (for the FLOP count)."""
    todo = [i for i, v in enumerate(known) if v is None]
    out = list(known)
    if todo:
        got = response_logprobs(model, [prompt_ids[i] for i in todo], [response_ids[i] for i in todo], pad_id, mb,
                                temperature)
        for i, v in zip(todo, got):
            out[i] = v
    return out, sum(len(prompt_ids[i]) + len(response_ids[i]) for i in todo)


@torch.no_grad()
def response_logprobs(model, prompt_ids, response_ids, pad_id, mb: int, temperature: float = 1.0) -> list[torch.Tensor]:
    """log pi(y_t | x, y_<t) at `temperature` (log softmax(logits / T)) over each response's
    tokens, one 1-D tensor per sample."""
    out: list[torch.Tensor] = []
    for s in range(0, len(prompt_ids), mb):
        batch = collate(prompt_ids[s:s + mb], response_ids[s:s + mb], pad_id)
        out.extend(v.cpu() for v in split_responses(token_logprobs(model, batch, temperature), batch))
    return out


def main(argv=None) -> None:
    p = stage_parser(__doc__)
    p.add_argument("--algo", required=True, help="an RL method (pipeline.registry.RL_METHODS)")
    p.add_argument("--policy", required=True, help="initial policy (model dir or hub id)")
    p.add_argument("--data", required=True, help="directory with train.jsonl and val.jsonl")
    p.add_argument("--out", required=True, help="output directory: policy/ and metrics.jsonl")
    p.add_argument("--ckpt", required=True, help="resume checkpoint directory")
    p.add_argument("--seed", type=int, default=0, help="run seed: config seed * 1000 + this")
    p.add_argument("--rm", default=None, help="trained reward model dir (pav: the PAV; prime_frozen: an implicit "
                                              "PRM; prime: the PRM's init when rl.prime.prm_init names one)")
    args, cfg = start_stage(p, argv)
    rl, task_cfg, samp = cfg["rl"], cfg["task"], cfg["sampling"]
    seed = int(cfg["seed"]) * 1000 + int(args.seed)
    seed_everything(seed)
    algo = args.algo
    if algo not in RL_METHODS:  # fail fast, before loading anything
        raise SystemExit(f"--algo {algo!r}: rl methods are {', '.join(RL_METHODS)}")
    if rl_reward_model(rl, algo) is not None and not args.rm:
        raise SystemExit(f"--algo {algo} needs --rm (the trained reward model named by "
                         f"rl.{RL_METHODS[algo].reward_model_key})")

    train = read_records(Path(args.data) / "train.jsonl")  # checked before any model loads
    val = read_records(Path(args.data) / "val.jsonl")[: int(rl["eval_prompts"])]
    model, tokenizer = load_policy(args.policy)
    n_params = count_params(model)
    ref_model = None
    if float(rl["kl_coef"]) > 0:
        ref_model, _ = load_policy(args.policy)
        ref_model.eval().requires_grad_(False)
    P, K, iters = int(rl["prompts_per_iter"]), int(rl["samples_per_prompt"]), int(rl["iterations"])
    mb, epochs = int(rl["minibatch_size"]), int(rl["ppo_epochs"])
    steps_per_iter = epochs * -(-P * K // mb)
    engine = build_engine(model, rl, total_steps=iters * steps_per_iter, batch_size=mb)
    method = load_method(algo, Context(rl=rl, task=task_cfg, sampling=samp, policy=args.policy, rm=args.rm,
                                       tokenizer=tokenizer, engine=engine, n_params=n_params, iterations=iters,
                                       minibatch=mb, seed=seed))
    kl_coef, kl_reduction, clip_eps = float(rl["kl_coef"]), rl["kl_reduction"], float(rl["clip_eps"])

    ckpt = Path(args.ckpt)
    chash = config_hash({**cfg, "algo": algo, "policy": args.policy, "seed_index": args.seed, "rm": args.rm})
    state = load_checkpoint(engine, ckpt, chash, method.extra_engines) or {
        "iteration": 0, "metrics": [], "compute": Compute().to_dict(), "wall_s": 0.0}
    compute = Compute.from_dict(state["compute"])
    t_start = time.time() - state["wall_s"]
    # the sampler follows the weights being trained: HF samples from engine.module itself; vLLM
    # (GPU presets) runs its own copy, loaded from the base policy and synced from the trainer
    # here (after a resume, the checkpoint's weights) and after every update
    if samp["backend"] == "vllm":
        sampler = make_sampler(samp, model_path=args.policy, colocate=True)
        sampler.sync_weights(engine.module)  # every rank calls it under ZeRO-3
    else:
        sampler = HFSampler(engine.module, tokenizer, batch_size=samp["batch_size"], progress=False,
                            decode=samp["decode"])
    pad = tokenizer.pad_token_id
    from_sampler = rl["old_logprobs"] == "sampler"
    top_p = float(rl["top_p"])
    # the policy's log-probs in training (loss, old, reference): of the distribution the samples
    # are drawn from, softmax(logits / T) (TRL, verl, the released VinePPO), or of the raw logits;
    # never truncated by top_p (as those trainers do)
    lp_temp = float(rl["temperature"]) if rl["logprob_temperature"] == "sampling" else 1.0

    def validate(it: int) -> float:
        vs = HFSampler(engine.module, tokenizer, batch_size=samp["batch_size"], progress=False,
                       decode=samp["decode"])
        res = evaluate_policy(vs, val, task_cfg, k=1, temperature=float(rl["temperature"]), top_p=top_p,
                              max_new_tokens=int(samp["max_new_tokens"]), seed=seed + 7 * it)
        return res["pass1"]  # validation compute is not training compute: not added

    fresh = state["iteration"] == 0 and not state["metrics"]
    # TensorBoard (a side channel: the metrics.jsonl rows, step = iteration) under the run folder
    tracker = stage_tracker(cfg, Path(args.out) / "tensorboard", is_main(), None if fresh else state["iteration"] + 1,
                            f"rl/{algo}/s{args.seed}")
    if fresh:
        state["metrics"].append({"iteration": 0, "val_pass1": validate(0), "samples": 0, "flops": 0.0,
                                 "wall_s": 0.0})
        tracker.scalars(state["metrics"][0], 0, prefix="rl", skip=("iteration",))
    for it in tqdm(range(state["iteration"], iters), desc=f"rl {algo} s{args.seed}", initial=state["iteration"],
                   total=iters, mininterval=5, disable=not is_main()):
        t_it = time.time()
        rng = random.Random(seed * 1_000_003 + it)  # prompts are a function of the iteration
        records = [train[i] for i in rng.sample(range(len(train)), P)]
        prompts = [format_prompt(r, task_cfg) for r in records]
        sampler.compute = Compute()  # this iteration's sampling cost
        gens = sampler.generate(prompts, n=K, temperature=float(rl["temperature"]), top_p=top_p,
                                max_new_tokens=int(samp["max_new_tokens"]), seed=seed * 7_919 + it,
                                logprobs=from_sampler, logprob_temperature=lp_temp)
        t_sampled = time.time()
        # outcomes: the reward of every method but JEPO, which logs them only
        rewards = torch.tensor([[float(judge(r, g.text, task_cfg)["outcome"]) for g in gs]
                                for r, gs in zip(records, gens)])
        encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]  # once per prompt, K samples share it
        ro = Rollouts(it, records, encoded, gens, rewards, sampler)
        n_policy_samples, n_policy_tokens = sampler.compute.samples, sampler.compute.generated_tokens

        batch = method.batch(ro, compute)  # per-token advantages and the sequences to train on
        t_batched = time.time()
        aux_samples = sampler.compute.samples - n_policy_samples
        aux_tokens = sampler.compute.generated_tokens - n_policy_tokens
        compute = compute.merge(sampler.compute)  # every generated token, auxiliary ones included

        prompt_ids, response_ids = batch.prompt_ids, batch.response_ids
        n_tokens = sum(len(a) + len(b) for a, b in zip(prompt_ids, response_ids))
        engine.eval()
        # PPO's old log-probs are the sampling policy's: the sampler's own where it recorded them
        # (rl.old_logprobs: sampler), a forward for the rest; the weights have not changed since
        known = (sampled_logprobs(encoded, gens, prompt_ids, response_ids) if from_sampler
                 else [None] * len(prompt_ids))
        old_logp, forward_tokens = old_response_logprobs(engine.module, prompt_ids, response_ids, pad, mb, known,
                                                         lp_temp)
        ref_logp = response_logprobs(ref_model, prompt_ids, response_ids, pad, mb, lp_temp) if ref_model else None
        compute.add_scoring(n_params, forward_tokens + (n_tokens if ref_model else 0))
        method.after_logprobs(batch, old_logp)
        t_logprobs = time.time()
        if rl["whiten_advantages"] and len(batch):
            batch.adv = whiten(batch.adv, batch.tokens.get(batch.pg_mask) if batch.pg_mask else None)
        per_token = {"adv": batch.adv, **batch.tokens}
        mb_tokens = {"per_sequence": 1.0}  # the current minibatch's tokens per sequence (sequence_sum KL)

        def policy_loss(idx):  # the policy's loss on a micro batch of sample indices
            b = collate([prompt_ids[i] for i in idx], [response_ids[i] for i in idx], pad)
            logp = token_logprobs(engine, b, lp_temp)
            mask = b["response_mask"].to(logp.device)
            old = join_responses([old_logp[i] for i in idx], b).to(logp.device)
            tok = {name: join_responses([vs[i] for i in idx], b).to(logp.device) for name, vs in per_token.items()}
            loss, stats = method.loss(logp, old, tok, mask, clip_eps)
            stats = {"clip_frac": stats["clip_frac"]}
            if ref_logp is not None:
                ref = join_responses([ref_logp[i] for i in idx], b).to(logp.device)
                kl = kl_penalty(logp, ref, mask, kl_reduction, mb_tokens["per_sequence"])
                loss = loss + kl_coef * kl
                stats["kl"] = kl.item()
            return loss, stats, None

        engine.train()
        order = list(range(len(prompt_ids)))
        losses, clip_fracs, kls, step_stats = [], [], [], {}
        for epoch in range(epochs if order else 0):  # PRIME may have filtered every prompt out
            if epoch > 0:
                rng.shuffle(order)
            for s in range(0, len(order), mb):
                # shortest first: micro batches (rl.micro_batch_size) then hold sequences of
                # similar length and pad little; the step's gradient is the same to float rounding
                idx = sorted(order[s:s + mb], key=lambda i: len(prompt_ids[i]) + len(response_ids[i]))
                mb_tokens["per_sequence"] = sum(len(response_ids[i]) for i in idx) / len(idx)
                # one optimizer step on the minibatch (split over ranks and micro batches by
                # train_batch); the loss is a token mean over all of the minibatch's responses
                loss, stats, _ = train_batch(engine, idx, [len(response_ids[i]) for i in idx], policy_loss,
                                             engine.train_micro_batch_size_per_gpu(), what=f"{algo} loss", step=it, lr_key="rl.lr")
                losses.append(loss)
                clip_fracs.append(stats["clip_frac"])
                if "kl" in stats:
                    kls.append(stats["kl"])
                for k, v in method.after_step(batch, idx, it, compute).items():
                    step_stats.setdefault(k, []).append(v)
        compute.add_training(n_params, n_tokens * epochs)
        if isinstance(sampler, VLLMSampler):
            sampler.sync_weights(engine.module)  # the next iteration samples from the updated policy
        t_trained = time.time()

        row = {"iteration": it + 1, "reward_mean": rewards.mean().item(),
               "solved_all_frac": (rewards.min(1).values == 1).float().mean().item(),
               "solved_none_frac": (rewards.max(1).values == 0).float().mean().item(),
               "loss": mean_or_none(losses), "clip_frac": mean_or_none(clip_fracs), "kl": mean_or_none(kls),
               "response_len": sum(len(g.token_ids) for gs in gens for g in gs) / (P * K), "aux_samples": aux_samples,
               # tokens drawn this iteration: the policy's responses, and auxiliary ones (VinePPO's MC
               # completions): a decode-bound method's cost is its tokens (benchmarks/bench_rl_iteration.py)
               "sampled_tokens": n_policy_tokens, "aux_tokens": aux_tokens,
               **batch.metrics, **{k: mean_or_none(v) for k, v in step_stats.items()},
               "samples": compute.samples, "flops": compute.flops, "iter_s": time.time() - t_it,
               # where the iteration's time went: policy sampling; the method's batch (rewards,
               # PRM scoring and updates, VinePPO's auxiliary rollouts); old / reference
               # log-probs; the optimizer steps (and a vLLM weight sync)
               "sample_s": t_sampled - t_it, "batch_s": t_batched - t_sampled,
               "logprob_s": t_logprobs - t_batched, "train_s": t_trained - t_logprobs}
        if (it + 1) % int(rl["eval_every"]) == 0 or it + 1 == iters:
            row["val_pass1"] = validate(it + 1)
        row["wall_s"] = time.time() - t_start
        state["metrics"].append(row)
        tracker.scalars(row, it + 1, prefix="rl", skip=("iteration",))
        log.info("it %d reward %.3f loss %s val %s", it + 1, row["reward_mean"], row["loss"], row.get("val_pass1"))
        if (it + 1) % int(rl["checkpoint_every"]) == 0 and it + 1 < iters:
            state.update(iteration=it + 1, compute=compute.to_dict(), wall_s=row["wall_s"])
            save_checkpoint(engine, ckpt, it + 1, chash, state, method.extra_engines)
            tracker.flush()
    tracker.close()

    out = Path(args.out)
    base_meta_path = Path(args.policy) / "policy_meta.json"
    base_meta = read_json(base_meta_path) if base_meta_path.exists() else {}
    meta = {"algo": algo, "seed": seed, "seed_index": args.seed, "init_policy": args.policy, "reward_model": args.rm,
            "iterations": iters, "rl_compute": compute.to_dict(), "rl_samples": compute.samples,
            "rl_flops": compute.flops, "init_policy_meta": base_meta, "n_params": n_params,
            "wall_s": time.time() - t_start}
    save_policy(engine.module, tokenizer, out / "policy", extra_files={"policy_meta.json": json.dumps(meta, indent=2)})
    barrier()
    if not is_main():  # rank 0 writes the outputs (save_policy gathers ZeRO-3 weights from every rank)
        return
    write_jsonl(out / "metrics.jsonl", state["metrics"])
    write_json(out / "summary.json", meta)
    shutil.rmtree(ckpt, ignore_errors=True)  # finished: the resume state is no longer needed


if __name__ == "__main__":
    main()
