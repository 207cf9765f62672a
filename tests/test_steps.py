"""Tests of the step splitter (`pipeline/steps.py`), against hand-split examples, the testbed's
solutions (split exactly as before) and real-text blocks (display math, [asy], code, CRLF)."""
from __future__ import annotations

import random
import re
import time

import pytest

from pipeline.steps import split_steps, split_steps_with_ends, step_token_ends
from pipeline.testbed import ArithSpec, generate_split, reference_solution


@pytest.mark.parametrize("text, delim, steps, ends", [
    # one step per line; each step keeps its delimiter; "a\n" ends at 2, "b\n" at 4, "c" at 5
    ("a\nb\nc", "\n", ["a\n", "b\n", "c"], [2, 4, 5]),
    ("a\nb\n", "\n", ["a\n", "b\n"], [2, 4]),
    # trailing text without a delimiter is the last step
    ("3+4=7\n#### 7", "\n", ["3+4=7\n", "#### 7"], [6, 12]),
    # a run of delimiters is attached to the step before it: "a\n" + "\n" -> "a\n\n" (end 3)
    ("a\n\nb", "\n", ["a\n\n", "b"], [3, 4]),
    ("a\n\n\n", "\n", ["a\n\n\n"], [4]),
    # leading delimiters are dropped: "a" starts at 2, so "a\n" ends at 4 and "b\n" at 6
    ("\n\na\nb\n", "\n", ["a\n", "b\n"], [4, 6]),
    # whitespace-only chunks go with the previous step too
    ("a\n  \nb", "\n", ["a\n  \n", "b"], [5, 6]),
    # "\n\n" delimiter: single newlines stay inside a step
    ("a\nb\n\nc", "\n\n", ["a\nb\n\n", "c"], [5, 6]),
    # "s1\n\n" (end 4), "s2\n\n" (end 8) + the run "\n\n" (end 10), "s3" (end 12)
    ("s1\n\ns2\n\n\n\ns3", "\n\n", ["s1\n\n", "s2\n\n\n\n", "s3"], [4, 10, 12]),
    # "\n\n\n": the odd newline left over after "a\n\n" starts the next chunk with "b"
    ("a\n\n\nb", "\n\n", ["a\n\n", "\nb"], [3, 5]),
    ("\n\nx", "\n\n", ["x"], [3]),
    ("", "\n", [], []),
    ("\n\n\n", "\n", [], []),
    ("   ", "\n", [], []),
    ("no delimiter at all", "\n", ["no delimiter at all"], [19]),
])
def test_split_by_hand(text, delim, steps, ends):
    assert split_steps_with_ends(text, delim) == (steps, ends)
    assert split_steps(text, delim) == steps


@pytest.mark.parametrize("fn", [split_steps, split_steps_with_ends])
def test_empty_delimiter_raises(fn):
    with pytest.raises(ValueError, match="non-empty"):
        fn("a\nb", "")


def test_default_delimiter_is_newline():
    assert split_steps("a\nb") == ["a\n", "b"]


@pytest.mark.parametrize("delim", ["\n", "\n\n", "|"])
def test_random_texts_ends_are_offsets(delim):
    """For random texts: each step is exactly text[end - len(step):end], steps are contiguous
    and cover the text after its leading whitespace-only chunks, and every step has content."""
    rng = random.Random(0)
    for _ in range(500):
        text = "".join(rng.choice("ab \n|") for _ in range(rng.randint(0, 30)))
        steps, ends = split_steps_with_ends(text, delim)
        assert len(steps) == len(ends)
        for s, e in zip(steps, ends):
            assert s.strip()
            assert text[:e].endswith(s)
            assert text[e - len(s):e] == s
        if steps:
            start = ends[0] - len(steps[0])
            assert "".join(steps) == text[start:]      # contiguous, nothing after the last step lost
            assert not text[:start].strip()            # only whitespace/delimiters dropped in front
            assert ends == sorted(set(ends))
            for s in steps[:-1]:                       # every step but the last ends in a delimiter
                # (the blank line of "\n\n" may hold spaces: "a\n  \n" ends a step too)
                assert re.sub(r"[ \t]+\n", "\n", s).endswith(delim)
        else:
            assert not text.strip()


# --------------------------------------------------------------------------- real text

def _split_before(text: str, delimiter: str) -> tuple[list[str], list[int]]:
    """The splitter as it was before display math, CRLF and blank lines with spaces were
    handled: a plain str.find loop. The testbed must split exactly like this."""
    steps, ends, start = [], [], 0
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


@pytest.mark.parametrize("answer_format", ["value", "longform"])
def test_testbed_solutions_split_as_before(answer_format):
    spec = ArithSpec(answer_format=answer_format)
    records = generate_split(50, spec, seed=3, split="test")
    for r in records:
        solution = reference_solution(r["meta"])
        steps, ends = split_steps_with_ends(solution, "\n")
        assert (steps, ends) == _split_before(solution, "\n")
        assert len(steps) == len(r["meta"]["ops"]) + 1          # one step per operation + the answer line
        # and a sampled-looking response: blank lines, trailing spaces, no final newline
        noisy = solution.replace("\n", " \n", 1) + "\n\n" + "#### 3"
        assert split_steps_with_ends(noisy, "\n") == _split_before(noisy, "\n")


def test_texts_without_blocks_split_as_before():
    """Random texts without CR, backslashes, $, backticks or [asy]: the old splitter's result."""
    rng = random.Random(1)
    for _ in range(500):
        text = "".join(rng.choice("ab 1=+\n") for _ in range(rng.randint(0, 40)))
        assert split_steps_with_ends(text, "\n") == _split_before(text, "\n")
        if not re.search(r"\n +\n", text):  # a blank line holding spaces is the one change
            assert split_steps_with_ends(text, "\n\n") == _split_before(text, "\n\n")


ALIGN = "We expand:\n\\begin{align*}\nx &= 1 + 2\\\\\n&= 3.\n\\end{align*}\nSo $x = 3$.\n"
DISPLAY = "Then\n\\[\n\\frac{a}{b}\n= c\n\\]\nand we are done.\n"
ASY = "Draw it:\n[asy]\ndraw((0,0)--(1,1));\nlabel(\"A\", (0,0));\n[/asy]\nThe area is 1."
CODE = "Compute:\n```python\nx = 1\nprint(x)\n```\nIt prints 1."


@pytest.mark.parametrize("text, steps", [
    (ALIGN, ["We expand:\n", "\\begin{align*}\nx &= 1 + 2\\\\\n&= 3.\n\\end{align*}\n", "So $x = 3$.\n"]),
    (DISPLAY, ["Then\n", "\\[\n\\frac{a}{b}\n= c\n\\]\n", "and we are done.\n"]),
    (ASY, ["Draw it:\n", "[asy]\ndraw((0,0)--(1,1));\nlabel(\"A\", (0,0));\n[/asy]\n", "The area is 1."]),
    (CODE, ["Compute:\n", "```python\nx = 1\nprint(x)\n```\n", "It prints 1."]),
    # other environments, $$ display math, and text around a block on the same line
    ("a\n\\begin{equation}\ny\n=2\n\\end{equation} so\nb",
     ["a\n", "\\begin{equation}\ny\n=2\n\\end{equation} so\n", "b"]),
    ("a\n$$x\n=1$$\nb", ["a\n", "$$x\n=1$$\n", "b"]),
    # an unclosed block (a response cut off inside it) splits as plain text
    ("a\n\\[\nx\ny", ["a\n", "\\[\n", "x\n", "y"]),
    # "\\[2pt]" is a line break with spacing, not display math
    ("a\\\\[2pt]\nb\nc\\]", ["a\\\\[2pt]\n", "b\n", "c\\]"]),
    # environments that are not display math still split (an enumerate of steps)
    ("\\begin{enumerate}\n\\item a\n\\end{enumerate}", ["\\begin{enumerate}\n", "\\item a\n", "\\end{enumerate}"]),
])
def test_blocks_stay_in_one_step(text, steps):
    got, ends = split_steps_with_ends(text, "\n")
    assert got == steps
    assert "".join(got) == text and ends[-1] == len(text)


def test_blocks_stay_in_one_step_with_blank_line_delimiter():
    text = "First.\n\n\\begin{align}\na &= 1\n\n b &= 2\n\\end{align}\n\nDone."
    assert split_steps(text, "\n\n") == ["First.\n\n", "\\begin{align}\na &= 1\n\n b &= 2\n\\end{align}\n\n", "Done."]


@pytest.mark.parametrize("text, delim, steps, ends", [
    # CRLF: each "\n" of the delimiter also matches "\r\n"; the steps keep the text's own bytes
    ("a\r\n\r\nb\r\n\r\nc", "\n\n", ["a\r\n\r\n", "b\r\n\r\n", "c"], [5, 10, 11]),
    ("a\r\nb\r\n", "\n", ["a\r\n", "b\r\n"], [3, 6]),
    # a blank line holding spaces or tabs is blank
    ("a\n  \nb", "\n\n", ["a\n  \n", "b"], [5, 6]),
    ("a\r\n \t\r\nb", "\n\n", ["a\r\n \t\r\n", "b"], [7, 8]),
    # spaces at the end of a text line are not a blank line
    ("a  \n\nb", "\n\n", ["a  \n\n", "b"], [5, 6]),
    ("a\n \nb", "\n", ["a\n \n", "b"], [4, 5]),  # under "\n" the blank line joins the step before
])
def test_line_endings_and_blank_lines(text, delim, steps, ends):
    assert split_steps_with_ends(text, delim) == (steps, ends)


class _CharTokenizer:
    """One token per character, decoding by concatenation: what step_token_ends relies on."""

    def __init__(self, text: str):
        self.pieces = list(text)

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.pieces[i] for i in ids)


@pytest.mark.parametrize("text", [ALIGN + DISPLAY, "a\r\n\r\nb\r\n \r\nc", ASY + "\n\n" + CODE])
@pytest.mark.parametrize("delim", ["\n", "\n\n"])
def test_step_ends_index_the_text_and_its_tokens(text, delim):
    """Rollouts store steps and step_ends with the untouched response; token offsets come from
    decoding the response ids. All three must agree on block, CRLF and blank-line text."""
    steps, ends = split_steps_with_ends(text, delim)
    assert ends == [len("".join(steps[:k + 1])) + (ends[0] - len(steps[0])) for k in range(len(steps))]
    tokenizer = _CharTokenizer(text)
    token_ends = step_token_ends(tokenizer, list(range(len(text))), ends)
    assert [tokenizer.decode(range(t)) for t in token_ends] == [text[:e] for e in ends]


def test_degenerate_repetition_splits_in_linear_time():
    """A model repeating an unclosed opener must not cost quadratic time in every rollout."""
    text = "\\[\n" * 20000 + "[asy]\n" * 20000 + "\\begin{align}\n" * 20000
    start = time.monotonic()
    steps = split_steps(text, "\n")
    assert time.monotonic() - start < 3
    assert len(steps) == 60000  # nothing is closed, so every line is a step
