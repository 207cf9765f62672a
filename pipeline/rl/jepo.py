"""JEPO (Tang et al. 2025): RL without a verifier. The policy is trained on x + c_i + a*, its
chain of thought c_i followed by the reference answer a* (`task.answer_text`): a policy gradient
on c_i with reward log pi(a* | x, c_i) (leave-one-out baseline, the advantages divided by their
std and clipped; or the multi-sample bound) plus `rl.jepo.sup_coef` times the supervised term
on a*. The grader is called for logging only."""
from __future__ import annotations

import torch

from ..steps import step_token_ends
from ..task import answer_text, cot_end
from .base import Method, Rollouts, TrainBatch
from .losses import rloo_advantages


def normalize_and_clip(adv: torch.Tensor, normalize: bool, clip: float | None) -> torch.Tensor:
    """JEPO's App. B.2: the advantages (after the baseline) divided by their own std over the
    group, then clipped to [-clip, clip]."""
    if normalize:
        adv = adv / (adv.std(unbiased=True) + 1e-6)
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    return adv


def jepo_advantages(answer_logp: torch.Tensor, normalize: bool = True, clip: float | None = 1.0) -> torch.Tensor:
    """JEPO's policy-gradient weights for one prompt's n chains of thought c_i (Jensen bound):
    A_i = R_i - mean_{j != i} R_j with R_i = log pi(a* | x, c_i), then clip(A_i / std(A))."""
    return normalize_and_clip(rloo_advantages(answer_logp.float().unsqueeze(0)).squeeze(0), normalize, clip)


def jepo_multisample_terms(answer_logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient terms of the multi-sample bound L = log (1/n) sum_i pi(a*|x,c_i):
    - score-function weights with a leave-one-out baseline (VIMCO-style),
      A_i = L - log (1/(n-1)) sum_{j!=i} pi(a*|x,c_j);
    - supervised weights w_i = pi(a*|x,c_i) / sum_j pi(a*|x,c_j) on grad log pi(a*|x,c_i).
    Computed in log space."""
    lp = answer_logp.float()
    n = lp.shape[-1]
    if n < 2:
        raise ValueError("the multi-sample bound needs n >= 2")
    L = torch.logsumexp(lp, -1) - torch.log(torch.tensor(float(n)))
    loo = torch.stack([torch.logsumexp(torch.cat([lp[:i], lp[i + 1:]]), -1) for i in range(n)]) \
        - torch.log(torch.tensor(float(n - 1)))
    return L - loo, torch.softmax(lp, -1)


def jepo_weights(answer_logp: torch.Tensor, multisample: bool = False, normalize: bool = True,
                 clip: float | None = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """JEPO's per-sample weights for one prompt's n chains of thought, from R_i = log pi(a*|x,c_i):
    (policy-gradient advantage of c_i, weight of the supervised term grad log pi(a*|x,c_i)).
    Jensen bound: leave-one-out advantages and supervised weight 1 for every sample.
    Multi-sample bound: VIMCO leave-one-out terms and weights n * p_i / sum_j p_j (so both
    bounds put total weight n on the supervised term). Either way the advantages are then
    divided by their std and clipped (published: std-normalised, clip 1)."""
    lp = answer_logp.float()
    if multisample:
        adv, w = jepo_multisample_terms(lp)
        return normalize_and_clip(adv, normalize, clip), w * lp.shape[-1]
    return jepo_advantages(lp, normalize=normalize, clip=clip), torch.ones_like(lp)


def jepo_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, cot_mask: torch.Tensor,
              answer_weight: torch.Tensor, mask: torch.Tensor, clip_eps: float = 0.2, sup_coef: float = 1.0
              ) -> tuple[torch.Tensor, dict]:
    """JEPO's surrogate on sequences x + c_i + a*: PPO-clipped policy gradient on the
    chain-of-thought tokens (cot_mask) plus sup_coef * answer_weight * log pi on the reference
    answer's tokens (answer_weight is 0 on c), both summed over tokens and divided by one
    count, the response tokens in the batch (mask), so the two terms keep the estimator's
    ratio. All tensors [B, T]."""
    ratio = torch.exp(logp - old_logp)
    surr = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv) * cot_mask
    sup = sup_coef * answer_weight * logp
    denom = mask.sum().clamp_min(1.0)
    loss = -((surr + sup) * mask).sum() / denom
    with torch.no_grad():
        pg = cot_mask * mask
        clipped = ((ratio - 1).abs() > clip_eps).float()
        stats = {"clip_frac": ((clipped * pg).sum() / pg.sum().clamp_min(1.0)).item()}
    return loss, stats


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


class JEPO(Method):
    def batch(self, ro: Rollouts, compute) -> TrainBatch:
        seqs, self.n_cot = jepo_sequences(self.ctx.tokenizer, ro.records, ro.gens, self.ctx.task)
        self.P, self.K = ro.P, ro.K
        return TrainBatch(ro.prompt_ids, seqs, None, pg_mask="cot")

    def after_logprobs(self, batch: TrainBatch, old_logp: list[torch.Tensor]) -> None:
        """The reward log pi(a* | x, c_i) comes from the same forward as the old log-probs."""
        jc, P, K, n_cot = self.ctx.rl["jepo"], self.P, self.K, self.n_cot
        answer_logp = torch.stack([lp[n:].sum() for lp, n in zip(old_logp, n_cot)]).view(P, K)
        adv_tok, cot_tok, sup_tok = [], [], []
        for i in range(P):
            a, w = jepo_weights(answer_logp[i], multisample=bool(jc["multisample"]), normalize=bool(jc["normalize"]),
                                clip=jc["clip"])
            for k in range(K):
                n, total = n_cot[i * K + k], len(batch.response_ids[i * K + k])
                adv_tok.append(torch.cat([torch.full((n,), float(a[k])), torch.zeros(total - n)]))
                cot_tok.append(torch.cat([torch.ones(n), torch.zeros(total - n)]))
                sup_tok.append(torch.cat([torch.zeros(n), torch.full((total - n,), float(w[k]))]))
        batch.adv = adv_tok
        batch.tokens.update(cot=cot_tok, sup=sup_tok)
        batch.metrics["answer_logp_mean"] = answer_logp.mean().item()

    def loss(self, logp, old_logp, tokens, mask, clip_eps):
        return jepo_loss(logp, old_logp, tokens["adv"], tokens["cot"], tokens["sup"], mask, clip_eps,
                         float(self.ctx.rl["jepo"]["sup_coef"]))
