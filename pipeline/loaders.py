"""Loaders that turn real math datasets into the pipeline's one record schema:

    {"id": str, "problem": str, "answer": str, "source": str}

where ``answer`` is the reference final answer as a string (``"72"``, ``"\\frac{1}{2}"``),
ready for ``pipeline.grader.grade(..., kind="math")``.

Each dataset format is described once in ``LOADERS`` (its hub id, required columns, and how
a row becomes a problem and an answer); ``load_records`` does the shared work: reading a
local file or the hub, checking columns, filtering, skipping rows without an answer, ids,
and ``limit``. Reference answers are extracted with the grader's own ``\\boxed`` / ``####``
extractors so that data prep and grading can never disagree on what "the answer" is.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .grader import extract_boxed, extract_hash_answer

log = logging.getLogger("pipeline.loaders")

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class DatasetFormat:
    """How one dataset's rows map to records.

    ``keep`` drops rows outside the task (not an error, not counted as skipped);
    ``answer`` returns None when a row has no extractable answer (skipped with a warning)."""

    hub_id: str
    hub_config: str | None
    hub_splits: tuple[str, ...]
    required: tuple[str, ...]
    problem_field: str
    answer: Callable[[dict], str | None]
    id_field: str | None = None
    keep: Callable[[dict], bool] = lambda row: True
    problem: Callable[[dict], str] | None = None  # how to build the problem text; default row[problem_field]


def _answer_from_solution(row: dict) -> str | None:
    """MATH: the reference answer is the last \\boxed{} of the worked solution."""
    return extract_boxed(row["solution"] or "")


def _answer_from_answer_column(row: dict) -> str | None:
    """MATH-500 ships the final answer in its own column."""
    answer = row["answer"]
    return str(answer).strip() if answer is not None and str(answer).strip() else None


def _answer_from_gsm8k(row: dict) -> str | None:
    """GSM8K: the number after "####" at the end of the rationale, without thousands commas."""
    answer = extract_hash_answer(row["answer"] or "")
    return answer.replace(",", "") if answer else None


def _answer_from_response(row: dict) -> str | None:
    """UltraInteract: the CoT response ends with "Answer:\\n\\boxed{...}"."""
    return extract_boxed(row["response"] or "")


def _strip_number(text: str) -> str:
    """Integer-valued answers as plain integers: "142.0" -> "142", "033" -> "33" (AIME pads
    with zeros on some hub copies); anything else unchanged."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        return text
    if value.is_integer() and abs(value) < 1e15 and not any(c in text.lower() for c in "ei"):
        return str(int(value))
    return text


def _answer_numeric(row: dict) -> str | None:
    """AIME / AMC (AI-MO, math-ai): a number in the `answer` column, sometimes a float ("142.0")
    or zero-padded ("033")."""
    answer = row["answer"]
    if answer is None or not str(answer).strip():
        return None
    return _strip_number(str(answer))


def _strip_math_delimiters(text: str) -> str:
    text = text.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if text.startswith(left) and text.endswith(right) and len(text) > len(left) + len(right):
            return text[len(left):-len(right)].strip()
    return text


def _answer_olympiadbench(row: dict) -> str | None:
    """OlympiadBench: `final_answer` is a list of LaTeX strings in $...$ (one for almost every
    open-ended problem); several are joined with ", " as a tuple-like answer."""
    answers = [_strip_math_delimiters(str(a)) for a in (row["final_answer"] or []) if a is not None and str(a).strip()]
    return ", ".join(answers) if answers else None


def _problem_olympiadbench(row: dict) -> str:
    """Some OlympiadBench problems share a `context` paragraph that the question refers to."""
    context = (row.get("context") or "").strip()
    return f"{context}\n{row['question']}" if context else row["question"]


def _keep_olympiadbench(row: dict) -> bool:
    """The final-answer subset: English, text-only, open-ended maths (what the OE_TO_maths_en_COMP
    config already is; checked again so a local file of the whole benchmark is filtered alike)."""
    return (row.get("language", "English") == "English" and row.get("subject", "Math") == "Math"
            and row.get("modality", "Text-only") == "Text-only"
            and row.get("question_type", "Open-ended") == "Open-ended")


EURUS_BOXED_SUFFIX = "\n\nPresent the answer in LaTex format: \\boxed{Your answer}"


def _problem_eurus(row: dict) -> str:
    """Eurus-2-RL-Data: `prompt` is a chat (system, user); the problem is the user turn without
    the boxed-answer instruction the dataset appends (the preset's prompt template adds its own)."""
    user = [m for m in row["prompt"] if m.get("role") == "user"]
    text = (user[-1] if user else row["prompt"][-1])["content"]
    return text[: -len(EURUS_BOXED_SUFFIX)] if text.endswith(EURUS_BOXED_SUFFIX) else text


def _answer_eurus(row: dict) -> str | None:
    truth = (row["reward_model"] or {}).get("ground_truth")
    return str(truth).strip() if truth is not None and str(truth).strip() else None


LOADERS: dict[str, DatasetFormat] = {
    # hendrycks/competition_math was taken down from the hub; this mirror has the same
    # columns (problem, level, type, solution) and train/test splits.
    "math": DatasetFormat(
        hub_id="DigitalLearningGmbH/MATH-lighteval", hub_config=None, hub_splits=("train", "test"),
        required=("problem", "solution"), problem_field="problem", answer=_answer_from_solution,
    ),
    "math500": DatasetFormat(
        hub_id="HuggingFaceH4/MATH-500", hub_config=None, hub_splits=("test",),
        required=("problem", "answer", "unique_id"), problem_field="problem",
        answer=_answer_from_answer_column, id_field="unique_id",
    ),
    "gsm8k": DatasetFormat(
        hub_id="openai/gsm8k", hub_config="main", hub_splits=("train", "test"),
        required=("question", "answer"), problem_field="question", answer=_answer_from_gsm8k,
    ),
    "ultrainteract_math": DatasetFormat(
        hub_id="openbmb/UltraInteract_sft", hub_config=None, hub_splits=("train",),
        required=("id", "task", "instruction", "response"), problem_field="instruction",
        answer=_answer_from_response, id_field="id", keep=lambda row: row["task"] == "Math_CoT",
    ),
    # PRIME's RL prompts (150K math + code queries; only the math ones, whose answers a grader can check)
    "eurus2_rl_math": DatasetFormat(
        hub_id="PRIME-RL/Eurus-2-RL-Data", hub_config=None, hub_splits=("train", "validation"),
        required=("prompt", "ability", "reward_model"), problem_field="prompt", problem=_problem_eurus,
        answer=_answer_eurus, keep=lambda row: row["ability"] == "math",
    ),
    # ---- the benchmarks PRIME (and most math-RL papers since) report ----
    # AIME 2024: the 30 problems of AIME 2024 I and II inside AI-MO's 90-problem AIME 2022-2024 set
    "aime24": DatasetFormat(
        hub_id="AI-MO/aimo-validation-aime", hub_config=None, hub_splits=("train",),
        required=("id", "problem", "answer", "url"), problem_field="problem", answer=_answer_numeric,
        id_field="id", keep=lambda row: "2024_AIME" in str(row["url"]),
    ),
    # AMC as PRIME evaluates it: AI-MO's 83 AMC 12 2022-2023 problems (answers as floats, "142.0")
    "amc": DatasetFormat(
        hub_id="AI-MO/aimo-validation-amc", hub_config=None, hub_splits=("train",),
        required=("id", "problem", "answer"), problem_field="problem", answer=_answer_numeric, id_field="id",
    ),
    # AMC 2023: the 40 AMC 12 2023 problems of math-ai/amc23
    "amc23": DatasetFormat(
        hub_id="math-ai/amc23", hub_config=None, hub_splits=("test",),
        required=("question", "answer"), problem_field="question", answer=_answer_numeric,
    ),
    # Minerva Math (OCWCourses): 272 undergraduate STEM problems with a final answer
    "minerva_math": DatasetFormat(
        hub_id="math-ai/minervamath", hub_config=None, hub_splits=("test",),
        required=("question", "answer"), problem_field="question", answer=_answer_from_answer_column,
    ),
    # OlympiadBench, open-ended text-only English competition maths (675 problems, one split "train")
    "olympiadbench": DatasetFormat(
        hub_id="Hothan/OlympiadBench", hub_config="OE_TO_maths_en_COMP", hub_splits=("train",),
        required=("id", "question", "final_answer"), problem_field="question", problem=_problem_olympiadbench,
        answer=_answer_olympiadbench, id_field="id", keep=_keep_olympiadbench,
    ),
}

# The evaluation suite of PRIME's table (and of the paper presets): loader name -> what it is
BENCHMARKS = {"math500": "MATH-500", "aime24": "AIME 2024", "amc": "AMC (AI-MO, 2022-2023)", "amc23": "AMC 2023",
              "minerva_math": "Minerva Math", "olympiadbench": "OlympiadBench (OE_TO_maths_en_COMP)",
              "gsm8k": "GSM8K"}


def _is_local_file(path: str) -> bool:
    """A path is a local file if it exists or has a data-file suffix; anything else is a hub id."""
    return Path(path).exists() or Path(path).suffix.lower() in LOCAL_BUILDERS


def _read_rows(fmt: DatasetFormat, path: str | None, split: str, hub_config: str | None):
    """The raw ``datasets.Dataset`` and a human-readable name of where it came from."""
    import datasets  # heavy import, only when data is actually loaded

    if path is not None and _is_local_file(path):
        suffix = Path(path).suffix.lower()
        if suffix not in LOCAL_BUILDERS:
            raise ValueError(f"{path}: unsupported file type {suffix!r}; use one of {sorted(LOCAL_BUILDERS)}")
        if not Path(path).is_file():
            raise FileNotFoundError(path)
        return datasets.load_dataset(LOCAL_BUILDERS[suffix], data_files=path, split="train"), path
    hub_id = path or fmt.hub_id
    if hub_id == fmt.hub_id and split not in fmt.hub_splits:
        raise ValueError(f"{hub_id} has no split {split!r}; available: {', '.join(fmt.hub_splits)}")
    config = hub_config if hub_config is not None else (fmt.hub_config if hub_id == fmt.hub_id else None)
    return datasets.load_dataset(hub_id, config, split=split), f"{hub_id}[{config or 'default'}:{split}]"


def _check_columns(columns: list[str], fmt: DatasetFormat, name: str, where: str) -> None:
    missing = [c for c in fmt.required if c not in columns]
    if missing:
        raise ValueError(f"{where}: missing required column(s) {missing} for loader {name!r} "
                         f"(found columns: {sorted(columns)})")


def load_records(name: str, path: str | None = None, split: str = "test", limit: int | None = None,
                 hub_config: str | None = None) -> list[dict]:
    """Load dataset ``name`` (a key of ``LOADERS``) as records.

    ``path``: a local ``.jsonl``/``.json``/``.parquet`` file in the dataset's own format, or a
    hub dataset id; None means the format's default hub id. ``split`` selects the hub split
    (for local files it only enters generated ids). ``limit`` keeps the first N records
    after filtering and skipping."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(LOADERS)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    fmt = LOADERS[name]
    rows, where = _read_rows(fmt, path, split, hub_config)
    _check_columns(list(rows.column_names), fmt, name, where)

    records: list[dict] = []
    n_filtered = n_skipped = 0
    for index, row in enumerate(rows):
        if limit is not None and len(records) >= limit:
            break
        if not fmt.keep(row):
            n_filtered += 1
            continue
        answer = fmt.answer(row)
        if answer is None:
            n_skipped += 1
            continue
        record_id = str(row[fmt.id_field]) if fmt.id_field else f"{name}-{split}-{index}"
        problem = fmt.problem(row) if fmt.problem is not None else row[fmt.problem_field]
        records.append({"id": record_id, "problem": str(problem), "answer": answer,
                        "source": name})
    if n_skipped:
        log.warning("%s: skipped %d row(s) with no extractable answer", where, n_skipped)
    log.info("%s: %d records (%d rows filtered out as not %s)", where, len(records), n_filtered, name)
    return records
