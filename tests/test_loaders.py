"""Tests of the dataset loaders on small local files in each real dataset's own format, and in the
layouts of the copies people distribute (question columns, pandas column JSON, boxed-only answers)."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # belt and braces: tests never touch the hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from pipeline.grader import grade  # noqa: E402
from pipeline.loaders import BENCHMARKS, LOADERS, load_records, numeric_tolerance  # noqa: E402

DATA = Path(__file__).parent / "data"
SCHEMA = {"id", "problem", "answer", "source"}


def _check_schema(records: list[dict], source: str) -> None:
    for r in records:
        assert set(r) == SCHEMA
        assert all(isinstance(r[k], str) for k in SCHEMA)
        assert r["source"] == source and r["problem"] and r["answer"]


def test_loaders_registry_names():
    assert set(LOADERS) == {"math", "math500", "gsm8k", "ultrainteract_math", "eurus2_rl_math", "aime24", "amc",
                            "amc23", "minerva_math", "olympiadbench"}
    assert set(BENCHMARKS) <= set(LOADERS)
    # the real hub ids and configs (checked against the hub dataset cards / papers' eval code)
    assert (LOADERS["aime24"].hub_id, LOADERS["aime24"].hub_splits) == ("AI-MO/aimo-validation-aime", ("train",))
    assert LOADERS["amc23"].hub_id == "math-ai/amc23" and LOADERS["amc"].hub_id == "AI-MO/aimo-validation-amc"
    assert LOADERS["minerva_math"].hub_id == "math-ai/minervamath"
    assert (LOADERS["olympiadbench"].hub_id, LOADERS["olympiadbench"].hub_config) == (
        "Hothan/OlympiadBench", "OE_TO_maths_en_COMP")
    assert LOADERS["eurus2_rl_math"].hub_id == "PRIME-RL/Eurus-2-RL-Data"


def test_math_last_boxed_of_solution(caplog):
    with caplog.at_level(logging.WARNING):
        records = load_records("math", path=str(DATA / "math_sample.jsonl"), split="test")
    _check_schema(records, "math")
    assert [r["answer"] for r in records] == [r"\frac{1}{2}", r"\{-1, 1\}", "5"]
    assert [r["id"] for r in records] == ["math-test-0", "math-test-1", "math-test-2"]
    assert records[2]["problem"] == "Compute $2+3$."
    assert "skipped 1 row" in caplog.text  # the proof problem has no boxed answer


def test_math500_uses_answer_column_and_unique_id(caplog):
    with caplog.at_level(logging.WARNING):
        records = load_records("math500", path=str(DATA / "math500_sample.jsonl"))
    _check_schema(records, "math500")
    assert [r["id"] for r in records] == ["test/precalculus/807.json", "test/prealgebra/1.json"]
    assert records[0]["answer"] == r"\left( 3, \frac{\pi}{2} \right)"
    assert records[1]["answer"] == r"1,\!234"
    assert "skipped 1 row" in caplog.text
    # The reference answers are usable by the grader as they come out of the loader.
    assert grade(r"so \boxed{1234}", records[1]["answer"], "math")


def test_gsm8k_final_number_without_commas(caplog):
    with caplog.at_level(logging.WARNING):
        records = load_records("gsm8k", path=str(DATA / "gsm8k_sample.jsonl"), split="train")
    _check_schema(records, "gsm8k")
    assert [r["answer"] for r in records] == ["72", "1080"]
    assert [r["id"] for r in records] == ["gsm8k-train-0", "gsm8k-train-1"]
    assert records[0]["problem"].startswith("Natalia sold clips")
    assert "skipped 1 row" in caplog.text


def test_ultrainteract_keeps_only_math_cot(caplog):
    with caplog.at_level(logging.WARNING):
        records = load_records("ultrainteract_math", path=str(DATA / "ultrainteract_sample.jsonl"),
                               split="train")
    _check_schema(records, "ultrainteract_math")
    assert [r["id"] for r in records] == ["0a1b2c3d_1_1", "3d4e5f6a_1_1"]
    assert [r["answer"] for r in records] == ["8", r"\frac{3}{4}"]
    assert records[0]["problem"].endswith("How many apples does he have?")
    assert "skipped 1 row" in caplog.text  # the Math_CoT row without \boxed
    # Coding and Math_PoT rows are filtered out, not counted as skipped.
    assert "skipped 3" not in caplog.text


def test_limit_counts_kept_records():
    records = load_records("ultrainteract_math", path=str(DATA / "ultrainteract_sample.jsonl"), limit=1)
    assert [r["id"] for r in records] == ["0a1b2c3d_1_1"]
    assert load_records("gsm8k", path=str(DATA / "gsm8k_sample.jsonl"), limit=0) == []


def test_parquet_round_trip(tmp_path):
    rows = pd.read_json(DATA / "gsm8k_sample.jsonl", lines=True)
    path = tmp_path / "gsm8k.parquet"
    rows.to_parquet(path, index=False)
    from_parquet = load_records("gsm8k", path=str(path))
    from_jsonl = load_records("gsm8k", path=str(DATA / "gsm8k_sample.jsonl"))
    assert from_parquet == from_jsonl
    assert len(from_parquet) == 2


def test_json_array_file(tmp_path):
    rows = pd.read_json(DATA / "math500_sample.jsonl", lines=True)
    path = tmp_path / "math500.json"
    rows.to_json(path, orient="records")
    assert [r["id"] for r in load_records("math500", path=str(path))] == [
        "test/precalculus/807.json", "test/prealgebra/1.json"]


def test_missing_column_names_file_and_column(tmp_path):
    rows = pd.read_json(DATA / "gsm8k_sample.jsonl", lines=True).drop(columns=["answer"])
    path = tmp_path / "no_answer.jsonl"
    rows.to_json(path, orient="records", lines=True)
    with pytest.raises(ValueError) as err:
        load_records("gsm8k", path=str(path))
    assert str(path) in str(err.value) and "'answer'" in str(err.value)


def test_unknown_name_and_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'aime'"):
        load_records("aime", path=str(DATA / "gsm8k_sample.jsonl"))
    with pytest.raises(FileNotFoundError):
        load_records("gsm8k", path=str(tmp_path / "absent.jsonl"))
    csv = tmp_path / "rows.csv"
    csv.write_text("question,answer\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_records("gsm8k", path=str(csv))


def test_hub_split_checked_before_any_download():
    """UltraInteract has only a train split; asking for test must fail fast and clearly."""
    with pytest.raises(ValueError, match="no split 'test'"):
        load_records("ultrainteract_math", split="test")


# ---- the benchmark suite (AIME 2024, AMC, AMC 2023, Minerva Math, OlympiadBench) and PRIME's RL data ----
# Each sample file has a few rows in the hub dataset's own column layout; every reference answer
# must be accepted by the math grader against an equivalent answer written differently.

def test_aime24_keeps_2024_and_unpads_answers():
    records = load_records("aime24", path=str(DATA / "aime_sample.jsonl"), split="train")
    _check_schema(records, "aime24")
    assert [r["id"] for r in records] == ["60", "75"]  # the 2022 problem is filtered out
    assert [r["answer"] for r in records] == ["9", "204"]  # "009" on the hub
    assert grade(r"so there are \boxed{9} pairs", records[0]["answer"], "math")
    assert grade(r"The answer is $\boxed{204}$.", records[1]["answer"], "math")
    assert not grade(r"\boxed{205}", records[1]["answer"], "math")


def test_amc_float_answers_become_integers():
    records = load_records("amc", path=str(DATA / "amc_sample.jsonl"), split="train")
    _check_schema(records, "amc")
    assert [r["answer"] for r in records] == ["142", "-4"]
    assert grade(r"m+n = \boxed{142}", records[0]["answer"], "math")
    assert grade(r"\boxed{-4.0}", records[1]["answer"], "math")


def test_amc23_question_column():
    records = load_records("amc23", path=str(DATA / "amc23_sample.jsonl"))
    _check_schema(records, "amc23")
    assert [r["id"] for r in records] == ["amc23-test-0", "amc23-test-1"]
    assert records[0]["problem"].startswith("Cities $A$ and $B$")
    assert [r["answer"] for r in records] == ["27", "36"]
    assert grade(r"They meet \boxed{27} miles from A.", records[0]["answer"], "math")


def test_minerva_math_answers(caplog):
    with caplog.at_level(logging.WARNING):
        records = load_records("minerva_math", path=str(DATA / "minerva_sample.jsonl"))
    _check_schema(records, "minerva_math")
    assert [r["answer"] for r in records] == ["1.6", r"\frac{1}{2}"]
    assert "skipped 1 row" in caplog.text
    assert grade(r"\boxed{1.60}", records[0]["answer"], "math")
    assert grade(r"\boxed{0.5}", records[1]["answer"], "math")


def test_olympiadbench_final_answer_subset(caplog):
    with caplog.at_level(logging.WARNING):
        records = load_records("olympiadbench", path=str(DATA / "olympiadbench_sample.jsonl"), split="train")
    _check_schema(records, "olympiadbench")
    assert [r["id"] for r in records] == ["1606", "2001", "2500"]  # Chinese row filtered, no-answer row skipped
    assert [r["answer"] for r in records] == ["10", "-2,2", r"\frac{15}{2}"]  # $...$ stripped
    assert records[2]["problem"] == "Let $T=7$.\nCompute $T+\\frac{1}{2}$."  # the shared context comes first
    assert "skipped 1 row" in caplog.text
    assert grade(r"\boxed{10}", records[0]["answer"], "math")
    assert grade(r"\boxed{7.5}", records[2]["answer"], "math")
    assert grade(r"\boxed{2, -2}", records[1]["answer"], "math")  # a set of answers in any order


def test_eurus2_rl_keeps_math_and_strips_the_instruction():
    records = load_records("eurus2_rl_math", path=str(DATA / "eurus2_rl_sample.jsonl"), split="train")
    _check_schema(records, "eurus2_rl_math")
    assert [r["id"] for r in records] == ["eurus2_rl_math-train-0", "eurus2_rl_math-train-2"]  # code row dropped
    assert records[0]["problem"] == r"What is $\frac{1}{4}+\frac{1}{4}$?"
    assert grade(r"\boxed{0.5}", records[0]["answer"], "math")
    assert grade(r"x = \boxed{4}", records[1]["answer"], "math")


@pytest.mark.parametrize("name, split", [("aime24", "test"), ("minerva_math", "train"), ("olympiadbench", "test")])
def test_benchmark_hub_splits_checked_before_download(name, split):
    with pytest.raises(ValueError, match=f"no split '{split}'"):
        load_records(name, split=split)


# ---- copies as people distribute them (tests/data/*: a few rows in each layout) ----

def test_math500_question_column_and_answer_is_in_solution(caplog):
    """A MetaMath-style copy: `question`, and the answer only as "The answer is: X" (or a box)."""
    with caplog.at_level(logging.WARNING):
        records = load_records("math500", path=str(DATA / "math500_question_answer_is.jsonl"))
    _check_schema(records, "math500")
    assert [r["answer"] for r in records] == [r"\frac{1}{2}", "12"]
    assert [r["id"] for r in records] == ["math500-test-0", "math500-test-1"]  # no id column: generated
    assert records[0]["problem"].startswith("What is")
    assert "skipped 1 row" in caplog.text
    assert grade(r"\boxed{0.5}", records[0]["answer"], "math")


def test_math500_pandas_column_json():
    """`DataFrame.to_json()` (orient="columns") with `expected_answer` and `id`."""
    records = load_records("math500", path=str(DATA / "math500_columns.json"))
    _check_schema(records, "math500")
    assert [r["id"] for r in records] == ["test/precalculus/807.json", "test/prealgebra/1.json",
                                          "test/prealgebra/2.json"]
    assert [r["answer"] for r in records] == [r"\left( 3, \frac{\pi}{2} \right)", r"1,\!234", r"\frac{3}{4}"]
    # the same rows in the hub's record layout load to the same records
    hub = load_records("math500", path=str(DATA / "math500_sample.jsonl"))
    assert records[:2] == hub


@pytest.mark.parametrize("orient", ["columns", "records", "list"])
def test_json_layouts_agree(tmp_path, orient):
    rows = pd.read_json(DATA / "gsm8k_sample.jsonl", lines=True)
    path = tmp_path / "gsm8k.json"
    if orient == "list":
        path.write_text(json.dumps(rows.to_dict(orient="list")))
    else:
        rows.to_json(path, orient=orient)
    assert load_records("gsm8k", path=str(path)) == load_records("gsm8k", path=str(DATA / "gsm8k_sample.jsonl"))


def test_json_of_another_shape_is_refused_by_name(tmp_path):
    path = tmp_path / "one_row.json"
    path.write_text(json.dumps({"question": "What is 1+1?", "answer": "#### 2"}))
    with pytest.raises(ValueError, match="list of records or a dict of columns") as err:
        load_records("gsm8k", path=str(path))
    assert str(path) in str(err.value)
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_records("gsm8k", path=str(bad))


def test_aime24_copy_with_capitalised_question_columns():
    """`ID`, `Question`, `Answer` (columns match case-insensitively); no `url`, so every row is kept."""
    records = load_records("aime24", path=str(DATA / "aime24_question.jsonl"), split="train")
    _check_schema(records, "aime24")
    assert [r["id"] for r in records] == ["2024-I-1", "2024-II-4"]
    assert [r["answer"] for r in records] == ["9", "102"]
    assert records[0]["problem"].startswith("Find the number")


def test_amc_question_column_and_duplicate_ids_made_unique(caplog):
    """Ids repeated across contests get -2, -3 in row order, with a warning giving the count."""
    with caplog.at_level(logging.WARNING):
        records = load_records("amc", path=str(DATA / "amc_question_dup_ids.jsonl"), split="train")
    _check_schema(records, "amc")
    assert [r["id"] for r in records] == ["1", "2", "1-2", "2-2", "1-3"]
    assert [r["answer"] for r in records] == ["142", "-4", "42", "7", "4"]
    assert "3 row(s) repeat an earlier id" in caplog.text
    # the answers grade against an AMC option written with its value
    assert grade(r"\boxed{\textbf{(B) }142}", records[0]["answer"], "math")
    # limit keeps the same ids: renaming depends only on earlier rows
    assert [r["id"] for r in load_records("amc", path=str(DATA / "amc_question_dup_ids.jsonl"), limit=3)] == [
        "1", "2", "1-2"]


def test_duplicate_id_suffix_skips_ids_the_file_has(tmp_path):
    path = tmp_path / "amc.jsonl"
    path.write_text("".join(json.dumps({"id": i, "problem": f"p{n}", "answer": 1.0}) + "\n"
                            for n, i in enumerate(["7", "7-2", "7"])))
    assert [r["id"] for r in load_records("amc", path=str(path))] == ["7", "7-2", "7-3"]


def test_minerva_answer_from_the_last_box_of_the_solution(caplog):
    with caplog.at_level(logging.WARNING):
        records = load_records("minerva_math", path=str(DATA / "minerva_boxed.jsonl"))
    _check_schema(records, "minerva_math")
    assert [r["answer"] for r in records] == ["4.5e33", "-1./3", "np.arcsin(10/13)"]  # kept as the source writes them
    assert records[0]["problem"].startswith("Compute the luminosity")
    assert "skipped 1 row" in caplog.text
    # graded as numbers (not Euler's e, not code), with Minerva's relative tolerance
    tol = numeric_tolerance("minerva_math")
    assert grade(r"L = \boxed{4.5 \times 10^{33}}", records[0]["answer"], "math", rel_tol=tol)
    assert grade(r"\boxed{4.52 \times 10^{33}}", records[0]["answer"], "math", rel_tol=tol)
    assert not grade(r"\boxed{148.5 e}", records[0]["answer"], "math", rel_tol=tol)
    assert grade(r"\boxed{-\frac{1}{3}}", records[1]["answer"], "math", rel_tol=tol)
    assert grade(r"\boxed{0.878}", records[2]["answer"], "math", rel_tol=tol)


def test_numeric_tolerance_per_benchmark():
    assert numeric_tolerance("minerva_math") == 0.01
    assert all(numeric_tolerance(name) == 0.0 for name in LOADERS if name != "minerva_math")
    assert numeric_tolerance("arith") == 0.0  # the testbed and unknown sources: exact


def test_missing_column_lists_alternatives_and_aliases(tmp_path):
    path = tmp_path / "minerva.jsonl"
    path.write_text(json.dumps({"problem": "x?", "notes": "no answer here"}) + "\n")
    with pytest.raises(ValueError) as err:
        load_records("minerva_math", path=str(path))
    message = str(err.value)
    assert str(path) in message and "'answer' or 'solution'" in message
    assert "found columns: ['notes', 'problem']" in message  # the file's own names
    path.write_text(json.dumps({"text": "x?", "answer": "1"}) + "\n")
    with pytest.raises(ValueError, match="'question'.*question <- problem"):
        load_records("minerva_math", path=str(path))


def test_wrong_value_types_name_file_row_and_column(tmp_path):
    """A column of dicts (what a column-layout JSON looks like to a records reader) used to be
    a bare TypeError inside the answer extractor."""
    path = tmp_path / "math.jsonl"
    path.write_text(json.dumps({"problem": "What is 1+1?", "solution": {"0": r"\boxed{2}"}}) + "\n")
    with pytest.raises(ValueError) as err:
        load_records("math", path=str(path))
    message = str(err.value)
    assert f"{path}, row 0" in message and "'solution': 'dict'" in message
    path.write_text(json.dumps({"problem": {"0": "What is 1+1?"}, "solution": r"\boxed{2}"}) + "\n")
    with pytest.raises(ValueError, match=r"row 0.*column 'problem' holds a dict"):
        load_records("math", path=str(path))


def test_olympiadbench_answer_as_one_string(tmp_path):
    path = tmp_path / "olympiadbench.jsonl"
    path.write_text(json.dumps({"id": 7, "question": "Find x.", "answer": "$\\frac{1}{2}$"}) + "\n")
    records = load_records("olympiadbench", path=str(path))
    assert [(r["id"], r["answer"]) for r in records] == [("7", r"\frac{1}{2}")]
