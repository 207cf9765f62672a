"""table2 over seeds: means, spread, validation curves and sample efficiency, against values
computed by hand, plus one end-to-end run of the CLI on small files."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from pipeline.rl_summary import NOT_REACHED, CurvePoint, efficiency, final_val, iterations_to_target, mean_curve
from pipeline.table2 import main, table2_frame

SPLITS = ["test", "ood"]


def ev(test, ood, greedy=None):
    splits = {"test": {"pass1": test}, "ood": {"pass1": ood}}
    if greedy is not None:
        splits["test"]["greedy"], splits["ood"]["greedy"] = greedy
    return {"policy": "x", "splits": splits}


def run(vals: dict[int, float | None], last: int, samples_per_it: float, flops_per_it: float) -> list[dict]:
    """metrics.jsonl rows for iterations 0..last; val_pass1 only where `vals` has it."""
    rows = []
    for it in range(last + 1):
        row = {"iteration": it, "samples": samples_per_it * it, "flops": flops_per_it * it, "wall_s": float(it)}
        if it in vals:
            row["val_pass1"] = vals[it]
        rows.append(row)
    return rows


# Two seeds per method. rloo (the reference) validates every 2 iterations and ends at
# mean(0.6, 0.8) = 0.7 -> the target; its mean curve is 0.3, 0.5, 0.7 at iterations 0, 2, 4.
# grpo's mean curve is 0.3, 0.55, 0.7, 0.8, 0.8: the target at iteration 2 -> efficiency 4 / 2.
# vineppo's mean tops out at 0.6: never reaches.
METRICS = {
    "rloo": [run({0: 0.2, 2: 0.4, 4: 0.6}, 4, 10, 1e9), run({0: 0.4, 2: 0.6, 4: 0.8}, 4, 20, 3e9)],
    "grpo": [run({0: 0.3, 1: 0.5, 2: 0.7, 3: 0.7, 4: 0.8}, 4, 15, 2e9),
             run({0: 0.3, 1: 0.6, 2: 0.7, 3: 0.9, 4: 0.8}, 4, 25, 2e9)],
    "vineppo": [run({0: 0.3, 2: 0.5, 4: 0.6}, 4, 40, 5e9), run({0: 0.3, 2: 0.5, 4: 0.6}, 4, 60, 5e9)],
}
EVALS = {
    "base": [ev(0.2, 0.4, greedy=(0.25, 0.45)), ev(0.4, 0.6, greedy=(0.35, 0.55))],  # seed avgs 0.3, 0.5
    "rloo": [ev(0.5, 0.3, greedy=(0.5, 0.3)), ev(0.7, 0.5, greedy=(0.7, 0.5))],      # seed avgs 0.4, 0.6
    "grpo": [ev(0.6, 0.6, greedy=(0.6, 0.6)), ev(0.6, 0.6, greedy=(0.6, 0.6))],      # identical seeds
    "vineppo": [ev(0.1, 0.3, greedy=(0.1, 0.3)), ev(0.5, 0.3, greedy=(0.5, 0.3))],   # seed avgs 0.2, 0.4
}


def summ(samples, flops, wall_s):
    return {"rl_samples": samples, "rl_flops": flops, "wall_s": wall_s}


SUMMARIES = {
    "rloo": [summ(100, 1e12, 10.0), summ(200, 3e12, 30.0)],
    "grpo": [summ(60, 8e12, 8.0), summ(100, 8e12, 8.0)],
    "vineppo": [summ(160, 2e13, 50.0), summ(240, 2e13, 70.0)],
}


# -----------------------------------------------------------------------------
# curves

def test_mean_curve_two_seeds():
    curve = mean_curve(METRICS["rloo"])
    assert [p.iteration for p in curve] == [0, 2, 4]
    assert [p.val for p in curve] == pytest.approx([0.3, 0.5, 0.7])
    assert [p.samples for p in curve] == pytest.approx([0, 30, 60])      # (10*it + 20*it) / 2
    assert [p.flops for p in curve] == pytest.approx([0, 4e9, 8e9])      # (1e9*it + 3e9*it) / 2
    assert [p.lo for p in curve] == pytest.approx([0.2, 0.4, 0.6])
    assert [p.hi for p in curve] == pytest.approx([0.4, 0.6, 0.8])


def test_mean_curve_keeps_only_iterations_every_seed_validated():
    a = run({0: 0.1, 1: 0.2, 2: 0.3, 3: 0.5}, 3, 10, 1.0)
    b = run({0: 0.3, 1: None, 2: 0.5, 3: 0.7}, 3, 30, 3.0)  # null at 1, as rl.py's JSON may have
    c = run({0: 0.2, 2: 0.4, 3: 0.6}, 3, 20, 2.0)             # no key at 1
    curve = mean_curve([a, b, c])
    assert [p.iteration for p in curve] == [0, 2, 3]
    assert curve[1] == pytest.approx(CurvePoint(2, 0.4, 40.0, 4.0, 0.3, 0.5))
    assert curve[2] == pytest.approx(CurvePoint(3, 0.6, 60.0, 6.0, 0.5, 0.7))
    assert [p.iteration for p in mean_curve([a])] == [0, 1, 2, 3]


def test_final_val_is_each_seeds_last_validation():
    a = run({0: 0.1, 4: 0.5}, 5, 1, 1)  # last row has no val: the last validated one counts
    a[-1]["val_pass1"] = None
    b = run({0: 0.1, 5: 0.9}, 5, 1, 1)
    assert final_val([a, b]) == pytest.approx(0.7)
    assert final_val(METRICS["rloo"]) == pytest.approx(0.7)


def test_iterations_to_target():
    curve = [CurvePoint(0, 0.3, 0, 0, 0.3, 0.3), CurvePoint(5, 0.6, 50, 1, 0.5, 0.7),
             CurvePoint(10, 0.8, 100, 2, 0.7, 0.9), CurvePoint(15, 0.7, 150, 3, 0.6, 0.8)]
    assert iterations_to_target(curve, 0.6) == 5
    assert iterations_to_target(curve, 0.6 + 5e-10) == 5   # within the tolerance
    assert iterations_to_target(curve, 0.6 + 1e-6) == 10   # first reach, not the last point
    assert iterations_to_target(curve, 0.1) == 0
    assert iterations_to_target(curve, 0.81) is None
    assert iterations_to_target([], 0.5) is None


def test_efficiency():
    assert efficiency(4, 4) == 1.0
    assert efficiency(4, 2) == 2.0
    assert efficiency(4, 8) == 0.5
    assert efficiency(4, None) == NOT_REACHED
    assert efficiency(0, 0) == 1.0           # nobody needed training to reach the target
    assert efficiency(4, 0) == math.inf
    assert math.isnan(efficiency(None, 3))   # the reference never reached its own target


# -----------------------------------------------------------------------------
# table2

def row(df, method):
    return df.set_index("method").loc[method]


def test_table2_means_and_spread():
    df = table2_frame(EVALS, SUMMARIES, METRICS, SPLITS, "rloo")
    assert list(df["method"]) == ["base", "rloo", "grpo", "vineppo"]
    assert list(df.columns) == ["method", "n_seeds", "test", "test_greedy", "ood", "ood_greedy", "avg", "spread",
                                "avg_min", "avg_max", "train_samples", "train_flops", "wall_s", "iters_to_target",
                                "samples_to_target", "efficiency_vs_ref"]
    base, rloo, grpo = row(df, "base"), row(df, "rloo"), row(df, "grpo")
    assert base["n_seeds"] == 2
    assert (base["test"], base["ood"], base["avg"]) == pytest.approx((0.3, 0.5, 0.4))
    assert (base["test_greedy"], base["ood_greedy"]) == pytest.approx((0.3, 0.5))
    assert base["spread"] == pytest.approx(math.sqrt(0.02))  # std of (0.3, 0.5), ddof=1
    assert (base["avg_min"], base["avg_max"]) == pytest.approx((0.3, 0.5))
    assert (rloo["test"], rloo["ood"], rloo["avg"]) == pytest.approx((0.6, 0.4, 0.5))
    assert rloo["spread"] == pytest.approx(math.sqrt(0.02))
    assert (rloo["avg_min"], rloo["avg_max"]) == pytest.approx((0.4, 0.6))
    assert grpo["spread"] == 0.0 and grpo["avg"] == pytest.approx(0.6)
    assert (base["train_samples"], base["train_flops"], base["wall_s"]) == (0, 0.0, 0.0)
    assert (rloo["train_samples"], rloo["train_flops"], rloo["wall_s"]) == pytest.approx((150, 2e12, 20.0))
    assert (grpo["train_samples"], grpo["train_flops"], grpo["wall_s"]) == pytest.approx((80, 8e12, 8.0))


def test_table2_sample_efficiency():
    df = table2_frame(EVALS, SUMMARIES, METRICS, SPLITS, "rloo")
    assert df.attrs["target"] == pytest.approx(0.7)
    rloo, grpo, vine = row(df, "rloo"), row(df, "grpo"), row(df, "vineppo")
    assert rloo["iters_to_target"] == 4 and rloo["samples_to_target"] == pytest.approx(60)
    assert rloo["efficiency_vs_ref"] == 1.0
    assert grpo["iters_to_target"] == 2 and grpo["samples_to_target"] == pytest.approx(40)  # (15*2 + 25*2) / 2
    assert grpo["efficiency_vs_ref"] == 2.0
    assert (vine["iters_to_target"], vine["samples_to_target"], vine["efficiency_vs_ref"]) == (NOT_REACHED,) * 3
    base = row(df, "base")
    assert base[["iters_to_target", "samples_to_target", "efficiency_vs_ref"]].isna().all()


def test_table2_with_grpo_as_reference():
    df = table2_frame(EVALS, SUMMARIES, METRICS, SPLITS, "grpo")
    assert df.attrs["target"] == pytest.approx(0.8)  # grpo's seeds end at 0.8, 0.8; its curve first gets there at 3
    assert row(df, "grpo")["iters_to_target"] == 3 and row(df, "grpo")["efficiency_vs_ref"] == 1.0
    assert row(df, "rloo")["iters_to_target"] == NOT_REACHED


def test_table2_missing_reference_leaves_efficiency_empty():
    df = table2_frame(EVALS, SUMMARIES, METRICS, SPLITS, "ppo")
    assert math.isnan(df.attrs["target"])
    assert df[["iters_to_target", "samples_to_target", "efficiency_vs_ref"]].isna().all().all()
    assert row(df, "rloo")["avg"] == pytest.approx(0.5)  # the rest of the table is unaffected


def test_table2_one_seed_and_no_greedy():
    evals = {"base": [ev(0.2, 0.4)], "rloo": [ev(0.5, 0.7)]}
    df = table2_frame(evals, {"rloo": SUMMARIES["rloo"][:1]}, {"rloo": METRICS["rloo"][:1]}, SPLITS, "rloo")
    assert "test_greedy" not in df.columns
    assert list(df["n_seeds"]) == [1, 1] and list(df["spread"]) == [0.0, 0.0]
    assert list(df["avg"]) == pytest.approx([0.3, 0.6])
    assert list(df["avg_min"]) == list(df["avg_max"]) == list(df["avg"])
    assert row(df, "rloo")["iters_to_target"] == 4 and row(df, "rloo")["samples_to_target"] == 40


# -----------------------------------------------------------------------------
# CLI end to end

def write_inputs(tmp_path):
    args = ["--eval"]
    for m, evs in EVALS.items():
        paths = []
        for i, e in enumerate(evs):
            p = tmp_path / "eval" / f"{m}_s{i}.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(e))
            paths.append(str(p))
        args.append(f"{m}={','.join(paths)}")
    args.append("--rl")
    for m, runs in METRICS.items():
        dirs = []
        for i, (rows, summ) in enumerate(zip(runs, SUMMARIES[m])):
            d = tmp_path / "rl" / f"{m}_s{i}"
            d.mkdir(parents=True)
            (d / "summary.json").write_text(json.dumps(summ))
            (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            dirs.append(str(d))
        args.append(f"{m}={','.join(dirs)}")
    return args


def test_main_end_to_end(tmp_path):
    out, plot = tmp_path / "res" / "table2.csv", tmp_path / "res" / "plots" / "curves.png"
    main([*write_inputs(tmp_path), "--splits", "test", "ood", "--reference", "rloo", "--out", str(out),
          "--plot", str(plot), "--log", str(tmp_path / "table2.log")])
    lines = out.read_text().splitlines()
    assert lines[0] == ("method,n_seeds,test,test_greedy,ood,ood_greedy,avg,spread,avg_min,avg_max,train_samples,"
                        "train_flops,wall_s,iters_to_target,samples_to_target,efficiency_vs_ref")
    assert lines[1] == "base,2,0.3000,0.3000,0.5000,0.5000,0.4000,0.1414,0.3000,0.5000,0.0000,0.0000,0.0000,,,"
    assert lines[2].startswith("rloo,2,0.6000,0.6000,0.4000,0.4000,0.5000,0.1414,0.4000,0.6000,")
    assert lines[2].endswith(",20.0000,4,60.0000,1.0000")
    assert lines[3].endswith(",8.0000,2,40.0000,2.0000")
    assert lines[4].endswith(",60.0000,not reached,not reached,not reached")
    df = pd.read_csv(out)
    assert list(df["method"]) == ["base", "rloo", "grpo", "vineppo"]
    assert list(df["train_samples"]) == [0, 150, 80, 200]
    assert plot.stat().st_size > 10_000
    assert "vineppo" in (tmp_path / "table2.log").read_text()


def test_main_missing_reference_and_bad_args(tmp_path):
    out, plot = tmp_path / "t.csv", tmp_path / "p.png"
    args = write_inputs(tmp_path)
    main([*args, "--splits", "test", "ood", "--reference", "ppo", "--out", str(out), "--plot", str(plot)])
    assert out.read_text().splitlines()[2].endswith(",20.0000,,,")
    assert plot.stat().st_size > 10_000
    # seed counts must match between --eval and --rl, and every --rl method needs evals
    i = next(k for k, a in enumerate(args) if a.startswith("rloo=") and "/rl/" in a)
    bad = [*args[:i], args[i].rsplit(",", 1)[0], *args[i + 1:]]
    with pytest.raises(SystemExit, match="2 eval files but 1 RL runs"):
        main([*bad, "--splits", "test", "ood", "--out", str(out), "--plot", str(plot)])
    with pytest.raises(SystemExit, match="no --eval entry"):
        main(["--eval", "base=x.json", "--rl", args[-1], "--splits", "test", "--out", str(out), "--plot", str(plot)])


def test_final_value_columns_for_long_form_answers():
    from pipeline.table2 import table2_frame

    def ev(p, fv):
        return {"splits": {"test": {"pass1": p, "final_value_pass1": fv}}}
    evals = {"base": [ev(0.1, 0.5), ev(0.3, 0.7)]}
    df = table2_frame(evals, {}, {}, ["test"], "rloo", final_value=True)
    assert df.loc[0, "test"] == pytest.approx(0.2) and df.loc[0, "test_final_value"] == pytest.approx(0.6)
    assert "test_final_value" not in table2_frame(evals, {}, {}, ["test"], "rloo").columns
