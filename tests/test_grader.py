"""Tests of the project grader: extraction edge cases, exact and math grading, timeouts."""
from __future__ import annotations

import threading
import time

import pytest

from pipeline import grader
from pipeline.grader import GRADER_KINDS, extract_answer, extract_boxed, grade

# A power sympy would try to evaluate for ever; without a deadline this hangs the process.
PATHOLOGICAL = r"The result is \boxed{10^{10^{8}}}."


# --------------------------------------------------------------------------- extraction

@pytest.mark.parametrize("text, expected", [
    ("step\n#### 7", "7"),
    ("#### 3\nmore thinking\n####  12  ", "12"),   # last #### line wins, stripped
    ("  #### 5\n", "5"),                            # leading whitespace allowed
    ("the answer is 7", None),                      # no #### line
    ("x #### 7", None),                             # #### not at line start
    ("####\n", ""),                                 # empty answer line
])
def test_extract_exact(text, expected):
    assert extract_answer(text, "exact") == expected


@pytest.mark.parametrize("text, expected", [
    (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),                      # nested braces
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),               # deeper nesting
    (r"first \boxed{1} then \boxed{2}", "2"),                            # last box wins
    (r"\fbox{42}", "42"),
    (r"\boxed {3}", "3"),                                                # space before brace
    (r"\boxed 5$.", "5"),                                                # brace-less MATH style
    (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),                                  # escaped braces
    (r"draft \boxed{3} final \boxed{\frac{1}{", None),                   # truncated last box
    (r"\boxed{}", None),
    ("no box here", None),
])
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize("text, expected", [
    (r"work... \boxed{\dfrac{3}{4}}", r"\dfrac{3}{4}"),
    ("work\n#### 1,000", "1,000"),                          # GSM8K-style fallback
    (r"#### 3 but then \boxed{4}", "4"),                    # box beats ####
    ("So the final answer is $42$.", "42"),                 # phrase fallback
    ("Answer: 17", "17"),
    ("The answer is 3. Actually, the answer is 5.", "5"),   # last phrase
    ("The answer is 0.5.", "0.5"),                          # a decimal point is not a full stop
    ("Answer:\n72", "72"),
    ("I could not solve it.", None),
    ("", None),
])
def test_extract_math(text, expected):
    assert extract_answer(text, "math") == expected


def test_unknown_kind_raises_with_allowed_kinds():
    for call in (lambda: grade("x", "y", "fuzzy"), lambda: extract_answer("x", "fuzzy")):
        with pytest.raises(ValueError) as err:
            call()
        assert "fuzzy" in str(err.value)
        for kind in GRADER_KINDS:
            assert kind in str(err.value)


# --------------------------------------------------------------------------- exact

def test_exact_grading():
    assert grade("3+4=7\n#### 7", "7", "exact")
    assert grade("#### 7 ", " 7\n", "exact")
    assert not grade("#### 7", "9", "exact")
    assert not grade("#### 07", "7", "exact")        # string equality, not numeric
    assert not grade("#### 1/2", "0.5", "exact")
    assert not grade("the answer is 7", "7", "exact")  # no #### line


# --------------------------------------------------------------------------- math

@pytest.mark.parametrize("response, reference", [
    (r"\boxed{\frac{1}{2}}", "0.5"),
    (r"\boxed{0.5}", r"\frac12"),
    (r"\boxed{\dfrac{1}{2}}", r"\frac{1}{2}"),
    (r"\boxed{1,000}", "1000"),
    ("#### 1,000", "1000"),
    (r"\boxed{1234}", r"1,\!234"),                     # MATH-500 writes thousands like this
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt3}{2}"),
    (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
    ("The answer is 72.", "72"),
    (r"\boxed{x = 3}", "3"),
    (r"\boxed{72}", r"\boxed{72}"),                    # an already-boxed reference
])
def test_math_equivalences(response, reference):
    assert grade(response, reference, "math")


@pytest.mark.parametrize("response, reference", [
    (r"\boxed{71}", "72"),
    (r"\boxed{\frac{1}{3}}", "0.5"),
    (r"\boxed{\pi}", "3.14159"),
    ("no final answer", "72"),
    (r"\boxed{72}", ""),
    (r"\boxed{\frac{1}{", "0.5"),                        # truncated box, nothing to grade
])
def test_math_wrong_answers(response, reference):
    assert not grade(response, reference, "math")


def test_math_rejects_nonpositive_timeout():
    with pytest.raises(ValueError):
        grade(r"\boxed{1}", "1", "math", timeout_s=0)


def test_math_parse_exception_returns_false_and_logs(monkeypatch, caplog):
    def broken_parse(*args, **kwargs):
        raise RuntimeError("parser bug")

    monkeypatch.setattr(grader, "parse", broken_parse)
    assert grade(r"\boxed{1}", "1", "math") is False
    assert "parser bug" in caplog.text


# --------------------------------------------------------------------------- timeouts

def test_timeout_main_thread_with_slow_verify(monkeypatch, caplog):
    def slow_verify(*args, **kwargs):
        time.sleep(5)
        return True

    monkeypatch.setattr(grader, "verify", slow_verify)
    start = time.monotonic()
    assert grade(r"\boxed{1}", "1", "math", timeout_s=0.3) is False
    assert time.monotonic() - start < 2
    assert "timed out" in caplog.text


def test_timeout_main_thread_real_pathological_expression():
    start = time.monotonic()
    assert grade(PATHOLOGICAL, "5", "math", timeout_s=0.5) is False
    assert time.monotonic() - start < 3


def test_grading_in_worker_thread_uses_helper_process():
    """Signals are unavailable off the main thread; a big-integer power there would also
    hold the GIL, so the helper process must be the one that gets stuck and killed."""
    results: dict[str, object] = {}

    def run():
        results["right"] = grade(r"\boxed{\dfrac{1}{2}}", "0.5", "math")
        results["wrong"] = grade(r"\boxed{3}", "0.5", "math")
        start = time.monotonic()
        results["stuck"] = grade(PATHOLOGICAL, "5", "math", timeout_s=0.5)
        results["stuck_s"] = time.monotonic() - start
        results["after_kill"] = grade(r"\boxed{1,000}", "1000", "math")  # a fresh helper

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert results["right"] is True
    assert results["wrong"] is False
    assert results["stuck"] is False
    assert results["stuck_s"] < 0.5 + grader._WORKER_GRACE_S + 1
    assert results["after_kill"] is True


def test_existing_alarm_is_not_clobbered():
    """If someone else armed SIGALRM (e.g. a job-level timeout), grading must leave it alone."""
    import signal

    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *a: fired.append(True))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30)
        assert grade(r"\boxed{2}", "2", "math")
        remaining = signal.getitimer(signal.ITIMER_REAL)[0]
        assert 0 < remaining <= 30
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not fired
