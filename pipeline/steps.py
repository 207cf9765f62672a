"""The step splitter: the one place that turns a response into steps.

A *step* is a chunk of the response between delimiters (the papers use "\n\n" for
MATH-style solutions, "\n" for the testbed). Every stage that needs steps (rollout
labelling, PRM scoring, beam search, VinePPO) imports from here, so a preset changes
the delimiter in one config key and every consumer agrees.

Real solutions are not one thought per line, so three rules make the delimiter mean a step
boundary and not just a newline character:

- A delimiter inside a block that belongs together does not cut: display math
  (``\\begin{align*} ... \\end{align*}`` and the other environments in ``DISPLAY_ENVIRONMENTS``,
  ``\\[ ... \\]``, ``$$ ... $$``), Asymptote figures (``[asy] ... [/asy]``) and code fences
  (three backticks). Only closed blocks count, so a response cut off inside one still splits.
- Each newline of the delimiter also matches CRLF, and the blank lines of a delimiter such
  as "\n\n" may hold spaces or tabs ("a\r\n  \r\nb" is two steps under "\n\n").
- Steps and offsets are always those of the text as given (nothing is rewritten), so
  ``"".join(steps)`` is a slice of it and ``step_ends`` index it and its tokens.

Text with none of these (the arithmetic testbed: one step per line) splits exactly as a plain
``str.find`` on the delimiter would.
"""
from __future__ import annotations

import re
from functools import lru_cache

DISPLAY_ENVIRONMENTS = ("align", "alignat", "equation", "gather", "multline", "eqnarray", "flalign")

# Where a block whose inside is never cut opens. "\[" preceded by a backslash is a LaTeX line
# break with spacing ("\\[2pt]" inside an array), not display math.
_BLOCK_OPEN_RE = re.compile(
    r"\\begin\{((?:" + "|".join(DISPLAY_ENVIRONMENTS) + r")\*?)\}|(?<!\\)\\\[|\$\$|\[asy\]|```")
_BLOCK_CLOSE = {"\\[": "\\]", "$$": "$$", "[asy]": "[/asy]", "```": "```"}


@lru_cache(maxsize=16)
def _delimiter_re(delimiter: str) -> re.Pattern:
    r"""The delimiter as a pattern: each "\n" also matches "\r\n", and a "\n" that follows
    another may have spaces or tabs before it (a blank line holding spaces is still blank)."""
    parts = []
    for i, ch in enumerate(delimiter):
        if ch == "\n":
            parts.append(r"[ \t]*\r?\n" if i > 0 and delimiter[i - 1] == "\n" else r"\r?\n")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts))


def _blocks(text: str) -> list[tuple[int, int]]:
    """(start, end) of each closed block, in order. Linear in the text: once a closer is
    missing from some point on, later openers of that kind are not searched again (a model
    repeating "\\[" thousands of times must not cost quadratic time in every rollout)."""
    spans: list[tuple[int, int]] = []
    unclosed: set[str] = set()
    pos = 0
    while (m := _BLOCK_OPEN_RE.search(text, pos)) is not None:
        closer = f"\\end{{{m.group(1)}}}" if m.group(1) else _BLOCK_CLOSE[m.group(0)]
        end = -1 if closer in unclosed else text.find(closer, m.end())
        if end < 0:
            unclosed.add(closer)
            pos = m.end()
        else:
            spans.append((m.start(), end + len(closer)))
            pos = end + len(closer)
    return spans


def _cuts(text: str, delimiter: str) -> list[int]:
    """Where steps end: the end of every delimiter match that does not start inside a block."""
    blocks = _blocks(text)
    cuts, b = [], 0
    for m in _delimiter_re(delimiter).finditer(text):
        while b < len(blocks) and blocks[b][1] <= m.start():
            b += 1
        if b < len(blocks) and blocks[b][0] <= m.start():
            continue  # inside a block
        cuts.append(m.end())
    return cuts


def split_steps_with_ends(text: str, delimiter: str = "\n") -> tuple[list[str], list[int]]:
    """Split `text` into non-empty steps and the character offset (exclusive) where each ends.

    Each step keeps its closing delimiter, because a PRM scores the prefix *including*
    the delimiter that ends the step. Whitespace-only chunks (runs of delimiters) are
    attached to the step before them, or dropped if they lead the text. Delimiters inside
    display math, ``[asy]`` and code blocks do not cut (see the module docstring).
    """
    if not delimiter:
        raise ValueError("step delimiter must be a non-empty string")
    steps: list[str] = []
    ends: list[int] = []
    start = 0
    for end in _cuts(text, delimiter) + [len(text)]:
        if end <= start:
            continue
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
