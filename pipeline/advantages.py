"""Advantages and policy losses: small pure functions, each unit-tested against hand
computation (tests/test_advantages.py). Shapes: rewards are [groups, K] (K samples of one
prompt per row); token tensors are [B, T] with a 0/1 mask over response tokens.
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
