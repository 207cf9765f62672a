"""The Countdown testbed: a search problem whose answers are checked by forward evaluation, so
checking is easier than generating, as it is for real math (issue 14's second task).

A problem gives numbers and a target, e.g. "3 7 2 5 -> 24": combine the numbers, each exactly
once, two at a time with `+ - *`, until one number is left, and make it the target. Every
intermediate result must be an integer in [0, value_max]. The reference solution writes one
operation per line and ends with an answer line in GSM8K style:

    7*3=21
    21+5=26
    26-2=24
    #### 24

Why this task: the generator must *search* (which pair, which operation) with no lookahead, so
its pass@1 is low while pass@64 is high; a verifier only has to check each line's arithmetic, the
bookkeeping of which numbers are left, and that the last one is the target, all local. The
generator's own likelihood cannot see the target constraint: a legal chain that ends at 23 is as
likely to it as one that ends at 24. On the arithmetic-chain testbed (`pipeline/testbed.py`)
checking a step is the same computation as writing it, which is why the generators'
likelihoods beat every trained scalar verifier there.

Ground truth, exact for any response (the checker below):
- A line `a op b = c` is *legal* when a and b are among the numbers left (two copies if a == b),
  op is allowed, and c == a op b within [0, value_max]; the numbers left become those minus
  {a, b} plus {c}.
- A step is *valid* when it is legal **and** the target can still be reached from the numbers
  left (`reachable`, an exhaustive search): Q* of the prefix is 1. So a legal step into a dead
  end is the first error (a "pit"), and every step after it is invalid too. `step_legal` keeps
  the arithmetic-only view.
- The answer line is valid when it comes after all operations (one number left) and states that
  number, which equals the target.
- The outcome is 1 exactly when every step is valid and the answer line is there: the derivation
  reaches the target by legal arithmetic (forward evaluation, never the stated answer alone, so
  "#### 24" after made-up arithmetic scores 0). `final_value_correct` reports the stated answer
  alone, to see how often a response claims the target without reaching it.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations

from .grader import extract_answer
from .steps import split_steps
from .testbed import draw_distinct

STEP_RE = re.compile(r"^\s*(\d+)\s*([+\-*])\s*(\d+)\s*=\s*(\d+)\s*$")
ANSWER_PREFIX = "####"
OPERATORS = ("+", "-", "*")


@dataclass(frozen=True)
class CountdownSpec:
    n_numbers: tuple[int, int] = (3, 4)  # inclusive range of how many numbers a problem gives
    number_max: int = 9                  # numbers are drawn from 1..number_max
    value_max: int = 99                  # every intermediate result must lie in [0, value_max]
    operators: tuple[str, ...] = OPERATORS

    def __post_init__(self) -> None:
        unknown = [op for op in self.operators if op not in OPERATORS]
        if unknown:
            raise ValueError(f"unknown operators {unknown}; allowed: {' '.join(OPERATORS)}")
        if self.n_numbers[0] < 2 or self.n_numbers[0] > self.n_numbers[1]:
            raise ValueError(f"n_numbers {self.n_numbers}: need 2 <= min <= max")

    @classmethod
    def from_cfg(cls, cfg: dict, numbers_key: str = "n_numbers") -> "CountdownSpec":
        lo, hi = cfg[numbers_key]
        return cls(n_numbers=(int(lo), int(hi)), number_max=int(cfg["number_max"]),
                   value_max=int(cfg["value_max"]), operators=tuple(cfg["operators"]))


def specs(cfg: dict) -> tuple[CountdownSpec, CountdownSpec]:
    """The in-distribution and OOD specs of a `task.countdown` block (OOD: more numbers)."""
    return CountdownSpec.from_cfg(cfg), CountdownSpec.from_cfg(cfg, numbers_key="ood_n_numbers")


def apply_op(a: int, op: str, b: int, value_max: int) -> int | None:
    """a op b, or None when the result leaves [0, value_max] (a rule of the game, not an error
    of arithmetic: the checker calls a line that writes it illegal)."""
    c = a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else None
    if c is None:
        raise ValueError(f"unknown operator {op!r}")
    return c if 0 <= c <= value_max else None


def moves(numbers: tuple[int, ...], operators: tuple[str, ...], value_max: int):
    """Every legal move from a multiset (sorted tuple): (a, op, b, c, numbers left, sorted)."""
    seen = set()
    for i, j in combinations(range(len(numbers)), 2):
        rest = numbers[:i] + numbers[i + 1:j] + numbers[j + 1:]
        for a, b in ((numbers[i], numbers[j]), (numbers[j], numbers[i])):
            for op in operators:
                if op != "-" and a < b:  # + and * commute: one order is enough
                    continue
                c = apply_op(a, op, b, value_max)
                if c is None or (a, op, b) in seen:
                    continue
                seen.add((a, op, b))
                yield a, op, b, c, tuple(sorted(rest + (c,)))


@lru_cache(maxsize=200_000)
def final_values(numbers: tuple[int, ...], operators: tuple[str, ...], value_max: int) -> frozenset[int]:
    """Every number that using all of `numbers` (a sorted tuple) can end at."""
    if len(numbers) == 1:
        return frozenset(numbers)
    out: set[int] = set()
    for *_, left in moves(numbers, operators, value_max):
        out |= final_values(left, operators, value_max)
    return frozenset(out)


def reachable(numbers, target: int, operators: tuple[str, ...], value_max: int) -> bool:
    """Can `numbers` (any order) still make `target`? Q* of a state: exact, by exhaustive search."""
    return target in final_values(tuple(sorted(numbers)), tuple(operators), value_max)


def solutions(numbers, target: int, operators: tuple[str, ...], value_max: int) -> list[list[tuple]]:
    """Every legal path (a list of (a, op, b, c) moves) from `numbers` to `target`."""
    numbers, operators = tuple(sorted(numbers)), tuple(operators)
    if len(numbers) == 1:
        return [[]] if numbers[0] == target else []
    out = []
    for a, op, b, c, left in moves(numbers, operators, value_max):
        if target in final_values(left, operators, value_max):
            out += [[(a, op, b, c)] + rest for rest in solutions(left, target, operators, value_max)]
    return out


def make_problem(rng: random.Random, spec: CountdownSpec) -> dict:
    """Numbers drawn uniformly, the target uniform over the values they can reach (so a target
    with few solutions is as likely as an easy one), and one of its solutions, drawn uniformly,
    as the reference."""
    targets: list[int] = []
    while not targets:  # with + allowed never empty (the sum fits); without it, draw again
        n = rng.randint(*spec.n_numbers)
        numbers = [rng.randint(1, spec.number_max) for _ in range(n)]
        targets = sorted(final_values(tuple(sorted(numbers)), spec.operators, spec.value_max))
    target = rng.choice(targets)
    path = rng.choice(solutions(numbers, target, spec.operators, spec.value_max))
    meta = {"numbers": numbers, "target": target, "operators": list(spec.operators),
            "value_max": spec.value_max, "path": [list(m) for m in path]}
    return {"problem": f"{' '.join(map(str, numbers))} -> {target}", "answer": str(target), "meta": meta}


def reference_solution(meta: dict) -> str:
    lines = [f"{a}{op}{b}={c}" for a, op, b, c in meta["path"]]
    lines.append(f"{ANSWER_PREFIX} {meta['target']}")
    return "\n".join(lines)


def generate_split(n: int, spec: CountdownSpec, seed: int, split: str, exclude: set[str] | None = None) -> list[dict]:
    """`n` distinct problems (not in `exclude`, so eval splits never leak into train)."""
    return draw_distinct(n, lambda rng: make_problem(rng, spec), seed, split, "countdown", reference_solution, exclude,
                         "n_numbers / number_max")


def check_response(response: str, meta: dict, delimiter: str = "\n") -> dict:
    """Ground truth for one response: outcome, per-step validity (legal and target still
    reachable), per-step legality, first wrong step. The keys are the arithmetic testbed's
    (`pipeline.testbed.check_response`) plus `step_legal`, so every consumer reads both alike."""
    target, value_max = int(meta["target"]), int(meta["value_max"])
    operators = tuple(meta["operators"])
    left = Counter(int(x) for x in meta["numbers"])
    steps = split_steps(response, delimiter)
    valid: list[bool] = []
    legal: list[bool] = []
    alive = reachable(list(left.elements()), target, operators, value_max)  # always true for made problems
    answered = False
    for step in steps:
        line = step.strip()
        if answered:  # anything after the answer line is wrong
            valid.append(False)
            legal.append(False)
            continue
        if line.startswith(ANSWER_PREFIX):
            answered = True
            given = extract_answer(line, "exact")
            last = list(left.elements())
            legal.append(len(last) == 1 and given == str(last[0]))
            valid.append(alive and legal[-1] and last[0] == target)
            continue
        match = STEP_RE.match(line)
        ok = False
        if match is not None:
            a, op, b, c = int(match.group(1)), match.group(2), int(match.group(3)), int(match.group(4))
            need = Counter([a, b])
            if op in operators and all(left[k] >= v for k, v in need.items()) and apply_op(a, op, b, value_max) == c:
                left = left - need
                left[c] += 1
                ok = True
        legal.append(ok)
        # an illegal line leaves the numbers as they were, but the prefix is wrong from here on
        alive = alive and ok and reachable(list(left.elements()), target, operators, value_max)
        valid.append(alive)
    first_error = next((h for h, v in enumerate(valid) if not v), None)
    if first_error is None and not answered:
        first_error = len(steps)  # the missing answer line is the first wrong step
    process_correct = first_error is None
    stated = extract_answer(response, "exact")
    return {"outcome": process_correct, "step_valid": valid, "step_legal": legal, "first_error": first_error,
            "process_correct": process_correct, "final_value_correct": stated == str(target)}
