"""Token log-probabilities of responses under a causal LM: the one scorer used by RL
(policy ratios, reference KL) and, later, the implicit PRM and JEPO.

`collate` right-pads prompt+response pairs into one batch with a mask over response
tokens; `token_logprobs` returns log pi(y_t | x, y_<t) at every response position.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def collate(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int) -> dict:
    """Batch of x+y sequences, right-padded. `response_mask[b, t]` is 1 where token t+1 of
    the sequence is a response token, i.e. aligned with the logits that predict it."""
    seqs = [p + r for p, r in zip(prompt_ids, response_ids)]
    T = max(len(s) for s in seqs)
    B = len(seqs)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    response_mask = torch.zeros((B, T - 1), dtype=torch.float32)
    for b, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        s = p + r
        input_ids[b, : len(s)] = torch.tensor(s, dtype=torch.long)
        attention_mask[b, : len(s)] = 1
        response_mask[b, len(p) - 1 : len(s) - 1] = 1.0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def tempered_log_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature) in fp32 over the last axis: the one definition of a
    token's log-prob at a temperature, shared by the trainer's forward (`token_logprobs`) and
    the sampler's recorded log-probs, so the two agree to rounding."""
    if temperature != 1.0:
        logits = logits / temperature
    return F.log_softmax(logits.float(), dim=-1)


def token_logprobs(model, batch: dict, temperature: float = 1.0) -> torch.Tensor:
    """[B, T-1] log-probs of each next token (masked positions hold garbage; use response_mask)."""
    device = next(model.parameters()).device
    input_ids = batch["input_ids"].to(device)
    logits = model(input_ids=input_ids, attention_mask=batch["attention_mask"].to(device)).logits[:, :-1]
    return tempered_log_softmax(logits, temperature).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def split_responses(values: torch.Tensor, batch: dict) -> list[torch.Tensor]:
    """[B, T-1] per-position values -> one 1-D tensor per sample over its response tokens."""
    mask = batch["response_mask"].bool()
    return [values[b][mask[b].to(values.device)] for b in range(values.shape[0])]


def join_responses(vectors: list[torch.Tensor], batch: dict) -> torch.Tensor:
    """Inverse of `split_responses`: place per-response vectors at the batch's response
    positions ([B, T-1], zeros elsewhere). Used for old/ref logprobs and per-token advantages."""
    out = torch.zeros_like(batch["response_mask"])
    mask = batch["response_mask"].bool()
    for b, v in enumerate(vectors):
        out[b][mask[b]] = v.to(out.dtype)
    return out
