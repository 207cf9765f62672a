"""Stage: online RL of a policy: outcome-only RLOO / GRPO and the dense-reward methods PRIME,
PAV-RL, VinePPO and JEPO, as options of one loop (PPO-style clipping, optional KL penalty to
the initial policy).

Each iteration: draw `prompts_per_iter` training prompts, sample `samples_per_prompt`
responses from the current policy through the sampler interface, grade them, form per-token
advantages, and take PPO minibatch steps through DeepSpeed. Metrics go to a JSONL log per
iteration (with validation pass@1 every `eval_every` iterations); checkpoints every
`checkpoint_every` iterations make a killed job resume where it left off. `--seed S` picks
the run's seed (prompt order, sampling), so the same config runs several seeds.

The methods differ only in how the per-token advantages `adv_tok` are formed
(formulas: ../shared/METHODS.md; the pure functions live in advantages.py):
- rloo / grpo: the group advantage of the outcome on every token.
- prime: an implicit PRM pi_phi (initialised from the policy, or from a trained implicit PRM
  with `rl.prime.prm_init`; frozen reference) gives token rewards beta * log(pi_phi/pi_ref).
  Prompts whose group accuracy is outside `rl.prime.acc_band` are dropped; the PRM is updated
  online with the CE loss on the policy's own rollouts and outcomes (one forward per sample
  gives both the rewards and the update, as in PRIME's Algorithm 1); the advantage adds the
  leave-one-out process-reward return (discount `gamma`) to the RLOO (or GRPO) outcome term.
- prime_frozen: the same with no online update, the PRM being an implicit PRM trained offline
  on seed rollouts (`rl.prime.frozen_prm`): PRIME's "without online update" ablation.
- pav: step h gets the RLOO outcome advantage (the Monte-Carlo estimate of Q^pi of the current
  policy) plus alpha * A^mu(s_h, a_h), the progress under the Best-of-K prover predicted by the
  trained PAV (`rl.pav.rm`, `rl.pav.alpha`).
- vineppo: from every step boundary, `rl.vineppo_k` auxiliary completions under the *current*
  policy give V_hat(s_h) (V(x) shared by a prompt's responses); A_h = V(s_{h+1}) - V(s_h), the
  outcome in place of V after the last step. Completions of one prefix share its computation
  and every auxiliary token counts as the method's compute.
- jepo: no verifier. The policy is trained on x + c_i + a*, its chain of thought c_i followed by
  the reference answer a* (`task.answer_text`): a policy gradient on c_i with reward
  log pi(a* | x, c_i) (leave-one-out, std-normalised, clipped; or the multi-sample bound) plus
  the supervised term on a*. The grader is called for logging only.
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

from .advantages import (OUTCOME_ADVANTAGES, accuracy_band, jepo_loss, jepo_weights, kl_k3, masked_mean,
                         pav_step_advantages, ppo_clip_loss, prime_advantages, rloo_advantages, step_to_token,
                         vineppo_step_advantages)
from .engine import barrier, build_engine, config_hash, is_main, load_checkpoint, save_checkpoint, train_batch
from .evaluate import evaluate_policy
from .flops import Compute, count_params
from .mc_label import prefix_success_counts
from .modeling import load_policy, save_policy
from .reward_models import HeadRewardModel, ImplicitPRM
from .rm_losses import ce_loss
from .sampler import HFSampler, VLLMSampler, make_sampler
from .scoring import collate, join_responses, split_responses, token_logprobs
from .steps import split_steps_with_ends, step_token_ends
from .task import answer_text, cot_end, format_prompt, judge
from .utils import (read_json, read_jsonl, seed_everything,
                    stage_parser, start_stage, write_json, write_jsonl)

log = logging.getLogger("pipeline.rl")


DENSE_ALGOS = ("prime", "prime_frozen", "pav", "vineppo", "jepo")
ALGOS = tuple(sorted(OUTCOME_ADVANTAGES)) + DENSE_ALGOS
NEEDS_RM = ("prime_frozen", "pav")  # algorithms that read a trained reward model (--rm)


def compute_advantages(algo: str, rewards: torch.Tensor) -> torch.Tensor:
    """[P, K] outcome rewards -> [P, K] sequence advantages (every token of a response gets its
    sequence's advantage)."""
    if algo not in OUTCOME_ADVANTAGES:
        raise ValueError(f"outcome advantages are one of {sorted(OUTCOME_ADVANTAGES)}, got {algo!r}")
    return OUTCOME_ADVANTAGES[algo](rewards)


def response_step_token_ends(tokenizer, gen, delimiter: str) -> list[int]:
    """Token count covering each step of a generated response ([] for a response without steps)."""
    _, ends = split_steps_with_ends(gen.text, delimiter)
    return step_token_ends(tokenizer, gen.token_ids, ends) if ends else []


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
            tends = response_step_token_ends(tok, g, delim)
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


def pav_token_advantages(pav: HeadRewardModel, encoded: list[list[int]], gens, rewards: torch.Tensor,
                         delimiter: str, alpha: float, batch_size: int) -> tuple[list[torch.Tensor], list[float]]:
    """PAV-RL's per-token advantages for gens[p][k]: on step h, the RLOO outcome advantage plus
    alpha * A^mu_h from the trained PAV (`pav_step_advantages`); a response without steps gets
    the outcome advantage alone. Also returns every step's prover advantage (for logging)."""
    out_adv = rloo_advantages(rewards)
    flat = [(p, k, g, response_step_token_ends(pav.tokenizer, g, delimiter)) for p, gs in enumerate(gens)
            for k, g in enumerate(gs)]
    examples = [{"prompt_ids": encoded[p], "response_ids": g.token_ids, "step_token_ends": te}
                for p, k, g, te in flat if te]
    terms = iter(pav.pav_terms(examples, batch_size))
    adv_tok, prover = [], []
    for p, k, g, te in flat:
        if not te:
            adv_tok.append(torch.full((len(g.token_ids),), float(out_adv[p, k])))
            continue
        a_mu = next(terms)["a_prover"]
        prover += a_mu
        adv_tok.append(step_to_token(pav_step_advantages(float(out_adv[p, k]), a_mu, alpha), te, len(g.token_ids)))
    return adv_tok, prover


def prime_token_rewards(prm: ImplicitPRM, prm_engine, examples: list[dict], labels: torch.Tensor, mb: int,
                        iteration: int) -> tuple[list[torch.Tensor], float | None]:
    """The implicit PRM's token rewards beta * log(pi_phi/pi_ref) for each example and, with an
    engine (online update), one CE step per minibatch on the outcome labels. The rewards come
    from the same forward as the update (before its step), as in PRIME's Algorithm 1."""
    rewards: list[torch.Tensor] = []
    losses = []
    for s in range(0, len(examples), mb):
        chunk = [(e, float(lab)) for e, lab in zip(examples[s:s + mb], labels[s:s + mb])]
        if prm_engine is None:
            with torch.no_grad():
                prm.model.eval()
                rewards.extend(t.float().cpu() for t in prm.response_token_rewards(prm.model, [e for e, _ in chunk]))
            continue
        prm_engine.train()

        def ce_step(items):  # the CE loss of a micro batch and, from its forward, its token rewards
            tr = prm.response_token_rewards(prm_engine, [e for e, _ in items])
            r = torch.stack([t.sum() for t in tr])
            loss = ce_loss(r, torch.tensor([lab for _, lab in items], device=r.device))
            return loss, {}, [t.detach().float().cpu() for t in tr]

        loss, _, tr = train_batch(prm_engine, chunk, [1.0] * len(chunk), ce_step,
                                  prm_engine.train_micro_batch_size_per_gpu(), what="prime PRM loss", step=iteration,
                                  collect=True)
        rewards.extend(tr)
        losses.append(loss)
    return rewards, (sum(losses) / len(losses) if losses else None)


def jepo_sequences(tokenizer, records: list[dict], gens, task_cfg: dict) -> tuple[list[list[int]], list[int]]:
    """JEPO trains on x + c + a*: each response cut where its chain of thought ends (before its
    own answer line) and followed by the reference answer a* and EOS. Returns the response
    part of each sequence and the number of its chain-of-thought tokens."""
    eos = tokenizer.eos_token_id
    answers = [tokenizer(answer_text(r, task_cfg), add_special_tokens=False)["input_ids"] + [eos] for r in records]
    seqs, n_cot = [], []
    for p, gs in enumerate(gens):
        for g in gs:
            end = cot_end(g.text, task_cfg)
            n = step_token_ends(tokenizer, g.token_ids, [end])[0] if end > 0 else 0
            seqs.append(list(g.token_ids[:n]) + answers[p])
            n_cot.append(n)
    return seqs, n_cot


@torch.no_grad()
def response_logprobs(model, prompt_ids, response_ids, pad_id, mb: int) -> list[torch.Tensor]:
    """log pi(y_t | x, y_<t) over each response's tokens, one 1-D tensor per sample."""
    out: list[torch.Tensor] = []
    for s in range(0, len(prompt_ids), mb):
        batch = collate(prompt_ids[s:s + mb], response_ids[s:s + mb], pad_id)
        out.extend(v.cpu() for v in split_responses(token_logprobs(model, batch), batch))
    return out


def mean_or_none(xs) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def main(argv=None) -> None:
    p = stage_parser(__doc__)
    p.add_argument("--algo", required=True)
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
    if algo not in ALGOS:  # fail fast, before loading anything
        raise SystemExit(f"--algo {algo!r}: rl algorithms are {', '.join(ALGOS)}")
    if algo in NEEDS_RM and not args.rm:
        raise SystemExit(f"--algo {algo} needs --rm (a trained reward model directory)")
    prime_cfg, pav_cfg, jepo_cfg = rl.get("prime", {}), rl.get("pav", {}), rl.get("jepo", {})
    delim = task_cfg.get("step_delimiter", "\n")

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
    engine = build_engine(model, rl, total_steps=iters * steps_per_iter, batch_size=mb)

    # the method's reward model: PRIME's implicit PRM (online engine or frozen), PAV's verifier
    prm, prm_engine, pav_rm, extra_engines = None, None, None, {}
    if algo in ("prime", "prime_frozen"):
        if algo == "prime_frozen" or prime_cfg.get("prm_init", "policy") != "policy":
            if not args.rm:
                raise SystemExit("rl.prime.prm_init names a trained implicit PRM: pass it with --rm")
            prm = ImplicitPRM.load(args.rm)  # keeps the beta it was trained with
        else:
            prm = ImplicitPRM.init_from_policy(args.policy, {"beta": float(prime_cfg.get("beta", 0.05))})
        if algo == "prime":
            prm_train = {**rl, "lr": float(prime_cfg.get("lr", rl["lr"]))}
            prm_engine = build_engine(prm.model, prm_train, total_steps=iters * -(-P * K // mb), batch_size=mb)
            extra_engines = {"prm": prm_engine}
        else:
            prm.model.eval().requires_grad_(False)
    elif algo == "pav":
        pav_rm = HeadRewardModel.load(args.rm)
        if pav_rm.kind != "pav":
            raise SystemExit(f"--rm {args.rm}: a {pav_rm.kind!r} reward model, PAV-RL needs a PAV")
        pav_rm.model.eval()
    prm_params = count_params(prm.model) if prm is not None else 0

    ckpt = Path(args.ckpt)
    chash = config_hash({**cfg, "algo": algo, "policy": args.policy, "seed_index": args.seed, "rm": args.rm})
    state = load_checkpoint(engine, ckpt, chash, extra_engines) or {
        "iteration": 0, "metrics": [], "compute": Compute().to_dict(), "wall_s": 0.0}
    compute = Compute.from_dict(state["compute"])
    t_start = time.time() - state["wall_s"]
    # the sampler follows the weights being trained: HF samples from engine.module itself; vLLM
    # (GPU presets) runs its own copy, loaded from the base policy and synced from the trainer
    # here (after a resume, the checkpoint's weights) and after every update
    if samp.get("backend", "hf") == "vllm":
        sampler = make_sampler(samp, model_path=args.policy, colocate=True)
        sampler.sync_weights(engine.module)  # every rank calls it under ZeRO-3
    else:
        sampler = HFSampler(engine.module, tokenizer, batch_size=samp["batch_size"], progress=False)
    pad = tokenizer.pad_token_id

    def validate(it: int) -> float:
        vs = HFSampler(engine.module, tokenizer, batch_size=samp["batch_size"], progress=False)
        res = evaluate_policy(vs, val, task_cfg, k=1, temperature=float(rl["temperature"]),
                              max_new_tokens=int(samp["max_new_tokens"]), seed=seed + 7 * it)
        return res["pass1"]  # validation compute is not training compute: not added

    if state["iteration"] == 0 and not state["metrics"]:
        state["metrics"].append({"iteration": 0, "val_pass1": validate(0), "samples": 0, "flops": 0.0,
                                 "wall_s": 0.0})
    for it in tqdm(range(state["iteration"], iters), desc=f"rl {algo} s{args.seed}", initial=state["iteration"],
                   total=iters, mininterval=5, disable=not is_main()):
        t_it = time.time()
        rng = random.Random(seed * 1_000_003 + it)  # prompts are a function of the iteration
        records = [train[i] for i in rng.sample(range(len(train)), P)]
        prompts = [format_prompt(r, task_cfg) for r in records]
        sampler.compute = Compute()  # this iteration's sampling cost
        gens = sampler.generate(prompts, n=K, temperature=float(rl["temperature"]),
                                max_new_tokens=int(samp["max_new_tokens"]), seed=seed * 7_919 + it)
        # outcomes: the reward of every method but JEPO, which logs them only
        rewards = torch.tensor([[float(judge(r, g.text, task_cfg)["outcome"]) for g in gs]
                                for r, gs in zip(records, gens)])
        encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]  # once per prompt, K samples share it
        prompt_ids = [ids for ids in encoded for _ in range(K)]
        response_ids = [g.token_ids for gs in gens for g in gs]
        n_policy_samples = sampler.compute.samples
        extra: dict = {}
        train_idx = list(range(P * K))  # the samples the policy is trained on
        cot_tok = sup_tok = None        # JEPO only: chain-of-thought mask, answer-term weights

        # per-token advantages, one vector per response: outcome methods broadcast the
        # sequence advantage; dense-reward methods fill them per step or per token
        if algo == "vineppo":
            adv_tok, _ = vineppo_token_advantages(sampler, encoded, records, gens, rewards, task_cfg,
                                                  k_aux=int(rl.get("vineppo_k", 9)),
                                                  temperature=float(rl["temperature"]),
                                                  max_new_tokens=int(samp["max_new_tokens"]), seed=seed * 104_729 + it)
        elif algo == "pav":
            adv_tok, a_mu = pav_token_advantages(pav_rm, encoded, gens, rewards, delim, float(pav_cfg.get("alpha", 3.0)),
                                                 mb)
            compute.add_scoring(pav_rm.n_scoring_params, sum(len(a) + len(b) for a, b in zip(prompt_ids, response_ids)))
            extra["prover_adv_mean"] = mean_or_none(a_mu)
        elif algo in ("prime", "prime_frozen"):
            lo, hi = prime_cfg.get("acc_band", [0.2, 0.8])
            kept = [i for i, keep in enumerate(accuracy_band(rewards, float(lo), float(hi)).tolist()) if keep]
            train_idx = [i * K + k for i in kept for k in range(K)]
            adv_tok = [torch.zeros(len(r)) for r in response_ids]
            extra.update(kept_frac=len(kept) / P, prm_loss=None, process_reward_mean=None,
                         process_adv_abs=None, outcome_adv_abs=None)
            if kept:
                examples = [{"prompt_ids": prompt_ids[i], "response_ids": response_ids[i]} for i in train_idx]
                tr, extra["prm_loss"] = prime_token_rewards(prm, prm_engine, examples, rewards[kept].flatten(), mb, it)
                n_tok = sum(len(e["prompt_ids"]) + len(e["response_ids"]) for e in examples)
                if prm_engine is not None:  # the reward forward is the update's forward
                    compute.add_training(prm_params, n_tok)
                else:
                    compute.add_scoring(prm_params, n_tok)
                compute.add_scoring(count_params(prm.ref_model), n_tok)
                extra["process_reward_mean"] = float(torch.cat(tr).mean())
                base = prime_cfg.get("base", "rloo")
                proc_abs, out_abs = [], []  # how large the process-return term is beside the outcome term
                for j, i in enumerate(kept):
                    advs = prime_advantages(tr[j * K:(j + 1) * K], rewards[i], float(prime_cfg.get("gamma", 1.0)), base)
                    out = OUTCOME_ADVANTAGES[base](rewards[i].unsqueeze(0)).squeeze(0)
                    for k in range(K):
                        adv_tok[i * K + k] = advs[k]
                        proc_abs.append((advs[k] - out[k]).abs().mean().item())
                        out_abs.append(abs(float(out[k])))
                extra.update(process_adv_abs=mean_or_none(proc_abs), outcome_adv_abs=mean_or_none(out_abs))
        elif algo == "jepo":
            response_ids, n_cot = jepo_sequences(tokenizer, records, gens, task_cfg)
        else:
            adv = compute_advantages(algo, rewards).flatten()
            adv_tok = [torch.full((len(r),), float(a)) for r, a in zip(response_ids, adv)]
        aux_samples = sampler.compute.samples - n_policy_samples
        compute = compute.merge(sampler.compute)  # every generated token, auxiliary ones included

        prompt_ids = [prompt_ids[i] for i in train_idx]
        response_ids = [response_ids[i] for i in train_idx]
        n_tokens = sum(len(a) + len(b) for a, b in zip(prompt_ids, response_ids))
        engine.eval()
        old_logp = response_logprobs(engine.module, prompt_ids, response_ids, pad, mb)
        ref_logp = response_logprobs(ref_model, prompt_ids, response_ids, pad, mb) if ref_model else None
        compute.add_scoring(n_params, n_tokens * (2 if ref_model else 1))
        if algo == "jepo":  # the reward log pi(a* | x, c_i) comes from the same forward as the old log-probs
            answer_logp = torch.stack([lp[n:].sum() for lp, n in zip(old_logp, n_cot)]).view(P, K)
            adv_tok, cot_tok, sup_tok = [], [], []
            for i in range(P):
                a, w = jepo_weights(answer_logp[i], multisample=bool(jepo_cfg.get("multisample", False)),
                                    normalize=bool(jepo_cfg.get("normalize", True)), clip=jepo_cfg.get("clip", 1.0))
                for k in range(K):
                    n, total = n_cot[i * K + k], len(response_ids[i * K + k])
                    adv_tok.append(torch.cat([torch.full((n,), float(a[k])), torch.zeros(total - n)]))
                    cot_tok.append(torch.cat([torch.ones(n), torch.zeros(total - n)]))
                    sup_tok.append(torch.cat([torch.zeros(n), torch.full((total - n,), float(w[k]))]))
            extra["answer_logp_mean"] = answer_logp.mean().item()
        else:
            adv_tok = [adv_tok[i] for i in train_idx]

        def policy_loss(idx):  # the policy's loss on a micro batch of sample indices
            batch = collate([prompt_ids[i] for i in idx], [response_ids[i] for i in idx], pad)
            logp = token_logprobs(engine, batch)
            mask = batch["response_mask"].to(logp.device)
            old = join_responses([old_logp[i] for i in idx], batch).to(logp.device)
            a_t = join_responses([adv_tok[i] for i in idx], batch).to(logp.device)
            if algo == "jepo":
                loss, stats = jepo_loss(logp, old, a_t, join_responses([cot_tok[i] for i in idx], batch).to(logp.device),
                                        join_responses([sup_tok[i] for i in idx], batch).to(logp.device), mask,
                                        float(rl["clip_eps"]), float(jepo_cfg.get("sup_coef", 1.0)))
            else:
                loss, stats = ppo_clip_loss(logp, old, a_t, mask, float(rl["clip_eps"]))
            stats = {"clip_frac": stats["clip_frac"]}
            if ref_logp is not None:
                ref = join_responses([ref_logp[i] for i in idx], batch).to(logp.device)
                kl = masked_mean(kl_k3(logp, ref), mask)
                loss = loss + float(rl["kl_coef"]) * kl
                stats["kl"] = kl.item()
            return loss, stats, None

        engine.train()
        order = list(range(len(prompt_ids)))
        losses, clip_fracs, kls = [], [], []
        for epoch in range(epochs if order else 0):  # PRIME may have filtered every prompt out
            if epoch > 0:
                rng.shuffle(order)
            for s in range(0, len(order), mb):
                idx = order[s:s + mb]
                # one optimizer step on the minibatch (split over ranks and micro batches by
                # train_batch); the loss is a token mean over all of the minibatch's responses
                loss, stats, _ = train_batch(engine, idx, [len(response_ids[i]) for i in idx], policy_loss,
                                             engine.train_micro_batch_size_per_gpu(), what=f"{algo} loss", step=it)
                losses.append(loss)
                clip_fracs.append(stats["clip_frac"])
                if "kl" in stats:
                    kls.append(stats["kl"])
        compute.add_training(n_params, n_tokens * epochs)
        if isinstance(sampler, VLLMSampler):
            sampler.sync_weights(engine.module)  # the next iteration samples from the updated policy

        row = {"iteration": it + 1, "reward_mean": rewards.mean().item(),
               "solved_all_frac": (rewards.min(1).values == 1).float().mean().item(),
               "solved_none_frac": (rewards.max(1).values == 0).float().mean().item(),
               "loss": mean_or_none(losses), "clip_frac": mean_or_none(clip_fracs), "kl": mean_or_none(kls),
               "response_len": sum(len(g.token_ids) for gs in gens for g in gs) / (P * K), "aux_samples": aux_samples,
               **extra, "samples": compute.samples, "flops": compute.flops, "iter_s": time.time() - t_it}
        if (it + 1) % int(rl["eval_every"]) == 0 or it + 1 == iters:
            row["val_pass1"] = validate(it + 1)
        row["wall_s"] = time.time() - t_start
        state["metrics"].append(row)
        log.info("it %d reward %.3f loss %s val %s", it + 1, row["reward_mean"], row["loss"], row.get("val_pass1"))
        if (it + 1) % int(rl["checkpoint_every"]) == 0 and it + 1 < iters:
            state.update(iteration=it + 1, compute=compute.to_dict(), wall_s=row["wall_s"])
            save_checkpoint(engine, ckpt, it + 1, chash, state, extra_engines)

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
