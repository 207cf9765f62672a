"""Stage: train a head reward model (ORM, MC-PRM on HE or SE labels, PAV) through the shared
DeepSpeed engine, then measure on held-out rollouts how well its solution scores separate
correct from wrong answers (AUROC per aggregation) and, on the testbed, how well its step
scores match the true prefix correctness.

Targets (all binary cross-entropy on the head's logit at a position):
- orm: the outcome, at the last step's final token (where scoring reads the last step);
- prm: Math-Shepherd HE (0/1) or SE (= Q_hat, soft) at every step end;
- pav: Q_hat (soft) at every step end, class-balanced around 0.5 so that the many easy,
  near-1 prefixes do not drown the informative ones (METHODS.md, PAV).
The artifact records training FLOPs plus the data-collection FLOPs of the labels it used.
"""
from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .engine import build_engine
from .flops import Compute, count_params
from .metrics import auroc
from .reward_models import AGGREGATIONS, HeadRewardModel, aggregate, score_positions
from .scoring import collate
from .steps import step_token_ends
from .utils import check_finite, read_json, read_jsonl, seed_everything, stage_parser, start_stage, write_json

log = logging.getLogger("pipeline.train_rm")


def build_examples(rows: list[dict], tokenizer, kind: str | None, prm_label: str = "se") -> list[dict]:
    """Examples {prompt_ids, response_ids, step_token_ends, positions, targets} from seed
    rollouts (orm) or MC label rows (prm, pav); kind None: only what scoring needs."""
    out = []
    for r in rows:
        prompt_ids = tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]
        ends = r.get("step_token_ends") or step_token_ends(tokenizer, r["response_ids"], r["step_ends"])
        if not r["response_ids"] or not ends:
            continue
        ex = {"prompt_ids": prompt_ids, "response_ids": r["response_ids"], "step_token_ends": ends}
        if kind is None:
            pass
        elif kind == "orm":  # read where scoring reads the last step (its final token), not at EOS
            ex["positions"] = score_positions(len(prompt_ids), ends)[-1:]
            ex["targets"] = [float(r["outcome"])]
        else:
            ex["positions"] = score_positions(len(prompt_ids), ends)
            ex["targets"] = [float(x) for x in (r["he"] if kind == "prm" and prm_label == "he" else r["q_hat"])]
        out.append(ex)
    return out


def class_balance_weights(targets: list[float]) -> tuple[float, float]:
    """Weights (w_high, w_low) for targets >= 0.5 and < 0.5 so both halves carry half the total
    weight: w = 0.5 / share of that half. With one half absent there is nothing to balance: (1, 1)."""
    n = len(targets)
    high = sum(t >= 0.5 for t in targets)
    low = n - high
    if high == 0 or low == 0:
        return 1.0, 1.0
    return 0.5 * n / high, 0.5 * n / low


def head_loss(logits: torch.Tensor, batch_examples: list[dict], weights: tuple[float, float] | None) -> torch.Tensor:
    """Mean (weighted) BCE between head logits at the examples' positions and their targets."""
    picked, targets = [], []
    for b, e in enumerate(batch_examples):
        picked.append(logits[b, e["positions"]])
        targets.append(torch.tensor(e["targets"], device=logits.device))
    z, t = torch.cat(picked).float(), torch.cat(targets).float()
    w = None
    if weights is not None:
        w = torch.where(t >= 0.5, torch.full_like(t, weights[0]), torch.full_like(t, weights[1]))
    return F.binary_cross_entropy_with_logits(z, t, weight=w)


def heldout_metrics(rm: HeadRewardModel, rows: list[dict], batch_size: int) -> dict:
    """Solution AUROC (vs outcome) per aggregation and, on the testbed, step AUROC (vs the true
    prefix correctness)."""
    kept = [r for r in rows if r["response_ids"] and r["step_ends"]]
    examples = build_examples(kept, rm.tokenizer, None)
    scores = rm.step_scores(examples, batch_size)
    outcomes = [r["outcome"] for r in kept]
    out: dict = {"n_heldout": len(kept), "pass_rate": sum(outcomes) / max(1, len(outcomes))}
    if 0 < sum(outcomes) < len(outcomes):
        for how in AGGREGATIONS:
            out[f"auroc_{how}"] = auroc([aggregate(s, how) for s in scores], outcomes)
    if kept and "first_error" in kept[0]:
        step_s, step_t = [], []
        for r, s in zip(kept, scores):
            fe = r["first_error"]
            step_s += s
            step_t += [int(fe is None or h < fe) for h in range(len(s))]
        if 0 < sum(step_t) < len(step_t):
            out["step_auroc"] = auroc(step_s, step_t)
    return out


def main(argv=None) -> None:
    p = stage_parser(__doc__)
    p.add_argument("--kind", required=True, choices=["orm", "prm", "pav"])
    p.add_argument("--prm-label", default="se", choices=["he", "se"], help="MC-PRM target: hard or soft estimate")
    p.add_argument("--labels", required=True, help="seed rollouts (orm) or MC labels (prm, pav) JSONL")
    p.add_argument("--policy", required=True, help="policy whose weights initialise the backbone")
    p.add_argument("--heldout", required=True, help="held-out seed rollouts JSONL")
    p.add_argument("--data-cost", nargs="*", default=[], help="summary JSONs whose compute made the labels")
    p.add_argument("--out", required=True, help="output dir: model/ and metrics.json")
    args, cfg = start_stage(p, argv)
    rmc, seed = cfg["rm"], int(cfg["seed"])
    seed_everything(seed)
    t0 = time.time()
    meta = {"prover_k": int(rmc["pav_prover_k"]), "alpha": float(rmc["pav_alpha"]),
            "prm_label": args.prm_label, "init_policy": args.policy}
    rm = HeadRewardModel.init_from_policy(args.policy, args.kind, meta)
    examples = build_examples(read_jsonl(args.labels), rm.tokenizer, args.kind, args.prm_label)
    weights = class_balance_weights([t for e in examples for t in e["targets"]]) if args.kind == "pav" else None
    bs, epochs = int(rmc["batch_size"]), int(rmc["epochs"])
    steps = epochs * -(-len(examples) // bs)
    engine = build_engine(rm.model, rmc, total_steps=steps, micro_batch_size=bs)
    n_params = count_params(rm.model)
    train_compute = Compute()
    losses = []
    for epoch in range(epochs):
        order = list(range(len(examples)))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        for s in tqdm(range(0, len(order), bs), desc=f"{args.kind} epoch {epoch}", mininterval=5):
            chunk = [examples[i] for i in order[s:s + bs]]
            batch = collate([e["prompt_ids"] for e in chunk], [e["response_ids"] for e in chunk],
                            rm.tokenizer.pad_token_id)
            engine.train()
            loss = head_loss(rm.position_logits(engine, batch), chunk, weights)
            check_finite(loss.item(), f"{args.kind} loss", len(losses))
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
            train_compute.add_training(n_params, int(batch["attention_mask"].sum()))
    rm.model = engine.module
    metrics = heldout_metrics(rm, read_jsonl(args.heldout), bs)
    data_compute = Compute()
    for path in args.data_cost:
        data_compute = data_compute.merge(Compute.from_dict(read_json(path)["compute"]))
    metrics.update(kind=args.kind, n_examples=len(examples), n_targets=sum(len(e["targets"]) for e in examples),
                   final_loss=sum(losses[-10:]) / max(1, len(losses[-10:])), loss_curve=losses,
                   train_flops=train_compute.flops, data_flops=data_compute.flops,
                   total_flops=train_compute.flops + data_compute.flops, n_params=n_params, wall_s=time.time() - t0,
                   class_balance=weights)
    rm.meta.update(train_flops=train_compute.flops, data_flops=data_compute.flops)
    rm.save(Path(args.out) / "model")
    write_json(Path(args.out) / "metrics.json", metrics)
    log.info("%s: %s", args.kind, json.dumps({k: v for k, v in metrics.items() if k != "loss_curve"}))


if __name__ == "__main__":
    main()
