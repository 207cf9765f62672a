"""The reward-model interface, its shared pieces and the loader.

Every reward model answers `step_scores(examples)`: for each (prompt, response split into
steps) a list of per-step scores, batched. `solution_scores` aggregates them (min / last /
mean / product). Verifier evaluation, search and RL use only this interface, and get a trained
model through `load_reward_model(path)`, which picks the class from the `kind` saved in the
model's `rm_meta.json` through `registry.REWARD_KINDS`.

The kinds (one class each, in this package):
- `head.HeadRewardModel` (orm, prm, pav): the policy's backbone with a scalar head at every
  position; a step's score is sigmoid(head) at the step's last token, PAV's the effective reward
  Q + alpha * A^mu under a Best-of-K prover, with Q_0 = V(x) read at the prompt's last token.
- `implicit.ImplicitPRM` (implicit): a causal LM against a frozen reference; step score = the
  step's summed beta * log(pi_phi / pi_ref), trained on outcome labels only (`losses`).
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

from ..flops import count_params
from ..registry import REWARD_KINDS
from ..steps import step_token_ends
from ..utils import atomic_dir

AGGREGATIONS = ("min", "last", "mean", "product")




def aggregate(step_scores: list[float], how: str) -> float:
    """Solution score from step scores. `product` multiplies probabilities (scores in (0, 1))."""
    step_scores = [float(x) for x in step_scores]
    if not step_scores:
        raise ValueError("cannot aggregate an empty list of step scores")
    if how == "min":
        return min(step_scores)
    if how == "last":
        return step_scores[-1]
    if how == "mean":
        return sum(step_scores) / len(step_scores)
    if how == "product":
        out = 1.0
        for s in step_scores:
            out *= s
        return out
    raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}; got {how!r}")


def scoring_examples(rows: list[dict], tokenizer) -> list[dict | None]:
    """What the scoring interface needs, {prompt_ids, response_ids, step_token_ends}, for rows
    with `prompt`, `response_ids` and `step_ends` (or `step_token_ends`), aligned with `rows`:
    None for a row without a response or steps. Each distinct prompt is tokenised once."""
    prompt_cache: dict[str, list[int]] = {}
    out: list[dict | None] = []
    for r in rows:
        ends = r.get("step_token_ends") or (step_token_ends(tokenizer, r["response_ids"], r["step_ends"])
                                            if r["response_ids"] and r["step_ends"] else [])
        if not r["response_ids"] or not ends:
            out.append(None)
            continue
        if r["prompt"] not in prompt_cache:
            prompt_cache[r["prompt"]] = tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]
        out.append({"prompt_ids": prompt_cache[r["prompt"]], "response_ids": r["response_ids"], "step_token_ends": ends})
    return out


def score_positions(prompt_len: int, step_token_ends: list[int]) -> list[int]:
    """Sequence index of the last token of each step: where a head reads that step's score."""
    return [prompt_len + e - 1 for e in step_token_ends]



class RewardModel:
    """A trained (or trainable) reward model: `model` (what training updates), its tokenizer, its
    `kind` (a key of `registry.REWARD_KINDS`) and `meta` (saved as rm_meta.json beside the
    weights). Subclasses set `kinds`, implement `step_scores` and `load`, and may add to the saved
    meta through `saved_meta`."""
    kinds: tuple[str, ...] = ()

    def __init__(self, model, tokenizer, kind: str, meta: dict):
        if kind not in self.kinds:
            raise ValueError(f"{type(self).__name__} kind must be one of {self.kinds}, got {kind!r}")
        self.model, self.tokenizer, self.kind, self.meta = model, tokenizer, kind, meta

    @property
    def scores_are_probabilities(self) -> bool:
        """Whether step scores are probabilities in (0, 1), so `product` aggregation and
        probability-valued voting weights apply."""
        return True

    @property
    def n_scoring_params(self) -> int:
        """Parameters of the forward passes one scoring call runs (FLOPs = 2 * this * tokens)."""
        return count_params(self.model)

    @classmethod
    def load(cls, path: str | Path, use_ref: bool | None = None) -> "RewardModel":
        """The model saved at `path`. `use_ref`: whether implicit PRMs score with their reference;
        None follows the model's saved choice (head models have none and ignore it)."""
        raise NotImplementedError

    def step_scores(self, examples: list[dict], batch_size: int = 64) -> list[list[float]]:
        raise NotImplementedError

    def solution_scores(self, examples: list[dict], how: str = "min", batch_size: int = 64) -> list[float]:
        return [aggregate(s, how) for s in self.step_scores(examples, batch_size)]

    def batches(self, examples: list[dict], batch_size: int):
        """(chunk of examples, its right-padded prompt+response batch) in order: how every
        scorer walks its examples."""
        from ..scoring import collate

        for s in range(0, len(examples), batch_size):
            chunk = examples[s:s + batch_size]
            yield chunk, collate([e["prompt_ids"] for e in chunk], [e["response_ids"] for e in chunk],
                                 self.tokenizer.pad_token_id)

    def saved_meta(self, out_dir: Path) -> dict:
        """rm_meta.json's content for a save to `out_dir`."""
        return {**self.meta, "kind": self.kind}

    def save(self, out_dir: str | Path) -> None:
        """Weights, tokenizer and rm_meta.json, atomically. Under ZeRO-3 every rank must call it
        (each gathers its shard of the full weights); rank 0 writes."""
        from ..engine import full_state_dict, is_main

        meta = self.saved_meta(Path(out_dir))
        state = full_state_dict(self.model)  # full weights under ZeRO-3 (None otherwise)
        if not is_main():
            return
        with atomic_dir(out_dir) as tmp:
            self.model.save_pretrained(tmp, **({} if state is None else {"state_dict": state}))
            self.tokenizer.save_pretrained(tmp)
            (tmp / "rm_meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def read_meta(path: str | Path) -> dict:
    """A saved reward model's rm_meta.json, with the path in the error when it is missing or bad."""
    f = Path(path) / "rm_meta.json"
    try:
        meta = json.loads(f.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{f}: no rm_meta.json; is {path} a reward model saved by pipeline.train_rm?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("kind") not in REWARD_KINDS:
        got = meta.get("kind") if isinstance(meta, dict) else meta
        raise ValueError(f"{f}: 'kind' must be one of {', '.join(REWARD_KINDS)}; got {got!r}")
    return meta


def reward_model_class(kind: str) -> type[RewardModel]:
    """The class that holds reward models of `kind` (registry.REWARD_KINDS)."""
    if kind not in REWARD_KINDS:
        raise ValueError(f"unknown reward-model kind {kind!r} (known: {', '.join(REWARD_KINDS)})")
    spec = REWARD_KINDS[kind]
    return getattr(importlib.import_module(f".{spec.module}", __package__), spec.cls)


def load_reward_model(path: str | Path, use_ref: bool | None = None) -> RewardModel:
    """Any trained reward model, by the kind recorded in its rm_meta.json."""
    return reward_model_class(read_meta(path)["kind"]).load(path, use_ref=use_ref)
