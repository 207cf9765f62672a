"""Reward models: one base class (`base.RewardModel`), one module per kind (`head`, `implicit`,
and `likelihood`, the untrained baseline), their losses (`losses`), and `load_reward_model`, which
picks the class from the kind saved with the model (registry.REWARD_KINDS). Training is the
stage `pipeline.train_rm`."""
from .base import (AGGREGATIONS, RewardModel, aggregate, load_reward_model, read_meta, reward_model_class,
                   score_positions, scoring_examples)
from .head import HeadRewardModel, pav_effective_rewards
from .implicit import ImplicitPRM
from .likelihood import LikelihoodVerifier

__all__ = ["AGGREGATIONS", "HeadRewardModel", "ImplicitPRM", "LikelihoodVerifier", "RewardModel", "aggregate",
           "load_reward_model", "pav_effective_rewards", "read_meta", "reward_model_class", "score_positions", "scoring_examples"]
