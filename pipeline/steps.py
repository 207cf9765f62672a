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
