"""Kill the RL stage midway, rerun it, and check it resumes from its checkpoint and ends
exactly where an uninterrupted run ends (same metrics, same weights). RLOO is killed as a real
process; the other methods stop in this process right after a checkpoint (the stage's main()
called directly: the same code, without three interpreter start-ups per test)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline.config import load_preset
from conftest import SMOKE, run_stage_in_process, untimed_rl_metrics

pytestmark = pytest.mark.slow


RM_OF = {"pav": "pav", "prime_frozen": "implicit_ce_inst"}  # what the smoke DAG trains for them


def rl_cmd(cfg: dict, smoke_dir: Path, out: Path, ckpt: Path, algo: str = "rloo") -> list[str]:
    stage_cfg = {k: cfg[k] for k in ("rl", "task", "sampling", "seed")}
    cmd = [sys.executable, "-m", "pipeline.rl", "--cfg", json.dumps(stage_cfg), "--algo", algo,
           "--policy", str(smoke_dir / "results/models/sft/medium"), "--data", str(smoke_dir / "results/data"),
           "--out", str(out), "--ckpt", str(ckpt), "--threads", "1"]
    if algo in RM_OF:
        cmd += ["--rm", str(smoke_dir / "results/rm" / RM_OF[algo] / "model")]
    return cmd


def rl_config(algo: str, iters: int) -> dict:
    cfg = load_preset(SMOKE)
    cfg["rl"].update(iterations=iters, checkpoint_every=2 if algo == "rloo" else 1, eval_every=4)
    if algo != "rloo":
        cfg["rl"].update(prompts_per_iter=8, vineppo={**cfg["rl"]["vineppo"], "k": 2})
    return cfg


class CrashAfterCheckpoint(Exception):
    """Raised right after a checkpoint is on disk: the state a kill at that moment leaves."""


def run_rl_in_process(cmd: list[str], log: Path, monkeypatch=None, crash_at: int | None = None) -> str:
    """The RL stage's main() on `cmd`'s arguments in this process (no interpreter start-up and
    imports per run); with `crash_at`, it stops with CrashAfterCheckpoint once the checkpoint
    of that iteration is saved. Returns the run's log."""
    from pipeline.rl import train

    if crash_at is not None:
        save = train.save_checkpoint

        def save_then_crash(engine, ckpt, step, *args, **kw):
            save(engine, ckpt, step, *args, **kw)
            if step >= crash_at:
                raise CrashAfterCheckpoint(step)

        monkeypatch.setattr(train, "save_checkpoint", save_then_crash)
    assert cmd[1:3] == ["-m", "pipeline.rl"]
    try:
        return run_stage_in_process("pipeline.rl", cmd[3:], log)
    finally:
        if crash_at is not None:
            monkeypatch.setattr(train, "save_checkpoint", save)


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_rl_resumes_after_sigkill_and_matches_uninterrupted_run(smoke_dir, tmp_path):
    """RLOO as a real process: SIGKILL after a checkpoint, rerun, and the result equals an
    uninterrupted run's; the killed run left no partial output."""
    algo, iters, kill_at = "rloo", 8, 4
    cfg = rl_config(algo, iters)
    # the uninterrupted reference runs beside the one that gets killed (one thread each)
    full_out = tmp_path / "full"
    err = tmp_path / "full.err"  # a file, not a pipe: a full pipe would stall the run
    full = subprocess.Popen(rl_cmd(cfg, smoke_dir, full_out, tmp_path / "ck_full", algo), stdout=subprocess.DEVNULL,
                            stderr=err.open("w"))
    out, ckpt = tmp_path / "killed", tmp_path / "ck_killed"
    proc = subprocess.Popen(rl_cmd(cfg, smoke_dir, out, ckpt, algo), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    latest = ckpt / "latest.json"
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and json.loads(latest.read_text())["step"] >= kill_at:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "RL finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(latest.read_text())["step"]
    assert kill_at <= killed_at < iters
    assert not (out / "policy").exists() and not (out / "metrics.jsonl").exists()  # no partial outputs
    assert full.wait() == 0, err.read_text()[-3000:]

    resumed = subprocess.run(rl_cmd(cfg, smoke_dir, out, ckpt, algo), check=True, capture_output=True, text=True)
    assert f"resumed from {ckpt}/step{killed_at:07d}" in resumed.stderr
    assert untimed_rl_metrics(out) == untimed_rl_metrics(full_out)
    assert same_weights(out / "policy", full_out / "policy")
    assert not ckpt.exists()  # resume state removed once the run has finished


@pytest.mark.parametrize("algo", ["prime", "prime_frozen", "pav", "vineppo", "jepo", "grpo", "ppo"])
def test_rl_resumes_after_a_crash_and_matches_uninterrupted_run(smoke_dir, tmp_path, monkeypatch, algo):
    """Every other method, in this process: a run stopped right after its iteration-2 checkpoint,
    then rerun, equals an uninterrupted run (PRIME also restores its online PRM and its
    optimizer, PPO its value network, from the same checkpoint). What a real SIGKILL leaves on
    disk is the RLOO test's and the smoke run's (tests/test_kill_resume.py)."""
    iters, crash_at = 4, 2
    cfg = rl_config(algo, iters)
    full_out, out, ckpt = tmp_path / "full", tmp_path / "crashed", tmp_path / "ck"
    run_rl_in_process(rl_cmd(cfg, smoke_dir, full_out, tmp_path / "ck_full", algo), tmp_path / "full.log")
    with pytest.raises(CrashAfterCheckpoint):
        run_rl_in_process(rl_cmd(cfg, smoke_dir, out, ckpt, algo), tmp_path / "crashed.log", monkeypatch, crash_at)
    assert json.loads((ckpt / "latest.json").read_text())["step"] == crash_at
    assert not (out / "policy").exists() and not (out / "metrics.jsonl").exists()
    if algo == "prime":  # the online PRM is checkpointed at the same tag as the policy
        assert (ckpt / "prm" / f"step{crash_at:07d}").is_dir()
    log = run_rl_in_process(rl_cmd(cfg, smoke_dir, out, ckpt, algo), tmp_path / "resumed.log")
    assert f"resumed from {ckpt}/step{crash_at:07d}" in log
    assert untimed_rl_metrics(out) == untimed_rl_metrics(full_out)
    assert same_weights(out / "policy", full_out / "policy")
    assert not ckpt.exists()


def test_changed_config_does_not_resume_stale_checkpoint(smoke_dir, tmp_path):
    cfg = load_preset(SMOKE)
    cfg["rl"].update(iterations=2, checkpoint_every=1, eval_every=2)
    ckpt = tmp_path / "ck"
    ckpt.mkdir()
    (ckpt / "latest.json").write_text(json.dumps({"tag": "step0000001", "step": 1, "config_hash": "other"}))
    log = run_rl_in_process(rl_cmd(cfg, smoke_dir, tmp_path / "out", ckpt), tmp_path / "rl.log")
    assert "ignoring checkpoint" in log and "resumed from" not in log
    assert len(untimed_rl_metrics(tmp_path / "out")) == 3


def test_rl_with_kl_penalty_logs_a_finite_nonnegative_kl(smoke_dir, tmp_path):
    cfg = load_preset(SMOKE)
    cfg["rl"].update(iterations=2, checkpoint_every=5, eval_every=2, kl_coef=0.05, ppo_epochs=2)
    run_rl_in_process(rl_cmd(cfg, smoke_dir, tmp_path / "out", tmp_path / "ck"), tmp_path / "rl.log")
    rows = untimed_rl_metrics(tmp_path / "out")
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        # k3 is >= 0 per token; after the first update the policy has moved, so KL > 0
        assert r["kl"] is not None and 0.0 <= r["kl"] < 1.0
    assert rows[2]["kl"] > 0.0


@pytest.mark.parametrize("dedupe", [True, False])
def test_vineppo_values_and_step_advantages_on_the_smoke_policy(smoke_dir, dedupe):
    """VinePPO's advantages from real MC values of the smoke medium policy: constant within a
    step, telescoping to outcome - V(x) over the steps, and every auxiliary completion counted:
    one estimate per distinct state (deduplicated, the released code's way: a state reached by
    two responses has one value) or one per response and step."""
    from pipeline.modeling import load_policy
    from pipeline.rl.vineppo import vineppo_token_advantages
    from pipeline.sampler import HFSampler
    from pipeline.steps import split_steps_with_ends, step_token_ends
    from pipeline.task import format_prompt, judge
    from pipeline.utils import read_jsonl

    cfg = load_preset(SMOKE)
    model, tok = load_policy(str(smoke_dir / "results/models/sft/medium"))
    records = read_jsonl(smoke_dir / "results/data/train.jsonl")[:6]
    prompts = [format_prompt(r, cfg["task"]) for r in records]
    sampler = HFSampler(model, tok, progress=False)
    gens = sampler.generate(prompts, n=3, temperature=1.0, max_new_tokens=48, seed=1)
    rewards = torch.tensor([[float(judge(r, g.text, cfg["task"])["outcome"]) for g in gs] for r, gs in zip(records, gens)])
    encoded = tok(prompts, add_special_tokens=False)["input_ids"]
    before = sampler.compute.samples
    adv, values = vineppo_token_advantages(sampler, encoded, records, gens, rewards, cfg["task"], k_aux=4,
                                           temperature=1.0, max_new_tokens=48, seed=3, dedupe_states=dedupe)
    flat = [(p, k, g) for p, gs in enumerate(gens) for k, g in enumerate(gs)]
    nontrivial = 0
    value_of: dict[tuple, float] = {}  # distinct state -> its value
    for (p, k, g), a, v in zip(flat, adv, values):
        _, ends = split_steps_with_ends(g.text)
        tends = step_token_ends(tok, g.token_ids, ends)
        assert len(a) == len(g.token_ids) and len(v) == len(tends)
        for h in range(1, len(tends)):
            state = (p, tuple(g.token_ids[:tends[h - 1]]))
            if dedupe:
                assert value_of.setdefault(state, v[h]) == v[h]  # a repeated state has one value
            else:
                value_of[(p, k, h)] = v[h]
        assert all(0.0 <= x <= 1.0 and (x * 4) == int(x * 4) for x in v)  # means of 4 outcomes
        assert v[0] == values[3 * p][0]  # V(x) is shared by the prompt's responses
        step_adv, start = [], 0
        for e in tends:
            seg = a[start:e]
            assert torch.all(seg == seg[0])  # one advantage per step
            step_adv.append(float(seg[0]))
            start = e
        assert sum(step_adv) == pytest.approx(float(rewards[p, k]) - v[0])  # telescopes (gamma = 1)
        nontrivial += any(abs(x) > 0 for x in step_adv[:-1])
    assert sampler.compute.samples - before == 4 * (len(prompts) + len(value_of))  # V(x) and every state
    assert nontrivial > 0  # the smoke policy's values do move between steps
    if dedupe:  # the smoke policy's responses do repeat states, so deduplication saves completions
        n_occurrences = sum(max(0, len(v) - 1) for v in values)
        assert len(value_of) < n_occurrences


def test_vineppo_runs_in_the_rl_loop_and_counts_auxiliary_samples(smoke_dir, tmp_path):
    cfg = load_preset(SMOKE)
    cfg["rl"].update(iterations=2, checkpoint_every=5, eval_every=2, prompts_per_iter=4, samples_per_prompt=2,
                     vineppo={**cfg["rl"]["vineppo"], "k": 2})
    run_rl_in_process(rl_cmd(cfg, smoke_dir, tmp_path / "out", tmp_path / "ck", "vineppo"), tmp_path / "rl.log")
    rows = untimed_rl_metrics(tmp_path / "out")
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        # at least V(x) for each of the 4 prompts, k = 2 completions each
        assert r["aux_samples"] >= 4 * 2 and r["aux_samples"] % 2 == 0
        # every auxiliary completion draws at least one token; the policy drew 4 x 2 responses
        assert r["aux_tokens"] >= r["aux_samples"] and r["sampled_tokens"] >= 4 * 2
    assert rows[2]["samples"] == 2 * 4 * 2 + rows[1]["aux_samples"] + rows[2]["aux_samples"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["algo"] == "vineppo" and summary["rl_samples"] == rows[2]["samples"]
