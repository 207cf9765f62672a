"""Loss pieces every RL method shares: outcome advantages, the PPO clipped surrogate, the KL
penalty, returns, whitening. Small pure functions, each unit-tested against hand computation
(tests/test_advantages.py). A method's own math lives in its module (prime.py, jepo.py, ...).
Shapes: rewards are [groups, K] (K samples of one prompt per row); token tensors are [B, T]
with a 0/1 mask over response tokens.
"""
from __future__ import annotations

import torch


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """RLOO: A^i = r^i - mean_{j != i} r^j (leave-one-out baseline within each group)."""
    K = rewards.shape[-1]
    if K < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt")
    return rewards - (rewards.sum(-1, keepdim=True) - rewards) / (K - 1)


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: (r - mean) / (std + eps) within each group, std with Bessel's correction as in
    DeepSeekMath / TRL. A group with all-equal rewards gets zero advantage."""
    if rewards.shape[-1] < 2:
        raise ValueError("GRPO needs at least 2 samples per prompt")
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, keepdim=True, unbiased=True)
    return (rewards - mean) / (std + eps)


OUTCOME_ADVANTAGES = {"rloo": rloo_advantages, "grpo": grpo_advantages}


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def ppo_clip_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                  clip_eps: float = 0.2) -> tuple[torch.Tensor, dict]:
    """PPO clipped surrogate, averaged over response tokens.

    adv is per token [B, T] (or per sequence [B], broadcast to every token).
    loss = -mean_t min(rho_t A_t, clip(rho_t, 1-eps, 1+eps) A_t), rho_t = exp(logp - old_logp).
    """
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1).expand_as(logp)
    ratio = torch.exp(logp - old_logp)
    surr = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    loss = -masked_mean(surr, mask)
    with torch.no_grad():
        clipped = ((ratio - 1).abs() > clip_eps).float()
        stats = {"clip_frac": masked_mean(clipped, mask).item(), "ratio_mean": masked_mean(ratio, mask).item()}
    return loss, stats


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate k3 = exp(ref - logp) - (ref - logp) - 1 (>= 0, unbiased)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = sum_{s >= t} gamma^(s-t) r_s over the last dimension."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = rewards[..., t] + gamma * running
        out[..., t] = running
    return out


def step_to_token(step_values: list[float], step_token_ends: list[int], n_tokens: int) -> torch.Tensor:
    """Every token of step h gets step_values[h]; tokens after the last step end (EOS) get the
    last step's value."""
    if len(step_values) != len(step_token_ends):
        raise ValueError("one value per step")
    out = torch.zeros(n_tokens)
    start = 0
    for h, (v, end) in enumerate(zip(step_values, step_token_ends)):
        stop = n_tokens if h == len(step_values) - 1 else end
        out[start:stop] = v
        start = end
    return out


KL_REDUCTIONS = ("token_mean", "sequence_sum")


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, reduction: str,
               tokens_per_sequence: float = 1.0) -> torch.Tensor:
    """The KL term of a micro batch, k3 per token, reduced as `reduction`:
    - token_mean: the mean over the micro batch's response tokens (the loop's default);
    - sequence_sum: the sum over each sequence's tokens, averaged over sequences, as the released
      VinePPO adds it. The loop weights micro batches by their share of the minibatch's tokens,
      so the term is written as (sum of k3) / (tokens) * `tokens_per_sequence` (the minibatch's
      tokens / sequences): over the minibatch that is exactly sum_seq sum_t k3 / n_sequences."""
    kl = kl_k3(logp, ref_logp)
    if reduction == "token_mean":
        return masked_mean(kl, mask)
    if reduction == "sequence_sum":
        return masked_mean(kl, mask) * float(tokens_per_sequence)
    raise ValueError(f"rl.kl_reduction is one of {KL_REDUCTIONS}, got {reduction!r}")


def whiten(values: list[torch.Tensor], masks: list[torch.Tensor] | None = None, eps: float = 1e-8
           ) -> list[torch.Tensor]:
    """Advantage whitening over every token of the batch, as the released VinePPO / PPO do
    (`masked_whiten`, unbiased variance): (a - mean) / sqrt(var + eps), the mean and variance
    taken over the tokens where `masks` is 1 (all tokens without masks); other tokens keep 0."""
    if masks is None:
        masks = [torch.ones_like(v) for v in values]
    flat = torch.cat([v[m.bool()] for v, m in zip(values, masks)]).double()
    if flat.numel() < 2:
        return [v * m for v, m in zip(values, masks)]
    mean, var = flat.mean(), flat.var(unbiased=True)
    scale = torch.rsqrt(var + eps)
    return [(((v.double() - mean) * scale) * m).to(v.dtype) for v, m in zip(values, masks)]
