"""Head reward models: ORM, MC-PRM (Math-Shepherd) and PAV share one architecture, the
policy's Llama backbone with a scalar head at every position (`AutoModelForTokenClassification`,
num_labels=1), initialised from a policy and saved with `save_pretrained`. A step's score is
sigmoid(head) at the step's last token. The ORM is trained at the final token only, the MC-PRM
at every step end on HE or SE labels, PAV at every step end on Q_hat; the MC-PRM and PAV also
at the prompt's last token on the empty prefix's label (HE of v0, or v0 = V(x)) (train_rm).

PAV's score of step h is its effective reward Q^pi_h + alpha * A^mu_h, where A^mu is the
advantage under a Best-of-K prover computed from the predicted Q (Q_0 = the head at the
prompt's last token, i.e. V(x), trained on the completer's v0; Best-of-K is applied here).
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer

from ..mc_values import best_of_k, step_advantages
from ..modeling import check_model_dir, load_scalar_head_model
from .base import RewardModel, read_meta, score_positions


class HeadRewardModel(RewardModel):
    kinds = ("orm", "prm", "pav")

    @property
    def scores_are_probabilities(self) -> bool:
        """ORM / PRM step scores are sigmoid(head); PAV's Q + alpha * A is not a probability
        (it may leave [0, 1]), so `product` and probability-valued voting weights do not apply."""
        return self.kind != "pav"

    @classmethod
    def init_from_policy(cls, policy_path: str, kind: str, meta: dict | None = None,
                         dropout: float = 0.1) -> "HeadRewardModel":
        """A value head on the policy's backbone; `dropout` on the hidden states under the head in
        training (0.1 is transformers' default for token-classification heads)."""
        model, tokenizer = load_scalar_head_model(policy_path, dropout=dropout)
        return cls(model, tokenizer, kind, dict(meta or {}))

    @classmethod
    def load(cls, path: str | Path, use_ref: bool | None = None) -> "HeadRewardModel":
        meta = read_meta(path)
        check_model_dir(path)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        model = AutoModelForTokenClassification.from_pretrained(path, trust_remote_code=False)
        return cls(model, tokenizer, meta["kind"], meta)

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
        for chunk, batch in self.batches(examples, batch_size):
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


def pav_effective_rewards(v0: float, q: list[float], prover_k: int, alpha: float) -> list[float]:
    """Q^pi_h + alpha * (Q^BoK_h - Q^BoK_{h-1}), with Q^BoK_0 from V(x) = v0 (PAV, METHODS.md)."""
    a_prover = step_advantages([best_of_k(x, prover_k) for x in q], best_of_k(v0, prover_k))
    return [qh + alpha * a for qh, a in zip(q, a_prover)]
