"""Data parallelism and gradient accumulation (`engine.train_batch`): however a batch is split
over ranks and micro batches, the optimizer step is the one-forward batch's step.

The two-rank tests launch the real stages under `torch.distributed.run` (2 CPU processes,
gloo; the same launcher common.smk uses for multi-GPU jobs) and compare them with a plain
one-process run of the same config (called in the test's own process: the same stage code,
without an interpreter start-up)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline.config import load_preset
from pipeline.engine import accumulation_steps, build_engine, train_batch
from pipeline.modeling import build_char_tokenizer
from pipeline.sft import sft_loss
from conftest import MODEL_SECTION, SMOKE, TRAINER, run_stage_in_process, scaled_tiny_llama

MODEL = {**MODEL_SECTION, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 2, "max_position_embeddings": 64}


def test_accumulation_steps_hand_values():
    assert accumulation_steps(8, 8, 1) == 1
    assert accumulation_steps(8, 2, 1) == 4
    assert accumulation_steps(8, 2, 2) == 2    # 4 items per rank
    assert accumulation_steps(5, 2, 2) == 2    # ranks hold 3 and 2 items
    assert accumulation_steps(3, 8, 4) == 1    # fewer items than ranks
    assert accumulation_steps(7, 3, 1) == 3


def _examples(tok, n: int):
    """(prompt ids, response ids) of different lengths, so a token mean differs from a mean of means."""
    out = []
    for i in range(n):
        p = tok(f"{i}+{i * 3}=", add_special_tokens=False)["input_ids"]
        y = tok(str(i * 4) * (1 + i % 3), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        out.append((p, y))
    return out


def _train(tok, examples, batch_size: int, micro: int | None, steps: int = 3, batches=None):
    """Train a fresh tiny Llama; returns (final weights, batch losses, the gradients each
    optimizer step saw (captured in front of AdamW), the engine)."""
    model = scaled_tiny_llama(tok, MODEL, seed=0, scale=0.1)
    cfg = {**TRAINER, "lr": 1e-2, "grad_clip": 1e6, "micro_batch_size": micro}
    engine = build_engine(model, cfg, total_steps=steps, batch_size=batch_size)
    grads: list[list[torch.Tensor]] = []
    engine.optimizer.register_step_pre_hook(
        lambda opt, *_: grads.append([p.grad.detach().clone() for g in opt.param_groups for p in g["params"]]))
    losses = []
    for s in range(steps):
        batch = batches[s] if batches else examples
        loss, _, _ = train_batch(engine, batch, [len(y) for _, y in batch],
                                 lambda ex: (sft_loss(engine, ex, tok.pad_token_id)[0], {}, None),
                                 engine.train_micro_batch_size_per_gpu())
        losses.append(loss)
    assert len(grads) == steps  # one optimizer step per batch, whatever the micro steps
    return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}, losses, grads, engine


def _same_grads(a, b):
    for ga, gb in zip(a, b):
        for x, y in zip(ga, gb):
            assert torch.allclose(x, y, rtol=1e-4, atol=1e-7), (x - y).abs().max().item()


def test_micro_batches_give_the_one_forward_step():
    """6 examples as one forward vs micro batches of 2 (3 accumulated micro steps): the token
    mean over the batch, not a mean of micro-batch means, so the weights agree to rounding."""
    tok = build_char_tokenizer()
    ex = _examples(tok, 6)
    one, l1, g1, e1 = _train(tok, ex, 6, None)
    acc, l2, g2, e2 = _train(tok, ex, 6, 2)
    assert e1.gradient_accumulation_steps() == 1 and e2.gradient_accumulation_steps() == 3
    assert e2.train_micro_batch_size_per_gpu() == 2
    assert l1 == pytest.approx(l2, rel=1e-5)
    _same_grads(g1, g2)
    # AdamW divides by sqrt(v): a rounding-size gradient difference can move a weight by up to lr
    assert max((one[k] - acc[k]).abs().max().item() for k in one) < 1e-4
    # a mean of the micro batches' means is a different objective: the check can fail
    means = [sft_loss(e1.module, ex[s:s + 2], tok.pad_token_id)[0].item() for s in range(0, 6, 2)]
    assert abs(sum(means) / 3 - sft_loss(e1.module, ex, tok.pad_token_id)[0].item()) > 1e-4


def test_a_short_last_batch_pads_with_zero_weight_micro_steps():
    """An engine sized for 5 items (micro 2: 3 micro steps) stepping on 3 items takes one extra
    micro step with weight 0; the update equals a one-forward engine's on those 3 items."""
    tok = build_char_tokenizer()
    ex = _examples(tok, 5)
    short = [ex[:3]] * 2
    padded, lp, gp, ep = _train(tok, ex, 5, 2, steps=2, batches=short)
    plain, lq, gq, _ = _train(tok, ex, 3, None, steps=2, batches=short)
    assert ep.gradient_accumulation_steps() == 3
    assert lp == pytest.approx(lq, rel=1e-5)
    _same_grads(gp, gq)


def test_too_many_items_for_the_engine_is_an_error():
    tok = build_char_tokenizer()
    ex = _examples(tok, 4)
    model = scaled_tiny_llama(tok, MODEL, seed=0, scale=0.1)
    engine = build_engine(model, {**TRAINER, "lr": 1e-3, "micro_batch_size": 2}, total_steps=1, batch_size=2)
    with pytest.raises(ValueError, match="accumulation_steps"):
        train_batch(engine, ex, [1.0] * 4, lambda e: (sft_loss(engine, e, tok.pad_token_id)[0], {}, None), 2)


# ---- two ranks under torchrun, against one process ----

def _launch(module: str, args: list[str], nproc: int, log: Path) -> str:
    """The stage on `nproc` ranks under torchrun, or (nproc 1, the reference) as a plain call of
    its main() in this process. Returns the log."""
    if nproc == 1:
        text = run_stage_in_process(module, [*args, "--threads", "1"], log)
    else:
        pre = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        proc = subprocess.run([*pre, "-m", module, *args, "--threads", "1"], capture_output=True, text=True, env=env,
                              timeout=900)
        assert proc.returncode == 0, f"{module} x{nproc} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        text = proc.stderr
    assert f"engine: {nproc} rank(s)" in text  # DeepSpeed really ran data parallel over nproc ranks
    return text


def _weights(path: Path) -> dict:
    return load_file(path / "model.safetensors")


def _close(a: dict, b: dict, atol: float) -> float:
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < atol, f"largest weight difference {worst}"
    return worst


def _rl_metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["rloo", "prime"])
def test_rl_on_two_ranks_matches_one_process(smoke_dir, tmp_path, algo):
    """One RL iteration (PPO: 2 epochs x 2 minibatches; PRIME also its online PRM update) on
    two ranks with micro batches of 3, against one process with whole minibatches: the same
    samples and rewards, the same losses and weights to rounding; only rank 0 writes."""
    cfg = load_preset(SMOKE)
    cfg["rl"].update(iterations=1, eval_every=1, checkpoint_every=5, prompts_per_iter=8, samples_per_prompt=4,
                     minibatch_size=16, ppo_epochs=2, eval_prompts=8)
    stage = {k: cfg[k] for k in ("rl", "task", "sampling", "seed")}
    stage_dp = {**stage, "rl": {**stage["rl"], "micro_batch_size": 3}}
    runs = {}
    for name, nproc, c in (("one", 1, stage), ("two", 2, stage_dp)):
        out = tmp_path / name
        _launch("pipeline.rl", ["--cfg", json.dumps(c), "--algo", algo,
                                "--policy", str(smoke_dir / "results/models/sft/medium"),
                                "--data", str(smoke_dir / "results/data"), "--out", str(out),
                                "--ckpt", str(tmp_path / f"ck_{name}")], nproc, tmp_path / f"{name}.log")
        runs[name] = _rl_metrics(out)
        assert not (tmp_path / f"ck_{name}").exists()
    one, two = runs["one"][1], runs["two"][1]
    assert one["reward_mean"] == two["reward_mean"] and one["samples"] == two["samples"]
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-4, abs=1e-6)
    assert one["clip_frac"] == pytest.approx(two["clip_frac"], abs=1e-6)
    if algo == "prime":
        assert one["prm_loss"] is not None
        assert one["prm_loss"] == pytest.approx(two["prm_loss"], rel=1e-5)
        assert one["process_reward_mean"] == pytest.approx(two["process_reward_mean"], rel=1e-4, abs=1e-6)
    init = _weights(smoke_dir / "results/models/sft/medium")
    one_w = _weights(tmp_path / "one/policy")
    assert _close(one_w, _weights(tmp_path / "two/policy"), atol=1e-5) < 0.05 * _close(init, one_w, atol=1.0)


@pytest.mark.slow
def test_sft_on_two_ranks_matches_one_process(smoke_dir, tmp_path):
    """SFT from scratch, 6 steps of batch 8: two ranks with micro batches of 2 (2 accumulated
    micro steps each) against one process with one forward per step. The tier is out of reach,
    so both publish the final model."""
    cfg = load_preset(SMOKE)
    cfg["sft"].update(max_steps=6, eval_every=3, eval_prompts=4, batch_size=8, tiers={"weak": 2.0})
    stage = {k: cfg[k] for k in ("sft", "task", "sampling", "seed", "model")}
    stage_dp = {**stage, "sft": {**stage["sft"], "micro_batch_size": 2}}
    curves = {}
    for name, nproc, c in (("one", 1, stage), ("two", 2, stage_dp)):
        out = tmp_path / name
        _launch("pipeline.sft", ["--cfg", json.dumps(c), "--train", str(smoke_dir / "results/data/train.jsonl"),
                                 "--val", str(smoke_dir / "results/data/val.jsonl"), "--out", str(out),
                                 "--ckpt", str(tmp_path / f"ck_{name}")], nproc, tmp_path / f"{name}.log")
        curves[name] = json.loads((out / "sft_metrics.json").read_text())["curve"]
    assert [r["step"] for r in curves["one"]] == [r["step"] for r in curves["two"]] == [3, 6]
    for a, b in zip(curves["one"], curves["two"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    _close(_weights(tmp_path / "one/weak"), _weights(tmp_path / "two/weak"), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kind, loss", [("implicit", "ce_inst"), ("implicit", "dpo"), ("pav", "ce")])
def test_reward_model_on_two_ranks_matches_one_process(smoke_dir, tmp_path, kind, loss):
    """A reward model on the smoke labels (CE on half of them): per-instruction-weighted CE, DPO pairs
    and the class-balanced PAV head, on two ranks with micro batches of 2 (DPO: 1 pair) against
    one process with one forward per batch of 8."""
    cfg = load_preset(SMOKE)
    cfg["rm"].update(batch_size=8, epochs=1, head_dropout=0.0)  # dropout masks would differ with the split
    stage = {k: cfg[k] for k in ("rm", "seed")}
    stage_dp = {**stage, "rm": {**stage["rm"], "micro_batch_size": 2}}
    r = smoke_dir / "results"
    labels = r / ("rollouts/medium/train.jsonl" if kind == "implicit" else "mc/medium/train.jsonl")
    curves = {}
    for name, nproc, c in (("one", 1, stage), ("two", 2, stage_dp)):
        out = tmp_path / name
        _launch("pipeline.train_rm", ["--cfg", json.dumps(c), "--kind", kind, "--loss", loss, "--labels", str(labels),
                                      "--policy", str(r / "models/sft/medium"),
                                      "--heldout", str(r / "rollouts/medium/test.jsonl"), "--out", str(out),
                                      "--instruction-frac", "0.5" if loss == "ce_inst" else "1.0"], nproc,
                tmp_path / f"{name}.log")
        curves[name] = json.loads((out / "metrics.json").read_text())
    one, two = curves["one"], curves["two"]
    assert len(one["loss_curve"]) == len(two["loss_curve"]) >= 2
    assert one["loss_curve"] == pytest.approx(two["loss_curve"], rel=1e-4, abs=1e-6)
    assert one["train_flops"] == two["train_flops"]
    init = _weights(r / "models/sft/medium")
    a, b = _weights(tmp_path / "one/model"), _weights(tmp_path / "two/model")
    shared = {k: v for k, v in init.items() if k in a}  # the PAV head is new: compare the backbone's drift
    drift = _close({k: a[k] for k in shared}, shared, atol=1.0)
    # per-instruction CE weighs an instruction whose samples share one outcome 0: on a machine
    # whose SFT path gave a quarter of the smoke prompts no mixed pair, nothing trained at all
    assert drift > 0, "training moved no weight: the subsample has no instruction with both outcomes"
    assert _close(a, b, atol=1e-5) < 0.05 * drift
