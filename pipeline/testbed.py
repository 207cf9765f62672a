"""The synthetic multi-step arithmetic testbed: problems, reference solutions, and a checker
that gives ground-truth step labels for *any* response.

A problem is a chain of operations evaluated left to right modulo `modulus`, e.g.
"3+4*2-5=?" (mod 10). The reference solution writes one step per line and ends with an
answer line in GSM8K style:

    3+4=7
    7*2=4
    4-5=9
    #### 9

Answer formats (`task.arith.answer_format`):

- ``value`` (default): the answer line is the final value, as above; ``answer == "9"``.
- ``longform``: the answer line lists the running value after every operation, so the
  example ends with ``#### 7 4 9`` and ``answer == "7 4 9"``. Exact grading of the whole line
  is then a strict long-form match (one slip anywhere fails it): a stand-in for a reference
  answer that no grader may check, as in JEPO, which learns from log pi(a* | x, c) alone.
  Longform records say so in ``meta["answer_format"]``; value records carry no such key, so
  their bytes are what they were before the option existed.

The checker parses a generated response line by line. A step `a op b = c` is *valid* when
`a` is the previous line's result (the first operand for step 1), `op b` is the problem's
next operation, and `c == (a op b) mod m`. The answer line is valid when it comes after
all operations and repeats the last result (longform: lists the response's own running value
after each of its steps, space separated). The outcome is whether the final answer equals
the true answer, graded by the project grader (longform: the whole true long-form line).
Because validity is local, an arithmetic slip followed by "*0" (or an even number "*5" mod
10) reaches the right final value through a wrong process, which is exactly the case real
PRM data contains.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .grader import extract_answer, grade
from .steps import split_steps

STEP_RE = re.compile(r"^\s*(\d+)\s*([+\-*])\s*(\d+)\s*=\s*(\d+)\s*$")
ANSWER_PREFIX = "####"
ANSWER_FORMATS = ("value", "longform")


@dataclass(frozen=True)
class ArithSpec:
    modulus: int = 10
    operand_max: int = 9
    operators: tuple[str, ...] = ("+", "-", "*")
    chain_len: tuple[int, int] = (3, 5)  # inclusive range of the number of operations
    answer_format: str = "value"          # "value" (final value) or "longform" (every running value)

    def __post_init__(self) -> None:
        _check_format(self.answer_format)

    @classmethod
    def from_cfg(cls, cfg: dict, chain_key: str = "chain_len") -> "ArithSpec":
        lo, hi = cfg[chain_key]
        return cls(modulus=int(cfg["modulus"]), operand_max=int(cfg["operand_max"]),
                   operators=tuple(cfg["operators"]), chain_len=(int(lo), int(hi)),
                   answer_format=str(cfg["answer_format"]))


def specs(cfg: dict) -> tuple[ArithSpec, ArithSpec]:
    """The in-distribution and OOD specs of a `task.arith` block (OOD: the longer chains)."""
    return ArithSpec.from_cfg(cfg), ArithSpec.from_cfg(cfg, chain_key="ood_chain_len")


def _check_format(answer_format: str) -> None:
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"unknown answer format {answer_format!r}; allowed: {', '.join(ANSWER_FORMATS)}")


def apply_op(a: int, op: str, b: int, modulus: int) -> int:
    if op == "+":
        return (a + b) % modulus
    if op == "-":
        return (a - b) % modulus
    if op == "*":
        return (a * b) % modulus
    raise ValueError(f"unknown operator {op!r}")


def make_problem(rng: random.Random, spec: ArithSpec) -> dict:
    n_ops = rng.randint(*spec.chain_len)
    operands = [rng.randint(0, spec.operand_max) for _ in range(n_ops + 1)]
    ops = [rng.choice(spec.operators) for _ in range(n_ops)]
    expr = str(operands[0]) + "".join(f"{op}{b}" for op, b in zip(ops, operands[1:]))
    values = running_values(operands, ops, spec.modulus)
    meta = {"operands": operands, "ops": ops, "modulus": spec.modulus}
    if spec.answer_format != "value":  # value records stay byte-identical to the pre-option ones
        meta["answer_format"] = spec.answer_format
    return {"problem": f"{expr}=?", "answer": answer_string(values, spec.answer_format), "meta": meta}


def running_values(operands: list[int], ops: list[str], modulus: int) -> list[int]:
    """values[0] = first operand (taken mod m), values[h] = result after h operations."""
    values = [operands[0] % modulus]
    for op, b in zip(ops, operands[1:]):
        values.append(apply_op(values[-1], op, b, modulus))
    return values


def answer_string(values: list[int], answer_format: str = "value") -> str:
    """The answer text after "#### " for the running values `values` (as `running_values`
    returns them): the final value, or in longform the value after every operation joined by
    single spaces (the first operand alone for a chain without operations)."""
    _check_format(answer_format)
    if answer_format == "longform":
        return " ".join(str(v) for v in (values[1:] or values[:1]))
    return str(values[-1])


def meta_answer_format(meta: dict) -> str:
    """The record's answer format; records without the key (all value-format ones) are "value"."""
    fmt = meta.get("answer_format", "value")
    _check_format(fmt)
    return fmt


def reference_solution(meta: dict) -> str:
    operands, ops, m = meta["operands"], meta["ops"], meta["modulus"]
    values = running_values(operands, ops, m)
    lines = [f"{values[h]}{op}{b}={values[h + 1]}" for h, (op, b) in enumerate(zip(ops, operands[1:]))]
    lines.append(f"{ANSWER_PREFIX} {answer_string(values, meta_answer_format(meta))}")
    return "\n".join(lines)


def draw_distinct(n: int, draw, seed: int, split: str, source: str, reference, exclude: set[str] | None = None,
                  widen: str = "the task's ranges") -> list[dict]:
    """`n` distinct problems from `draw(rng)` (a record with "problem" and "meta"), none in
    `exclude` (so eval splits never leak into train), each with its id `<source>-<split>-<i>`
    and its reference solution `reference(meta)`. Every testbed draws its splits here."""
    rng = random.Random(seed)
    exclude = exclude or set()
    seen: set[str] = set()
    records = []
    attempts = 0
    while len(records) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"split {split!r}: cannot draw {n} distinct problems from this task spec; "
                             f"lower the split size or widen {widen}")
        rec = draw(rng)
        if rec["problem"] in seen or rec["problem"] in exclude:
            continue
        seen.add(rec["problem"])
        rec.update(id=f"{source}-{split}-{len(records)}", source=source, split=split, solution=reference(rec["meta"]))
        records.append(rec)
    return records


def generate_split(n: int, spec: ArithSpec, seed: int, split: str, exclude: set[str] | None = None) -> list[dict]:
    """`n` distinct arithmetic problems (not in `exclude`, so eval splits never leak into train)."""
    return draw_distinct(n, lambda rng: make_problem(rng, spec), seed, split, "arith", reference_solution, exclude,
                         "chain_len / operand_max")


def check_response(response: str, meta: dict, delimiter: str = "\n") -> dict:
    """Ground truth for one response: outcome, per-step validity, first wrong step.

    Returns {"outcome": bool, "step_valid": [bool per step], "first_error": int | None,
    "process_correct": bool, "final_value_correct": bool}. Steps are the splitter's steps of
    the response, so the labels line up with what PRMs score.

    The answer format comes from ``meta["answer_format"]`` (absent: "value"). In longform the
    answer line is valid when it comes after all operations and lists, space separated, the
    response's own running value after each of its earlier steps (what it computed, right or
    wrong), and `outcome` is an exact match of the whole line against the true long-form
    answer. `final_value_correct` (both formats): the last space-separated token of the graded
    (last) answer line is the true final value, so a long-form line with a slip before the
    end can still be right about where the chain ends up.
    """
    operands, ops, m = meta["operands"], meta["ops"], meta["modulus"]
    fmt = meta_answer_format(meta)
    values = running_values(operands, ops, m)
    steps = split_steps(response, delimiter)
    valid: list[bool] = []
    prev = operands[0] % m  # what the next step must start from
    computed: list[int] = []  # the response's running value after each of its steps so far
    answered = False
    for h, step in enumerate(steps):
        line = step.strip()
        if answered:  # anything after the answer line is wrong
            valid.append(False)
            continue
        if line.startswith(ANSWER_PREFIX):
            answered = True
            given = extract_answer(line, "exact")
            # longform: the values listed must be the response's own (no steps: the first operand)
            expected = " ".join(map(str, computed or [prev])) if fmt == "longform" else str(prev)
            valid.append(h == len(ops) and given == expected)
            continue
        match = STEP_RE.match(line)
        if match is None or h >= len(ops):
            valid.append(False)
            prev = int(match.group(4)) if match else prev
            computed.append(prev)
            continue
        a, op, b, c = int(match.group(1)), match.group(2), int(match.group(3)), int(match.group(4))
        ok = a == prev and op == ops[h] and b == operands[h + 1] and c == apply_op(a, op, b, m)
        valid.append(ok)
        prev = c
        computed.append(prev)
    outcome = grade(response, answer_string(values, fmt), "exact")
    final_tokens = (extract_answer(response, "exact") or "").split()
    final_value_correct = bool(final_tokens) and final_tokens[-1] == str(values[-1])
    first_error = next((h for h, v in enumerate(valid) if not v), None)
    if first_error is None and not answered:
        first_error = len(steps)  # the missing answer line is the first wrong step
    return {"outcome": bool(outcome), "step_valid": valid, "first_error": first_error,
            "process_correct": first_error is None, "final_value_correct": final_value_correct}
