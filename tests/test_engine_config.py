"""The DeepSpeed config the trainers get (a pure function of their config section), and the
weight gathering that saves and vLLM weight sync go through."""
from __future__ import annotations

import pytest
import torch

from pipeline.engine import deepspeed_config, full_state_dict, gathered_named_parameters, is_zero3_partitioned
from conftest import MODEL_SECTION, TRAINER
from pipeline.modeling import build_char_tokenizer, build_tiny_llama

HIDDEN = 4096  # Llama-3.1-8B / Mistral-7B / DeepSeekMath-7B


def test_stage0_is_the_plain_cpu_config():
    ds = deepspeed_config({**TRAINER, "grad_clip": 0.5}, micro_batch_size=8)
    assert ds["zero_optimization"] == {"stage": 0}
    assert ds["bf16"] == {"enabled": False}
    assert ds["train_micro_batch_size_per_gpu"] == 8 and ds["gradient_accumulation_steps"] == 1
    assert ds["gradient_clipping"] == 0.5


def test_zero3_for_7_to_8b_models():
    ds = deepspeed_config({**TRAINER, "zero_stage": 3, "bf16": True, "grad_clip": 1.0}, micro_batch_size=4, hidden_size=HIDDEN)
    z = ds["zero_optimization"]
    assert z["stage"] == 3 and ds["bf16"] == {"enabled": True}
    assert z["overlap_comm"] is True and z["contiguous_gradients"] is True
    # the HF Trainer's "auto" sizes, from the hidden size
    assert z["reduce_bucket_size"] == HIDDEN * HIDDEN
    assert z["stage3_prefetch_bucket_size"] == int(0.9 * HIDDEN * HIDDEN)
    assert z["stage3_param_persistence_threshold"] == 10 * HIDDEN
    # save_pretrained / save_16bit_model get whole weights, not rank shards
    assert z["stage3_gather_16bit_weights_on_model_save"] is True
    assert "offload_optimizer" not in z and "allgather_bucket_size" not in z
    assert isinstance(z["stage3_max_live_parameters"], int)  # DeepSpeed's pydantic config wants ints


def test_optimizer_offload_from_config():
    z = deepspeed_config({**TRAINER, "zero_stage": 3, "bf16": True, "offload_optimizer": True}, 4, HIDDEN)["zero_optimization"]
    assert z["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    z2 = deepspeed_config({**TRAINER, "zero_stage": 2, "offload_optimizer": True}, 4, HIDDEN)["zero_optimization"]
    assert z2["offload_optimizer"]["device"] == "cpu" and z2["allgather_bucket_size"] == HIDDEN * HIDDEN
    assert "stage3_gather_16bit_weights_on_model_save" not in z2
    with pytest.raises(ValueError, match="needs ZeRO"):
        deepspeed_config({**TRAINER, "zero_stage": 0, "offload_optimizer": True}, 4)


def test_zero3_without_hidden_size_leaves_bucket_sizes_to_deepspeed():
    z = deepspeed_config({**TRAINER, "zero_stage": 3}, 2)["zero_optimization"]
    assert "reduce_bucket_size" not in z and "stage3_prefetch_bucket_size" not in z


def test_deepspeed_accepts_the_zero3_config():
    """DeepSpeed's own config model parses what we build (no GPU needed for parsing)."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    z = deepspeed_config({**TRAINER, "zero_stage": 3, "bf16": True, "offload_optimizer": True}, 4, HIDDEN)["zero_optimization"]
    parsed = DeepSpeedZeroConfig(**z)
    assert parsed.stage == 3 and parsed.gather_16bit_weights_on_model_save is True
    assert parsed.reduce_bucket_size == HIDDEN * HIDDEN and parsed.offload_optimizer.device == "cpu"


def test_unpartitioned_models_are_saved_and_synced_as_they_are():
    tok = build_char_tokenizer()
    m = build_tiny_llama(tok, {**MODEL_SECTION, "hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2,
                               "max_position_embeddings": 32}, seed=0)
    assert not is_zero3_partitioned(m) and full_state_dict(m) is None
    named = dict(gathered_named_parameters(m))
    assert list(named) == [n for n, _ in m.named_parameters()]
    assert all(named[n] is not p and torch.equal(named[n], p) for n, p in m.named_parameters())
    on_cpu = dict(gathered_named_parameters(m, device="cpu"))
    assert all(t.device.type == "cpu" for t in on_cpu.values())


def test_zero3_engine_saves_and_streams_full_weights(tmp_path):
    """A real ZeRO-3 engine (CPU, gloo, one rank): the module's own tensors are empty
    placeholders, yet save_policy writes the full weights and the vLLM sync stream carries them."""
    from pipeline.engine import build_engine
    from pipeline.modeling import load_policy, save_policy

    tok = build_char_tokenizer()
    m = build_tiny_llama(tok, {**MODEL_SECTION, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 2,
                               "max_position_embeddings": 64}, seed=0)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    engine = build_engine(m, {**TRAINER, "lr": 1e-3, "zero_stage": 3}, total_steps=2, batch_size=2)
    module = engine.module
    assert is_zero3_partitioned(module)
    assert next(module.parameters()).numel() == 0  # a shard placeholder: saving it as-is would lose the model
    state = full_state_dict(module)
    assert set(state) == set(before) and all(torch.equal(state[k], before[k]) for k in before)
    streamed = dict(gathered_named_parameters(module, device="cpu"))
    assert all(torch.equal(streamed[n], before[n]) for n in streamed)
    save_policy(module, tok, tmp_path / "policy")
    loaded, _ = load_policy(str(tmp_path / "policy"))
    assert all(torch.equal(v, before[k]) for k, v in loaded.state_dict().items())
