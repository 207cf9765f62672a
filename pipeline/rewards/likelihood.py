"""The untrained baseline every trained verifier is judged against: a policy's own likelihood.

Step score = the mean log-probability of the step's tokens under a policy (the generator's own,
or a stronger one), log pi(y_t | x, y_<t) averaged over the step; the last step runs to the end
of the response, EOS included. Aggregated with `mean` (the mean step log-likelihood, a length-
normalised sequence likelihood) or `min` (the worst step). No parameter is trained: the model is
the policy, saved beside rm_meta.json so the scorer loads like any reward model and a results
tree moved elsewhere still scores with the policy it was built from.

Why it is a baseline and not a straw man: on the testbed the policies' likelihoods rank one
prompt's samples better than scalar heads trained on thousands of labels (issue 14's study,
BENCHMARKS.md), so a trained verifier that does not beat its generator's likelihood has learnt
nothing the generator did not already know.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..modeling import check_model_dir
from ..scoring import split_responses, token_logprobs
from .base import RewardModel, read_meta


def step_mean_logprobs(token_logps: torch.Tensor, step_token_ends: list[int]) -> list[float]:
    """Mean of each step's token log-probs: step h covers tokens [end_{h-1}, end_h) of the
    response (end_{-1} = 0). [T] -> one float per step."""
    out, start = [], 0
    for end in step_token_ends:
        seg = token_logps[start:end]
        if seg.numel() == 0:
            raise ValueError(f"empty step: tokens [{start}, {end}) of a response")
        out.append(float(seg.float().mean()))
        start = end
    return out


class LikelihoodVerifier(RewardModel):
    kinds = ("likelihood",)
    scores_are_probabilities = False  # log-probabilities: `product` and probability voting weights do not apply

    @classmethod
    def init_from_policy(cls, policy_path: str, meta: dict | None = None) -> "LikelihoodVerifier":
        check_model_dir(policy_path)
        tokenizer = AutoTokenizer.from_pretrained(policy_path, trust_remote_code=False)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(policy_path, trust_remote_code=False).eval().requires_grad_(False)
        return cls(model, tokenizer, "likelihood", {**(meta or {}), "policy": policy_path})

    @classmethod
    def load(cls, path: str | Path, use_ref: bool | None = None) -> "LikelihoodVerifier":
        meta = read_meta(path)
        check_model_dir(path)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False).eval().requires_grad_(False)
        return cls(model, tokenizer, "likelihood", meta)

    @torch.no_grad()
    def step_scores(self, examples: list[dict], batch_size: int = 64) -> list[list[float]]:
        self.model.eval()
        out = []
        for chunk, batch in self.batches(examples, batch_size):
            for e, lp in zip(chunk, split_responses(token_logprobs(self.model, batch), batch)):
                ends = list(e["step_token_ends"][:-1]) + [len(e["response_ids"])]
                out.append(step_mean_logprobs(lp.cpu(), ends))
        return out
