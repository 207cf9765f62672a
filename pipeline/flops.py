"""The FLOP counter: the one place compute is accounted (METHODS.md, "Compute accounting").

Forward pass: 2 * params * tokens. Training (forward + backward): 6 * params * tokens.
Sampling counts every token the model processes (prompt prefill + generated tokens) as a
forward pass; every stage adds its counts into a `Compute` record stored in its artifact, so
a table can sum data collection + training for any model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


def forward_flops(n_params: int, n_tokens: int) -> float:
    return 2.0 * n_params * n_tokens


def train_flops(n_params: int, n_tokens: int) -> float:
    return 6.0 * n_params * n_tokens


def count_params(model) -> int:
    """Parameters that take part in the matmuls (embeddings counted, as in 2*N*D estimates)."""
    return sum(p.numel() for p in model.parameters())


@dataclass
class Compute:
    """Running totals for one artifact. `flops` is the sum of all forward/training FLOPs."""

    prompt_tokens: int = 0      # tokens prefilled for sampling
    generated_tokens: int = 0   # tokens sampled
    trained_tokens: int = 0     # tokens that went through forward + backward
    scored_tokens: int = 0      # tokens through forward-only scoring (reference logprobs, rewards)
    samples: int = 0            # full responses generated
    flops: float = 0.0
    extra: dict = field(default_factory=dict)

    def add_sampling(self, n_params: int, prompt_tokens: int, generated_tokens: int, samples: int) -> None:
        self.prompt_tokens += prompt_tokens
        self.generated_tokens += generated_tokens
        self.samples += samples
        self.flops += forward_flops(n_params, prompt_tokens + generated_tokens)

    def add_training(self, n_params: int, tokens: int) -> None:
        self.trained_tokens += tokens
        self.flops += train_flops(n_params, tokens)

    def add_scoring(self, n_params: int, tokens: int) -> None:
        self.scored_tokens += tokens
        self.flops += forward_flops(n_params, tokens)

    def merge(self, other: "Compute") -> "Compute":
        out = Compute(**asdict(self))
        for k in ("prompt_tokens", "generated_tokens", "trained_tokens", "scored_tokens", "samples", "flops"):
            setattr(out, k, getattr(self, k) + getattr(other, k))
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Compute":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
