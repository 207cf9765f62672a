"""benchmarks/gpu_check.sh --dry: the GPU proof's own code path on the CPU (issue 16), so the
script that gets one short run on a lent GPU is known to work before that run. The toy-width
models keep the real architecture classes; their parameter counts are checked by hand."""
from __future__ import annotations

import json
import os
import subprocess

from conftest import REPO


def llama_params(vocab, hidden, inter, layers, heads, kv_heads, lm_head=True, score_head=False):
    head_dim = hidden // heads
    attn = hidden * hidden * 2 + 2 * hidden * kv_heads * head_dim  # q, o; k, v (grouped)
    layer = attn + 3 * hidden * inter + 2 * hidden  # + gate/up/down MLP + two RMSNorms
    total = layers * layer + vocab * hidden + hidden  # + embeddings + final norm
    return total + (vocab * hidden if lm_head else 0) + (hidden + 1 if score_head else 0)


def test_gpu_check_dry_mode_runs_both_zero3_steps(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry"] is True and report["device"] == "cpu" and report["all_ok"] is True
    # toy width of the Llama-3.1-8B layout: vocab 512, hidden 64, MLP 128, 2 layers, 4 heads, 2 KV heads
    assert report["policy_step"]["params"] == llama_params(512, 64, 128, 2, 4, 2) == 139584
    assert report["rm_step"]["params"] == llama_params(512, 64, 128, 2, 4, 2, lm_head=False, score_head=True) == 106881
    for part in ("rm_step", "policy_step"):
        r = report[part]
        assert r["ok"] and r["loss"] > 0 and r["tokens_per_s"] > 0 and r["seq_len"] == 16, (part, r)
    # without vLLM the two vLLM parts say why they were skipped (with it, they must pass)
    for part in ("vllm_sampling", "vllm_sync"):
        assert "skipped" in report[part] or report[part]["ok"], report[part]
