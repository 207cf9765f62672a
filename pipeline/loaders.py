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
}


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
        records.append({"id": record_id, "problem": str(row[fmt.problem_field]), "answer": answer,
                        "source": name})
    if n_skipped:
        log.warning("%s: skipped %d row(s) with no extractable answer", where, n_skipped)
    log.info("%s: %d records (%d rows filtered out as not %s)", where, len(records), n_filtered, name)
    return records
