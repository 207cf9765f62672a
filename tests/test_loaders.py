"""Tests of the dataset loaders on small local files in each real dataset's own format."""
from __future__ import annotations

import logging
import os
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # belt and braces: tests never touch the hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from pipeline.grader import grade  # noqa: E402
from pipeline.loaders import BENCHMARKS, LOADERS, load_records  # noqa: E402

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
