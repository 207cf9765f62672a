"""The step splitter: the one place that turns a response into steps.

A *step* is a chunk of the response between delimiters (the papers use "\n\n" for
MATH-style solutions, "\n" for the testbed). Every stage that needs steps (rollout
labelling, PRM scoring, beam search, VinePPO) imports from here, so a preset changes
the delimiter in one config key and every consumer agrees.
"""
from __future__ import annotations


def split_steps_with_ends(text: str, delimiter: str = "\n") -> tuple[list[str], list[int]]:
    """Split `text` into non-empty steps and the character offset (exclusive) where each ends.

    Each step keeps its closing delimiter, because a PRM scores the prefix *including*
    the delimiter that ends the step. Whitespace-only chunks (runs of delimiters) are
    attached to the step before them, or dropped if they lead the text.
    """
    if not delimiter:
        raise ValueError("step delimiter must be a non-empty string")
    steps: list[str] = []
    ends: list[int] = []
    start = 0
    while start < len(text):
        cut = text.find(delimiter, start)
        end = len(text) if cut == -1 else cut + len(delimiter)
        chunk = text[start:end]
        if chunk.strip():
            steps.append(chunk)
            ends.append(end)
        elif steps:
            steps[-1] += chunk
            ends[-1] = end
        start = end
    return steps, ends


def split_steps(text: str, delimiter: str = "\n") -> list[str]:
    """The steps of `text` (see `split_steps_with_ends`)."""
    return split_steps_with_ends(text, delimiter)[0]


def step_token_ends(tokenizer, response_ids: list[int], step_ends: list[int]) -> list[int]:
    """For each step's end character offset, the number of response tokens whose decoding
    first covers it, i.e. the token prefix that contains the whole step. Works for any
    tokenizer (BPE merges included) by binary search over decoded prefix lengths."""
    def decoded_len(k: int) -> int:
        return len(tokenizer.decode(response_ids[:k], skip_special_tokens=True))

    out = []
    lo = 0
    for end in step_ends:
        hi = len(response_ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if decoded_len(mid) >= end:
                hi = mid
            else:
                lo = mid + 1
        out.append(lo)
    return out
