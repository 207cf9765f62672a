"""PRIME (Cui et al. 2025): an implicit PRM pi_phi gives token rewards beta * log(pi_phi/pi_ref)
(Implicit PRM), and is itself updated online with the CE loss on the policy's own rollouts and
outcomes. Prompts whose group accuracy is outside `rl.prime.acc_band` are dropped first; the
advantage adds the leave-one-out process-reward return to the outcome term (`prime_advantages`).
`prime_frozen` is the paper's "without online update" ablation: the PRM is an implicit PRM
trained offline (`rl.prime.frozen_prm`) and never updated."""
from __future__ import annotations

import torch

from ..engine import build_engine, train_batch
from ..flops import count_params
from ..rewards import ImplicitPRM
from ..rewards.losses import ce_loss
from .base import Method, Rollouts, TrainBatch, mean_or_none
from .losses import OUTCOME_ADVANTAGES, discounted_returns


def accuracy_band(rewards: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """PRIME's online prompt filter: [P, K] outcomes -> [P] bool, True where the group's
    accuracy lies in [lo, hi] (inclusive; PRIME: [0.2, 0.8]), so all-solved and none-solved
    prompts, which carry no outcome signal, are dropped before the PRM and policy updates."""
    acc = rewards.float().mean(-1)
    return (acc >= lo - 1e-9) & (acc <= hi + 1e-9)


def prime_advantages(token_rewards: list[torch.Tensor], outcomes: torch.Tensor, gamma: float = 1.0,
                     base: str = "rloo", eps: float = 1e-6) -> list[torch.Tensor]:
    """PRIME's per-token advantages for the K responses of one prompt, rbar^j being the mean
    implicit process reward over the tokens of response j (r_phi(y^j) / |y^j|):
    - base "rloo" (paper eq. 5): A_t^i = sum_{s>=t} gamma^(s-t) [r_phi(y_s^i) - mean_{j!=i} rbar^j]
      + r_o^i - mean_{j!=i} r_o^j, the two returns computed separately and added;
    - base "grpo" (paper v2, eq. 7): the process term is normalised as GRPO normalises outcomes,
      sum_{s>=t} gamma^(s-t) (r_phi(y_s^i) - mean_j rbar^j) / std_j rbar^j, plus GRPO's
      (r_o^i - mean_j r_o^j) / std_j r_o^j (std with Bessel's correction, + eps).
    The released code also rescales by K/(K-1) and whitens the advantages; we follow the paper."""
    K = len(token_rewards)
    if K < 2 or outcomes.shape[-1] != K:
        raise ValueError("PRIME needs K >= 2 responses with one outcome each")
    if base not in OUTCOME_ADVANTAGES:
        raise ValueError(f"PRIME's base algorithm is one of {sorted(OUTCOME_ADVANTAGES)}, got {base!r}")
    means = torch.stack([r.float().mean() if r.numel() else torch.tensor(0.0) for r in token_rewards])
    out_adv = OUTCOME_ADVANTAGES[base](outcomes.float().unsqueeze(0)).squeeze(0)
    if base == "rloo":
        loo = (means.sum() - means) / (K - 1)
        return [discounted_returns(r.float() - loo[i], gamma) + out_adv[i] for i, r in enumerate(token_rewards)]
    mu, sd = means.mean(), means.std(unbiased=True)
    return [discounted_returns((r.float() - mu) / (sd + eps), gamma) + out_adv[i] for i, r in enumerate(token_rewards)]


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
                                  prm_engine.train_micro_batch_size_per_gpu(), what="prime PRM loss", step=iteration, lr_key="rl.prime.lr",
                                  collect=True)
        rewards.extend(tr)
        losses.append(loss)
    return rewards, (sum(losses) / len(losses) if losses else None)


class PRIME(Method):
    online = True  # the PRM is updated on every iteration's kept rollouts

    def __init__(self, ctx):
        super().__init__(ctx)
        pc = ctx.rl["prime"]
        self.cfg = pc
        if not self.online or pc["prm_init"] != "policy":
            if not ctx.rm:
                raise SystemExit("rl.prime.prm_init / frozen_prm names a trained implicit PRM: pass it with --rm")
            # keeps the beta it was trained with; PRIME's process reward is the log-ratio by
            # definition, whatever the verifier tables score it with
            self.prm = ImplicitPRM.load(ctx.rm, use_ref=True)
        else:
            self.prm = ImplicitPRM.init_from_policy(ctx.policy, {"beta": float(pc["beta"])})
        if self.online:
            rl = ctx.rl
            steps = ctx.iterations * -(-int(rl["prompts_per_iter"]) * int(rl["samples_per_prompt"]) // ctx.minibatch)
            self.prm_engine = build_engine(self.prm.model, {**rl, "lr": float(pc["lr"])}, total_steps=steps,
                                           batch_size=ctx.minibatch)
        else:
            self.prm_engine = None
            self.prm.model.eval().requires_grad_(False)
        self.prm_params = count_params(self.prm.model)

    @property
    def extra_engines(self) -> dict:
        return {"prm": self.prm_engine} if self.prm_engine is not None else {}

    def batch(self, ro: Rollouts, compute) -> TrainBatch:
        P, K = ro.P, ro.K
        lo, hi = self.cfg["acc_band"]
        kept = [i for i, keep in enumerate(accuracy_band(ro.rewards, float(lo), float(hi)).tolist()) if keep]
        train_idx = [i * K + k for i in kept for k in range(K)]
        prompt_ids, response_ids = ro.prompt_ids, ro.response_ids
        adv_tok = [torch.zeros(len(r)) for r in response_ids]
        m = dict(kept_frac=len(kept) / P, prm_loss=None, process_reward_mean=None, process_adv_abs=None,
                 outcome_adv_abs=None)
        if kept:
            examples = [{"prompt_ids": prompt_ids[i], "response_ids": response_ids[i]} for i in train_idx]
            tr, m["prm_loss"] = prime_token_rewards(self.prm, self.prm_engine, examples, ro.rewards[kept].flatten(),
                                                    self.ctx.minibatch, ro.iteration)
            n_tok = sum(len(e["prompt_ids"]) + len(e["response_ids"]) for e in examples)
            if self.prm_engine is not None:  # the reward forward is the update's forward
                compute.add_training(self.prm_params, n_tok)
            else:
                compute.add_scoring(self.prm_params, n_tok)
            compute.add_scoring(count_params(self.prm.ref_model), n_tok)
            m["process_reward_mean"] = float(torch.cat(tr).mean())
            base = self.cfg["base"]
            proc_abs, out_abs = [], []  # how large the process-return term is beside the outcome term
            for j, i in enumerate(kept):
                advs = prime_advantages(tr[j * K:(j + 1) * K], ro.rewards[i], float(self.cfg["gamma"]), base)
                out = OUTCOME_ADVANTAGES[base](ro.rewards[i].unsqueeze(0)).squeeze(0)
                for k in range(K):
                    adv_tok[i * K + k] = advs[k]
                    proc_abs.append((advs[k] - out[k]).abs().mean().item())
                    out_abs.append(abs(float(out[k])))
            m.update(process_adv_abs=mean_or_none(proc_abs), outcome_adv_abs=mean_or_none(out_abs))
        return TrainBatch([prompt_ids[i] for i in train_idx], [response_ids[i] for i in train_idx],
                          [adv_tok[i] for i in train_idx], metrics=m)


class PRIMEFrozen(PRIME):
    online = False
