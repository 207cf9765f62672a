"""What a task is to the rest of the pipeline: how a record becomes a prompt, and how a
response is judged. Stages never special-case the testbed beyond calling these.

A record is {"id", "problem", "answer", "source", ...}; testbed records also carry "meta"
(arith: operands and operators; countdown: numbers, target) from which the testbed's checker
derives ground-truth step labels.
"""
from __future__ import annotations

from .grader import grade
from .loaders import numeric_tolerance
from .registry import is_testbed, testbed_module
from .steps import split_steps


def format_prompt(record: dict, task_cfg: dict) -> str:
    """The text the policy is conditioned on. The testbed prompt is the problem and a newline;
    real-data presets give a `prompt_template` with a `{problem}` field."""
    template = task_cfg.get("prompt_template") or "{problem}\n"
    return template.format(problem=record["problem"])


def judge(record: dict, response: str, task_cfg: dict) -> dict:
    """Outcome reward (always) plus ground-truth step labels (testbed only).

    Returns {"outcome": 0/1, "n_steps": H, and for the testbed "step_valid", "first_error",
    "process_correct"}."""
    delimiter = task_cfg["step_delimiter"]
    result: dict = {"n_steps": len(split_steps(response, delimiter))}
    if is_testbed(task_cfg) and "meta" in record:
        result.update(testbed_module(task_cfg).check_response(response, record["meta"], delimiter))
        result["outcome"] = int(result["outcome"])
    else:
        # a benchmark's own numeric tolerance (Minerva Math: 1% relative), exact for the rest
        result["outcome"] = int(grade(response, record["answer"], task_cfg["grader"],
                                      timeout_s=float(task_cfg["grader_timeout_s"]),
                                      rel_tol=numeric_tolerance(record.get("source", ""))))
    return result


# ---- the answer as a separate part of the response (JEPO: chain of thought c, answer a*) ----

ANSWER_MARKER = "####"


def answer_text(record: dict, task_cfg: dict) -> str:
    """The reference answer a* as the policy writes it after its chain of thought: JEPO's
    reward is log pi(a* | x, c). Testbed and GSM8K style: "#### <answer>"; real presets may
    set `answer_template` (with an `{answer}` field)."""
    return (task_cfg.get("answer_template") or ANSWER_MARKER + " {answer}").format(answer=record["answer"])


def cot_end(response: str, task_cfg: dict) -> int:
    """Character offset where the chain of thought c of `response` ends and its answer part
    begins: the start of the last line that opens with the answer marker, or, with no answer
    line (a response cut at the token budget), the end of its last complete step, so a*
    is always appended at a step boundary."""
    marker = task_cfg.get("answer_marker") or ANSWER_MARKER
    delim = task_cfg["step_delimiter"]
    at = response.rfind(marker)
    while at > 0 and not response[:at].endswith(delim):  # the marker must open a line
        at = response.rfind(marker, 0, at)
    if at >= 0:
        return at
    last = response.rfind(delim)
    return 0 if last < 0 else last + len(delim)
