"""The interface every RL method implements, and what passes through it.

One iteration of the loop (train.py) samples K responses for each of P prompts and grades them
(`Rollouts`). The method turns them into a `TrainBatch`: the sequences the policy trains on,
one advantage per response token, any extra per-token tensors its loss reads, and its metrics.
The loop then computes the old (and reference) log-probs, lets the method finish advantages
that need them (`after_logprobs`, JEPO), and takes PPO minibatch steps on `Method.loss`;
`after_step` runs after each policy step (PPO's value network). Methods with an engine of their
own (PRIME's online PRM, PPO's critic) return it from `extra_engines` so checkpoints hold it.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import torch

from ..registry import RL_METHODS
from .losses import ppo_clip_loss


@dataclass
class Context:
    """What a method may read: its view of the config and the run's shared objects."""
    rl: dict               # the rl section as this method's job sees it (registry.method_view)
    task: dict
    sampling: dict
    policy: str            # the initial policy's directory (or hub id)
    rm: str | None         # the trained reward model the method reads (registry: reward_model_key)
    tokenizer: object
    engine: object         # the policy's training engine (engine.module is the policy)
    n_params: int
    iterations: int
    minibatch: int         # rl.minibatch_size: samples per optimizer step
    seed: int              # the run's seed

    @property
    def delimiter(self) -> str:
        return self.task["step_delimiter"]


@dataclass
class Rollouts:
    """One iteration's samples: gens[p][k] is response k of prompt p; rewards[p, k] its outcome."""
    iteration: int
    records: list[dict]
    encoded: list[list[int]]      # prompt token ids, one per prompt (its K responses share them)
    gens: list[list]              # sampler.Generation objects
    rewards: torch.Tensor         # [P, K] 0/1 outcomes from the grader
    sampler: object               # the current policy's sampler (VinePPO draws its vines from it)

    @property
    def P(self) -> int:
        return len(self.gens)

    @property
    def K(self) -> int:
        return len(self.gens[0]) if self.gens else 0

    @property
    def prompt_ids(self) -> list[list[int]]:
        return [ids for ids in self.encoded for _ in range(self.K)]

    @property
    def response_ids(self) -> list[list[int]]:
        return [g.token_ids for gs in self.gens for g in gs]


@dataclass
class TrainBatch:
    """What the policy loss consumes: sample i is prompt_ids[i] + response_ids[i], with one
    advantage per response token (adv[i]) and any extra per-token tensors (tokens[name][i])."""
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    adv: list[torch.Tensor] | None          # None until after_logprobs fills it (JEPO)
    tokens: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    pg_mask: str | None = None              # name in `tokens` of the tokens the policy gradient acts on

    def __len__(self) -> int:
        return len(self.response_ids)


def outcome_batch(ro: Rollouts, seq_adv: torch.Tensor) -> TrainBatch:
    """Every response token gets its sequence's advantage ([P, K] -> one vector per response)."""
    flat = seq_adv.flatten()
    rids = ro.response_ids
    return TrainBatch(ro.prompt_ids, rids, [torch.full((len(r),), float(a)) for r, a in zip(rids, flat)])


class Method:
    """Base class of an RL method (see the module docstring for where each hook runs)."""

    def __init__(self, ctx: Context):
        self.ctx = ctx

    @property
    def extra_engines(self) -> dict:
        return {}

    def batch(self, ro: Rollouts, compute) -> TrainBatch:
        raise NotImplementedError

    def after_logprobs(self, batch: TrainBatch, old_logp: list[torch.Tensor]) -> None:
        """Advantages that need the policy's log-probs of the batch (from the old-log-prob forward)."""

    def loss(self, logp: torch.Tensor, old_logp: torch.Tensor, tokens: dict[str, torch.Tensor], mask: torch.Tensor,
             clip_eps: float) -> tuple[torch.Tensor, dict]:
        """The policy's loss on a micro batch ([B, T] tensors; tokens["adv"] the advantages)."""
        return ppo_clip_loss(logp, old_logp, tokens["adv"], mask, clip_eps)

    def after_step(self, batch: TrainBatch, idx: list[int], iteration: int, compute) -> dict:
        """Runs after each policy optimizer step on minibatch `idx`; returns stats to average."""
        return {}


def mean_or_none(xs) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def load_method(algo: str, ctx: Context) -> Method:
    """The registered method's class, instantiated (its module is imported only here)."""
    if algo not in RL_METHODS:
        raise SystemExit(f"--algo {algo!r}: rl methods are {', '.join(RL_METHODS)}")
    spec = RL_METHODS[algo]
    module = importlib.import_module(spec.module if "." in spec.module else f"pipeline.rl.{spec.module}")
    return getattr(module, spec.cls)(ctx)


def response_step_token_ends(tokenizer, gen, delimiter: str) -> list[int]:
    """Token count covering each step of a generated response ([] for a response without steps)."""
    from ..steps import split_steps_with_ends, step_token_ends

    _, ends = split_steps_with_ends(gen.text, delimiter)
    return step_token_ends(tokenizer, gen.token_ids, ends) if ends else []
