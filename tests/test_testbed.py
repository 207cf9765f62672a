"""Tests of the synthetic arithmetic testbed: problem generation, reference solutions and the
checker's ground-truth step labels, each against hand-worked examples."""
from __future__ import annotations

import random
import re

import pytest

from pipeline.testbed import (ArithSpec, apply_op, check_response, generate_split, make_problem,
                              reference_solution, running_values)

# 3+4*2-5 (mod 10), left to right: 3+4=7, 7*2=14%10=4, 4-5=-1%10=9 -> answer 9
META = {"operands": [3, 4, 2, 5], "ops": ["+", "*", "-"], "modulus": 10}
GOOD = "3+4=7\n7*2=4\n4-5=9\n#### 9"

# 3+4*0+5 (mod 10): 3+4=7, 7*0=0, 0+5=5 -> answer 5. The "*0" erases any earlier slip.
META_ZERO = {"operands": [3, 4, 0, 5], "ops": ["+", "*", "+"], "modulus": 10}


# --------------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize("a, op, b, m, expected", [
    (3, "+", 4, 10, 7),
    (9, "+", 9, 10, 8),    # 18 % 10
    (3, "-", 5, 10, 8),    # -2 % 10
    (7, "*", 8, 10, 6),    # 56 % 10
    (2, "-", 5, 7, 4),     # -3 % 7
    (6, "*", 0, 10, 0),
])
def test_apply_op_by_hand(a, op, b, m, expected):
    assert apply_op(a, op, b, m) == expected


def test_apply_op_unknown_operator():
    with pytest.raises(ValueError, match="unknown operator"):
        apply_op(1, "/", 2, 10)


def test_running_values_by_hand():
    # 3 -> 3+4=7 -> 7*2=4 -> 4-5=9
    assert running_values([3, 4, 2, 5], ["+", "*", "-"], 10) == [3, 7, 4, 9]
    # first operand is reduced mod m: 13%10=3, 3+4=7
    assert running_values([13, 4], ["+"], 10) == [3, 7]
    # mod 7: 5*6=30%7=2, 2-4=-2%7=5
    assert running_values([5, 6, 4], ["*", "-"], 7) == [5, 2, 5]
    assert running_values([4], [], 10) == [4]


def test_reference_solution_by_hand():
    assert reference_solution(META) == GOOD
    assert reference_solution(META_ZERO) == "3+4=7\n7*0=0\n0+5=5\n#### 5"


# --------------------------------------------------------------------------- generation


SPEC = ArithSpec()  # modulus 10, operands 0..9, + - *, 3..5 operations


def test_generate_split_deterministic_for_a_seed():
    a = generate_split(50, SPEC, seed=3, split="train")
    b = generate_split(50, SPEC, seed=3, split="train")
    c = generate_split(50, SPEC, seed=4, split="train")
    assert a == b
    assert [r["problem"] for r in a] != [r["problem"] for r in c]


def test_generate_split_records_are_distinct_and_consistent():
    recs = generate_split(400, SPEC, seed=0, split="val")
    problems = [r["problem"] for r in recs]
    assert len(set(problems)) == len(problems) == 400
    assert [r["id"] for r in recs] == [f"arith-val-{i}" for i in range(400)]
    for r in recs:
        meta = r["meta"]
        assert r["split"] == "val" and r["source"] == "arith"
        # the problem text is the chain written out, evaluated to the stored answer
        expr = str(meta["operands"][0]) + "".join(f"{o}{b}" for o, b in zip(meta["ops"], meta["operands"][1:]))
        assert r["problem"] == expr + "=?"
        assert r["answer"] == str(running_values(meta["operands"], meta["ops"], 10)[-1])
        assert r["solution"] == reference_solution(meta)
        assert all(0 <= x <= 9 for x in meta["operands"])
        assert set(meta["ops"]) <= {"+", "-", "*"}


@pytest.mark.parametrize("chain_len", [(3, 5), (6, 7)])
def test_generate_split_chain_lengths_in_range(chain_len):
    spec = ArithSpec(chain_len=chain_len)
    recs = generate_split(300, spec, seed=1, split="x")
    lengths = {len(r["meta"]["ops"]) for r in recs}
    assert lengths == set(range(chain_len[0], chain_len[1] + 1))  # in range, and both ends reached
    for r in recs:
        assert len(r["meta"]["operands"]) == len(r["meta"]["ops"]) + 1


def test_generate_split_respects_exclude():
    # A small space (1 op, operands 0..3, 3 operators: 4*3*4 = 48 problems), and the same
    # seed: without `exclude` the second split would repeat the first split's problems.
    spec = ArithSpec(operand_max=3, chain_len=(1, 1))
    test = generate_split(10, spec, seed=0, split="test")
    held_out = {r["problem"] for r in test}
    again = generate_split(20, spec, seed=0, split="train")
    assert held_out & {r["problem"] for r in again}  # the exclusion below is not vacuous
    train = generate_split(20, spec, seed=0, split="train", exclude=held_out)
    assert not held_out & {r["problem"] for r in train}
    assert len({r["problem"] for r in train}) == 20


def test_generate_split_too_many_problems_raises():
    # 1 op, operands 0..1, only "+": 2*2 = 4 distinct problems exist
    spec = ArithSpec(operand_max=1, operators=("+",), chain_len=(1, 1))
    assert len(generate_split(4, spec, seed=0, split="t")) == 4
    with pytest.raises(ValueError, match="cannot draw 5 distinct problems"):
        generate_split(5, spec, seed=0, split="t")


def test_spec_from_cfg():
    cfg = {"modulus": 7, "operand_max": 12, "operators": ["+", "*"], "chain_len": [2, 4], "ood_chain_len": [6, 7]}
    assert ArithSpec.from_cfg(cfg) == ArithSpec(7, 12, ("+", "*"), (2, 4))
    assert ArithSpec.from_cfg(cfg, "ood_chain_len").chain_len == (6, 7)


@pytest.mark.parametrize("spec", [
    ArithSpec(),                                               # in distribution
    ArithSpec(chain_len=(6, 7)),                               # OOD lengths
    ArithSpec(modulus=7, operand_max=12, chain_len=(1, 8)),    # operands >= modulus
])
def test_reference_solution_is_always_fully_valid(spec):
    recs = generate_split(300, spec, seed=5, split="t")
    for r in recs:
        res = check_response(r["solution"], r["meta"])
        n_ops = len(r["meta"]["ops"])
        assert res == {"outcome": True, "step_valid": [True] * (n_ops + 1), "first_error": None,
                       "process_correct": True}, r


def test_make_problem_format():
    rec = make_problem(random.Random(0), SPEC)
    assert re.fullmatch(r"\d([+\-*]\d){3,5}=\?", rec["problem"])


# --------------------------------------------------------------------------- checker


def check(response, meta=META):
    r = check_response(response, meta)
    return r["outcome"], r["step_valid"], r["first_error"], r["process_correct"]


def test_check_correct_response():
    assert check(GOOD) == (True, [True, True, True, True], None, True)


def test_check_tolerates_spaces_and_trailing_newline():
    assert check(" 3 + 4 = 7 \n7*2=4\n4 -5= 9\n####9\n") == (True, [True] * 4, None, True)


def test_check_arithmetic_slip():
    # step 1: 7*2 = 14 % 10 = 4, the response says 5 (slip); 5-5=0 is then a valid step from 5
    # and "#### 0" restates the last result, but the true answer is 9.
    assert check("3+4=7\n7*2=5\n5-5=0\n#### 0") == (False, [True, False, True, True], 1, False)


def test_check_slip_rescued_by_times_zero():
    # 3+4 = 7, the response says 8 (slip at step 0); 8*0=0 and 0+5=5 are valid from there, so
    # the final answer 5 is right (outcome True) through a wrong process.
    assert check("3+4=8\n8*0=0\n0+5=5\n#### 5", META_ZERO) == (True, [False, True, True, True], 0, False)
    assert check("3+4=7\n7*0=0\n0+5=5\n#### 5", META_ZERO) == (True, [True] * 4, None, True)


def test_check_copy_error():
    # step 1 starts from 6, not the previous result 7 (6*2=12%10=2 is right arithmetic)
    assert check("3+4=7\n6*2=2\n2-5=7\n#### 7") == (False, [True, False, True, True], 1, False)


def test_check_wrong_operand():
    # the problem multiplies by 2; the response multiplies by 3 (7*3=21%10=1 is right arithmetic)
    assert check("3+4=7\n7*3=1\n1-5=6\n#### 6") == (False, [True, False, True, True], 1, False)


def test_check_wrong_operator():
    # the problem multiplies by 2; the response adds 2 (7+2=9), then 9-5=4
    assert check("3+4=7\n7+2=9\n9-5=4\n#### 4") == (False, [True, False, True, True], 1, False)


def test_check_wrong_first_operand():
    # step 0 must start from the problem's first operand 3
    assert check("4+4=8\n8*2=6\n6-5=1\n#### 1") == (False, [False, True, True, True], 0, False)


def test_check_missing_answer_line():
    # all three operations right, no "####" line: the missing answer is the first wrong step (3)
    assert check("3+4=7\n7*2=4\n4-5=9") == (False, [True, True, True], 3, False)
    assert check("3+4=7\n7*2=4\n4-5=9\n") == (False, [True, True, True], 3, False)


def test_check_extra_step_after_answer():
    # the answer (9) is right, but anything after the answer line is a wrong step
    assert check("3+4=7\n7*2=4\n4-5=9\n#### 9\n9+0=9") == (True, [True, True, True, True, False], 4, False)


def test_check_extra_step_before_answer():
    # a 4th operation the problem does not have, then the answer at step 4 instead of 3
    assert check("3+4=7\n7*2=4\n4-5=9\n9+0=9\n#### 9") == (True, [True, True, True, False, False], 3, False)


def test_check_garbage_line():
    # the garbage line takes step 1, so "7*2=4" is checked as step 2 (must be "-5"): wrong;
    # "4-5=9" is a 4th operation: wrong; the answer comes at step 4, not 3: wrong.
    assert check("3+4=7\nhmm let me think\n7*2=4\n4-5=9\n#### 9") == (True, [True, False, False, False, False], 1, False)


def test_check_empty_response():
    assert check("") == (False, [], 0, False)
    assert check("\n\n") == (False, [], 0, False)


def test_check_answer_before_all_operations():
    # answer after 1 of 3 operations: wrong step, wrong outcome (7 != 9)
    assert check("3+4=7\n#### 7") == (False, [True, False], 1, False)
    # a bare guess of the right number: right outcome, wrong (premature) answer step
    assert check("#### 9") == (True, [False], 0, False)


def test_check_everything_after_a_premature_answer_is_wrong():
    # "#### 7" after 1 of 3 operations ends the response's process: the later lines would be
    # valid on their own (7-5=2 continues from 7 with the right operand; "#### 2" restates it
    # at step 3) but come after an answer line.
    assert check("3+4=7\n#### 7\n7-5=2\n#### 2") == (False, [True, False, False, False], 1, False)


def test_check_answer_not_restating_last_result():
    # all steps valid but the answer line says 8 (not the last result 9)
    assert check("3+4=7\n7*2=4\n4-5=9\n#### 8") == (False, [True, True, True, False], 3, False)


def test_check_two_answer_lines_last_one_graded():
    # first answer line valid; the second is after the answer (wrong) and is the one graded
    assert check("3+4=7\n7*2=4\n4-5=9\n#### 9\n#### 3") == (False, [True, True, True, True, False], 4, False)


def test_check_double_newline_delimiter():
    resp = "3+4=7\n\n7*2=4\n\n4-5=9\n\n#### 9"
    r = check_response(resp, META, delimiter="\n\n")
    assert r == {"outcome": True, "step_valid": [True] * 4, "first_error": None, "process_correct": True}
    # two operations in one "\n\n"-step do not form a valid step
    r = check_response("3+4=7\n7*2=4\n\n4-5=9\n\n#### 9", META, delimiter="\n\n")
    assert r["step_valid"][0] is False and r["first_error"] == 0 and r["outcome"] is True
