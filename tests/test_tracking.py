"""Experiment tracking (pipeline/tracking.py): TensorBoard event files as a side channel. The
tracker's scalars read back with their tags, steps and values; non-finite and non-numeric values
are skipped; a disabled tracker writes nothing; a resumed run appends and hides the steps a
killed run logged past its checkpoint; a short real RL run (and a reward model) leave curves equal
to what their artifacts say."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types

import pytest
import torch

from pipeline.tracking import Tracker, stage_tracker, tracking_flags
from conftest import save_tiny_policy


def read_events(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_scalars_read_back_with_their_tags_steps_and_values(tmp_path):
    with Tracker(tmp_path / "tb") as t:
        assert t.scalar("a/x", 1.5, 0) and t.scalar("a/x", 2.5, 3)
        written = t.scalars({"iteration": 7, "y": 2, "t": torch.tensor(0.25), "none": None, "nan": math.nan,
                             "inf": -math.inf, "s": "1.0", "l": [1.0], "d": {"k": 1.0}, "b": True}, 5,
                            prefix="rl", skip=("iteration",))
    assert written == ["rl/y", "rl/t"]
    assert read_events(tmp_path / "tb") == {"a/x": [(0, 1.5), (3, 2.5)], "rl/y": [(5, 2.0)], "rl/t": [(5, 0.25)]}


def test_non_finite_values_are_skipped(tmp_path):
    with Tracker(tmp_path / "tb") as t:
        assert not t.scalar("loss", math.nan, 1) and not t.scalar("loss", math.inf, 2)
        assert not t.scalar("loss", torch.tensor(float("nan")), 3)
        assert t.scalar("loss", 0.5, 4)
    assert read_events(tmp_path / "tb") == {"loss": [(4, 0.5)]}


def test_disabled_tracker_writes_nothing_and_imports_no_tensorboard(tmp_path):
    t = Tracker(tmp_path / "tb", enabled=False)
    assert not t.active and not t.scalar("x", 1.0, 0) and t.scalars({"x": 1.0}, 0) == []
    t.flush()
    t.close()
    assert not (tmp_path / "tb").exists()
    # not on the main rank, or tracking.tensorboard false in the stage's --cfg: nothing either
    stage_tracker({}, tmp_path / "rank1", main=False).close()
    stage_tracker({"tracking": {"tensorboard": False}}, tmp_path / "off").close()
    assert not (tmp_path / "rank1").exists() and not (tmp_path / "off").exists()
    # importing the module (every training stage does) or a disabled tracker costs no TensorBoard import
    code = ("import sys; from pipeline.tracking import Tracker, tracking_flags; tracking_flags({}); "
            "Tracker(sys.argv[1], enabled=False).close(); "
            "assert 'torch.utils.tensorboard' not in sys.modules and 'tensorboard' not in sys.modules")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "sub")], check=True)


def test_flags_default_from_the_schema():
    assert tracking_flags({}) == {"tensorboard": True, "wandb": False}
    assert tracking_flags({"tracking": {"wandb": True}}) == {"tensorboard": True, "wandb": True}


def test_fresh_start_clears_old_events_and_a_resume_appends(tmp_path):
    log_dir = tmp_path / "tb"
    with Tracker(log_dir) as t:
        t.scalar("x", 9.0, 1)
    with Tracker(log_dir) as t:  # fresh: the earlier run's events are gone
        for step in (1, 2, 3, 4):
            t.scalar("x", float(step), step)
    # resumed from a checkpoint at step 2: the killed run's steps 3 and 4 are hidden, new ones shown
    with Tracker(log_dir, resume_step=3) as t:
        for step in (3, 4, 5):
            t.scalar("x", 10.0 * step, step)
    assert read_events(log_dir) == {"x": [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0), (5, 50.0)]}


def test_wandb_is_offline_and_optional(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed: a warning, TensorBoard still written
    with Tracker(tmp_path / "tb", wandb=True) as t:
        assert t.scalar("x", 1.0, 0)
    assert "wandb is not installed" in caplog.text and read_events(tmp_path / "tb") == {"x": [(0, 1.0)]}
    assert os.environ["WANDB_MODE"] == "offline"

    calls = {}

    class Run:
        def log(self, d, step):
            calls.setdefault("log", []).append((d, step))

        def finish(self):
            calls["finished"] = True

    def init(**kw):
        calls["init"] = kw
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    with Tracker(tmp_path / "wb", enabled=False, wandb=True, run_name="rl/rloo/s0") as t:
        t.scalar("x", 2.0, 4)
        t.scalar("y", math.nan, 4)
    assert calls["init"]["mode"] == "offline" and calls["init"]["dir"] == str(tmp_path / "wb")
    assert calls["log"] == [({"x": 2.0}, 4)] and calls["finished"]
    assert not list((tmp_path / "wb").glob("events.*"))  # W&B only: no event file


# --------------------------------------------------------------------------- real stages

@pytest.fixture()
def rl_setup(tmp_path):
    from pipeline.config import load_preset
    from pipeline.registry import method_view
    from pipeline.testbed import ArithSpec, generate_split
    from pipeline.utils import write_jsonl

    cfg = load_preset()
    spec = ArithSpec.from_cfg(cfg["task"]["arith"])
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", generate_split(8, spec, seed=1, split="train"))
    write_jsonl(data / "val.jsonl", generate_split(2, spec, seed=2, split="val"))
    rl = {**method_view(cfg["rl"], "rloo"), "iterations": 2, "prompts_per_iter": 2, "samples_per_prompt": 2,
          "minibatch_size": 4, "eval_every": 1, "eval_prompts": 2, "checkpoint_every": 1}
    stage_cfg = {"rl": rl, "task": cfg["task"], "sampling": {**cfg["sampling"], "max_new_tokens": 12},
                 "seed": cfg["seed"]}
    policy = save_tiny_policy(tmp_path / "policy")
    out = tmp_path / "rl" / "rloo" / "s0"
    argv = ["--cfg", json.dumps(stage_cfg), "--algo", "rloo", "--seed", "0", "--policy", str(policy),
            "--data", str(data), "--out", str(out), "--ckpt", str(tmp_path / "ck"), "--threads", "1"]
    return argv, out


def assert_curves_match_metrics(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = read_events(out / "tensorboard")
    keys = {k for r in rows for k, v in r.items() if k != "iteration" and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v)}
    assert {"reward_mean", "loss", "val_pass1", "samples", "flops"} <= keys
    assert set(events) == {f"rl/{k}" for k in keys}
    for k in keys:
        expected = [(r["iteration"], float(r[k])) for r in rows if isinstance(r.get(k), (int, float))]
        got = events[f"rl/{k}"]
        assert [s for s, _ in got] == [s for s, _ in expected], k
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6), k  # float32 in events


def test_a_short_rl_run_writes_its_metrics_jsonl_curves(rl_setup):
    from pipeline.rl.train import main

    argv, out = rl_setup
    main(argv)
    assert_curves_match_metrics(out)
    assert [s for s, _ in read_events(out / "tensorboard")["rl/val_pass1"]] == [0, 1, 2]


def test_a_resumed_rl_run_appends_and_its_curves_still_match(rl_setup, monkeypatch):
    """Killed after iteration 2 (past its checkpoint at iteration 1, before the artifacts): the
    rerun resumes from iteration 1 and the event folder ends up with each iteration once, the
    resumed values, equal to metrics.jsonl."""
    import pipeline.rl.train as train

    argv, out = rl_setup

    def killed(*a, **k):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(train, "write_jsonl", killed)
    with pytest.raises(KeyboardInterrupt):
        train.main(argv)
    monkeypatch.undo()
    first = read_events(out / "tensorboard")
    assert [s for s, _ in first["rl/wall_s"]] == [0, 1, 2]
    train.main(argv)
    assert len(list((out / "tensorboard").glob("events.*"))) == 2  # appended, not cleared
    assert_curves_match_metrics(out)
    assert read_events(out / "tensorboard")["rl/wall_s"][2] != first["rl/wall_s"][2]


def test_a_reward_model_logs_its_loss_curve_and_heldout_aurocs(tmp_path):
    from pipeline.config import load_preset
    from pipeline.modeling import build_char_tokenizer
    from pipeline.train_rm import main
    from pipeline.utils import write_jsonl

    policy = save_tiny_policy(tmp_path / "policy")
    tok = build_char_tokenizer()

    def row(pid, response, outcome):
        ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ends = [i + 1 for i, c in enumerate(response) if c == "\n"] + [len(response)]
        return {"id": pid, "prompt": "3+4*2=?\n", "response_ids": ids, "step_ends": ends, "outcome": outcome,
                "first_error": None if outcome else 0}

    rows = [row(p, r, o) for p in "abc" for r, o in (("3+4=7\n7*2=4\n#### 4", 1), ("3+4=8\n8*2=6\n#### 6", 0))]
    write_jsonl(tmp_path / "rollouts.jsonl", rows)
    cfg = {"rm": {**load_preset()["rm"], "epochs": 2, "batch_size": 2}, "seed": 0}
    out = tmp_path / "rm" / "orm"
    main(["--cfg", json.dumps(cfg), "--kind", "orm", "--labels", str(tmp_path / "rollouts.jsonl"),
          "--policy", str(policy), "--heldout", str(tmp_path / "rollouts.jsonl"), "--out", str(out)])
    m = json.loads((out / "metrics.json").read_text())
    events = read_events(out / "tensorboard")
    assert [s for s, _ in events["rm/loss"]] == list(range(1, len(m["loss_curve"]) + 1)) and len(m["loss_curve"]) == 6
    assert [v for _, v in events["rm/loss"]] == pytest.approx(m["loss_curve"], rel=1e-6)
    aurocs = [k for k in m if k.startswith("auroc_")]
    assert aurocs and all(events[f"heldout/{k}"] == [(6, pytest.approx(m[k], rel=1e-6))] for k in aurocs)
    assert events["heldout/pass_rate"] == [(6, 0.5)]


def test_a_short_sft_run_logs_its_loss_per_step_and_val_pass1_per_eval(tmp_path):
    from pipeline.config import load_preset
    from pipeline.sft import main
    from pipeline.testbed import ArithSpec, generate_split
    from pipeline.utils import write_jsonl

    cfg = load_preset()
    spec = ArithSpec.from_cfg(cfg["task"]["arith"])
    write_jsonl(tmp_path / "train.jsonl", generate_split(8, spec, seed=1, split="train"))
    write_jsonl(tmp_path / "val.jsonl", generate_split(2, spec, seed=2, split="val"))
    stage_cfg = {"sft": {**cfg["sft"], "max_steps": 4, "batch_size": 4, "eval_every": 2, "eval_prompts": 2,
                         "tiers": {"weak": 1.0}},  # never reached on 4 steps: every step trains
                 "model": {**cfg["model"], "hidden_size": 32, "intermediate_size": 64, "num_layers": 1},
                 "task": cfg["task"], "sampling": {**cfg["sampling"], "max_new_tokens": 12}, "seed": 0}
    out = tmp_path / "models" / "sft"
    main(["--cfg", json.dumps(stage_cfg), "--train", str(tmp_path / "train.jsonl"), "--val", str(tmp_path / "val.jsonl"),
          "--out", str(out), "--ckpt", str(tmp_path / "ck"), "--threads", "1"])
    curve = json.loads((out / "sft_metrics.json").read_text())["curve"]
    events = read_events(tmp_path / "models" / "tensorboard" / "sft")
    assert [s for s, _ in events["sft/loss"]] == [1, 2, 3, 4]
    assert [(s, pytest.approx(v, rel=1e-6)) for s, v in events["sft/loss"] if s in (2, 4)] == \
        [(c["step"], c["loss"]) for c in curve]
    assert events["sft/val_pass1"] == [(c["step"], pytest.approx(c["val_pass1"])) for c in curve]


def test_the_rules_pass_tracking_only_when_it_differs_from_the_defaults(tmp_path):
    """Off the defaults, SFT, RL and reward-model jobs get the section (and rerun); on them, no
    job's params carry it, so results built before tracking existed do not rerun."""
    import yaml

    from conftest import snakemake

    targets = ["results/rm/orm/metrics.json", "results/rl/rloo/s0/summary.json"]
    plain = snakemake(tmp_path, "-n", "-p", *targets).stdout
    assert '"tracking"' not in plain
    over = tmp_path / "off.yaml"
    over.write_text(yaml.safe_dump({"tracking": {"tensorboard": False}}))
    off = snakemake(tmp_path, "-n", "-p", *targets, "--configfile", str(over)).stdout
    for stage in ("pipeline.sft", "pipeline.train_rm", "pipeline.rl "):
        line = next(x for x in off.splitlines() if stage in x)
        assert '"tracking": {"tensorboard": false, "wandb": false}' in line, stage


def test_a_resume_begun_in_the_same_second_still_sorts_after_the_run_it_resumes(tmp_path):
    """TensorBoard reads event files in name order; an earlier file whose name sorts after the
    resume's (same second, pid "99999" > any shorter pid as text) must not win."""
    import socket
    import time

    with Tracker(tmp_path / "tb") as t:
        for step in range(3):
            t.scalar("x", 1.0, step)
    (old,) = (tmp_path / "tb").glob("events.*")
    old.rename(old.with_name(f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.99999.9"))
    with Tracker(tmp_path / "tb", resume_step=1) as t:
        for step in (1, 2):
            t.scalar("x", 2.0, step)
    names = sorted(f.name for f in (tmp_path / "tb").glob("events.*"))
    assert len(names) == 2 and ".99999." in names[0]
    assert read_events(tmp_path / "tb") == {"x": [(0, 1.0), (1, 2.0), (2, 2.0)]}
