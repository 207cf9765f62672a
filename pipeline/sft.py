"""Stage: supervised fine-tuning of the testbed policy, from scratch, into three generators
of different strength (the papers' weak / medium / strong generators).

One run trains a tiny Llama on reference solutions. Every `eval_every` steps it measures
sampled pass@1 on validation prompts; the first checkpoint whose pass@1 reaches a tier's
threshold becomes that tier (so the tiers land in their target bands whatever the speed of
the machine). Tiers not reached by `max_steps` are filled from the final model, with a
warning. Checkpoints every evaluation make the stage resumable after a kill.
"""
from __future__ import annotations

import logging
import random
import shutil
import time
from pathlib import Path

from tqdm import tqdm

from .engine import barrier, build_engine, config_hash, is_main, load_checkpoint, save_checkpoint, train_batch
from .flops import Compute, count_params
from .modeling import build_char_tokenizer, build_tiny_llama, save_policy
from .sampler import HFSampler
from .scoring import collate, token_logprobs
from .evaluate import evaluate_policy
from .task import format_prompt
from .tracking import stage_tracker
from .utils import atomic_dir, read_records, seed_everything, stage_parser, start_stage, write_json

log = logging.getLogger("pipeline.sft")


def encode_examples(records: list[dict], tokenizer, task_cfg: dict) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, solution ids + EOS) per record; the loss covers the solution only."""
    out = []
    for r in records:
        p = tokenizer(format_prompt(r, task_cfg), add_special_tokens=False)["input_ids"]
        y = tokenizer(r["solution"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append((p, y))
    return out


def sft_loss(model, examples, pad_id: int):
    """Mean negative log-likelihood of the solution tokens (the prompt is not trained on)."""
    batch = collate([p for p, _ in examples], [y for _, y in examples], pad_id)
    logp = token_logprobs(model, batch)
    mask = batch["response_mask"].to(logp.device)
    return -(logp * mask).sum() / mask.sum(), int(mask.sum())


def main(argv=None) -> None:
    p = stage_parser(__doc__)
    p.add_argument("--train", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--out", required=True, help="directory that receives one model dir per tier")
    p.add_argument("--ckpt", required=True, help="resume checkpoint directory")
    args, cfg = start_stage(p, argv)
    sft, task_cfg, seed = cfg["sft"], cfg["task"], int(cfg["seed"])
    seed_everything(seed)

    tokenizer = build_char_tokenizer()
    model = build_tiny_llama(tokenizer, cfg["model"], seed)
    n_params = count_params(model)
    log.info("tiny llama: %d parameters", n_params)
    train = encode_examples(read_records(args.train), tokenizer, task_cfg)
    val_records = read_records(args.val)[: int(sft["eval_prompts"])]
    tiers = sorted(sft["tiers"].items(), key=lambda kv: kv[1])  # [(name, threshold)] weakest first
    max_steps, bs = int(sft["max_steps"]), int(sft["batch_size"])
    engine = build_engine(model, sft, total_steps=max_steps, batch_size=bs)

    ckpt = Path(args.ckpt)
    chash = config_hash(cfg)
    state = load_checkpoint(engine, ckpt, chash) or {"step": 0, "curve": [], "tiers": {}, "compute": Compute().to_dict()}
    compute = Compute.from_dict(state["compute"])
    step = state["step"]
    # TensorBoard beside the tiers (models/tensorboard/sft): loss per step, val pass@1 per eval
    tracker = stage_tracker(cfg, Path(args.out).parent / "tensorboard" / "sft", is_main(), step + 1 if step else None)
    t0 = time.time()
    bar = tqdm(total=max_steps, initial=step, desc="sft", mininterval=5, disable=not is_main())
    while step < max_steps and len(state["tiers"]) < len(tiers):
        engine.train()
        rng = random.Random(seed * 1_000_003 + step)  # batch is a function of the step: resume-exact
        batch = [train[i] for i in rng.sample(range(len(train)), bs)]
        # token mean over the whole batch, however it is split over ranks and micro batches
        loss, _, _ = train_batch(engine, batch, [len(y) for _, y in batch],
                                 lambda ex: (sft_loss(engine, ex, tokenizer.pad_token_id)[0], {}, None),
                                 engine.train_micro_batch_size_per_gpu(), what="SFT loss", step=step, lr_key="sft.lr")
        compute.add_training(n_params, sum(len(p) + len(y) for p, y in batch))
        step += 1
        bar.update(1)
        tracker.scalar("sft/loss", loss, step)
        if step % int(sft["eval_every"]) == 0 or step == max_steps:
            sampler = HFSampler(engine.module, tokenizer, batch_size=cfg["sampling"]["batch_size"], progress=False,
                                decode=cfg["sampling"]["decode"])
            ev = evaluate_policy(sampler, val_records, task_cfg, k=1, temperature=float(sft["eval_temperature"]),
                                 max_new_tokens=int(cfg["sampling"]["max_new_tokens"]), seed=seed + step)
            compute = compute.merge(sampler.compute)
            state["curve"].append({"step": step, "loss": loss, "val_pass1": ev["pass1"]})
            log.info("step %d loss %.4f val pass@1 %.3f (%.0fs)", step, loss, ev["pass1"], time.time() - t0)
            tracker.scalar("sft/val_pass1", ev["pass1"], step)
            for name, threshold in tiers:
                if name not in state["tiers"] and (ev["pass1"] >= threshold):
                    save_policy(engine.module, tokenizer, ckpt / "tiers" / name)
                    state["tiers"][name] = {"step": step, "val_pass1": ev["pass1"], "threshold": threshold,
                                            "first_error_hist": ev["first_error_hist"], "reached": True,
                                            "compute": compute.to_dict()}
                    log.info("tier %s: step %d, val pass@1 %.3f", name, step, ev["pass1"])
            state.update(step=step, compute=compute.to_dict())
            save_checkpoint(engine, ckpt, step, chash, state)
            tracker.flush()
    bar.close()
    tracker.close()
    for name, threshold in tiers:  # tiers the budget did not reach come from the final model
        if name not in state["tiers"]:
            log.warning("tier %s (pass@1 >= %.2f) not reached in %d steps; using the final model", name,
                        threshold, max_steps)
            save_policy(engine.module, tokenizer, ckpt / "tiers" / name)
            last = state["curve"][-1] if state["curve"] else {"val_pass1": None}
            state["tiers"][name] = {"step": step, "val_pass1": last["val_pass1"], "threshold": threshold,
                                    "reached": False, "compute": compute.to_dict()}
    barrier()  # rank 0's tier copies are complete before it publishes them
    if not is_main():
        return
    out = Path(args.out)
    for name, _ in tiers:
        publish_tier(ckpt / "tiers" / name, out / name, {**state["tiers"][name], "tier": name, "n_params": n_params})
    write_json(out / "sft_metrics.json", {"curve": state["curve"], "tiers": state["tiers"], "n_params": n_params,
                                          "compute": compute.to_dict(), "wall_s": time.time() - t0})
    shutil.rmtree(ckpt, ignore_errors=True)  # done: resume state no longer needed


def publish_tier(src: Path, dst: Path, meta: dict) -> None:
    """Copy a captured tier into Snakemake's output, with its metadata (step, pass@1, compute)."""
    with atomic_dir(dst) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        write_json(tmp / "policy_meta.json", meta)


if __name__ == "__main__":
    main()
