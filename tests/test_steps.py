"""Tests of the step splitter (`pipeline/steps.py`), against hand-split examples."""
from __future__ import annotations

import random

import pytest

from pipeline.steps import split_steps, split_steps_with_ends


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
                assert s.endswith(delim)
        else:
            assert not text.strip()
