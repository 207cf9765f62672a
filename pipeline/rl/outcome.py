"""Outcome-only RL: the verifier's 0/1 reward of a whole response, with a group baseline, on
every token of it. The baselines every dense-reward method must beat (METHODS.md)."""
from __future__ import annotations

from .base import Method, Rollouts, TrainBatch, outcome_batch
from .losses import grpo_advantages, rloo_advantages


class RLOO(Method):
    """A^i = r^i - mean_{j != i} r^j over one prompt's K responses."""

    def batch(self, ro: Rollouts, compute) -> TrainBatch:
        return outcome_batch(ro, rloo_advantages(ro.rewards))


class GRPO(Method):
    """A^i = (r^i - mean_j r^j) / std_j r^j (DeepSeekMath)."""

    def batch(self, ro: Rollouts, compute) -> TrainBatch:
        return outcome_batch(ro, grpo_advantages(ro.rewards))
