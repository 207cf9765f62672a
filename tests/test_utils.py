"""Tests of the shared plumbing (`pipeline/utils.py`): atomic writes, JSONL, config parsing,
finiteness checks, seeding."""
from __future__ import annotations

import json
import os
import random
import stat

import pytest

from pipeline.utils import (append_jsonl, atomic_dir, atomic_path, check_finite, parse_cfg, read_json, read_jsonl,
                            seed_everything, write_json, write_jsonl, write_text)


class Boom(Exception):
    pass


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# --------------------------------------------------------------------------- atomic_path


def test_atomic_path_writes_and_leaves_no_temp(tmp_path, umask_022):
    target = tmp_path / "sub" / "out.txt"      # parent created on demand
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("new")
        assert not target.exists()             # nothing at the final name until success
    assert target.read_text() == "new"
    assert os.listdir(target.parent) == ["out.txt"]
    assert mode(target) == 0o644               # not mkstemp's 0600


def test_atomic_path_respects_umask(tmp_path):
    old = os.umask(0o077)
    try:
        write_text(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    assert mode(tmp_path / "private.txt") == 0o600


def test_atomic_path_keeps_old_file_when_body_raises(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise Boom
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_path_keyboard_interrupt_leaves_nothing(tmp_path):
    target = tmp_path / "never.txt"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("x")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- atomic_dir


def test_atomic_dir_replaces_whole_directory(tmp_path, umask_022):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.bin").write_text("old weights")
    with atomic_dir(target) as tmp:
        (tmp / "weights.bin").write_text("new weights")
        assert (target / "stale.bin").exists()   # old directory intact while writing
    assert sorted(os.listdir(target)) == ["weights.bin"]
    assert os.listdir(tmp_path) == ["model"]     # no temp or .old siblings
    assert mode(target) == 0o755                 # not mkdtemp's 0700


def test_atomic_dir_new_directory(tmp_path):
    with atomic_dir(tmp_path / "a" / "b") as tmp:
        (tmp / "f").write_text("1")
    assert (tmp_path / "a" / "b" / "f").read_text() == "1"
    assert os.listdir(tmp_path / "a") == ["b"]


def test_atomic_dir_keeps_old_directory_when_body_raises(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights.bin").write_text("old")
    with pytest.raises(Boom):
        with atomic_dir(target) as tmp:
            (tmp / "weights.bin").write_text("partial")
            raise Boom
    assert os.listdir(target) == ["weights.bin"]
    assert (target / "weights.bin").read_text() == "old"
    assert os.listdir(tmp_path) == ["model"]


# --------------------------------------------------------------------------- JSON / JSONL


def test_jsonl_round_trip(tmp_path):
    rows = [{"b": 1, "a": "x"}, {"nested": {"k": [1, 2.5, None]}, "u": "é∑\n"}, {}]
    path = tmp_path / "d" / "rows.jsonl"
    assert write_jsonl(path, rows) == 3
    assert read_jsonl(path) == rows
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and lines[0] == '{"a": "x", "b": 1}'   # one sorted-key object per line


def test_write_jsonl_generator_failure_keeps_old_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"i": 0}])

    def rows():
        yield {"i": 1}
        raise Boom

    with pytest.raises(Boom):
        write_jsonl(path, rows())
    assert read_jsonl(path) == [{"i": 0}]
    assert os.listdir(tmp_path) == ["rows.jsonl"]


def test_read_jsonl_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\n{"a": \n{"a": 3}\n')   # line 2 blank (skipped), line 3 broken
    with pytest.raises(ValueError, match=rf"{path}:3: not valid JSON"):
        read_jsonl(path)


def test_read_jsonl_skips_blank_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": 2}\n')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_append_jsonl(tmp_path):
    path = tmp_path / "log.jsonl"
    append_jsonl(path, {"step": 1})
    append_jsonl(path, {"step": 2})
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]


def test_write_read_json(tmp_path):
    write_json(tmp_path / "x.json", {"b": [1, 2], "a": 1.5})
    assert read_json(tmp_path / "x.json") == {"a": 1.5, "b": [1, 2]}
    assert (tmp_path / "x.json").read_text().endswith("}\n")


# --------------------------------------------------------------------------- check_finite


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_check_finite_raises(value):
    with pytest.raises(FloatingPointError, match=r"rl loss is .* at step 7"):
        check_finite(value, "rl loss", step=7)


def test_check_finite_without_step():
    with pytest.raises(FloatingPointError) as e:
        check_finite(float("nan"), "sft loss")
    assert "step" not in str(e.value) and "sft loss is nan" in str(e.value)


@pytest.mark.parametrize("value", [0.0, -1e30, 3.5, 1e308])
def test_check_finite_accepts_finite(value):
    check_finite(value, "loss", step=1)


# --------------------------------------------------------------------------- parse_cfg, seeding


def test_parse_cfg_json_and_file(tmp_path):
    assert parse_cfg('{"a": 1, "b": {"c": [1, 2]}}') == {"a": 1, "b": {"c": [1, 2]}}
    f = tmp_path / "cfg.json"
    f.write_text(json.dumps({"seed": 3}))
    assert parse_cfg(f"@{f}") == {"seed": 3}


@pytest.mark.parametrize("arg, msg", [("{not json", "not valid JSON"), ("[1, 2]", "JSON object"),
                                      ('"text"', "JSON object")])
def test_parse_cfg_rejects(arg, msg):
    with pytest.raises(SystemExit, match=msg):
        parse_cfg(arg)


def test_parse_cfg_missing_file(tmp_path):
    with pytest.raises(SystemExit, match="missing.json: cannot read the config file"):
        parse_cfg(f"@{tmp_path / 'missing.json'}")


def test_seed_everything():
    import numpy as np
    import torch

    seed_everything(11)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(11)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
    seed_everything(12)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) != a


def test_a_stage_logs_its_start_up_and_stage_times_reads_it(tmp_path):
    """Every job's log says how long it took from process start to its arguments (imports),
    and benchmarks/stage_times.py puts that beside the job's benchmark time."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import time; time.sleep(0.6)\n"
            "from pipeline.utils import stage_parser, start_stage\n"
            "start_stage(stage_parser('x'), ['--cfg', '{}', '--log', sys.argv[1]])\n")
    log = tmp_path / "logs" / "rl" / "rloo" / "s0.log"
    subprocess.run([sys.executable, "-c", "import sys\n" + code, str(log)], check=True, capture_output=True)
    text = log.read_text()
    assert "start-up:" in text, text
    age = float(text.split("start-up: ")[1].split(" s")[0])
    assert 0.6 <= age < 30, age  # at least the sleep before the imports
    bench = tmp_path / "benchmarks" / "rl" / "rloo" / "s0.tsv"
    bench.parent.mkdir(parents=True)
    bench.write_text("s\th:m:s\tmax_rss\n12.5\t0:00:12\t640.0\n")
    (tmp_path / "benchmarks" / "table2.tsv").write_text("s\th:m:s\tmax_rss\n1.5\t0:00:01\t160.0\n")
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "stage_times.py"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)],
                          check=True, capture_output=True, text=True)
    per_job, per_stage = proc.stdout.split("\n\n")
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in per_job.splitlines()}
    assert rows["rl/rloo/s0"][1] == "12.5" and float(rows["rl/rloo/s0"][2]) == pytest.approx(age, abs=0.05)
    assert rows["table2"][2] == ""  # no log: blank, not zero
    stages = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in per_stage.splitlines()}
    assert stages["rl/rloo/*"][1:3] == ["1", "12.5"] and stages["table2"][1:4] == ["1", "1.5", ""]
    assert list(stages)[2:] == ["rl/rloo/*", "table2"]  # the slowest first, after the header rows


def test_stage_times_names_the_folder_without_benchmark_files(tmp_path):
    """Pointed at a folder with no benchmark files (the Countdown preset keeps its run under
    results/countdown), the script says so and where a run is, instead of a pandas KeyError."""
    import subprocess
    import sys
    from pathlib import Path

    bench = tmp_path / "results" / "countdown" / "benchmarks" / "sft.tsv"
    bench.parent.mkdir(parents=True)
    bench.write_text("s\th:m:s\tmax_rss\n15.7\t0:00:15\t596.0\n")
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "stage_times.py"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "results")], capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"no Snakemake benchmark files (*.tsv) under {tmp_path / 'results' / 'benchmarks'}" in proc.stderr
    assert f"a run's outputs are in {tmp_path / 'results' / 'countdown'}" in proc.stderr
    ok = subprocess.run([sys.executable, str(script), str(tmp_path / "results" / "countdown")],
                        check=True, capture_output=True, text=True)
    assert "| sft | 15.7 |" in ok.stdout


def test_a_stage_process_imports_with_the_collector_held_then_frozen():
    """`python -m pipeline.<stage>` (argv[0] is "-m" while the package imports) holds the cyclic
    garbage collector off through the imports; the stage's logging set-up freezes what they built
    and turns it back on. Any other process that imports the package keeps its collector as is."""
    import subprocess
    import sys

    probe = ("import gc, sys\n"
             "import pipeline\n"
             "held = not gc.isenabled()\n"
             "from pipeline.utils import setup_logging\n"
             "setup_logging()\n"
             "print(held, gc.isenabled(), gc.get_freeze_count() > 0)\n")
    as_stage = subprocess.run([sys.executable, "-c", "import sys; sys.argv[0] = '-m'\n" + probe],
                              check=True, capture_output=True, text=True)
    assert as_stage.stdout.split() == ["True", "True", "True"], as_stage.stderr
    as_library = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    assert as_library.stdout.split() == ["False", "True", "False"], as_library.stderr


def test_every_runnable_stage_module_ends_its_import_phase():
    """A `python -m pipeline.<module>` process imports with the collector off until its main()
    sets up logging (pipeline/__init__.py); a runnable module that never did would run its whole
    stage without a garbage collector."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "pipeline"
    runnable = [f for f in root.rglob("*.py")
                if f.name == "__main__.py" or '__name__ == "__main__"' in f.read_text()]
    assert len(runnable) >= 10, runnable
    for f in runnable:
        text = f.read_text()
        m = re.search(r"from \.(\w+) import main", text)
        if f.name == "__main__.py" and m:  # a package's __main__ that runs one module's main()
            text = (f.parent / f"{m.group(1)}.py").read_text()
        assert "start_stage(" in text or "setup_logging(" in text, f


def test_process_age_is_none_without_proc(monkeypatch):
    from pathlib import Path

    from pipeline import utils

    real = Path.read_text

    def no_proc(self, *args, **kwargs):  # a machine without Linux's /proc (macOS)
        if str(self).startswith("/proc"):
            raise FileNotFoundError(str(self))
        return real(self, *args, **kwargs)

    assert utils.process_age_s() is not None  # this machine has /proc
    monkeypatch.setattr(Path, "read_text", no_proc)
    assert utils.process_age_s() is None
