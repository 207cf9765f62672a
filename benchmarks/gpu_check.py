"""GPU proof (issue 16): the project's engine at real model width on one GPU, in one short run.

Random-init models built from real architecture configs (Llama-3.1-8B and Qwen2.5-7B, written
out below from their hub config.json; nothing is downloaded) and the project's own tokenizer.
Parts, each timed and recorded with its peak GPU memory in one JSON file:

1. `rm_step`: one ZeRO-3 bf16 optimizer step of a scalar-head reward model (the ORM's loss:
   BCE at the last token) through `engine.train_batch`;
2. `policy_step`: one ZeRO-3 bf16 optimizer step of the RL policy (a clipped policy-gradient
   token loss on sampled-length responses) through `engine.train_batch`;
3. `vllm_sampling`: vLLM sampling at real width (throughput in generated tokens/s);
4. `vllm_sync`: one RL update, `VLLMSampler.sync_weights`, and greedy vLLM output against HF
   greedy output of the trained weights on the same prompts (must be equal).
Parts 3-4 are skipped, with the reason recorded, when vLLM does not import (the GPU machine
this project is lent has no vLLM and cannot download one; its wheel is larger than what a run
can carry).

    bash benchmarks/gpu_check.sh                 # on the GPU machine (see the .sh for wheels)
    bash benchmarks/gpu_check.sh --dry           # CPU: the same code at toy width, ZeRO-3 fp32

`--layers` keeps the real width and head layout but fewer layers (default 8: ~2.8B parameters
with Llama's 128k vocabulary), so that AdamW states of a full ZeRO-3 step fit one GPU with room;
`--layers 0` means the architecture's own depth.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# hub config.json values (meta-llama/Llama-3.1-8B-Instruct, Qwen/Qwen2.5-7B-Instruct)
ARCHITECTURES = {
    "llama3.1-8b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                    "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                    "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 131072,
                    "tie_word_embeddings": False},
    "qwen2.5-7b": {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                   "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                   "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 32768,
                   "tie_word_embeddings": False},
}
# --dry: the same architecture classes at toy width (CPU, seconds)
DRY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
       "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 256}


def model_config(arch: str, layers: int, dry: bool, tokenizer):
    from transformers import AutoConfig

    spec = dict(ARCHITECTURES[arch])
    if dry:
        spec.update(DRY)
    elif layers:
        spec["num_hidden_layers"] = layers
    model_type = spec.pop("model_type")
    return AutoConfig.for_model(model_type, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id, **spec)


def build(auto_class, cfg, device: str, bf16: bool):
    """A random-init model made directly on the device in its training dtype (a 3B fp32 model
    built on the CPU first would take minutes and 12 GB); ZeRO-3 partitions it when the engine is built."""
    import torch

    with torch.device(device):
        return auto_class.from_config(cfg, dtype=torch.bfloat16 if bf16 else torch.float32)


def n_params(model) -> int:
    return sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters())


def peak_gib(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def reset_peak(device) -> None:
    import torch

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def sync(device) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def train_cfg(dry: bool) -> dict:
    """A validated rl section's trainer keys, with ZeRO-3 (bf16 on the GPU)."""
    from pipeline.config import load_preset

    rl = load_preset()["rl"]
    keys = ("lr", "warmup_steps", "schedule", "weight_decay", "grad_clip", "offload_optimizer")
    return {**{k: rl[k] for k in keys}, "zero_stage": 3, "bf16": not dry, "micro_batch_size": 4}


def batch(tokenizer, n: int, prompt_len: int, response_len: int, vocab: int, seed: int):
    """Random token sequences (ids below the tokenizer's size, which every vocabulary here exceeds)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, len(tokenizer), (n, prompt_len + response_len), generator=g)
    mask = torch.zeros_like(ids)
    mask[:, prompt_len:] = 1
    return ids, mask


def rm_step(args, device, tokenizer) -> dict:
    """One ZeRO-3 step of a scalar-head reward model on BCE at the last token (the ORM target)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForTokenClassification

    from pipeline.engine import build_engine, train_batch

    cfg = model_config(args.arch, args.layers, args.dry, tokenizer)
    cfg.num_labels = 1
    tc = train_cfg(args.dry)
    reset_peak(device)
    model = build(AutoModelForTokenClassification, cfg, device, tc["bf16"])
    n = args.batch
    engine = build_engine(model, tc, total_steps=1, batch_size=n)
    ids, _ = batch(tokenizer, n, args.prompt_len, args.response_len, cfg.vocab_size, seed=0)
    labels = torch.tensor([float(i % 2) for i in range(n)])
    dev = engine.device

    def loss_fn(sub):
        out = engine(input_ids=ids[sub].to(dev), attention_mask=torch.ones_like(ids[sub]).to(dev))
        logit = out.logits[:, -1, 0].float()
        return F.binary_cross_entropy_with_logits(logit, labels[sub].to(dev)), {}, None

    sync(device)
    t0 = time.time()
    loss, _, _ = train_batch(engine, list(range(n)), [1.0] * n, loss_fn, tc["micro_batch_size"], what="gpu_check rm",
                             step=0, lr_key="rm.lr")
    sync(device)
    dt = time.time() - t0
    tokens = n * ids.shape[1]
    out = {"ok": math.isfinite(loss), "loss": loss, "params": n_params(engine.module), "seconds": dt,
           "tokens_per_s": tokens / dt, "peak_gib": peak_gib(device), "batch": n, "seq_len": int(ids.shape[1])}
    del engine, model
    return out


def token_logps(model, ids, device):
    import torch

    out = model(input_ids=ids.to(device)).logits[:, :-1].float()
    return torch.log_softmax(out, -1).gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)


def policy_step(args, device, tokenizer, keep: bool = False):
    """One ZeRO-3 step of the causal LM on a clipped policy-gradient token loss with random
    advantages (the RL update's shape and cost: forward, backward and AdamW over all weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.engine import build_engine, train_batch

    cfg = model_config(args.arch, args.layers, args.dry, tokenizer)
    tc = train_cfg(args.dry)
    reset_peak(device)
    model = build(AutoModelForCausalLM, cfg, device, tc["bf16"])
    n = args.batch
    engine = build_engine(model, {**tc, "lr": 1e-4 if args.dry else tc["lr"]}, total_steps=1, batch_size=n)
    ids, mask = batch(tokenizer, n, args.prompt_len, args.response_len, cfg.vocab_size, seed=1)
    adv = torch.randn(n, generator=torch.Generator().manual_seed(2))
    dev = engine.device
    with torch.no_grad():
        old = torch.cat([token_logps(engine, ids[s:s + 4], dev) for s in range(0, n, 4)]).detach()
    m = mask[:, 1:].float()

    def loss_fn(sub):
        logp = token_logps(engine, ids[sub], dev)
        ratio = torch.exp(logp - old[sub].to(dev))
        a = adv[sub].to(dev)[:, None]
        per_tok = -torch.minimum(ratio * a, torch.clamp(ratio, 0.8, 1.2) * a)
        mm = m[sub].to(dev)
        return (per_tok * mm).sum() / mm.sum(), {}, None

    sync(device)
    t0 = time.time()
    loss, _, _ = train_batch(engine, list(range(n)), [float(x) for x in m.sum(1)], loss_fn, tc["micro_batch_size"],
                             what="gpu_check policy", step=0, lr_key="rl.lr")
    sync(device)
    dt = time.time() - t0
    out = {"ok": math.isfinite(loss), "loss": loss, "params": n_params(engine.module), "seconds": dt,
           "tokens_per_s": n * ids.shape[1] / dt, "peak_gib": peak_gib(device), "batch": n, "seq_len": int(ids.shape[1])}
    return (out, engine, cfg) if keep else (out, None, None)


def vllm_parts(args, device, tokenizer, engine, cfg) -> dict:
    """vLLM sampling at real width, then one sync of the trained weights and a greedy check."""
    try:
        import vllm  # noqa: F401
    except Exception as e:  # ImportError, or a broken install's RuntimeError
        reason = f"vllm does not import: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return {"vllm_sampling": {"skipped": reason}, "vllm_sync": {"skipped": reason}}
    import torch

    from pipeline.engine import full_state_dict
    from pipeline.modeling import save_policy
    from pipeline.sampler import HFSampler, VLLMSampler

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        from transformers import AutoModelForCausalLM

        init = AutoModelForCausalLM.from_config(cfg)  # untrained weights, saved for vLLM to load
        save_policy(init.to(torch.bfloat16), tokenizer, Path(tmp) / "policy")
        del init
        sampler = VLLMSampler(str(Path(tmp) / "policy"), gpu_memory_utilization=0.35, colocate=True)
        prompts = [f"{i}+{i + 1}=?\n" for i in range(args.vllm_prompts)]
        sync(device)
        t0 = time.time()
        gens = sampler.generate(prompts, n=4, temperature=1.0, max_new_tokens=args.response_len, seed=0)
        dt = time.time() - t0
        toks = sum(len(g.token_ids) for gs in gens for g in gs)
        out["vllm_sampling"] = {"ok": toks > 0, "seconds": dt, "tokens_per_s": toks / dt, "generated_tokens": toks}
        t0 = time.time()
        sampler.sync_weights(engine.module)
        dt = time.time() - t0
        state = full_state_dict(engine.module)
        hf = AutoModelForCausalLM.from_config(cfg)
        hf.load_state_dict(state if state is not None else engine.module.state_dict())
        hf = hf.to(device=device, dtype=torch.bfloat16).eval()
        v = sampler.generate(prompts, n=1, greedy=True, max_new_tokens=16)
        h = HFSampler(hf, tokenizer, batch_size=len(prompts)).generate(prompts, n=1, greedy=True, max_new_tokens=16)
        equal = sum(a[0].token_ids == b[0].token_ids for a, b in zip(v, h))
        out["vllm_sync"] = {"ok": equal == len(prompts), "sync_seconds": dt, "greedy_equal": equal, "prompts": len(prompts)}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry", action="store_true", help="CPU, toy width, fp32: the same code path without a GPU")
    p.add_argument("--arch", choices=list(ARCHITECTURES), default="llama3.1-8b")
    p.add_argument("--layers", type=int, default=8, help="layers at the real width (0: the architecture's own)")
    p.add_argument("--batch", type=int, default=16, help="sequences per optimizer step")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--response-len", type=int, default=256)
    p.add_argument("--vllm-prompts", type=int, default=64)
    p.add_argument("--out", type=Path, required=True, help="JSON with every part's result")
    args = p.parse_args(argv)
    import torch

    if args.dry:
        args.batch, args.prompt_len, args.response_len, args.vllm_prompts = 4, 8, 8, 4
        torch.set_num_threads(1)
    device = "cuda" if torch.cuda.is_available() and not args.dry else "cpu"
    if not args.dry and device != "cuda":
        raise SystemExit("no GPU visible: run with --dry for the CPU check")
    from pipeline.modeling import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    report = {"arch": args.arch, "dry": args.dry, "device": device, "layers": args.layers, "python": platform.python_version(),
              "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for name, part in (("rm_step", lambda: rm_step(args, device, tokenizer)),):
        report[name] = run_part(name, part)
    engine = cfg = None

    def pol():
        nonlocal engine, cfg
        out, engine, cfg = policy_step(args, device, tokenizer, keep=True)
        return out

    report["policy_step"] = run_part("policy_step", pol)
    if engine is not None:
        report.update(vllm_parts(args, device, tokenizer, engine, cfg))
    report["all_ok"] = all(v.get("ok", True) for v in report.values() if isinstance(v, dict))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))
    if not report["all_ok"]:
        raise SystemExit(1)


def run_part(name: str, fn) -> dict:
    """A part's result, or its error (the other parts still run and are recorded)."""
    t0 = time.time()
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001  (recorded, the check goes on)
        import traceback

        return {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:],
                "wall_s": time.time() - t0}
    out["wall_s"] = time.time() - t0
    print(f"{name}: {json.dumps(out, default=str)}", flush=True)
    return out


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
