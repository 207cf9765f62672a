"""The RL method layout: the registry (what exists, which config each job sees), the shared loss
pieces the audit added (whitening, the KL's reduction, PPO's GAE and value loss) against hand
computation, and a throwaway method plugged in through one module and one registry line."""
from __future__ import annotations

import json
import textwrap

import pytest
import torch

from pipeline import registry
from pipeline.config import ConfigError, load_preset, validate_config
from pipeline.registry import RLMethodSpec, method_view
from pipeline.rl.losses import kl_k3, kl_penalty, whiten
from pipeline.rl.ppo import clipped_value_loss, gae_advantages
from conftest import SMOKE


# --------------------------------------------------------------------------- shared loss pieces

def test_whiten_by_hand():
    # tokens [1, 2] and [3]: mean 2, unbiased var ((1 + 0 + 1) / 2) = 1 -> [-1, 0], [1]
    out = whiten([torch.tensor([1.0, 2.0]), torch.tensor([3.0])])
    assert out[0].tolist() == pytest.approx([-1.0, 0.0], abs=1e-6) and out[1].tolist() == pytest.approx([1.0], abs=1e-6)
    # with a mask only the masked tokens count, the others become 0: [1, x] and [3] -> mean 2, var 2
    out = whiten([torch.tensor([1.0, 100.0]), torch.tensor([3.0])], [torch.tensor([1.0, 0.0]), torch.tensor([1.0])])
    s = 2 ** -0.5
    assert out[0].tolist() == pytest.approx([-s, 0.0], abs=1e-6) and out[1].tolist() == pytest.approx([s], abs=1e-6)


def test_kl_sequence_sum_is_a_mean_over_sequences_of_summed_tokens():
    """token_mean weighs every token alike; sequence_sum (released VinePPO) sums a sequence's
    tokens and averages over sequences, also when the loop splits the minibatch into micro
    batches weighted by their share of the tokens."""
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.9], [0.2, 0.3, 0.3]]))
    ref = torch.log(torch.tensor([[0.25, 0.5, 0.9], [0.4, 0.3, 0.3]]))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # sequence lengths 2 and 1
    k3 = kl_k3(logp, ref)
    a, b = float(k3[0, 0] + k3[0, 1]), float(k3[1, 0])     # per-sequence sums
    assert float(kl_penalty(logp, ref, mask, "token_mean")) == pytest.approx((a + b) / 3, rel=1e-6)
    per_seq = 3 / 2  # the minibatch's tokens / sequences
    assert float(kl_penalty(logp, ref, mask, "sequence_sum", per_seq)) == pytest.approx((a + b) / 2, rel=1e-6)
    # two micro batches (one sequence each) weighted by token share 2/3 and 1/3, as train_batch does
    m0 = kl_penalty(logp[:1], ref[:1], mask[:1], "sequence_sum", per_seq)
    m1 = kl_penalty(logp[1:], ref[1:], mask[1:], "sequence_sum", per_seq)
    assert float(2 / 3 * m0 + 1 / 3 * m1) == pytest.approx((a + b) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="kl_reduction"):
        kl_penalty(logp, ref, mask, "sum")


def test_gae_by_hand():
    # outcome 1 on the last of 3 tokens; V = [0.5, 0.6, 0.8], terminal 0, gamma 1
    # deltas: 0 + 0.6 - 0.5 = 0.1, 0 + 0.8 - 0.6 = 0.2, 1 + 0 - 0.8 = 0.2
    r, v = torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.5, 0.6, 0.8])
    adv, ret = gae_advantages(r, v, gamma=1.0, lam=0.5)
    # lam 0.5: A2 = 0.2, A1 = 0.2 + 0.5 * 0.2 = 0.3, A0 = 0.1 + 0.5 * 0.3 = 0.25; returns A + V
    assert adv.tolist() == pytest.approx([0.25, 0.3, 0.2]) and ret.tolist() == pytest.approx([0.75, 0.9, 1.0])
    # lam 1 is the Monte-Carlo return minus the value: 1 - V
    adv, ret = gae_advantages(r, v, gamma=1.0, lam=1.0)
    assert adv.tolist() == pytest.approx([0.5, 0.4, 0.2]) and ret.tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_clipped_value_loss_by_hand():
    # V = 0.5 from V_old = 0 towards R = 1, clip 0.2: clipped V = 0.2; (0.5-1)^2 = 0.25 < (0.2-1)^2 = 0.64
    # -> the pessimistic max 0.64, loss 0.5 * 0.64 = 0.32, the clipped term chosen on the one token
    v, old, ret, mask = (torch.tensor([[0.5, 9.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]]),
                         torch.tensor([[1.0, 0.0]]))
    loss, stats = clipped_value_loss(v, old, ret, mask, clip=0.2)
    assert float(loss) == pytest.approx(0.32) and stats["value_clip_frac"] == 1.0
    # inside the clip range the plain squared error: V = 0.1 -> 0.5 * 0.81
    loss, stats = clipped_value_loss(torch.tensor([[0.1]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]),
                                     torch.tensor([[1.0]]), clip=0.2)
    assert float(loss) == pytest.approx(0.405) and stats["value_clip_frac"] == 0.0


# --------------------------------------------------------------------------- registry

def test_registry_is_importable_without_torch():
    import subprocess
    import sys

    code = ("import sys; import pipeline.registry, pipeline.config, pipeline.rl; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_method_and_reward_model_in_the_registry_is_in_the_schema_enums():
    from pipeline.config import load_schema

    schema = load_schema()
    assert schema["properties"]["rl"]["properties"]["algos"]["items"]["enum"] == list(registry.RL_METHODS)
    assert schema["properties"]["rm"]["properties"]["models"]["items"]["enum"] == list(registry.REWARD_MODELS)
    # every method section in the schema is claimed by a method, and every claimed one exists there
    rl_props = schema["properties"]["rl"]["properties"]
    sections = {k for k, v in rl_props.items() if v.get("type") == "object"}
    assert sections == registry.method_sections()


def test_method_view_shows_each_method_its_own_sections_only(monkeypatch):
    rl = load_preset()["rl"]
    for algo, spec in registry.RL_METHODS.items():
        view = method_view(rl, algo)
        assert set(spec.sections) <= set(view)
        assert not (registry.method_sections() - set(spec.sections)) & set(view), algo
        assert not set(registry.RL_RUN_KEYS) & set(view)
    assert "prime" in method_view(rl, "prime_frozen")  # the two PRIME variants share one section
    # a new method with a section of its own: its key reaches its view only
    monkeypatch.setitem(registry.RL_METHODS, "toy", RLMethodSpec("toy", "outcome", "RLOO", ("toy",)))
    rl_toy = {**rl, "toy": {"x": 1}}
    assert method_view(rl_toy, "toy")["toy"] == {"x": 1}
    assert all("toy" not in method_view(rl_toy, a) for a in registry.RL_METHODS if a != "toy")
    changed = {**rl, "toy": {"x": 2}}
    assert [a for a in registry.RL_METHODS if method_view(changed, a) != method_view(rl_toy, a)] == ["toy"]


def test_a_section_no_method_claims_is_a_config_error(monkeypatch):
    cfg = load_preset()
    cfg["rl"]["algos"] = ["rloo"]
    monkeypatch.setattr(registry, "RL_METHODS", {k: v for k, v in registry.RL_METHODS.items() if k != "ppo"})
    with pytest.raises(ConfigError, match=r"rl\.ppo: a method section that no method"):
        validate_config(cfg)


def test_reward_model_kind_is_checked_through_the_registry():
    cfg = load_preset()
    cfg["rl"]["pav"]["rm"] = "prm_se"
    with pytest.raises(ConfigError, match=r"rl\.pav\.rm: 'prm_se' must be a PAV reward model"):
        validate_config(cfg)
    cfg = load_preset()
    cfg["rl"]["prime"]["frozen_prm"] = "orm"
    with pytest.raises(ConfigError, match=r"rl\.prime\.frozen_prm: 'orm' must be an implicit PRM"):
        validate_config(cfg)


# --------------------------------------------------------------------------- a throwaway method

TOY_MODULE = '''
"""A throwaway outcome-only method: +1 / -1 on every token of a right / wrong response."""
from pipeline.rl.base import Method, outcome_batch


class SignOnly(Method):
    def batch(self, ro, compute):
        b = outcome_batch(ro, 2 * ro.rewards - 1)
        b.metrics["toy_adv_mean"] = float((2 * ro.rewards - 1).mean())
        return b
'''


@pytest.mark.slow
def test_a_new_outcome_method_is_one_module_and_one_registry_line(smoke_dir, tmp_path, monkeypatch):
    """Adding a method: a module with a Method subclass and its registry entry; the loop runs it
    with no other change (no config entry: it has no settings)."""
    pkg = tmp_path / "toyrl"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "sign_only.py").write_text(textwrap.dedent(TOY_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.RL_METHODS, "sign_only", RLMethodSpec("sign_only", "toyrl.sign_only", "SignOnly"))
    from pipeline.rl.train import main

    cfg = load_preset(SMOKE)
    cfg["rl"].update(iterations=2, prompts_per_iter=4, eval_every=2, eval_prompts=8, checkpoint_every=10)
    out = tmp_path / "out"
    main(["--cfg", json.dumps({"rl": method_view(cfg["rl"], "sign_only"), "task": cfg["task"],
                                 "sampling": cfg["sampling"], "seed": cfg["seed"]}),
          "--algo", "sign_only", "--policy", str(smoke_dir / "results/models/sft/medium"),
          "--data", str(smoke_dir / "results/data"), "--out", str(out), "--ckpt", str(tmp_path / "ck"),
          "--threads", "1"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert r["toy_adv_mean"] == pytest.approx(2 * r["reward_mean"] - 1)
        assert r["loss"] is not None
    assert json.loads((out / "summary.json").read_text())["algo"] == "sign_only"


# --------------------------------------------------------------------------- sampling temperature
def run_tempered_rl(tmp_path, name: str, **rl_changes) -> tuple[list[dict], dict]:
    """Two RL iterations (PPO with its value network, whose advantages are not zero where an
    untrained policy solves nothing; 2 minibatches per iteration) of a tiny policy whose logits
    are spread (so softmax(z / 0.6) and softmax(z) are far apart), sampling at temperature 0.6
    with top_p 0.9: the metrics rows and the final weights."""
    from safetensors.torch import load_file

    from pipeline.modeling import build_char_tokenizer, save_policy
    from pipeline.rl.train import main
    from pipeline.testbed import ArithSpec, generate_split
    from pipeline.utils import write_jsonl
    from conftest import MODEL_SECTION, scaled_tiny_llama

    cfg = load_preset()
    data = tmp_path / "data"
    if not data.exists():
        spec = ArithSpec.from_cfg(cfg["task"]["arith"])
        write_jsonl(data / "train.jsonl", generate_split(16, spec, seed=1, split="train"))
        write_jsonl(data / "val.jsonl", generate_split(2, spec, seed=2, split="val"))
        tok = build_char_tokenizer()
        model = scaled_tiny_llama(tok, {**MODEL_SECTION, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1})
        save_policy(model, tok, tmp_path / "policy")
    rl = {**method_view(cfg["rl"], "ppo"), "iterations": 2, "prompts_per_iter": 4, "samples_per_prompt": 2,
          "minibatch_size": 4, "ppo_epochs": 1, "eval_every": 2, "eval_prompts": 2, "checkpoint_every": 10,
          "lr": 1e-4, "temperature": 0.6, "top_p": 0.9, "kl_coef": 0.01, **rl_changes}
    stage = {"rl": rl, "task": cfg["task"], "sampling": {**cfg["sampling"], "max_new_tokens": 16}, "seed": cfg["seed"]}
    out = tmp_path / name
    main(["--cfg", json.dumps(stage), "--algo", "ppo", "--seed", "0", "--policy", str(tmp_path / "policy"),
          "--data", str(data), "--out", str(out), "--ckpt", str(tmp_path / f"ck_{name}"), "--threads", "1"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rows, load_file(out / "policy" / "model.safetensors")


def test_training_log_probs_follow_the_sampling_temperature(tmp_path):
    """rl.logprob_temperature: the loss, the old log-probs (recorded by the sampler or from a
    forward) and the reference's all use one temperature. So the first minibatch of an iteration
    has a ratio of 1 (nothing clipped: a mismatch of temperatures gives ratios of e^(+-0.5) here)
    and the first iteration almost no KL, the sampler's old log-probs train the same weights as
    the forward's, and the two temperatures train different weights (the choice matters at
    rl.temperature 0.6)."""
    runs = {(lp, old): run_tempered_rl(tmp_path, f"{lp}_{old}", logprob_temperature=lp, old_logprobs=old)
            for lp in ("sampling", 1) for old in ("sampler", "forward")}
    for (lp, old), (rows, _) in runs.items():
        assert [r["iteration"] for r in rows] == [0, 1, 2]
        # 2 minibatches per iteration: the first's ratio is exactly 1, the second's moved by one
        # step of lr 1e-4, far inside the clip range
        assert all(r["clip_frac"] == 0 for r in rows[1:]), (lp, old, [r["clip_frac"] for r in rows[1:]])
        # the reference (the initial policy) at the same temperature: no KL before the first step
        # (its second minibatch follows one step, hence not exactly 0)
        assert rows[1]["kl"] < 0.01, (lp, old, rows[1]["kl"])  # ~1e-4 after the step; 0.1 at mismatched temperatures
    for lp in ("sampling", 1):
        (rows_s, w_s), (rows_f, w_f) = runs[(lp, "sampler")], runs[(lp, "forward")]
        assert [r["reward_mean"] for r in rows_s[1:]] == [r["reward_mean"] for r in rows_f[1:]]
        assert max((w_s[k] - w_f[k]).abs().max().item() for k in w_s) < 1e-5
    w_t, w_1 = runs[("sampling", "sampler")][1], runs[(1, "sampler")][1]
    assert max((w_t[k] - w_1[k]).abs().max().item() for k in w_t) > 1e-4
