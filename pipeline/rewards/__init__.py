"""Reward models: one base class (`base.RewardModel`), one module per kind (`head`, `implicit`,
and `likelihood`, the untrained baseline), their losses (`losses`), and `load_reward_model`, which
picks the class from the kind saved with the model (registry.REWARD_KINDS). Training is the
stage `pipeline.train_rm`.

The model classes load on first use (PEP 562 `__getattr__`): the table stages need only the
step aggregations, and importing the classes costs torch and transformers (about 4 s per job,
issue 17)."""
import importlib

from .base import (AGGREGATIONS, RewardModel, aggregate, load_reward_model, read_meta, reward_model_class,
                   score_positions, scoring_examples)

_LAZY = {"HeadRewardModel": "head", "pav_effective_rewards": "head", "ImplicitPRM": "implicit",
         "LikelihoodVerifier": "likelihood"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AGGREGATIONS", "HeadRewardModel", "ImplicitPRM", "LikelihoodVerifier", "RewardModel", "aggregate",
           "load_reward_model", "pav_effective_rewards", "read_meta", "reward_model_class", "score_positions", "scoring_examples"]
