"""The one answer grader of the project: final-answer extraction and correctness checking.

Every stage that needs an outcome label (data prep checks, sampling, evaluation, RL
rewards) calls `grade`, so a change in what counts as "correct" happens in one place.

Two kinds:

- ``"exact"``: the synthetic testbed (and GSM8K-style outputs). The answer is the text of
  the last line starting with ``####``, compared to the reference by string equality.
- ``"math"``: LaTeX answers (MATH, MATH-500, GSM8K, UltraInteract, the benchmarks). The
  prediction is the last ``\\boxed{...}`` (else a ``####`` line, else "The answer is x"), and
  equivalence is decided by ``math-verify`` (so ``1,000 == 1000``, ``\\dfrac12 == 0.5`` ...).

Before math-verify sees them, both answers go through ``normalize_answer``: forms it misreads
or cannot parse are rewritten into LaTeX it reads as numbers. E-notation ``4.5e33`` (which it
reads as 4.5 * Euler's e * 33) becomes ``4.5 \\times 10^{33}``; Python literals in references
(``-1./3``, ``np.arcsin(10/13)``) become ``-\\frac{1}{3}``, ``\\arcsin(10/13)``, by a parser that
allows only numbers and ``+ - * /`` (nothing is evaluated as code); ``½``, ``√2``, superscripts,
full-width digits and zero-width spaces become their ASCII LaTeX; a trailing full stop goes.
An AMC option with its value (``\\textbf{(B) }142``) is graded by its letter against a letter
reference and by its value otherwise. A multi-answer reference (``-2, 2``) also accepts a
response that boxes each answer separately. ``rel_tol`` > 0 (per benchmark:
``loaders.numeric_tolerance``) also accepts a number within that relative error of a numeric
reference, as Minerva's evaluation does.

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

import ast
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
import unicodedata
from fractions import Fraction
from pathlib import Path

import sympy
from math_verify import parse, verify

log = logging.getLogger("pipeline.grader")

GRADER_KINDS = ("exact", "math")

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_ANSWER_IS_RE = re.compile(r"\b(?:final\s+answer|answer)\s*(?:is\s*:?|:)\s*", re.IGNORECASE)
# "the answer is 7 because ...": the answer ends where an explanation starts
_TRAILING_CLAUSE_RE = re.compile(r"[,;]?\s+(?:because|since|as|which|where|given|so|for)\b", re.IGNORECASE)
_MATH_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
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
    return _box_content(text, matches[-1].end()) if matches else None


def extract_all_boxed(text: str) -> list[str]:
    """Contents of every ``\\boxed{}`` in order, skipping unbalanced or empty ones (a response
    that boxes each answer of a multi-answer problem separately)."""
    contents = (_box_content(text, m.end()) for m in _BOXED_RE.finditer(text))
    return [c for c in contents if c]


def _box_content(text: str, start: int) -> str | None:
    """The argument of the box command that ends at ``start``."""
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
    """Last "The answer is x" / "Answer: x" / "The answer is: x" phrase, with sentence
    punctuation, ``$`` delimiters and a trailing explanation ("... because ...") removed. A
    weak fallback for outputs that never box their answer."""
    matches = list(_ANSWER_IS_RE.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end():]
    for left, right in _MATH_DELIMITERS:  # "is $\frac12$ because ...": the math span is the answer
        close = rest.find(right, len(left)) if rest.startswith(left) else -1
        if close > 0:
            return rest[len(left):close].strip() or None
    rest = rest.split("\n", 1)[0]
    answer = re.split(r"\.(?:\s|$)", rest, maxsplit=1)[0]  # end of sentence, not "0.5"
    answer = _TRAILING_CLAUSE_RE.split(answer, maxsplit=1)[0]
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


# --------------------------------------------------------------------------- normalisation

_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))  # zero-width spaces, soft hyphen
_UNICODE_MATH = {"\u2212": "-", "\u00d7": "\\times ", "\u00b7": "\\cdot ", "\u22c5": "\\cdot ",
                 "\u03c0": "\\pi ", "\u221e": "\\infty ", "\u00a0": " ", "\u3000": " "}
_FULL_WIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}  # "１２" -> "12"
_SUPERSCRIPT_RE = re.compile("[\u2070\u00b9\u00b2\u00b3\u2074-\u2079\u207a\u207b]+")
_SUPERSCRIPT_DIGITS = str.maketrans("\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079\u207a\u207b",
                                    "0123456789+-")
_SQRT_RE = re.compile(r"\u221a\s*(?:\{([^{}]*)\}|\(([^()]*)\)|([0-9.]+|[A-Za-z]))")
_TRAILING_PERIOD_RE = re.compile(r"(?<![.\\])\.\s*$")  # "104." but not "\ldots" or "1.."
# 4.5e33, 1.5E-3 (not "2e", "e^{2}", "x1e3"); the sign stays outside. The mantissa's pattern is
# unambiguous so a long run of digits in model output costs linear time, not quadratic.
_E_NOTATION_RE = re.compile(r"(?<![\w.\\])(\d+(?:\.\d*)?|\.\d+)[eE]([+-]?\d+)(?![\w.])")
# np.arcsin(...), math.pi: the numpy / math names a Python-written reference uses
_PY_FUNCTION_RE = re.compile(r"\b(?:np|numpy|math)\.(sqrt)\(([^()]*)\)|\b(?:np|numpy|math)\.([a-z]\w*)")
_PY_LATEX = {"arcsin": "\\arcsin", "arccos": "\\arccos", "arctan": "\\arctan", "sin": "\\sin",
             "cos": "\\cos", "tan": "\\tan", "exp": "\\exp", "log": "\\ln", "log10": "\\log_{10}",
             "pi": "\\pi ", "e": "e"}
_PY_ARITHMETIC_RE = re.compile(r"[\d\s.+\-*/()]+")
_PLAIN_NUMBER_RE = re.compile(r"[+-]?\d+(?:\.\d+)?")
_PY_ARITHMETIC_MAX = 100  # characters; references are short, and ast.parse of deep nesting recurses
# an AMC option: "\textbf{(B) }142", "\textbf{(B) 142}", "(B) 142", or the letter alone: "B", "(B)"
_CHOICE_RE = re.compile(r"(?:\\(?:textbf|mathbf|text|mathrm)\s*\{\s*\(([A-E])\)([^{}]*)\}|\(([A-E])\))(.*)", re.S)
_LETTER_RE = re.compile(r"(?:\\(?:textbf|mathbf|text|mathrm)\s*\{\s*)?\(?([A-E])\)?\s*\}?")
_LATEX_SPACE_RE = re.compile(r"^(?:\s|~|\\[ ,;:!]|\\q?quad)+")


def _unicode_to_latex(text: str) -> str:
    """Zero-width characters out; full-width ASCII, vulgar fractions, superscripts, √ and a few
    symbols as the ASCII LaTeX math-verify parses. (Not NFKC: it would turn "x²" into "x2".)"""
    text = text.translate(_INVISIBLE).translate(_FULL_WIDTH)
    for symbol, latex in _UNICODE_MATH.items():
        text = text.replace(symbol, latex)
    out = []
    for ch in text:
        if unicodedata.decomposition(ch).startswith("<fraction>"):  # "½" -> "\frac{1}{2}", "2½" -> 2+1/2
            num, _, den = unicodedata.normalize("NFKC", ch).partition("\u2044")
            out.append(("+" if out and out[-1][-1:].isdigit() else "") + f"\\frac{{{num}}}{{{den}}}")
        else:
            out.append(ch)
    text = "".join(out)
    text = _SUPERSCRIPT_RE.sub(lambda m: "^{" + m.group(0).translate(_SUPERSCRIPT_DIGITS) + "}", text)
    return _SQRT_RE.sub(lambda m: "\\sqrt{" + next(g for g in m.groups() if g is not None) + "}", text)


def python_arithmetic(text: str) -> Fraction | None:
    """The exact value of a Python arithmetic literal such as ``-1./3`` or ``(2+3)/4``, or None.

    Walks the ``ast`` and allows only int/float constants, unary +/-, and binary + - * /
    (no names, calls or powers), so nothing is ever executed and nothing can blow up."""
    if len(text) > _PY_ARITHMETIC_MAX or not _PY_ARITHMETIC_RE.fullmatch(text):
        return None
    try:
        return _arithmetic_value(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None


def _arithmetic_value(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(repr(node.value))  # repr: 0.1 is 1/10, not the binary double
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _arithmetic_value(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        left, right = _arithmetic_value(node.left), _arithmetic_value(node.right)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        return left * right if isinstance(node.op, ast.Mult) else left / right
    raise ValueError(f"not plain arithmetic: {type(node).__name__}")


def _fraction_latex(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def _python_to_latex(text: str) -> str:
    """References written as Python (Minerva): numpy / math names as LaTeX, and a whole
    arithmetic literal as an exact fraction. A plain decimal stays as written."""
    def function(m: re.Match) -> str:
        if m.group(1):  # np.sqrt(x)
            return f"\\sqrt{{{m.group(2)}}}"
        return _PY_LATEX.get(m.group(3), m.group(0))

    text = _PY_FUNCTION_RE.sub(function, text)
    if _PLAIN_NUMBER_RE.fullmatch(text):
        return text
    value = python_arithmetic(text)
    return text if value is None else _fraction_latex(value)


def normalize_answer(answer: str) -> str:
    """An extracted answer (or a reference) in the LaTeX math-verify reads as intended.

    Pure string rewriting, applied to both sides: unicode to LaTeX, a trailing full stop
    removed (``\\boxed{104.}``), Python literals to LaTeX (``-1./3`` -> ``-\\frac{1}{3}``), and
    e-notation as a power of ten (``4.5e33`` -> ``4.5 \\times 10^{33}``), which math-verify
    would otherwise read as 4.5 * e * 33."""
    text = _TRAILING_PERIOD_RE.sub("", _unicode_to_latex(answer).strip())
    text = _python_to_latex(text)
    return _E_NOTATION_RE.sub(lambda m: f"{m.group(1)} \\times 10^{{{m.group(2)}}}", text)


def _choice(answer: str) -> tuple[str | None, str]:
    """(option letter, value) of an AMC-style answer: ``\\textbf{(B) }142`` -> ("B", "142"),
    ``B`` / ``(B)`` -> ("B", ""), anything else -> (None, answer)."""
    letter = _LETTER_RE.fullmatch(answer)
    if letter:
        return letter.group(1), ""
    m = _CHOICE_RE.fullmatch(answer)
    if not m:
        return None, answer
    value = _LATEX_SPACE_RE.sub("", (m.group(2) or "") + m.group(4)).strip()
    return m.group(1) or m.group(3), value


def _count_parts(answer: str) -> int:
    """Comma-separated answers at bracket depth 0: "-2, 2" is 2, "\\left(3, \\frac{\\pi}{2}\\right)" is 1."""
    depth, parts = 0, 1
    for ch in answer:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts += 1
    return parts


# --------------------------------------------------------------------------- grading


def grade(response: str, reference: str, kind: str, timeout_s: float = 5.0, rel_tol: float = 0.0) -> bool:
    """Whether ``response``'s final answer equals ``reference``.

    ``rel_tol`` (``"math"`` only): a numeric answer within this relative error of a numeric
    reference also counts; 0 (the default) is math-verify's own equivalence. The benchmarks'
    values are ``loaders.numeric_tolerance(source)``.

    Never raises on model output: an unparsable answer or a comparison that exceeds
    ``timeout_s`` counts as wrong (False) and is logged as a warning."""
    _check_kind(kind)
    if kind == "exact":
        predicted = extract_hash_answer(response)
        return predicted is not None and predicted == reference.strip()
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    if not 0 <= rel_tol < 1:
        raise ValueError(f"rel_tol must be in [0, 1), got {rel_tol}")
    predicted = extract_answer(response, "math")
    if predicted is None or not reference.strip():
        return False
    gold = normalize_answer(reference)
    if _equal_answers(gold, normalize_answer(predicted), timeout_s, rel_tol):
        return True
    # OlympiadBench multi-answer items: "\boxed{2} and \boxed{-2}" against "-2, 2"
    n_parts = _count_parts(gold)
    boxes = extract_all_boxed(response)[-n_parts:] if n_parts > 1 else []
    if len(boxes) == n_parts and all(_count_parts(b) == 1 for b in boxes):
        joined = ", ".join(normalize_answer(b) for b in boxes)
        return _equal_answers(gold, joined, timeout_s, rel_tol)
    return False


def _equal_answers(gold: str, pred: str, timeout_s: float, rel_tol: float) -> bool:
    """Two normalised answers: option letters where the reference is one or both name one,
    otherwise their values through math-verify."""
    gold_letter, gold_value = _choice(gold)
    pred_letter, pred_value = _choice(pred)
    if gold_letter and (pred_letter or not gold_value):
        return pred_letter == gold_letter
    if gold_letter:  # a reference "\textbf{(B) }142" against a bare value
        gold = gold_value
    if pred_letter and pred_value:
        pred = pred_value
    return _math_equal(_as_boxed(gold), _as_boxed(pred), timeout_s, rel_tol)


def _as_boxed(answer: str) -> str:
    """Put a bare answer in ``\\boxed{}``, the form math-verify's LaTeX extractor ranks first,
    so the whole extracted answer is read as one expression (not searched for fragments)."""
    answer = answer.strip()
    return answer if _BOXED_RE.search(answer) else f"\\boxed{{{answer}}}"


def _short(text: str) -> str:
    return text if len(text) <= _LOG_TEXT_MAX else text[:_LOG_TEXT_MAX] + "..."


def _math_equal(gold_text: str, pred_text: str, timeout_s: float, rel_tol: float = 0.0) -> bool:
    """Run parse+verify under a deadline suited to the calling thread; False on failure.

    A helper process that cannot start is an environment fault, not a wrong answer, so that
    RuntimeError propagates instead of silently grading everything False."""
    worker = None if _alarm_available() else _worker_for_this_thread()
    try:
        if worker is None:
            return _verify_with_alarm(gold_text, pred_text, timeout_s, rel_tol)
        outcome = worker.verify(gold_text, pred_text, timeout_s, rel_tol)
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


def _parse_and_verify(gold_text: str, pred_text: str, rel_tol: float = 0.0) -> bool:
    """math-verify with its own (signal-based) timeouts off: the caller bounds the time.
    With ``rel_tol`` > 0, two parsed numbers within that relative error also count."""
    gold = parse(gold_text, parsing_timeout=None)
    if not gold:
        log.warning("math-verify could not parse the reference %r", _short(gold_text))
        return False
    pred = parse(pred_text, parsing_timeout=None)
    if not pred:
        return False
    if verify(gold, pred, timeout_seconds=None):
        return True
    return rel_tol > 0 and _numerically_close(gold[0], pred[0], rel_tol)


def _numerically_close(gold, pred, rel_tol: float) -> bool:
    """|pred - gold| <= rel_tol * |gold| for two parsed numbers (sympy expressions without
    symbols: ``\\arcsin(10/13)``, ``4.5 \\times 10^{33}``); False for anything else (sets,
    equations, expressions in x)."""
    if not all(isinstance(x, sympy.Expr) and x.is_number for x in (gold, pred)):
        return False
    try:
        g, p = complex(gold.evalf()), complex(pred.evalf())
    except (TypeError, ValueError, OverflowError):
        return False
    return abs(p - g) <= rel_tol * abs(g)


def _alarm_available() -> bool:
    """SIGALRM deadlines work only in the main thread, and we must not clobber a timer
    someone else (e.g. pytest-timeout, a job wrapper) already armed."""
    return (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0
    )


def _verify_with_alarm(gold_text: str, pred_text: str, timeout_s: float, rel_tol: float = 0.0) -> bool:
    """``_parse_and_verify`` interrupted by SIGALRM after ``timeout_s`` (raises _GradeTimeout)."""

    def on_alarm(signum, frame):
        raise _GradeTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            return _parse_and_verify(gold_text, pred_text, rel_tol)
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

    def verify(self, gold_text: str, pred_text: str, timeout_s: float, rel_tol: float = 0.0) -> bool | None:
        """True/False, or None on timeout (the helper is then killed; a new one is made
        on the next call)."""
        request = {"gold": gold_text, "pred": pred_text, "timeout_s": timeout_s, "rel_tol": rel_tol}
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
            reply({"ok": _verify_with_alarm(request["gold"], request["pred"], request["timeout_s"],
                                            request["rel_tol"])})
        except _GradeTimeout:
            reply({"ok": None})
        except Exception as exc:
            reply({"error": f"{type(exc).__name__}: {exc}"})
