"""Tests of the synthetic arithmetic testbed: problem generation, reference solutions and the
checker's ground-truth step labels, each against hand-worked examples."""
from __future__ import annotations

import random
import re

import pytest

from pipeline.testbed import (ArithSpec, answer_string, apply_op, check_response, generate_split,
                              make_problem, reference_solution, running_values)

# 3+4*2-5 (mod 10), left to right: 3+4=7, 7*2=14%10=4, 4-5=-1%10=9 -> answer 9
META = {"operands": [3, 4, 2, 5], "ops": ["+", "*", "-"], "modulus": 10}
GOOD = "3+4=7\n7*2=4\n4-5=9\n#### 9"

# 3+4*0+5 (mod 10): 3+4=7, 7*0=0, 0+5=5 -> answer 5. The "*0" erases any earlier slip.
META_ZERO = {"operands": [3, 4, 0, 5], "ops": ["+", "*", "+"], "modulus": 10}

# The same chains with a long-form answer line: the running value after every operation.
META_LONG = {**META, "answer_format": "longform"}            # 7 4 9
GOOD_LONG = "3+4=7\n7*2=4\n4-5=9\n#### 7 4 9"
META_ZERO_LONG = {**META_ZERO, "answer_format": "longform"}  # 7 0 5
# 3+4-2*5 (mod 10): 3+4=7, 7-2=5, 5*5=25%10=5 -> long-form answer "7 5 5". "*5" maps every
# odd value to 5, so a slip to another odd value in step 1 still ends on the right value.
META_FIVE_LONG = {"operands": [3, 4, 2, 5], "ops": ["+", "-", "*"], "modulus": 10, "answer_format": "longform"}


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


def test_longform_reference_solution_by_hand():
    assert reference_solution(META_LONG) == GOOD_LONG
    assert reference_solution(META_ZERO_LONG) == "3+4=7\n7*0=0\n0+5=5\n#### 7 0 5"
    assert reference_solution(META_FIVE_LONG) == "3+4=7\n7-2=5\n5*5=5\n#### 7 5 5"
    # an explicit "value" is the default
    assert reference_solution({**META, "answer_format": "value"}) == GOOD


def test_answer_string_by_hand():
    assert answer_string([3, 7, 4, 9]) == "9"
    assert answer_string([3, 7, 4, 9], "value") == "9"
    assert answer_string([3, 7, 4, 9], "longform") == "7 4 9"
    assert answer_string([5, 2, 5], "longform") == "2 5"
    assert answer_string([4], "longform") == "4"  # no operations: the first operand alone
    with pytest.raises(ValueError, match="unknown answer format 'json'"):
        answer_string([3, 7], "json")
    with pytest.raises(ValueError, match="unknown answer format"):
        reference_solution({**META, "answer_format": "long"})


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
    cfg = {"modulus": 7, "operand_max": 12, "operators": ["+", "*"], "chain_len": [2, 4], "ood_chain_len": [6, 7],
           "answer_format": "value"}  # as validated config holds it (the schema's default)
    assert ArithSpec.from_cfg(cfg) == ArithSpec(7, 12, ("+", "*"), (2, 4))
    assert ArithSpec.from_cfg(cfg).answer_format == "value"
    assert ArithSpec.from_cfg(cfg, "ood_chain_len").chain_len == (6, 7)
    long_cfg = {**cfg, "answer_format": "longform"}
    assert ArithSpec.from_cfg(long_cfg) == ArithSpec(7, 12, ("+", "*"), (2, 4), "longform")
    assert ArithSpec.from_cfg(long_cfg, "ood_chain_len").answer_format == "longform"
    with pytest.raises(ValueError, match="unknown answer format"):
        ArithSpec(answer_format="Longform")


def test_longform_make_problem_by_hand():
    # the same draws as the value format: only the answer and meta differ
    value = make_problem(random.Random(0), SPEC)
    long = make_problem(random.Random(0), ArithSpec(answer_format="longform"))
    assert long["problem"] == value["problem"]
    assert long["meta"] == {**value["meta"], "answer_format": "longform"}
    assert "answer_format" not in value["meta"]
    meta = long["meta"]
    v = running_values(meta["operands"], meta["ops"], 10)
    assert long["answer"] == " ".join(map(str, v[1:])) and value["answer"] == str(v[-1])
    assert long["answer"].split()[-1] == value["answer"]


def test_longform_generate_split_same_problems_one_value_per_operation():
    value = generate_split(200, SPEC, seed=2, split="t")
    long = generate_split(200, ArithSpec(answer_format="longform"), seed=2, split="t")
    assert [r["problem"] for r in long] == [r["problem"] for r in value]
    assert [r["id"] for r in long] == [r["id"] for r in value]
    for lr, vr in zip(long, value):
        ops = lr["meta"]["ops"]
        assert len(lr["answer"].split()) == len(ops)
        assert lr["answer"].split()[-1] == vr["answer"]
        assert lr["solution"].splitlines()[:-1] == vr["solution"].splitlines()[:-1]  # same steps
        assert lr["solution"].splitlines()[-1] == "#### " + lr["answer"]
        # each listed value is the result of the step on the same line number
        assert lr["answer"].split() == [line.split("=")[1] for line in lr["solution"].splitlines()[:-1]]


@pytest.mark.parametrize("answer_format", ["value", "longform"])
@pytest.mark.parametrize("spec", [
    ArithSpec(),                                               # in distribution
    ArithSpec(chain_len=(6, 7)),                               # OOD lengths
    ArithSpec(modulus=7, operand_max=12, chain_len=(1, 8)),    # operands >= modulus
])
def test_reference_solution_is_always_fully_valid(spec, answer_format):
    spec = ArithSpec(spec.modulus, spec.operand_max, spec.operators, spec.chain_len, answer_format)
    recs = generate_split(300, spec, seed=5, split="t")
    for r in recs:
        res = check_response(r["solution"], r["meta"])
        n_ops = len(r["meta"]["ops"])
        assert res == {"outcome": True, "step_valid": [True] * (n_ops + 1), "first_error": None,
                       "process_correct": True, "final_value_correct": True}, r


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
    assert r == {"outcome": True, "step_valid": [True] * 4, "first_error": None, "process_correct": True,
                 "final_value_correct": True}
    # two operations in one "\n\n"-step do not form a valid step
    r = check_response("3+4=7\n7*2=4\n\n4-5=9\n\n#### 9", META, delimiter="\n\n")
    assert r["step_valid"][0] is False and r["first_error"] == 0 and r["outcome"] is True


# --------------------------------------------------------------------------- final_value_correct


def check5(response, meta=META):
    r = check_response(response, meta)
    return r["outcome"], r["step_valid"], r["first_error"], r["process_correct"], r["final_value_correct"]


def test_value_format_final_value_correct():
    # value-format records behave as before; final_value_correct is the last token of the answer line
    assert check_response(GOOD, META) == {"outcome": True, "step_valid": [True] * 4, "first_error": None,
                                          "process_correct": True, "final_value_correct": True}
    assert check5("3+4=7\n7*2=5\n5-5=0\n#### 0") == (False, [True, False, True, True], 1, False, False)
    assert check5("3+4=7\n7*2=4\n4-5=9\n#### 8") == (False, [True, True, True, False], 3, False, False)
    assert check5("3+4=8\n8*0=0\n0+5=5\n#### 5", META_ZERO) == (True, [False, True, True, True], 0, False, True)
    assert check5("3+4=7\n7*2=4\n4-5=9") == (False, [True, True, True], 3, False, False)  # no answer line
    assert check5("") == (False, [], 0, False, False)
    # a long-form line in a value-format record: not the value answer (outcome and answer step
    # wrong), but its last number is the final value
    assert check5(GOOD_LONG) == (False, [True, True, True, False], 3, False, True)


# --------------------------------------------------------------------------- longform checker


def test_longform_check_correct_response():
    assert check_response(GOOD_LONG, META_LONG) == {"outcome": True, "step_valid": [True] * 4, "first_error": None,
                                                    "process_correct": True, "final_value_correct": True}
    # spaces around the steps and a trailing newline are tolerated as in the value format
    assert check5(" 3 + 4 = 7 \n7*2=4\n4 -5= 9\n#### 7 4 9\n", META_LONG) == (True, [True] * 4, None, True, True)


def test_longform_slip_in_middle_step_with_consistent_answer_line():
    # step 1: 7*2 = 14 % 10 = 4, the response says 5; 5-5=0 is a valid step from 5, and
    # "#### 7 5 0" lists the response's own running values: a valid answer step. The true
    # long-form answer is "7 4 9", and the last value 0 is not 9.
    assert check5("3+4=7\n7*2=5\n5-5=0\n#### 7 5 0", META_LONG) == (False, [True, False, True, True], 1, False, False)
    # step 1: 7-2 = 5, the response says 3; 3*5 = 15 % 10 = 5 is valid from 3, and reaches the
    # true final value 5: the long-form line "7 3 5" fails (true "7 5 5") but its final value is right.
    assert check5("3+4=7\n7-2=3\n3*5=5\n#### 7 3 5", META_FIVE_LONG) == (False, [True, False, True, True], 1, False, True)
    # the same slip with the value-style "#### 5" would have had outcome True: longform catches it
    assert check5("3+4=7\n7-2=3\n3*5=5\n#### 5", {**META_FIVE_LONG, "answer_format": "value"})[0] is True
    # step 0 slip rescued by "*0": right final value 5, wrong long-form line (true "7 0 5")
    assert check5("3+4=8\n8*0=0\n0+5=5\n#### 8 0 5", META_ZERO_LONG) == (False, [False, True, True, True], 0, False, True)


def test_longform_answer_line_inconsistent_with_steps():
    # all steps right, the answer line's last value is wrong (8, the steps computed 9)
    assert check5("3+4=7\n7*2=4\n4-5=9\n#### 7 4 8", META_LONG) == (False, [True, True, True, False], 3, False, False)
    # all steps right, a middle value misreported (5, the steps computed 4): final value right
    assert check5("3+4=7\n7*2=4\n4-5=9\n#### 7 5 9", META_LONG) == (False, [True, True, True, False], 3, False, True)
    # a slip in step 1 (5 for 4), then the TRUE long-form answer: it matches the reference
    # (outcome True) but not what the response computed ("7 5 0"), so the answer step is wrong
    assert check5("3+4=7\n7*2=5\n5-5=0\n#### 7 4 9", META_LONG) == (True, [True, False, True, False], 1, False, True)
    # only the final value (the value format's answer) is not the long-form line
    assert check5("3+4=7\n7*2=4\n4-5=9\n#### 9", META_LONG) == (False, [True, True, True, False], 3, False, True)
    # values in the wrong order, or with the first operand prepended, are wrong
    assert check5("3+4=7\n7*2=4\n4-5=9\n#### 9 4 7", META_LONG) == (False, [True, True, True, False], 3, False, False)
    assert check5("3+4=7\n7*2=4\n4-5=9\n#### 3 7 4 9", META_LONG) == (False, [True, True, True, False], 3, False, True)
    # the line is an exact string, as the grader reads it: a doubled space fails both the
    # answer step and the outcome
    assert check5("3+4=7\n7*2=4\n4-5=9\n#### 7  4 9", META_LONG) == (False, [True, True, True, False], 3, False, True)


def test_longform_answer_placement():
    # premature answer after 1 of 3 operations: "7" is consistent so far but comes too early
    assert check5("3+4=7\n#### 7", META_LONG) == (False, [True, False], 1, False, False)
    # missing answer line
    assert check5("3+4=7\n7*2=4\n4-5=9", META_LONG) == (False, [True, True, True], 3, False, False)
    # anything after the answer line is wrong, and the last answer line is the graded one
    assert check5(GOOD_LONG + "\n#### 7 4 8", META_LONG) == (False, [True] * 4 + [False], 4, False, False)
    # an unparsable line keeps the running value: it is listed again (7), the next step is
    # checked against the wrong operation (step 2 must be "-5"), the answer line comes at step 3
    assert check5("3+4=7\nhmm\n7*2=4\n#### 7 7 4", META_LONG) == (False, [True, False, False, True], 1, False, False)
