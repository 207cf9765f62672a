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


# ---- dense-reward methods (issue 5): per-token advantages from process rewards ----

def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = sum_{s >= t} gamma^(s-t) r_s over the last dimension."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = rewards[..., t] + gamma * running
        out[..., t] = running
    return out


def accuracy_band(rewards: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """PRIME's online prompt filter: [P, K] outcomes -> [P] bool, True where the group's
    accuracy lies in [lo, hi] (inclusive; PRIME: [0.2, 0.8]), so all-solved and none-solved
    prompts, which carry no outcome signal, are dropped before the PRM and policy updates."""
    acc = rewards.float().mean(-1)
    return (acc >= lo - 1e-9) & (acc <= hi + 1e-9)


def prime_advantages(token_rewards: list[torch.Tensor], outcomes: torch.Tensor, gamma: float = 1.0,
                     outcome_adv: str = "rloo") -> list[torch.Tensor]:
    """PRIME (Cui et al., eq. 5) for the K responses of one prompt:
    A_t^i = sum_{s>=t} gamma^(s-t) [r_phi(y_s^i) - mean_{j!=i} rbar^j] + r_o^i - mean_{j!=i} r_o^j,
    where rbar^j is the mean implicit process reward over the tokens of response j (the paper's
    "average of implicit process rewards" as the leave-one-out baseline; the two returns are
    computed separately and added). `outcome_adv="grpo"` swaps the outcome term for GRPO's
    group-normalised one (PRIME with GRPO as the base algorithm). The released code also
    rescales by K/(K-1) and whitens the advantages; we follow the paper."""
    K = len(token_rewards)
    if K < 2 or outcomes.shape[-1] != K:
        raise ValueError("PRIME needs K >= 2 responses with one outcome each")
    if outcome_adv not in OUTCOME_ADVANTAGES:
        raise ValueError(f"PRIME's outcome advantage is one of {sorted(OUTCOME_ADVANTAGES)}, got {outcome_adv!r}")
    means = torch.stack([r.float().mean() if r.numel() else torch.tensor(0.0) for r in token_rewards])
    base = (means.sum() - means) / (K - 1)
    out_adv = OUTCOME_ADVANTAGES[outcome_adv](outcomes.float().unsqueeze(0)).squeeze(0)
    return [discounted_returns(r.float() - base[i], gamma) + out_adv[i] for i, r in enumerate(token_rewards)]


def pav_step_advantages(outcome_adv: float, prover_adv: list[float], alpha: float) -> list[float]:
    """PAV-RL (Setlur et al.): the policy gradient weights step h by Q^pi(s_h, a_h) + alpha *
    A^mu(s_h, a_h). Q^pi of the *current* policy is its own Monte-Carlo return, the outcome,
    here with the RLOO baseline (`outcome_adv`); A^mu, the progress under the prover, comes
    from the trained PAV. Returns one advantage per step."""
    return [float(outcome_adv) + alpha * float(a) for a in prover_adv]


def vineppo_step_advantages(values: list[float], outcome: float) -> list[float]:
    """VinePPO: A_h = r_h + V(s_{h+1}) - V(s_h), gamma = 1, r_h = 0 except the last step's
    outcome, terminal value 0. `values[h]` = V(s_h) is the MC value of the state *before* step
    h (values[0] = V(x))."""
    H = len(values)
    return [(outcome if h == H - 1 else values[h + 1]) - values[h] for h in range(H)]


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


def jepo_advantages(answer_logp: torch.Tensor, normalize: bool = True, clip: float | None = 1.0) -> torch.Tensor:
    """JEPO's policy-gradient weights for one prompt's n chains of thought c_i: reward
    R_i = log pi(a* | x, c_i) with a leave-one-out baseline, then (published) divided by the
    group's std and clipped to [-clip, clip]."""
    adv = rloo_advantages(answer_logp.float().unsqueeze(0)).squeeze(0)
    if normalize:
        adv = adv / (answer_logp.float().std(unbiased=True) + 1e-6)
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    return adv


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
    bounds put total weight n on the supervised term). Advantages are then divided by the
    std of R and clipped (published: std-normalised, clip 1)."""
    lp = answer_logp.float()
    if multisample:
        adv, w = jepo_multisample_terms(lp)
        w = w * lp.shape[-1]
        if normalize:
            adv = adv / (lp.std(unbiased=True) + 1e-6)
        if clip is not None:
            adv = adv.clamp(-clip, clip)
        return adv, w
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
