"""Loaders that turn real math datasets into the pipeline's one record schema:

    {"id": str, "problem": str, "answer": str, "source": str}

where ``answer`` is the reference final answer as a string (``"72"``, ``"\\frac{1}{2}"``),
ready for ``pipeline.grader.grade(..., kind="math")``.

Each dataset format is described once in ``LOADERS`` (its hub id, required columns, the
column names other copies use for them, and how a row becomes a problem and an answer);
``load_records`` does the shared work: reading a local file or the hub, renaming alias
columns, checking columns, filtering, skipping rows without an answer, ids, and ``limit``.
Reference answers are extracted with the grader's own ``\\boxed`` / ``####`` / "The answer is"
extractors so that data prep and grading can never disagree on what "the answer" is.

Copies people distribute differ from the hub layout; what is accepted (per loader, in
``DatasetFormat.aliases``; column names also match case-insensitively, "Problem" is "problem"):

- ``.json`` files as a list of records or in a column layout: ``{"problem": {"0": ..., "1":
  ...}, ...}`` (pandas ``orient="columns"``) or ``{"problem": [...], ...}``.
- MATH-500: ``question`` for ``problem``; ``expected_answer`` / ``final_answer`` /
  ``gt_answer`` for ``answer``; ``id`` for ``unique_id``; with no answer column, the answer of
  the ``solution`` (its last ``\\boxed{}``, else "The answer is: X").
- AIME 2024 / AMC: ``question`` for ``problem`` (and ``expected_answer`` for ``answer``); a
  file without ``url`` is taken to be AIME 2024 as a whole. AMC 2023, Minerva Math:
  ``problem`` for ``question``. Minerva Math with no answer column: the last ``\\boxed{}`` of
  its ``solution``. OlympiadBench: ``answer`` for ``final_answer`` (a list or one string).
- An id column is used when the file has one, else ids are ``<name>-<split>-<row>``.

Duplicate ids (one AMC copy repeats 34) would merge problems downstream, where records are
keyed by id: the second and later rows with an id get ``-2``, ``-3`` ... appended (in row
order, so the same file always gives the same ids), with a warning giving the count.

``DatasetFormat.rel_tol`` is the benchmark's numeric tolerance for the grader
(``numeric_tolerance(source)``): 0, exact, for all but Minerva Math, whose own evaluation
accepts numbers within 1% relative error.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .grader import extract_answer, extract_boxed, extract_hash_answer

log = logging.getLogger("pipeline.loaders")

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class DatasetFormat:
    """How one dataset's rows map to records.

    ``required`` names the columns a file must have; an entry that is a tuple needs any one of
    its columns (the answer column, or a solution to take it from). ``aliases`` maps a column
    to the names other copies give it; a file's alias column is renamed on load.
    ``keep`` drops rows outside the task (not an error, not counted as skipped);
    ``answer`` returns None when a row has no extractable answer (skipped with a warning).
    ``rel_tol``: the relative numeric tolerance the benchmark is graded with (0: exact)."""

    hub_id: str
    hub_config: str | None
    hub_splits: tuple[str, ...]
    required: tuple[str | tuple[str, ...], ...]
    problem_field: str
    answer: Callable[[dict], str | None]
    id_field: str | None = None  # used when the file has it; else generated ids
    keep: Callable[[dict], bool] = lambda row: True
    problem: Callable[[dict], str] | None = None  # how to build the problem text; default row[problem_field]
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    rel_tol: float = 0.0


def _answer_from_solution(row: dict) -> str | None:
    """MATH: the reference answer is the last \\boxed{} of the worked solution."""
    return extract_boxed(row["solution"] or "")


def _answer_from_answer_column(row: dict) -> str | None:
    """MATH-500 ships the final answer in its own column (a copy that boxes it: the box's content)."""
    answer = row.get("answer")
    if answer is None or not str(answer).strip():
        return None
    answer = str(answer).strip()
    boxed = extract_boxed(answer) if "\\boxed" in answer else None
    return boxed or answer


def _answer_or_solution(row: dict) -> str | None:
    """The answer column when there is one, else the answer the solution commits to: its last
    \\boxed{} (Minerva copies), else "The answer is: X" (MATH-500 copies in MetaMath style)."""
    if row.get("answer") is not None:
        return _answer_from_answer_column(row)
    return extract_answer(row.get("solution") or "", "math")


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
    answer = row.get("answer")
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
    answers = row["final_answer"] or []
    if isinstance(answers, str):  # copies that store the one answer as a string
        answers = [answers]
    answers = [_strip_math_delimiters(str(a)) for a in answers if a is not None and str(a).strip()]
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
        required=("problem", ("answer", "solution")), problem_field="problem",
        answer=_answer_or_solution, id_field="unique_id",
        aliases={"problem": ("question",), "answer": ("expected_answer", "final_answer", "gt_answer"),
                 "unique_id": ("id",)},
    ),
    "gsm8k": DatasetFormat(
        hub_id="openai/gsm8k", hub_config="main", hub_splits=("train", "test"),
        required=("question", "answer"), problem_field="question", answer=_answer_from_gsm8k,
        aliases={"question": ("problem",)},
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
        required=("problem", "answer"), problem_field="problem", answer=_answer_numeric,
        id_field="id", keep=lambda row: "url" not in row or "2024_AIME" in str(row["url"]),
        aliases={"problem": ("question",), "answer": ("expected_answer",)},
    ),
    # AMC as PRIME evaluates it: AI-MO's 83 AMC 12 2022-2023 problems (answers as floats, "142.0")
    "amc": DatasetFormat(
        hub_id="AI-MO/aimo-validation-amc", hub_config=None, hub_splits=("train",),
        required=("problem", "answer"), problem_field="problem", answer=_answer_numeric, id_field="id",
        aliases={"problem": ("question",), "answer": ("expected_answer",)},
    ),
    # AMC 2023: the 40 AMC 12 2023 problems of math-ai/amc23
    "amc23": DatasetFormat(
        hub_id="math-ai/amc23", hub_config=None, hub_splits=("test",),
        required=("question", "answer"), problem_field="question", answer=_answer_numeric,
        aliases={"question": ("problem",)},
    ),
    # Minerva Math (OCWCourses): 272 undergraduate STEM problems with a final answer, graded as
    # Minerva's own evaluation does: numbers within 1% relative error count (its appendix)
    "minerva_math": DatasetFormat(
        hub_id="math-ai/minervamath", hub_config=None, hub_splits=("test",),
        required=("question", ("answer", "solution")), problem_field="question", answer=_answer_or_solution,
        aliases={"question": ("problem",)}, rel_tol=0.01,
    ),
    # OlympiadBench, open-ended text-only English competition maths (675 problems, one split "train")
    "olympiadbench": DatasetFormat(
        hub_id="Hothan/OlympiadBench", hub_config="OE_TO_maths_en_COMP", hub_splits=("train",),
        required=("question", "final_answer"), problem_field="question", problem=_problem_olympiadbench,
        answer=_answer_olympiadbench, id_field="id", keep=_keep_olympiadbench,
        aliases={"question": ("problem",), "final_answer": ("answer",)},
    ),
}

# The evaluation suite of PRIME's table (and of the paper presets): loader name -> what it is
BENCHMARKS = {"math500": "MATH-500", "aime24": "AIME 2024", "amc": "AMC (AI-MO, 2022-2023)", "amc23": "AMC 2023",
              "minerva_math": "Minerva Math", "olympiadbench": "OlympiadBench (OE_TO_maths_en_COMP)",
              "gsm8k": "GSM8K"}


def numeric_tolerance(source: str) -> float:
    """The relative numeric tolerance records of ``source`` (a loader name, the records'
    ``source``) are graded with, for ``grader.grade(..., rel_tol=...)``: 0 (exact) for every
    source but those whose benchmark sets one (Minerva Math: 0.01), and for the testbed."""
    fmt = LOADERS.get(source)
    return fmt.rel_tol if fmt is not None else 0.0


def _is_local_file(path: str) -> bool:
    """A path is a local file if it exists or has a data-file suffix; anything else is a hub id."""
    return Path(path).exists() or Path(path).suffix.lower() in LOCAL_BUILDERS


def _read_json(path: str) -> tuple[list[dict], list[str]]:
    """Rows and column names of a ``.json`` file: a list of records, or a column layout,
    ``{column: {row label: value}}`` (pandas ``orient="columns"``) or ``{column: [values]}``.
    (``datasets`` would read a column layout as one row of dicts.)"""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        columns = list(dict.fromkeys(c for r in data for c in r))
        return [{c: r.get(c) for c in columns} for r in data], columns
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        labels = list(dict.fromkeys(label for values in data.values() for label in values))
        return [{c: values.get(label) for c, values in data.items()} for label in labels], list(data)
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()) \
            and len({len(v) for v in data.values()}) == 1:
        n_rows = len(next(iter(data.values())))
        return [{c: values[i] for c, values in data.items()} for i in range(n_rows)], list(data)
    raise ValueError(f"{path}: expected a list of records or a dict of columns ({{column: {{row: value}}}} "
                     f"or {{column: [values]}}), got a JSON {type(data).__name__}")


def _read_rows(fmt: DatasetFormat, path: str | None, split: str,
               hub_config: str | None) -> tuple[Iterable[dict], list[str], str]:
    """The raw rows, their column names, and a human-readable name of where they came from."""
    import datasets  # heavy import, only when data is actually loaded

    if path is not None and _is_local_file(path):
        suffix = Path(path).suffix.lower()
        if suffix not in LOCAL_BUILDERS:
            raise ValueError(f"{path}: unsupported file type {suffix!r}; use one of {sorted(LOCAL_BUILDERS)}")
        if not Path(path).is_file():
            raise FileNotFoundError(path)
        if suffix == ".json":
            return (*_read_json(path), path)
        rows = datasets.load_dataset(LOCAL_BUILDERS[suffix], data_files=path, split="train")
        return rows, list(rows.column_names), path
    hub_id = path or fmt.hub_id
    if hub_id == fmt.hub_id and split not in fmt.hub_splits:
        raise ValueError(f"{hub_id} has no split {split!r}; available: {', '.join(fmt.hub_splits)}")
    config = hub_config if hub_config is not None else (fmt.hub_config if hub_id == fmt.hub_id else None)
    rows = datasets.load_dataset(hub_id, config, split=split)
    return rows, list(rows.column_names), f"{hub_id}[{config or 'default'}:{split}]"


def _wanted_columns(fmt: DatasetFormat) -> list[str]:
    """Every column name the loader reads (aliases resolve to these)."""
    names = [fmt.problem_field, fmt.id_field or "", *fmt.aliases]
    for entry in fmt.required:
        names += entry if isinstance(entry, tuple) else [entry]
    return [n for n in dict.fromkeys(names) if n]


def _column_renames(columns: list[str], fmt: DatasetFormat) -> dict[str, str]:
    """File column -> the loader's name for a column the file lacks under that name: the same
    name in another case ("Problem"), else the first alias present. A column the loader reads
    under its own name is never taken as another's alias."""
    wanted = _wanted_columns(fmt)
    by_lower: dict[str, str] = {}
    for c in columns:
        by_lower.setdefault(c.lower(), c)
    renames: dict[str, str] = {}
    for name in wanted:
        if name in columns:
            continue
        for candidate in (name, *fmt.aliases.get(name, ())):
            found = candidate if candidate in columns else by_lower.get(candidate.lower())
            if found is not None and found not in renames and found not in wanted:
                renames[found] = name
                break
    return renames


def _check_columns(columns: list[str], fmt: DatasetFormat, name: str, where: str,
                   file_columns: list[str]) -> None:
    """``columns`` after alias renaming; the message lists the file's own ``file_columns``."""
    missing = [entry for entry in fmt.required
               if not (set(entry) & set(columns) if isinstance(entry, tuple) else entry in columns)]
    if missing:
        described = [" or ".join(repr(c) for c in entry) if isinstance(entry, tuple) else repr(entry)
                     for entry in missing]
        aliases = "; ".join(f"{c} <- {', '.join(a)}" for c, a in fmt.aliases.items())
        raise ValueError(f"{where}: missing required column(s) {', '.join(described)} for loader {name!r} "
                         f"(found columns: {sorted(file_columns)}"
                         + (f"; also accepted under other names: {aliases}" if aliases else "") + ")")


def _row_error(where: str, index: int, name: str, row: dict, exc: Exception) -> ValueError:
    """A row whose values have the wrong types (a column of dicts: usually a JSON layout the
    reader did not recognise) named by file, row and column instead of a bare TypeError."""
    odd = {c: type(v).__name__ for c, v in row.items() if isinstance(v, (dict, list))}
    return ValueError(f"{where}, row {index}: loader {name!r} cannot read this row ({exc})"
                      + (f"; columns holding lists or dicts: {odd}" if odd else ""))


def _make_ids_unique(records: list[dict], where: str) -> None:
    """Records are keyed by id downstream (MC labels, pool scores, table 1), so a repeated id
    would merge problems: the second and later uses of an id get "-2", "-3", ... in row order
    (skipping ids the file already has), so the same file always gives the same ids."""
    taken = {r["id"] for r in records}
    uses: dict[str, int] = {}
    renamed = []
    for r in records:
        uses[r["id"]] = uses.get(r["id"], 0) + 1
        if uses[r["id"]] == 1:
            continue
        n, new_id = uses[r["id"]], f"{r['id']}-{uses[r['id']]}"
        while new_id in taken:
            n += 1
            new_id = f"{r['id']}-{n}"
        taken.add(new_id)
        renamed.append((r["id"], new_id))
        r["id"] = new_id
    if renamed:
        log.warning("%s: %d row(s) repeat an earlier id; renamed with -2, -3, ... suffixes (e.g. %r -> %r)",
                    where, len(renamed), *renamed[0])


def load_records(name: str, path: str | None = None, split: str = "test", limit: int | None = None,
                 hub_config: str | None = None) -> list[dict]:
    """Load dataset ``name`` (a key of ``LOADERS``) as records.

    ``path``: a local ``.jsonl``/``.json``/``.parquet`` file in the dataset's own format (or a
    common copy's: see the module docstring), or a hub dataset id; None means the format's
    default hub id. ``split`` selects the hub split (for local files it only enters generated
    ids). ``limit`` keeps the first N records after filtering and skipping. Ids are unique."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(LOADERS)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    fmt = LOADERS[name]
    rows, columns, where = _read_rows(fmt, path, split, hub_config)
    renames = _column_renames(columns, fmt)
    if renames:
        log.info("%s: reading columns %s", where, ", ".join(f"{a!r} as {b!r}" for a, b in renames.items()))
    file_columns, columns = columns, [renames.get(c, c) for c in columns]
    _check_columns(columns, fmt, name, where, file_columns)
    has_id = fmt.id_field is not None and fmt.id_field in columns

    records: list[dict] = []
    n_filtered = n_skipped = 0
    for index, row in enumerate(rows):
        if limit is not None and len(records) >= limit:
            break
        if renames:
            row = {renames.get(c, c): v for c, v in row.items()}
        try:
            if not fmt.keep(row):
                n_filtered += 1
                continue
            answer = fmt.answer(row)
            if answer is None:
                n_skipped += 1
                continue
            problem = fmt.problem(row) if fmt.problem is not None else row[fmt.problem_field]
            if not isinstance(problem, str):
                raise TypeError(f"column {fmt.problem_field!r} holds a {type(problem).__name__}, not text")
        except (TypeError, AttributeError) as exc:
            raise _row_error(where, index, name, row, exc) from exc
        given_id = row[fmt.id_field] if has_id else None
        record_id = str(given_id) if given_id is not None and str(given_id).strip() else f"{name}-{split}-{index}"
        records.append({"id": record_id, "problem": problem, "answer": answer, "source": name})
    _make_ids_unique(records, where)
    if n_skipped:
        log.warning("%s: skipped %d row(s) with no extractable answer", where, n_skipped)
    log.info("%s: %d records (%d rows filtered out as not %s)", where, len(records), n_filtered, name)
    return records
