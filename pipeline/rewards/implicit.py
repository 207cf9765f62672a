"""Implicit PRM: a causal LM pi_phi initialised from a policy, with a frozen reference pi_ref
(the same policy). Step score = r_h = sum over step h's tokens of beta * log(pi_phi/pi_ref)
(`losses`), trained on outcome labels only. Scoring without the reference (log pi_phi alone,
the paper's "reference can be dropped at inference") is the saved `score_with_reference: false`
(config rm.implicit_score_reference), or `load(use_ref=False)`. PRIME trains one online
(pipeline/rl/prime.py) and always uses the ratio.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..flops import count_params
from ..modeling import check_model_dir
from ..scoring import collate, join_responses, split_responses, token_logprobs
from .base import RewardModel, read_meta
from .losses import implicit_token_rewards, step_rewards


class ImplicitPRM(RewardModel):
    kinds = ("implicit",)
    scores_are_probabilities = False  # step rewards are log-ratios: `product` aggregation does not apply

    def __init__(self, model, ref_model, tokenizer, meta: dict):
        super().__init__(model, tokenizer, "implicit", meta)
        self.ref_model, self.beta = ref_model, float(meta["beta"])

    @property
    def n_scoring_params(self) -> int:
        """Parameters of the forward passes one scoring call runs: pi_phi, plus pi_ref if loaded."""
        return count_params(self.model) + (count_params(self.ref_model) if self.ref_model is not None else 0)

    @classmethod
    def init_from_policy(cls, policy_path: str, meta: dict) -> "ImplicitPRM":
        """pi_phi and pi_ref both start from the policy (Implicit PRM / PRIME)."""
        check_model_dir(policy_path)
        tokenizer = AutoTokenizer.from_pretrained(policy_path, trust_remote_code=False)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(policy_path, trust_remote_code=False)
        ref = AutoModelForCausalLM.from_pretrained(policy_path, trust_remote_code=False).eval().requires_grad_(False)
        return cls(model, ref, tokenizer, {**meta, "ref_policy": policy_path})

    def score_with_reference(self, with_reference: bool) -> None:
        """Record how this model scores (saved as `score_with_reference`, which `load` follows);
        without the reference the reference model is dropped, so scoring runs pi_phi alone."""
        self.meta["score_with_reference"] = bool(with_reference)
        if not with_reference:
            self.ref_model = None

    @classmethod
    def load(cls, path: str | Path, use_ref: bool | None = None) -> "ImplicitPRM":
        """`use_ref`: None follows the model's saved `score_with_reference` (true if absent)."""
        meta = read_meta(path)
        if use_ref is None:
            use_ref = bool(meta.get("score_with_reference", True))
        check_model_dir(path)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False)
        ref = None
        if use_ref:
            # a local reference is found relative to this model, not to the current directory,
            # so loading from elsewhere (or a moved results tree) cannot pick up another policy
            rel = meta.get("ref_policy_from_model")
            ref_path = Path(path) / rel if rel and (Path(path) / rel).is_dir() else meta["ref_policy"]
            check_model_dir(ref_path, tokenizer=False)
            ref = AutoModelForCausalLM.from_pretrained(ref_path, trust_remote_code=False)
            ref.eval().requires_grad_(False)
        return cls(model, ref, tokenizer, meta)

    def saved_meta(self, out_dir: Path) -> dict:
        meta = super().saved_meta(out_dir)
        if Path(meta["ref_policy"]).is_dir():  # a hub id stays as it is
            meta["ref_policy_from_model"] = os.path.relpath(Path(meta["ref_policy"]).resolve(), Path(out_dir).resolve())
        return meta

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
