"""Stage: online RL of a policy with outcome rewards (RLOO or GRPO) or VinePPO's Monte-Carlo
step advantages, PPO-style clipping and an optional KL penalty to the initial policy.

Each iteration: draw `prompts_per_iter` training prompts, sample `samples_per_prompt`
responses from the current policy through the sampler interface, grade them, compute
group advantages, and take PPO minibatch steps through DeepSpeed. Metrics go to a JSONL
log per iteration (with validation pass@1 every `eval_every` iterations); checkpoints
every `checkpoint_every` iterations make a killed job resume where it left off.

The dense-reward methods change how the per-token advantages `adv_tok` are formed, not the
loop. VinePPO (`algo: vineppo`): from every step boundary of every response, `rl.vineppo_k`
auxiliary completions under the *current* policy give V_hat(s_h) (the bare prompt's value is
shared by the prompt's responses); step advantages A_h = V(s_{h+1}) - V(s_h), with the
outcome in place of V after the last step; every token of a step gets its step's advantage.
Completions of one prefix share its computation (`generate_from_prefixes`), and every
auxiliary token counts as the method's compute. PRIME, PAV-RL and JEPO are to follow.
"""
from __future__ import annotations

import logging
import json
import random
import shutil
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .advantages import OUTCOME_ADVANTAGES, kl_k3, masked_mean, ppo_clip_loss, step_to_token, vineppo_step_advantages
from .engine import build_engine, config_hash, load_checkpoint, save_checkpoint
from .evaluate import evaluate_policy
from .flops import Compute, count_params
from .mc_label import prefix_success_counts
from .modeling import load_policy, save_policy
from .sampler import HFSampler
from .scoring import collate, join_responses, split_responses, token_logprobs
from .steps import split_steps_with_ends, step_token_ends
from .task import format_prompt, judge
from .utils import (check_finite, read_json, read_jsonl, seed_everything,
                    stage_parser, start_stage, write_json, write_jsonl)

log = logging.getLogger("pipeline.rl")


DENSE_ALGOS = ("vineppo",)
ALGOS = tuple(sorted(OUTCOME_ADVANTAGES)) + DENSE_ALGOS


def compute_advantages(algo: str, rewards: torch.Tensor) -> torch.Tensor:
    """[P, K] outcome rewards -> [P, K] sequence advantages (every token of a response gets its
    sequence's advantage)."""
    if algo not in OUTCOME_ADVANTAGES:
        raise ValueError(f"outcome advantages are one of {sorted(OUTCOME_ADVANTAGES)}, got {algo!r}")
    return OUTCOME_ADVANTAGES[algo](rewards)


def vineppo_token_advantages(sampler, encoded: list[list[int]], records: list[dict], gens, rewards: torch.Tensor,
                             task_cfg: dict, *, k_aux: int, temperature: float, max_new_tokens: int,
                             seed: int) -> tuple[list[torch.Tensor], list[list[float]]]:
    """VinePPO's per-token advantages for gens[p][k] (P prompts x K responses), and each
    response's state values [V(x), V(s_2), ..., V(s_H)]. A value is the mean outcome of k_aux
    completions of the prefix under the sampler's (current) policy, each held to the response
    budget `max_new_tokens` counted from the start of the response."""
    tok = sampler.tokenizer
    delim = task_cfg.get("step_delimiter", "\n")
    prefixes = [list(ids) for ids in encoded]          # V(x): one per prompt, shared by its K responses
    owners: list[tuple[int, int | None, int]] = [(p, None, 0) for p in range(len(encoded))]
    plan = []
    for p, gs in enumerate(gens):
        for k, g in enumerate(gs):
            _, ends = split_steps_with_ends(g.text, delim)
            tends = step_token_ends(tok, g.token_ids, ends) if ends else []
            plan.append((p, k, tends))
            for h in range(1, len(tends)):
                if tends[h - 1] < max_new_tokens:
                    prefixes.append(encoded[p] + list(g.token_ids[:tends[h - 1]]))
                    owners.append((p, k, h))
    wins = prefix_success_counts(sampler, prefixes, [len(encoded[p]) for p, _, _ in owners],
                                 [records[p] for p, _, _ in owners], task_cfg, n=k_aux, temperature=temperature,
                                 max_new_tokens=max_new_tokens, seed=seed, response_budget=max_new_tokens,
                                 desc="vineppo values")
    values = {owner: w / k_aux for owner, w in zip(owners, wins)}
    adv_tok, all_values = [], []
    for p, k, tends in plan:
        n_tok, outcome = len(gens[p][k].token_ids), float(rewards[p, k])
        v = [values[(p, None, 0)]] + [values.get((p, k, h), 0.0) for h in range(1, len(tends))]
        all_values.append(v)
        if not tends:  # no step at all: the whole response is one step from the prompt
            adv_tok.append(torch.full((n_tok,), outcome - v[0]))
            continue
        adv_tok.append(step_to_token(vineppo_step_advantages(v, outcome), tends, n_tok))
    return adv_tok, all_values


@torch.no_grad()
def response_logprobs(model, prompt_ids, response_ids, pad_id, mb: int) -> list[torch.Tensor]:
    """log pi(y_t | x, y_<t) over each response's tokens, one 1-D tensor per sample."""
    out: list[torch.Tensor] = []
    for s in range(0, len(prompt_ids), mb):
        batch = collate(prompt_ids[s:s + mb], response_ids[s:s + mb], pad_id)
        out.extend(v.cpu() for v in split_responses(token_logprobs(model, batch), batch))
    return out


def main(argv=None) -> None:
    p = stage_parser(__doc__)
    p.add_argument("--algo", required=True)
    p.add_argument("--policy", required=True, help="initial policy (model dir or hub id)")
    p.add_argument("--data", required=True, help="directory with train.jsonl and val.jsonl")
    p.add_argument("--out", required=True, help="output directory: policy/ and metrics.jsonl")
    p.add_argument("--ckpt", required=True, help="resume checkpoint directory")
    args, cfg = start_stage(p, argv)
    rl, task_cfg, samp = cfg["rl"], cfg["task"], cfg["sampling"]
    seed = int(cfg["seed"])
    seed_everything(seed)
    algo = args.algo
    if algo not in ALGOS:  # fail fast, before loading anything
        raise SystemExit(f"--algo {algo!r}: rl algorithms are {', '.join(ALGOS)}")

    model, tokenizer = load_policy(args.policy)
    n_params = count_params(model)
    ref_model = None
    if float(rl["kl_coef"]) > 0:
        ref_model, _ = load_policy(args.policy)
        ref_model.eval().requires_grad_(False)
    train = read_jsonl(Path(args.data) / "train.jsonl")
    val = read_jsonl(Path(args.data) / "val.jsonl")[: int(rl["eval_prompts"])]
    P, K, iters = int(rl["prompts_per_iter"]), int(rl["samples_per_prompt"]), int(rl["iterations"])
    mb, epochs = int(rl["minibatch_size"]), int(rl["ppo_epochs"])
    steps_per_iter = epochs * -(-P * K // mb)
    engine = build_engine(model, rl, total_steps=iters * steps_per_iter, micro_batch_size=mb)
    sampler = HFSampler(engine.module, tokenizer, batch_size=samp["batch_size"], progress=False)

    ckpt, chash = Path(args.ckpt), config_hash({**cfg, "algo": algo, "policy": args.policy})
    state = load_checkpoint(engine, ckpt, chash) or {"iteration": 0, "metrics": [], "compute": Compute().to_dict(),
                                                      "wall_s": 0.0}
    compute = Compute.from_dict(state["compute"])
    t_start = time.time() - state["wall_s"]
    pad = tokenizer.pad_token_id

    def validate(it: int) -> float:
        vs = HFSampler(engine.module, tokenizer, batch_size=samp["batch_size"], progress=False)
        res = evaluate_policy(vs, val, task_cfg, k=1, temperature=float(rl["temperature"]),
                              max_new_tokens=int(samp["max_new_tokens"]), seed=seed + 7 * it)
        return res["pass1"]  # validation compute is not training compute: not added

    if state["iteration"] == 0 and not state["metrics"]:
        state["metrics"].append({"iteration": 0, "val_pass1": validate(0), "samples": 0, "flops": 0.0,
                                 "wall_s": 0.0})
    for it in tqdm(range(state["iteration"], iters), desc=f"rl {algo}", initial=state["iteration"], total=iters,
                   mininterval=5):
        t_it = time.time()
        rng = random.Random(seed * 1_000_003 + it)  # prompts are a function of the iteration
        records = [train[i] for i in rng.sample(range(len(train)), P)]
        prompts = [format_prompt(r, task_cfg) for r in records]
        sampler.compute = Compute()  # this iteration's sampling cost
        gens = sampler.generate(prompts, n=K, temperature=float(rl["temperature"]),
                                max_new_tokens=int(samp["max_new_tokens"]), seed=seed * 7_919 + it)
        rewards = torch.tensor([[float(judge(r, g.text, task_cfg)["outcome"]) for g in gs]
                                for r, gs in zip(records, gens)])
        encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]  # once per prompt, K samples share it
        prompt_ids = [ids for ids in encoded for _ in range(K)]
        response_ids = [g.token_ids for gs in gens for g in gs]
        n_tokens = sum(len(a) + len(b) for a, b in zip(prompt_ids, response_ids))
        n_policy_samples = sampler.compute.samples

        # per-token advantages, one vector per response: outcome methods broadcast the
        # sequence advantage; dense-reward methods fill them per step
        if algo == "vineppo":
            adv_tok, _ = vineppo_token_advantages(sampler, encoded, records, gens, rewards, task_cfg,
                                                  k_aux=int(rl.get("vineppo_k", 9)),
                                                  temperature=float(rl["temperature"]),
                                                  max_new_tokens=int(samp["max_new_tokens"]), seed=seed * 104_729 + it)
        else:
            adv = compute_advantages(algo, rewards).flatten()
            adv_tok = [torch.full((len(r),), float(a)) for r, a in zip(response_ids, adv)]
        aux_samples = sampler.compute.samples - n_policy_samples
        compute = compute.merge(sampler.compute)  # every generated token, auxiliary ones included

        engine.eval()
        old_logp = response_logprobs(engine.module, prompt_ids, response_ids, pad, mb)
        ref_logp = response_logprobs(ref_model, prompt_ids, response_ids, pad, mb) if ref_model else None
        compute.add_scoring(n_params, n_tokens * (2 if ref_model else 1))

        engine.train()
        order = list(range(len(prompt_ids)))
        losses, clip_fracs, kls = [], [], []
        for epoch in range(epochs):
            if epoch > 0:
                rng.shuffle(order)
            for s in range(0, len(order), mb):
                idx = order[s:s + mb]
                batch = collate([prompt_ids[i] for i in idx], [response_ids[i] for i in idx], pad)
                logp = token_logprobs(engine, batch)
                mask = batch["response_mask"].to(logp.device)
                old = join_responses([old_logp[i] for i in idx], batch).to(logp.device)
                a_t = join_responses([adv_tok[i] for i in idx], batch).to(logp.device)
                loss, stats = ppo_clip_loss(logp, old, a_t, mask, float(rl["clip_eps"]))
                if ref_logp is not None:
                    ref = join_responses([ref_logp[i] for i in idx], batch).to(logp.device)
                    kl = masked_mean(kl_k3(logp, ref), mask)
                    loss = loss + float(rl["kl_coef"]) * kl
                    kls.append(kl.item())
                check_finite(loss.item(), f"{algo} loss", it)
                engine.backward(loss)
                engine.step()
                losses.append(loss.item())
                clip_fracs.append(stats["clip_frac"])
        compute.add_training(n_params, n_tokens * epochs)

        row = {"iteration": it + 1, "reward_mean": rewards.mean().item(),
               "solved_all_frac": (rewards.min(1).values == 1).float().mean().item(),
               "solved_none_frac": (rewards.max(1).values == 0).float().mean().item(),
               "loss": sum(losses) / len(losses), "clip_frac": sum(clip_fracs) / len(clip_fracs),
               "kl": sum(kls) / len(kls) if kls else None,
               "response_len": sum(len(r) for r in response_ids) / len(response_ids), "aux_samples": aux_samples,
               "samples": compute.samples, "flops": compute.flops, "iter_s": time.time() - t_it}
        if (it + 1) % int(rl["eval_every"]) == 0 or it + 1 == iters:
            row["val_pass1"] = validate(it + 1)
        row["wall_s"] = time.time() - t_start
        state["metrics"].append(row)
        log.info("it %d reward %.3f loss %.4f val %s", it + 1, row["reward_mean"], row["loss"], row.get("val_pass1"))
        if (it + 1) % int(rl["checkpoint_every"]) == 0 and it + 1 < iters:
            state.update(iteration=it + 1, compute=compute.to_dict(), wall_s=row["wall_s"])
            save_checkpoint(engine, ckpt, it + 1, chash, state)

    out = Path(args.out)
    base_meta_path = Path(args.policy) / "policy_meta.json"
    base_meta = read_json(base_meta_path) if base_meta_path.exists() else {}
    meta = {"algo": algo, "init_policy": args.policy, "iterations": iters, "rl_compute": compute.to_dict(),
            "rl_samples": compute.samples, "rl_flops": compute.flops, "init_policy_meta": base_meta,
            "n_params": n_params, "wall_s": time.time() - t_start}
    save_policy(engine.module, tokenizer, out / "policy", extra_files={"policy_meta.json": json.dumps(meta, indent=2)})
    write_jsonl(out / "metrics.jsonl", state["metrics"])
    write_json(out / "summary.json", meta)
    shutil.rmtree(ckpt, ignore_errors=True)  # finished: the resume state is no longer needed


if __name__ == "__main__":
    main()
