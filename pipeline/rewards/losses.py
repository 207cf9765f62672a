"""Implicit-PRM math: token / step / sequence rewards and the outcome-label losses (CE,
balanced CE, DPO, KTO, NCA). Small pure functions, each unit-tested against hand
computation (tests/test_rm_losses.py). The head models' step-classifier loss is
`train_rm.head_loss`, aggregation is `rewards.base.aggregate`, AUROC is `metrics.auroc`.
Formulas: docs/METHODS.md ("Implicit PRM").

Shapes: token tensors are [B, T] with a float 0/1 `mask` over response tokens; sequence
tensors (rewards r, labels l) are [B]. Rewards r are already scaled by beta:
r(y) = beta * log(pi_phi(y) / pi_ref(y)) = sum_t beta * (logp_t - ref_logp_t).

Published forms followed (looked up in stored copies of the papers / authors' code):
- Implicit PRM (Yuan et al., arXiv 2412.01981, Eq. 5 and Sec. 4.1): CE on sigma(r); the
  "Dataset-wise" / "Instruction-wise Balanced" CE variants balance positive and negative
  responses over the whole dataset / within each instruction "by randomly filtering examples
  of the class with more data" (Sec. 4.2). The authors' CE code (PRIME-RL, verl recipe
  `compute_ce_dpo_loss_rm`) is BCE(sigmoid(beta * sum_t log-ratio_t), acc).
- KTO (Ethayarajh et al., arXiv 2402.01306, Eq. 7-8): as implemented in TRL
  `trl/trainer/kto_trainer.py` (`kto_loss`, `_get_kl_dataset`) and the HALOs KTOTrainer.
- NCA (Chen et al., arXiv 2402.05369): the authors' pairwise code,
  thu-ml/Noise-Contrastive-Alignment `preference_trainer.py` (loss_type "NCA"), identical to
  TRL's DPO `loss_type="nca_pair"`.
"""
from __future__ import annotations

from typing import Hashable, Sequence

import torch
import torch.nn.functional as F


# --------------------------------------------------------------------------- implicit PRM rewards


def implicit_token_rewards(logp: torch.Tensor, ref_logp: torch.Tensor | None, mask: torch.Tensor,
                           beta: float) -> torch.Tensor:
    """Per-token process reward of the implicit PRM: r_t = beta * (logp_t - ref_logp_t) * mask_t.

    logp, ref_logp, mask: [B, T] (log pi_phi(y_t|y_<t), log pi_ref(y_t|y_<t)). ref_logp=None means
    "no reference model": r_t = beta * logp_t * mask_t (the reference-free inference option of
    Yuan et al. Sec. 5.5.2, where pi_ref is dropped at scoring time).
    """
    diff = logp if ref_logp is None else logp - ref_logp
    return beta * diff * mask  # [B, T]


def implicit_q_values(token_rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """q_t = sum_{i<=t} r_i over response tokens (Yuan et al. Prop. 3.1; a soft Q value).

    token_rewards, mask: [B, T]. Returns [B, T]; positions outside the response (mask 0) are 0,
    so q at the last response token equals the sequence reward r(y).
    """
    return torch.cumsum(token_rewards * mask, dim=-1) * mask  # [B, T]


def sequence_reward(token_rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Outcome reward r(y) = sum_t r_t over response tokens. [B, T] -> [B]."""
    return (token_rewards * mask).sum(-1)


def _check_step_ends(token_rewards: torch.Tensor, step_token_ends: Sequence[int]) -> list[int]:
    if token_rewards.dim() != 1:
        raise ValueError(f"token_rewards must be 1-D (one sequence), got shape {tuple(token_rewards.shape)}")
    T = token_rewards.shape[0]
    ends = [int(e) for e in step_token_ends]
    prev = 0
    for h, e in enumerate(ends):
        if e < prev or e > T:
            raise ValueError(f"step_token_ends must be non-decreasing within [0, {T}]; step {h} ends at {e} "
                             f"(previous end {prev})")
        prev = e
    return ends


def step_q_values(token_rewards: torch.Tensor, step_token_ends: Sequence[int]) -> torch.Tensor:
    """q at each step end: Q_h = sum_{t < end_h} r_t, where step_token_ends[h] is the exclusive
    token index (into token_rewards) at which step h ends. [T] -> [H]."""
    ends = _check_step_ends(token_rewards, step_token_ends)
    # q_prefix[k] = sum of the first k token rewards (q_prefix[0] = 0, the empty prefix)
    q_prefix = torch.cat([token_rewards.new_zeros(1), torch.cumsum(token_rewards, dim=0)])  # [T+1]
    idx = torch.tensor(ends, dtype=torch.long, device=token_rewards.device)
    return q_prefix[idx]  # [H]


def step_rewards(token_rewards: torch.Tensor, step_token_ends: Sequence[int]) -> torch.Tensor:
    """Implicit-PRM process reward of step h: r_h = q(end of step h) - q(end of step h-1), with
    q(end of step -1) = 0. [T] -> [H]. The step rewards telescope: their sum is q at the last end,
    i.e. the sequence reward whenever the last end covers every token."""
    q = step_q_values(token_rewards, step_token_ends)  # [H]
    return q - torch.cat([q.new_zeros(1), q[:-1]])


# --------------------------------------------------------------------------- outcome-label losses


def _weighted_mean(per: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return per.mean()
    weights = weights.to(per.dtype)
    total = weights.sum()
    if float(total) == 0.0:
        return (per * weights).sum()  # 0, still attached to the graph
    return (per * weights).sum() / total


def ce_loss(r: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Implicit-PRM cross-entropy (Yuan et al. Eq. 5, sign flipped to a loss):
    L = -[l log sigma(r) + (1-l) log(1 - sigma(r))], weighted mean over the batch
    sum_i w_i L_i / sum_i w_i (plain mean when weights is None; 0 when all weights are 0).

    Uses log sigma(r) and log(1 - sigma(r)) = log sigma(-r) via logsigmoid for stability (the
    authors' code applies binary_cross_entropy to sigmoid(r); same value, less stable).
    r, labels, weights: [B].
    """
    labels = labels.to(r.dtype)
    per = -(labels * F.logsigmoid(r) + (1 - labels) * F.logsigmoid(-r))  # [B]
    return _weighted_mean(per, weights)


def balanced_ce_weights(labels: torch.Tensor, groups: Sequence[Hashable] | torch.Tensor) -> torch.Tensor:
    """Class-balancing weights per group for the "balanced" implicit-PRM CE variants.

    groups: one key per example. Instruction-wise balanced: groups = instruction (prompt) ids;
    dataset-wise balanced: groups = dataset names (one group if the training set is one dataset).

    The paper (Yuan et al. Sec. 4.1-4.2) balances by *data filtering*: within each group it keeps
    all examples of the minority class and a random subset of equal size of the majority class
    ("randomly filtering examples of the class with more data"). No code for the balanced variants
    is public in the stored ImplicitPRM repository, so we follow the paper and express the
    filtering as its expectation: with n1, n0 the numbers of positive / negative examples in a
    group and m = min(n0, n1),

        w_i = m / n_{l_i}        (the probability that example i survives the random filtering).

    So in every group both classes get the same total weight m; a group with only one class gets
    weight 0 (filtering would drop it all). With these weights ce_loss(r, labels, w) is exactly the
    expected CE over the randomly filtered dataset (sum_i w_i = 2 sum_g m_g, the filtered size).
    labels: [B] in {0, 1}. Returns float [B].
    """
    lab = labels.detach().to(torch.float64).reshape(-1)
    if not bool(((lab == 0) | (lab == 1)).all()):
        raise ValueError("balanced_ce_weights needs labels in {0, 1}")
    keys = groups.tolist() if isinstance(groups, torch.Tensor) else list(groups)
    if len(keys) != lab.shape[0]:
        raise ValueError(f"groups has {len(keys)} entries for {lab.shape[0]} labels")
    counts: dict[Hashable, list[int]] = {}
    for k, l in zip(keys, lab.tolist()):
        counts.setdefault(k, [0, 0])[int(l)] += 1
    w = []
    for k, l in zip(keys, lab.tolist()):
        n0, n1 = counts[k]
        m = min(n0, n1)
        w.append(m / (n1 if l == 1 else n0))
    return torch.tensor(w, dtype=torch.float32, device=labels.device)


def dpo_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """DPO on implicit rewards of (correct y_w, incorrect y_l) pairs of one prompt:
    L = -log sigma(r_w - r_l), mean over pairs. [B], [B] -> scalar."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def kto_kl_estimate(r_mismatched: torch.Tensor) -> torch.Tensor:
    """KTO reference point z0 = max(0, mean_j r(x_j, y'_j)), detached.

    r_mismatched are the beta-scaled implicit rewards beta * log(pi(y'|x) / pi_ref(y'|x)) of
    *mismatched* pairs: each prompt x_j scored with a completion y'_j taken from another example
    of the same batch. KTO (Ethayarajh et al. Sec. 4) estimates KL(pi || pi_ref) this way and does
    not backpropagate through it; TRL builds the pairs by rotating the batch's completions by one
    (`_get_kl_dataset`: completion of example i-1 paired with prompt i). Since beta > 0,
    max(0, mean(beta * logratio)) = beta * max(0, mean(logratio)), matching the beta * (ratio - KL)
    form of the paper.

    Pass the mismatched pairs of the *whole optimizer batch* (`train_rm.kto_reference_point`
    gathers them over micro batches and ranks): a mean over one micro batch depends on the split,
    and a micro batch of one pairs an example with its own response. [M] -> scalar.
    """
    return r_mismatched.detach().mean().clamp(min=0.0)


def kto_loss(r: torch.Tensor, labels: torch.Tensor, kl_ref: torch.Tensor | float,
             lambda_d: float = 1.0, lambda_u: float = 1.0) -> torch.Tensor:
    """Unpaired KTO (Ethayarajh et al. Eq. 8; TRL `kto_loss` with loss_type="kto") on implicit
    rewards r = beta * log-ratio:

        z0 = clamp(kl_ref, min=0), detached (no gradient through the reference point)
        desirable (l = 1):   L = lambda_D * (1 - sigma(r - z0))
        undesirable (l = 0): L = lambda_U * (1 - sigma(z0 - r))

    i.e. lambda_y - v(x, y) of the paper; mean over the batch. kl_ref is in reward units
    (beta * KL), normally kto_kl_estimate(r_mismatched) of the optimizer batch r belongs to
    (r may be one micro batch of it). r, labels: [B].
    """
    z0 = torch.as_tensor(kl_ref, dtype=r.dtype, device=r.device).detach().clamp(min=0.0)
    lab = labels.to(r.dtype)
    if not bool(((lab == 0) | (lab == 1)).all()):
        raise ValueError("kto_loss needs labels in {0, 1}")
    desirable = lambda_d * (1 - torch.sigmoid(r - z0))
    undesirable = lambda_u * (1 - torch.sigmoid(z0 - r))
    return (lab * desirable + (1 - lab) * undesirable).mean()


def nca_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Pairwise NCA (Chen et al. 2024, "Noise Contrastive Alignment"; authors' code
    thu-ml/Noise-Contrastive-Alignment preference_trainer.py, loss_type="NCA"; TRL "nca_pair"):

        L = -log sigma(r_w) - 1/2 log sigma(-r_w) - 1/2 log sigma(-r_l),

    mean over pairs. Unlike DPO it pushes the *absolute* reward of y_w up. [B], [B] -> scalar.
    """
    per = -F.logsigmoid(r_chosen) - 0.5 * F.logsigmoid(-r_chosen) - 0.5 * F.logsigmoid(-r_rejected)
    return per.mean()


# --------------------------------------------------------------------------- PAV / MC-PRM step classifiers
