"""Reward models behind one scoring interface.

Every reward model answers `step_scores(examples)`: for each (prompt, response split into
steps) a list of per-step scores, batched. `solution_scores` aggregates them (min / last /
mean / product). Verifier evaluation and RL use only this interface.

- ORM, MC-PRM (Math-Shepherd) and PAV share one architecture: the policy's Llama backbone
  with a scalar head at every position (`AutoModelForTokenClassification`, num_labels=1),
  initialised from a policy and saved with `save_pretrained`. A step's score is
  sigmoid(head) at the step's last token. The ORM is trained at the final token only, the
  MC-PRM at every step end on HE or SE labels, PAV at every step end on Q_hat; the MC-PRM and
  PAV also at the prompt's last token on the empty prefix's label (HE of v0, or v0 = V(x)).
- PAV's score of step h is its effective reward Q^pi_h + alpha * A^mu_h, where A^mu is the
  advantage under a Best-of-K prover computed from the predicted Q (Q_0 = the head at the
  prompt's last token, i.e. V(x), trained on the completer's v0; Best-of-K is applied here).
- Implicit PRM: a causal LM pi_phi initialised from a policy, with a frozen reference pi_ref
  (the same policy). Step score = r_h = sum over step h's tokens of beta * log(pi_phi/pi_ref)
  (rm_losses), trained on outcome labels only; `use_ref=False` scores without the reference.
`load_reward_model(path)` returns the right class from the saved `rm_meta.json`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

from .flops import count_params
from .modeling import load_scalar_head_model
from .mc_label import best_of_k, step_advantages
from .rm_losses import implicit_token_rewards, step_rewards
from .scoring import collate, join_responses, split_responses, token_logprobs
from .steps import step_token_ends
from .utils import atomic_dir

HEAD_KINDS = ("orm", "prm", "pav")
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


class HeadRewardModel:
    def __init__(self, model, tokenizer, kind: str, meta: dict):
        if kind not in HEAD_KINDS:
            raise ValueError(f"head reward model kind must be one of {HEAD_KINDS}, got {kind!r}")
        self.model, self.tokenizer, self.kind, self.meta = model, tokenizer, kind, meta

    @property
    def scores_are_probabilities(self) -> bool:
        """ORM / PRM step scores are sigmoid(head); PAV's Q + alpha * A is not a probability
        (it may leave [0, 1]), so `product` and probability-valued voting weights do not apply."""
        return self.kind != "pav"

    @property
    def n_scoring_params(self) -> int:
        """Parameters of the forward passes one scoring call runs (FLOPs = 2 * this * tokens)."""
        return count_params(self.model)

    @classmethod
    def init_from_policy(cls, policy_path: str, kind: str, meta: dict | None = None,
                         dropout: float = 0.1) -> "HeadRewardModel":
        """A value head on the policy's backbone; `dropout` on the hidden states under the head in
        training (0.1 is transformers' default for token-classification heads)."""
        model, tokenizer = load_scalar_head_model(policy_path, dropout=dropout)
        return cls(model, tokenizer, kind, dict(meta or {}))

    @classmethod
    def load(cls, path: str | Path) -> "HeadRewardModel":
        meta = json.loads((Path(path) / "rm_meta.json").read_text())
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        model = AutoModelForTokenClassification.from_pretrained(path, trust_remote_code=False)
        return cls(model, tokenizer, meta["kind"], meta)

    def save(self, out_dir: str | Path) -> None:
        from .engine import full_state_dict, is_main

        state = full_state_dict(self.model)  # full weights under ZeRO-3 (None otherwise)
        if not is_main():  # every rank gathers, rank 0 writes
            return
        with atomic_dir(out_dir) as tmp:
            self.model.save_pretrained(tmp, **({} if state is None else {"state_dict": state}))
            self.tokenizer.save_pretrained(tmp)
            (tmp / "rm_meta.json").write_text(json.dumps({**self.meta, "kind": self.kind}, indent=2, sort_keys=True))

    def position_logits(self, model, batch: dict) -> torch.Tensor:
        """[B, T] head logit at every position (model: the module or its training engine)."""
        device = next(model.parameters()).device
        out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
        return out.logits.squeeze(-1)

    @torch.no_grad()
    def head_probs(self, examples: list[dict], batch_size: int = 64) -> list[tuple[float, list[float]]]:
        """(sigmoid at the prompt's last token, [sigmoid at each step end]) per example."""
        self.model.eval()
        out = []
        for s in range(0, len(examples), batch_size):
            chunk = examples[s:s + batch_size]
            batch = collate([e["prompt_ids"] for e in chunk], [e["response_ids"] for e in chunk],
                            self.tokenizer.pad_token_id)
            probs = torch.sigmoid(self.position_logits(self.model, batch).float()).cpu()
            for b, e in enumerate(chunk):
                pos = score_positions(len(e["prompt_ids"]), e["step_token_ends"])
                out.append((float(probs[b, len(e["prompt_ids"]) - 1]), [float(probs[b, p]) for p in pos]))
        return out

    def step_scores(self, examples: list[dict], batch_size: int = 64) -> list[list[float]]:
        """Per-step scores; PAV: Q^pi + alpha * A^mu under the Best-of-K prover."""
        probs = self.head_probs(examples, batch_size)
        if self.kind != "pav":
            return [steps for _, steps in probs]
        k, alpha = int(self.meta["prover_k"]), float(self.meta["alpha"])
        return [pav_effective_rewards(v0, q, k, alpha) for v0, q in probs]

    def pav_terms(self, examples: list[dict], batch_size: int = 64) -> list[dict]:
        """PAV's parts per step: Q^pi (the head) and A^mu under the Best-of-K prover."""
        k = int(self.meta["prover_k"])
        out = []
        for v0, q in self.head_probs(examples, batch_size):
            q_bok = [best_of_k(x, k) for x in q]
            out.append({"q": q, "v0": v0, "a_prover": step_advantages(q_bok, best_of_k(v0, k))})
        return out

    def solution_scores(self, examples: list[dict], how: str = "min", batch_size: int = 64) -> list[float]:
        return [aggregate(s, how) for s in self.step_scores(examples, batch_size)]


def pav_effective_rewards(v0: float, q: list[float], prover_k: int, alpha: float) -> list[float]:
    """Q^pi_h + alpha * (Q^BoK_h - Q^BoK_{h-1}), with Q^BoK_0 from V(x) = v0 (PAV, METHODS.md)."""
    a_prover = step_advantages([best_of_k(x, prover_k) for x in q], best_of_k(v0, prover_k))
    return [qh + alpha * a for qh, a in zip(q, a_prover)]


class ImplicitPRM:
    scores_are_probabilities = False  # step rewards are log-ratios: `product` aggregation does not apply

    def __init__(self, model, ref_model, tokenizer, meta: dict):
        self.model, self.ref_model, self.tokenizer, self.meta = model, ref_model, tokenizer, meta
        self.kind, self.beta = "implicit", float(meta["beta"])

    @property
    def n_scoring_params(self) -> int:
        """Parameters of the forward passes one scoring call runs: pi_phi, plus pi_ref if loaded."""
        return count_params(self.model) + (count_params(self.ref_model) if self.ref_model is not None else 0)

    @classmethod
    def init_from_policy(cls, policy_path: str, meta: dict) -> "ImplicitPRM":
        """pi_phi and pi_ref both start from the policy (Implicit PRM / PRIME)."""
        tokenizer = AutoTokenizer.from_pretrained(policy_path, trust_remote_code=False)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(policy_path, trust_remote_code=False)
        ref = AutoModelForCausalLM.from_pretrained(policy_path, trust_remote_code=False).eval().requires_grad_(False)
        return cls(model, ref, tokenizer, {**meta, "ref_policy": policy_path})

    @classmethod
    def load(cls, path: str | Path, use_ref: bool = True) -> "ImplicitPRM":
        meta = json.loads((Path(path) / "rm_meta.json").read_text())
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False)
        ref = None
        if use_ref:
            # a local reference is found relative to this model, not to the current directory,
            # so loading from elsewhere (or a moved results tree) cannot pick up another policy
            rel = meta.get("ref_policy_from_model")
            ref_path = Path(path) / rel if rel and (Path(path) / rel).is_dir() else meta["ref_policy"]
            ref = AutoModelForCausalLM.from_pretrained(ref_path, trust_remote_code=False)
            ref.eval().requires_grad_(False)
        return cls(model, ref, tokenizer, meta)

    def save(self, out_dir: str | Path) -> None:
        meta = {**self.meta, "kind": "implicit"}
        if Path(meta["ref_policy"]).is_dir():  # a hub id stays as it is
            meta["ref_policy_from_model"] = os.path.relpath(Path(meta["ref_policy"]).resolve(), Path(out_dir).resolve())
        from .engine import full_state_dict, is_main

        state = full_state_dict(self.model)  # full weights under ZeRO-3 (None otherwise)
        if not is_main():  # every rank gathers, rank 0 writes
            return
        with atomic_dir(out_dir) as tmp:
            self.model.save_pretrained(tmp, **({} if state is None else {"state_dict": state}))
            self.tokenizer.save_pretrained(tmp)
            (tmp / "rm_meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))

    def response_token_rewards(self, model, examples: list[dict], ref_logps: list[torch.Tensor] | None = None
                               ) -> list[torch.Tensor]:
        """beta * (log pi_phi - log pi_ref) per response token, one vector per example (grad flows
        through `model`). `ref_logps` may carry precomputed reference log-probs."""
        batch = collate([e["prompt_ids"] for e in examples], [e["response_ids"] for e in examples],
                        self.tokenizer.pad_token_id)
        logp = token_logprobs(model, batch)
        mask = batch["response_mask"].to(logp.device)
        ref = None
        if ref_logps is not None:
            ref = join_responses(ref_logps, batch).to(logp.device)
        elif self.ref_model is not None:
            with torch.no_grad():
                ref = token_logprobs(self.ref_model, batch)
        return split_responses(implicit_token_rewards(logp, ref, mask, self.beta), batch)

    @torch.no_grad()
    def step_scores(self, examples: list[dict], batch_size: int = 64) -> list[list[float]]:
        self.model.eval()
        out = []
        for s in range(0, len(examples), batch_size):
            chunk = examples[s:s + batch_size]
            for e, tr in zip(chunk, self.response_token_rewards(self.model, chunk)):
                # the last step runs to the end of the response (EOS included), so the step
                # rewards sum to the sequence reward r(y) the model was trained on
                ends = list(e["step_token_ends"][:-1]) + [len(e["response_ids"])]
                out.append([float(x) for x in step_rewards(tr.float().cpu(), ends)])
        return out

    def solution_scores(self, examples: list[dict], how: str = "min", batch_size: int = 64) -> list[float]:
        return [aggregate(s, how) for s in self.step_scores(examples, batch_size)]


def load_reward_model(path: str | Path, use_ref: bool = True):
    """Any trained reward model, by the kind recorded in its rm_meta.json."""
    kind = json.loads((Path(path) / "rm_meta.json").read_text())["kind"]
    return ImplicitPRM.load(path, use_ref=use_ref) if kind == "implicit" else HeadRewardModel.load(path)
