"""The one answer grader of the project: final-answer extraction and correctness checking.

Every stage that needs an outcome label (data prep checks, sampling, evaluation, RL
rewards) calls `grade`, so a change in what counts as "correct" happens in one place.

Two kinds:

- ``"exact"``: the synthetic testbed (and GSM8K-style outputs). The answer is the text of
  the last line starting with ``####``, compared to the reference by string equality.
- ``"math"``: LaTeX answers (MATH, MATH-500, GSM8K, UltraInteract). The prediction is the
  last ``\\boxed{...}`` (else a ``####`` line, else "The answer is x"), and equivalence is
  decided by ``math-verify`` (so ``1,000 == 1000``, ``\\dfrac12 == 0.5`` ...).

Timeouts. Symbolic comparison can run for ever on model output such as ``10^{10^{8}}``
(sympy evaluates the power). math-verify's own guard is ``signal.alarm``, which works only
in the main thread and takes whole seconds, so we disable it and bound the whole
parse+verify call ourselves:

- main thread (and no other SIGALRM timer running): one ``setitimer`` deadline that raises
  inside the computation; CPython's big-integer loops check for signals, so this really
  interrupts them.
- any other thread: a per-thread helper *process*. A worker thread would not do: a
  big-integer power holds the GIL, so the caller could not even return after its deadline
  (observed: the process hangs). A stuck helper is killed and replaced.

Model output is only ever parsed by math-verify (a LaTeX/sympy parser); it is never
passed to ``eval``.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

from math_verify import parse, verify

log = logging.getLogger("pipeline.grader")

GRADER_KINDS = ("exact", "math")

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_ANSWER_IS_RE = re.compile(r"\b(?:final\s+answer|answer)\s*(?:is|:)\s*", re.IGNORECASE)
_LOG_TEXT_MAX = 200
_WORKER_GRACE_S = 2.0  # extra wait for a helper process beyond the grading deadline
_WORKER_START_TIMEOUT_S = 120.0  # importing sympy on a cold shared filesystem can be slow


class _GradeTimeout(BaseException):
    """Raised by our SIGALRM handler. A BaseException so that math-verify's and sympy's
    ``except Exception`` blocks cannot swallow it and carry on without a deadline."""


class _QuietTimeoutDisabled(logging.Filter):
    """math-verify warns once that its timeout is disabled; we disable it on purpose
    (see the module docstring), so that warning would only mislead readers of the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_QuietTimeoutDisabled())


# --------------------------------------------------------------------------- extraction


def _check_kind(kind: str) -> None:
    if kind not in GRADER_KINDS:
        raise ValueError(f"unknown grader kind {kind!r}; allowed kinds: {', '.join(GRADER_KINDS)}")


def extract_hash_answer(text: str) -> str | None:
    """Text after ``####`` on the last line that starts with it (GSM8K / testbed style).

    The last such line wins because a model may restate a draft answer before its final one."""
    for line in reversed(text.splitlines()):
        stripped = line.strip()
        if stripped.startswith("####"):
            return stripped[4:].strip()
    return None


def _braced_argument(text: str, open_at: int) -> str | None:
    """Content of the brace group opening at ``text[open_at] == "{"``; None if unbalanced
    (e.g. a response truncated inside the box). Escaped ``\\{``/``\\}`` do not count."""
    depth, i = 0, open_at
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i]
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the LAST ``\\boxed{...}`` / ``\\fbox{...}`` with balanced braces.

    Also accepts ``\\boxed 5`` (no braces), which a few MATH reference solutions use.
    Returns None when there is no box, the last box is unbalanced, or it is empty."""
    matches = list(_BOXED_RE.finditer(text))
    if not matches:
        return None
    start = matches[-1].end()
    i = start
    while i < len(text) and text[i].isspace():
        i += 1
    if i < len(text) and text[i] == "{":
        content = _braced_argument(text, i)
    elif i > start:  # "\boxed 5": the token up to whitespace or "$"
        token = re.match(r"[^\s$]+", text[i:])
        content = token.group(0) if token else None
    else:
        content = None
    content = content.strip() if content is not None else None
    return content or None


def _extract_answer_is(text: str) -> str | None:
    """Last "The answer is x" / "Answer: x" phrase, with sentence punctuation and ``$``
    delimiters removed. A weak fallback for outputs that never box their answer."""
    matches = list(_ANSWER_IS_RE.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end():].split("\n", 1)[0]
    answer = re.split(r"\.(?:\s|$)", rest, maxsplit=1)[0]  # end of sentence, not "0.5"
    answer = answer.strip().strip("$").strip()
    return answer or None


def extract_answer(text: str, kind: str) -> str | None:
    """The final answer a response commits to, or None if it commits to none.

    ``"exact"``: stripped text after the last ``####`` line.
    ``"math"``: last ``\\boxed{}``, else a ``####`` line, else "The answer is x"."""
    _check_kind(kind)
    if kind == "exact":
        return extract_hash_answer(text)
    for extractor in (extract_boxed, extract_hash_answer, _extract_answer_is):
        answer = extractor(text)
        if answer:
            return answer
    return None


# --------------------------------------------------------------------------- grading


def grade(response: str, reference: str, kind: str, timeout_s: float = 5.0) -> bool:
    """Whether ``response``'s final answer equals ``reference``.

    Never raises on model output: an unparsable answer or a comparison that exceeds
    ``timeout_s`` counts as wrong (False) and is logged as a warning."""
    _check_kind(kind)
    if kind == "exact":
        predicted = extract_hash_answer(response)
        return predicted is not None and predicted == reference.strip()
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    predicted = extract_answer(response, "math")
    if predicted is None or not reference.strip():
        return False
    return _math_equal(_as_boxed(reference), _as_boxed(predicted), timeout_s)


def _as_boxed(answer: str) -> str:
    """Put a bare answer in ``\\boxed{}``, the form math-verify's LaTeX extractor ranks first,
    so the whole extracted answer is read as one expression (not searched for fragments)."""
    answer = answer.strip()
    return answer if _BOXED_RE.search(answer) else f"\\boxed{{{answer}}}"


def _short(text: str) -> str:
    return text if len(text) <= _LOG_TEXT_MAX else text[:_LOG_TEXT_MAX] + "..."


def _math_equal(gold_text: str, pred_text: str, timeout_s: float) -> bool:
    """Run parse+verify under a deadline suited to the calling thread; False on failure.

    A helper process that cannot start is an environment fault, not a wrong answer, so that
    RuntimeError propagates instead of silently grading everything False."""
    worker = None if _alarm_available() else _worker_for_this_thread()
    try:
        if worker is None:
            return _verify_with_alarm(gold_text, pred_text, timeout_s)
        outcome = worker.verify(gold_text, pred_text, timeout_s)
    except _GradeTimeout:
        outcome = None
    except Exception as exc:  # a parser bug must not take down a sampling job
        log.warning("math grading failed (%s: %s); pred=%r ref=%r", type(exc).__name__, exc,
                    _short(pred_text), _short(gold_text))
        return False
    if outcome is None:
        log.warning("math grading timed out after %.1fs; pred=%r ref=%r", timeout_s,
                    _short(pred_text), _short(gold_text))
        return False
    return outcome


def _parse_and_verify(gold_text: str, pred_text: str) -> bool:
    """math-verify with its own (signal-based) timeouts off: the caller bounds the time."""
    gold = parse(gold_text, parsing_timeout=None)
    if not gold:
        log.warning("math-verify could not parse the reference %r", _short(gold_text))
        return False
    pred = parse(pred_text, parsing_timeout=None)
    if not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=None))


def _alarm_available() -> bool:
    """SIGALRM deadlines work only in the main thread, and we must not clobber a timer
    someone else (e.g. pytest-timeout, a job wrapper) already armed."""
    return (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0
    )


def _verify_with_alarm(gold_text: str, pred_text: str, timeout_s: float) -> bool:
    """``_parse_and_verify`` interrupted by SIGALRM after ``timeout_s`` (raises _GradeTimeout)."""

    def on_alarm(signum, frame):
        raise _GradeTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            return _parse_and_verify(gold_text, pred_text)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------- helper process


class _GradingWorker:
    """A helper process that grades with the SIGALRM deadline in its own main thread.

    Talks JSON lines over pipes; started with a plain ``python -c`` so nothing from the
    caller's ``__main__`` is re-imported (unlike multiprocessing's spawn)."""

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", f"from {__name__} import _worker_main; _worker_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env,
        )
        if self._read_reply(_WORKER_START_TIMEOUT_S) != {"ready": True}:
            self.kill()
            raise RuntimeError("the math grading helper process failed to start")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:  # a half-written request to a dead helper
                pass

    def _read_reply(self, timeout_s: float) -> dict | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else ""
        return json.loads(line) if line else None

    def verify(self, gold_text: str, pred_text: str, timeout_s: float) -> bool | None:
        """True/False, or None on timeout (the helper is then killed; a new one is made
        on the next call)."""
        request = {"gold": gold_text, "pred": pred_text, "timeout_s": timeout_s}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        reply = self._read_reply(timeout_s + _WORKER_GRACE_S)
        if reply is None:
            self.kill()
            return None
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply.get("ok")


_thread_state = threading.local()
_all_workers: list[_GradingWorker] = []
_workers_lock = threading.Lock()


def _worker_for_this_thread() -> _GradingWorker:
    """One helper per calling thread, so concurrent graders never queue behind a stuck one."""
    worker = getattr(_thread_state, "worker", None)
    if worker is None or not worker.alive():
        worker = _GradingWorker()
        _thread_state.worker = worker
        with _workers_lock:
            _all_workers.append(worker)
    return worker


@atexit.register
def _kill_workers() -> None:
    with _workers_lock:
        for worker in _all_workers:
            worker.kill()
        _all_workers.clear()


def _worker_main() -> None:
    """Entry point of the helper process: one JSON request per line in, one reply out.

    Protocol replies go to a private copy of stdout; anything else printing to stdout
    (libraries) is sent to stderr so it cannot corrupt the protocol."""
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def reply(obj: dict) -> None:
        protocol.write(json.dumps(obj) + "\n")
        protocol.flush()

    reply({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply({"ok": _verify_with_alarm(request["gold"], request["pred"], request["timeout_s"])})
        except _GradeTimeout:
            reply({"ok": None})
        except Exception as exc:
            reply({"error": f"{type(exc).__name__}: {exc}"})
