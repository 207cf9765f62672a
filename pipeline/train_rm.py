"""Stage: train a reward model (ORM, MC-PRM on HE or SE labels, PAV, or an implicit PRM with
one of its outcome losses) through the shared DeepSpeed engine, then measure on held-out rollouts how well its solution scores separate
correct from wrong answers (AUROC per aggregation) and, on the testbed, how well its step
scores match the true prefix correctness.

Targets (all binary cross-entropy on the head's logit at a position):
- orm: the outcome, at the last step's final token (where scoring reads the last step);
- prm: Math-Shepherd HE (0/1) or SE (= Q_hat, soft) at every step end, and at the prompt's last
  token the same label of the empty prefix (from the MC value v0 of the bare prompt);
- pav: Q_hat (soft) at every step end and v0 = V(x) at the prompt's last token (PAV's Q_0),
  class-balanced around 0.5 so that the many easy, near-1 prefixes do not drown the
  informative ones (METHODS.md, PAV).
- implicit: the outcome label of each seed rollout through the sequence reward
  r(y) = beta * log(pi_phi(y)/pi_ref(y)): CE, CE balanced per instruction or per dataset
  (random filtering of the majority class, as exact weights), DPO and NCA on (correct,
  incorrect) pairs of one prompt, KTO with the KL reference point from the mismatched pairs of
  the whole optimizer batch (computed once before its micro batches, all-reduced over ranks).
- likelihood (no training, no labels): the policy's own step log-likelihood as a verifier, the
  untrained baseline (rewards/likelihood.py); only the held-out metrics are measured.
The artifact records training FLOPs plus the data-collection FLOPs of the labels it used.

Ablation options (workflow/rules/ablations.smk), all applied to the same label file, so grid cells
never resample: `--responses-per-instruction` / `--instruction-frac` train on a nested subsample
(charged that share of the sampling cost), `--dedup` drops repeated responses of an instruction,
and `--step-labels` (implicit PRM) adds the MC step labels of those rollouts as a BCE term on
sigmoid(q_h), the implicit PRM's Q at each step end (the Implicit PRM paper's "extra step labels").
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

from .engine import accumulation_steps, build_engine, is_main, rank_world, train_batch
from .flops import Compute, count_params
from .mc_values import hard_estimate, select_seeds
from .metrics import auroc, within_group_auroc
from .registry import IMPLICIT_LOSSES, OUTCOME_LABELLED_KINDS, PAIR_LOSSES, REWARD_KINDS
from .rewards import (AGGREGATIONS, HeadRewardModel, ImplicitPRM, LikelihoodVerifier, aggregate, score_positions,
                      scoring_examples)
from .rewards.losses import balanced_ce_weights, ce_loss, dpo_loss, kto_kl_estimate, kto_loss, nca_loss, step_q_values
from .scoring import collate, split_responses, token_logprobs
from .tracking import stage_tracker
from .utils import parse_cfg, read_json, read_jsonl, seed_everything, stage_parser, start_stage, write_json

log = logging.getLogger("pipeline.train_rm")


def build_examples(rows: list[dict], tokenizer, kind: str | None, prm_label: str = "se") -> list[dict]:
    """Examples {prompt_ids, response_ids, step_token_ends, positions, targets} from seed
    rollouts (orm) or MC label rows (prm, pav), skipping rows without steps; kind None: only
    what scoring needs.

    MC-label kinds (prm, pav) also train the empty prefix: position `len(prompt_ids) - 1` (the
    prompt's last token, where `HeadRewardModel.head_probs` reads V(x)) with the row's MC value
    of the bare prompt as target, so PAV's Q_0 in A_1 = Q_1 - Q_0 is a trained output (METHODS.md,
    PAV) rather than whatever the untrained head says there."""
    out = []
    for r, ex in zip(rows, scoring_examples(rows, tokenizer)):
        if ex is None:
            continue
        ex = dict(ex)
        n_prompt, ends = len(ex["prompt_ids"]), ex["step_token_ends"]
        if kind == "orm":  # read where scoring reads the last step (its final token), not at EOS
            ex["positions"] = score_positions(n_prompt, ends)[-1:]
            ex["targets"] = [float(r["outcome"])]
        elif kind is not None:
            hard = kind == "prm" and prm_label == "he"
            # The prompt-position target is in the same units as the step targets of this kind:
            # HE -> hard_estimate(v0) = 1 iff some completion of the bare prompt was right (v0 =
            # n_correct / n_mc of the prompt, so this is exactly how mc_label derives HE of a step);
            # SE and PAV -> v0, Q_hat of the completer. PAV deliberately uses `v0`, not `v0_bok`:
            # its head learns Q^pi of the completer (targets q_hat, not q_bok), and the Best-of-K
            # prover is applied to the head's outputs at scoring time (pav_effective_rewards takes
            # best_of_k of both Q_h and V(x)); training V(x) on v0_bok would apply it twice.
            v0 = float(hard_estimate(r["v0"])) if hard else float(r["v0"])
            # Every seed rollout of a prompt carries the same v0, so V(x) is one target per row,
            # as each step is (the prompt position sees only the prompt: the same logit each time).
            ex["positions"] = [n_prompt - 1] + score_positions(n_prompt, ends)
            ex["targets"] = [v0] + [float(x) for x in (r["he"] if hard else r["q_hat"])]
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


def recipe_summary(kind: str, init_policy: str, n_rows: int, score_with_reference: bool | None = None) -> str:
    """What a verifier was built from, as table 1 shows it beside its row: the backbone it
    starts from, what it was trained on, and (implicit PRMs) whether it scores with its reference."""
    init = Path(init_policy).name or init_policy
    if not REWARD_KINDS[kind].trained:
        return f"untrained {init} policy"
    labels = "outcome-labelled rollouts" if kind in OUTCOME_LABELLED_KINDS else "MC-labelled rollouts"
    out = f"init {init}; {n_rows} {labels}"
    if score_with_reference is not None:
        out += "; scored " + ("with" if score_with_reference else "without") + " reference"
    return out


def heldout_metrics(rm, rows: list[dict], batch_size: int) -> dict:
    """Solution AUROC (vs outcome) per aggregation, pooled and within prompts, and, on the
    testbed, step AUROC (vs the true prefix correctness)."""
    kept = [r for r in rows if r["response_ids"] and r["step_ends"]]
    examples = build_examples(kept, rm.tokenizer, None)
    scores = rm.step_scores(examples, batch_size)
    outcomes = [r["outcome"] for r in kept]
    out: dict = {"n_heldout": len(kept), "pass_rate": sum(outcomes) / max(1, len(outcomes))}
    if 0 < sum(outcomes) < len(outcomes):
        for how in AGGREGATIONS:
            if how == "product" and not rm.scores_are_probabilities:
                continue
            agg = [aggregate(s, how) for s in scores]
            out[f"auroc_{how}"] = auroc(agg, outcomes)
            # ranking the samples of one prompt is what best-of-N needs
            out[f"within_prompt_auroc_{how}"] = within_group_auroc(agg, outcomes, [r["id"] for r in kept])
    if kept and "first_error" in kept[0]:
        step_s, step_t = [], []
        for r, s in zip(kept, scores):
            fe = r["first_error"]
            step_s += s
            step_t += [int(fe is None or h < fe) for h in range(len(s))]
        if 0 < sum(step_t) < len(step_t):
            out["step_auroc"] = auroc(step_s, step_t)
    return out


def run_training(engine, n_items: int, per_batch: int, epochs: int, seed: int, desc: str, batch_loss, item_weight,
                 item_tokens, compute: Compute, n_params: int, before_batch=None, lr_key: str = "rm.lr") -> list[float]:
    """The loop every reward model shares: shuffled epochs (the order is a function of the
    epoch), one optimizer step per batch through `train_batch` (split over ranks and micro
    batches), NaN/inf check. `batch_loss(indices)` is the mean loss of those items, whose
    weights in it are `item_weight(i)` (so the batch's loss is the same however it is split);
    `item_tokens(i)` the tokens item i puts through the model. `before_batch(indices)`, if given,
    runs once per optimizer batch (on every rank, with the whole batch) before its micro batches:
    the place for quantities of the whole batch that the loss treats as constants (KTO's
    reference point)."""
    losses: list[float] = []
    for epoch in range(epochs):
        order = list(range(n_items))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        for s in tqdm(range(0, n_items, per_batch), desc=f"{desc} epoch {epoch}", mininterval=5,
                      disable=not is_main()):
            engine.train()
            idx = order[s:s + per_batch]
            if before_batch is not None:
                before_batch(idx)
            loss, _, _ = train_batch(engine, idx, [item_weight(i) for i in idx], lambda sub: (batch_loss(sub), {}, None),
                                     engine.train_micro_batch_size_per_gpu(), what=f"{desc} loss", step=len(losses),
                                     lr_key=lr_key)
            losses.append(loss)
            compute.add_training(n_params, sum(item_tokens(i) for i in idx))
    return losses


def train_head(rm: HeadRewardModel, examples: list[dict], rmc: dict, weights, seed: int, kind: str
               ) -> tuple[list[float], Compute]:
    bs, epochs = int(rmc["batch_size"]), int(rmc["epochs"])
    engine = build_engine(rm.model, rmc, total_steps=epochs * -(-len(examples) // bs), batch_size=bs)
    compute = Compute()

    def batch_loss(idx):
        chunk = [examples[i] for i in idx]
        batch = collate([e["prompt_ids"] for e in chunk], [e["response_ids"] for e in chunk], rm.tokenizer.pad_token_id)
        return head_loss(rm.position_logits(engine, batch), chunk, weights)

    # head_loss averages over target positions (class weights inside the mean): an example weighs
    # its number of target positions, the prompt position of MC-label kinds included
    losses = run_training(engine, len(examples), bs, epochs, seed, kind, batch_loss,
                          lambda i: len(examples[i]["positions"]),
                          lambda i: len(examples[i]["prompt_ids"]) + len(examples[i]["response_ids"]),
                          compute, count_params(rm.model))
    rm.model = engine.module
    return losses, compute




def implicit_examples(rows: list[dict], tokenizer) -> list[dict]:
    """Seed rollouts as implicit-PRM data: outcome label, instruction id and dataset name."""
    base = build_examples(rows, tokenizer, None)
    kept = [r for r in rows if r["response_ids"] and r["step_ends"]]
    for e, r in zip(base, kept):
        e.update(label=float(r["outcome"]), instruction=r["id"], dataset=r.get("source", "all"))
    return base


def subsample_rows(rows: list[dict], responses_per_instruction: int | None = None,
                   instruction_frac: float = 1.0, seed: int = 0) -> list[dict]:
    """The training rows of a data-scaling ablation, drawn from the same seed rollouts: the first
    round(instruction_frac * #instructions) instructions (at least one), and of each at most
    `responses_per_instruction` responses drawn as MC labelling draws its seeds (`select_seeds`:
    seeded per instruction, so a smaller draw is a subset of a larger one). No options: `rows`."""
    if not 0 < instruction_frac <= 1:
        raise ValueError(f"instruction_frac must be in (0, 1], got {instruction_frac}")
    if responses_per_instruction is not None and responses_per_instruction < 1:
        raise ValueError(f"responses_per_instruction must be >= 1, got {responses_per_instruction}")
    if responses_per_instruction is None and instruction_frac == 1:
        return list(rows)
    n_inst = len({r["id"] for r in rows})
    n_keep = max(1, round(instruction_frac * n_inst))
    return select_seeds(rows, n_keep, responses_per_instruction or len(rows), seed)


def balance_rows(rows: list[dict], seed: int = 0) -> list[dict]:
    """`rm.head_balance: instruction` for the scalar-head kinds: per instruction keep every
    rollout of the minority outcome and a seeded random subset of the same size of the majority,
    the Implicit PRM paper's instruction-wise balancing by filtering (as `balanced_ce_weights`
    expresses it for CE); an instruction with one outcome drops out. Within every kept prompt
    right and wrong answers weigh the same, so the head gains nothing from how hard a prompt is
    and must learn what tells one prompt's samples apart, the ranking best-of-N needs. Row order
    is kept."""
    by_id: dict = {}
    for i, r in enumerate(rows):
        by_id.setdefault(r["id"], ([], []))[1 if float(r["outcome"]) >= 0.5 else 0].append(i)
    keep: set[int] = set()
    for key, (wrong, right) in by_id.items():
        m = min(len(wrong), len(right))
        rng = random.Random(f"{seed}:{key}")
        for group in (wrong, right):
            keep.update(group if len(group) == m else rng.sample(group, m))
    return [r for i, r in enumerate(rows) if i in keep]


def dedup_rows(rows: list[dict]) -> list[dict]:
    """Drop a response identical (same token ids) to an earlier one of the same instruction."""
    seen, out = set(), []
    for r in rows:
        key = (r["id"], tuple(r["response_ids"]))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def attach_step_labels(examples: list[dict], rows: list[dict], mc_rows: list[dict], label: str = "he") -> int:
    """Give each implicit-PRM example whose seed rollout has MC step labels (matched by id and
    sample_idx) `step_targets`: Math-Shepherd HE or SE per step. `examples` align with the rows
    that have a response and steps. Returns how many examples got labels."""
    by_key = {(m["id"], m["sample_idx"]): m for m in mc_rows}
    kept = [r for r in rows if r["response_ids"] and r["step_ends"]]
    n = 0
    for e, r in zip(examples, kept):
        m = by_key.get((r["id"], r.get("sample_idx")))
        if m is not None and len(m[label]) == len(e["step_token_ends"]):
            e["step_targets"] = [float(x) for x in m[label]]
            n += 1
    return n


def step_label_loss(token_rewards: list[torch.Tensor], batch_examples: list[dict]) -> torch.Tensor | None:
    """BCE between sigmoid(q_h), the implicit PRM's Q at the end of step h (the last step runs
    through EOS, as in scoring), and the MC step labels, over every labelled step of the batch;
    None when no example of the batch has labels."""
    qs, ts = [], []
    for tr, e in zip(token_rewards, batch_examples):
        if e.get("step_targets"):
            ends = list(e["step_token_ends"][:-1]) + [len(e["response_ids"])]
            qs.append(step_q_values(tr, ends))
            ts.append(torch.tensor(e["step_targets"], device=tr.device))
    if not qs:
        return None
    return F.binary_cross_entropy_with_logits(torch.cat(qs).float(), torch.cat(ts).float())


def preference_pairs(examples: list[dict]) -> list[tuple[int, int]]:
    """Every (correct, incorrect) pair of responses to the same instruction, in data order."""
    by_inst: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_inst.setdefault(e["instruction"], []).append(i)
    return [(w, l) for idx in by_inst.values() for w in idx if examples[w]["label"] == 1
            for l in idx if examples[l]["label"] == 0]


@torch.no_grad()
def reference_logprobs(prm: ImplicitPRM, examples: list[dict], batch_size: int) -> list[torch.Tensor]:
    """log pi_ref over each response, computed once: the reference is frozen."""
    out: list[torch.Tensor] = []
    for s in range(0, len(examples), batch_size):
        chunk = examples[s:s + batch_size]
        batch = collate([e["prompt_ids"] for e in chunk], [e["response_ids"] for e in chunk], prm.tokenizer.pad_token_id)
        out.extend(v.cpu() for v in split_responses(token_logprobs(prm.ref_model, batch), batch))
    return out


def kto_mismatched(examples: list[dict], batch: list[int]) -> list[dict]:
    """KTO's mismatched pairs of a batch of example indices: prompt x_k with the response of the
    next item, y_{k+1 mod B} (TRL `_get_kl_dataset` rotates the batch's completions by one)."""
    n = len(batch)
    return [dict(examples[i], response_ids=examples[batch[(k + 1) % n]]["response_ids"]) for k, i in enumerate(batch)]


@torch.no_grad()
def kto_reference_point(prm: ImplicitPRM, model, examples: list[dict], batch: list[int], micro_batch_size: int,
                        distributed: bool = True) -> torch.Tensor:
    """KTO's reference point z0 of one optimizer batch: `kto_kl_estimate` over the rewards of the
    mismatched pairs of the *whole* batch (`kto_mismatched`), as TRL and OpenRLHF take it over the
    batch (all-gathered across processes). Computing it inside each micro batch instead would make
    the loss depend on how the batch is split: a micro batch of one pairs an example with its own
    response, so z0 = max(0, r_i), a zero-information "KL".

    z0 is detached in KTO, so a no-grad forward suffices. With `distributed` and several ranks,
    rank r scores pairs r, r + N, ... in forwards of `micro_batch_size` (every rank takes the same
    number, as ZeRO-3 gathers parameters collectively) and the rewards are all-reduced into one
    vector of the batch, so every rank gets the same z0 as a single process. Returns a scalar."""
    rank, world = rank_world() if distributed else (0, 1)
    mism = kto_mismatched(examples, batch)
    mine = list(range(rank, len(batch), world))
    n_forwards = accumulation_steps(len(batch), micro_batch_size, world)  # train_batch's count per rank
    r_mm = None
    for c in range(n_forwards):
        idx = mine[c * micro_batch_size:(c + 1) * micro_batch_size]
        trs = prm.response_token_rewards(model, [mism[j] for j in (idx or [0])])
        if r_mm is None:
            r_mm = torch.zeros(len(batch), dtype=torch.float32, device=trs[0].device)
        for j, t in zip(idx, trs):  # a padding forward (no items of this rank left) adds nothing
            r_mm[j] = t.float().sum()
    if world > 1:  # each entry is filled on exactly one rank: the sum is the whole batch's vector
        torch.distributed.all_reduce(r_mm)
    return kto_kl_estimate(r_mm)


def implicit_loss(prm: ImplicitPRM, model, loss: str, items: list, examples: list[dict], ref: list[torch.Tensor],
                  weights: torch.Tensor | None, step_coef: float = 0.0,
                  kl_ref: torch.Tensor | None = None) -> torch.Tensor:
    """Loss of one batch: `items` are example indices (CE, KTO) or (chosen, rejected) pairs
    (DPO, NCA). With `step_coef` > 0, CE and KTO add `step_coef` x the BCE of sigmoid(q_h) against
    the examples' MC step labels (`step_label_loss`). KTO takes its reference point `kl_ref`, that
    of the whole optimizer batch (`kto_reference_point`) when `items` is one micro batch of it;
    None: `items` is the whole batch and z0 is computed over it here. Returns the batch's loss."""
    def rewards(idx):
        exs = [examples[i] for i in idx]
        trs = prm.response_token_rewards(model, exs, [ref[i] for i in idx])
        return torch.stack([t.sum() for t in trs]), trs

    if loss in PAIR_LOSSES:
        r, _ = rewards([w for w, _ in items] + [l for _, l in items])
        r_w, r_l = r[: len(items)], r[len(items):]
        return dpo_loss(r_w, r_l) if loss == "dpo" else nca_loss(r_w, r_l)
    r, trs = rewards(items)
    labels = torch.tensor([examples[i]["label"] for i in items], device=r.device)
    step = step_label_loss(trs, [examples[i] for i in items]) if step_coef > 0 else None
    extra = 0.0 if step is None else step_coef * step
    if loss == "kto":
        if kl_ref is None:  # `items` is a whole batch in one process (no micro batches to share z0 with)
            kl_ref = kto_reference_point(prm, model, examples, list(items), len(items), distributed=False)
        return kto_loss(r, labels, kl_ref) + extra
    w = weights[items].to(r.device) if weights is not None else None
    return ce_loss(r, labels, w) + extra


def train_implicit(prm: ImplicitPRM, examples: list[dict], rmc: dict, loss: str, seed: int,
                   step_coef: float = 0.0) -> tuple[list[float], Compute]:
    if loss not in IMPLICIT_LOSSES:
        raise ValueError(f"implicit PRM loss must be one of {IMPLICIT_LOSSES}, got {loss!r}")
    if step_coef > 0 and loss in PAIR_LOSSES:
        raise ValueError(f"step labels add a per-example term; loss {loss!r} trains on pairs (use ce, ce_inst, "
                         "ce_data or kto)")
    bs, epochs = int(rmc["batch_size"]), int(rmc["epochs"])
    n_params = count_params(prm.model)
    compute = Compute()
    ref = reference_logprobs(prm, examples, bs)
    compute.add_scoring(n_params, sum(len(e["prompt_ids"]) + len(e["response_ids"]) for e in examples))
    items = preference_pairs(examples) if loss in PAIR_LOSSES else list(range(len(examples)))
    if not items:
        raise ValueError(f"no training items for implicit loss {loss!r} (no correct/incorrect pairs?)")
    labels = torch.tensor([e["label"] for e in examples])
    weights = None
    if loss == "ce_inst":
        weights = balanced_ce_weights(labels, [e["instruction"] for e in examples])
    elif loss == "ce_data":
        weights = balanced_ce_weights(labels, [e["dataset"] for e in examples])
    pairs = loss in PAIR_LOSSES
    per_batch = max(1, bs // 2) if pairs else bs  # a pair is two sequences
    train_cfg = {**rmc, "lr": rmc["implicit_lr"]}
    if pairs and rmc.get("micro_batch_size"):
        train_cfg["micro_batch_size"] = max(1, int(rmc["micro_batch_size"]) // 2)
    engine = build_engine(prm.model, train_cfg, total_steps=epochs * -(-len(items) // per_batch), batch_size=per_batch)

    def seq_tokens(i: int) -> int:
        return len(examples[i]["prompt_ids"]) + len(examples[i]["response_ids"])

    def item_weight(j: int) -> float:
        # CE: its weighted mean over examples; pairs and KTO: a mean over items (KTO's reference
        # point is the whole batch's, fixed before its micro batches). The step-label term is a
        # mean within each micro batch (exact without micro batches)
        return float(weights[items[j]]) if weights is not None else 1.0

    def item_tokens(j: int) -> int:
        if pairs:
            return seq_tokens(items[j][0]) + seq_tokens(items[j][1])
        return seq_tokens(items[j])

    # KTO: z0 of the optimizer batch about to be trained, shared by all of its micro batches
    kl: dict[str, torch.Tensor] = {}

    def kto_batch(idx: list[int]) -> None:
        batch = [items[i] for i in idx]
        kl["z0"] = kto_reference_point(prm, engine, examples, batch, engine.train_micro_batch_size_per_gpu())
        # a forward without backward: scoring FLOPs of the mismatched pairs (x_k, y_{k+1})
        mism = kto_mismatched(examples, batch)
        compute.add_scoring(n_params, sum(len(e["prompt_ids"]) + len(e["response_ids"]) for e in mism))

    losses = run_training(engine, len(items), per_batch, epochs, seed, f"implicit {loss}",
                          lambda idx: implicit_loss(prm, engine, loss, [items[i] for i in idx], examples, ref, weights,
                                                    step_coef, kl.get("z0")),
                          item_weight, item_tokens, compute, n_params,
                          before_batch=kto_batch if loss == "kto" else None, lr_key="rm.implicit_lr")
    prm.model = engine.module
    return losses, compute


def build_untrained(args, batch_size: int, t0: float) -> None:
    """The likelihood baseline: the policy as it is, with the held-out metrics every reward model
    gets (its best aggregation is chosen on them, as for trained ones) and no training compute."""
    rm = LikelihoodVerifier.init_from_policy(args.policy, {"init_policy": args.policy})
    metrics = heldout_metrics(rm, read_jsonl(args.heldout), batch_size)
    n_params = count_params(rm.model)
    metrics.update(kind=args.kind, loss=None, n_examples=0, n_targets=0, final_loss=None, loss_curve=[],
                   train_flops=0.0, data_flops=0.0, total_flops=0.0, n_params=n_params, wall_s=time.time() - t0,
                   class_balance=None, data_fraction=0.0, ablation=None,
                   recipe=recipe_summary(args.kind, args.policy, 0))
    rm.meta.update(train_flops=0.0, data_flops=0.0)
    rm.save(Path(args.out) / "model")
    if is_main():
        write_json(Path(args.out) / "metrics.json", metrics)
        log.info("%s: %s", args.kind, json.dumps({k: v for k, v in metrics.items() if k != "loss_curve"}))
        track_rm(parse_cfg(args.cfg), args.out, [], metrics)


def track_rm(cfg: dict, out: str, losses: list[float], metrics: dict) -> None:
    """TensorBoard under <out>/tensorboard (rm/<name>/; a side channel, always a fresh run): the
    per-batch training loss (step = batch, from 1) and the held-out metrics (AUROCs, pass rate)
    as scalars at the last step."""
    with stage_tracker(cfg, Path(out) / "tensorboard", run_name=Path(out).name) as tracker:
        for i, loss in enumerate(losses):
            tracker.scalar("rm/loss", loss, i + 1)
        tracker.scalars({k: v for k, v in metrics.items() if "auroc" in k or k in ("pass_rate", "n_heldout")},
                        len(losses), prefix="heldout")


def main(argv=None) -> None:
    p = stage_parser(__doc__)
    p.add_argument("--kind", required=True, choices=list(REWARD_KINDS),
                   help="likelihood: the untrained baseline (the policy's own step log-likelihood); no --labels")
    p.add_argument("--loss", default="ce", choices=IMPLICIT_LOSSES, help="implicit PRM training loss")
    p.add_argument("--prm-label", default="se", choices=["he", "se"], help="MC-PRM target: hard or soft estimate")
    p.add_argument("--labels", help="seed rollouts (orm, implicit) or MC labels (prm, pav) JSONL")
    p.add_argument("--policy", required=True, help="policy whose weights initialise the backbone")
    p.add_argument("--heldout", required=True, help="held-out seed rollouts JSONL")
    p.add_argument("--data-cost", nargs="*", default=[], help="summary JSONs whose compute made the labels")
    p.add_argument("--out", required=True, help="output dir: model/ and metrics.json")
    # ablation options (workflow/rules/ablations.smk): subsets and variants of the same labels
    p.add_argument("--responses-per-instruction", type=int, default=None,
                   help="train on at most this many responses per instruction (subsample_rows)")
    p.add_argument("--instruction-frac", type=float, default=1.0, help="train on this share of the instructions")
    p.add_argument("--dedup", action="store_true", help="drop responses identical to an earlier one of the same instruction")
    p.add_argument("--step-labels", default=None,
                   help="implicit: MC labels JSONL (pipeline.mc_label) whose --prm-label step labels add a BCE term on q_h")
    p.add_argument("--step-coef", type=float, default=1.0, help="weight of the step-label term")
    p.add_argument("--step-labels-cost", nargs="*", default=[], help="summary JSONs whose compute made the step labels")
    args, cfg = start_stage(p, argv)
    if not REWARD_KINDS[args.kind].trained:  # its config: verify.score_batch_size only
        if args.labels:
            raise SystemExit(f"--labels: --kind {args.kind} is not trained")
        build_untrained(args, int(cfg["verify"]["score_batch_size"]), time.time())
        return
    rmc, seed = cfg["rm"], int(cfg["seed"])
    seed_everything(seed)
    t0 = time.time()
    meta = {"prover_k": int(rmc["pav_prover_k"]), "alpha": float(rmc["pav_alpha"]),
            "prm_label": args.prm_label, "init_policy": args.policy}
    bs = int(rmc["batch_size"])
    if args.step_labels and args.kind != "implicit":
        raise SystemExit("--step-labels: only for --kind implicit (the other kinds train on MC labels already)")
    if not args.labels:
        raise SystemExit(f"--labels is required for --kind {args.kind}")
    all_rows = read_jsonl(args.labels)
    rows = subsample_rows(all_rows, args.responses_per_instruction, args.instruction_frac, seed)
    # a subsample pays for the share of the sampling it would have needed; dropping duplicates saves none
    data_frac = len(rows) / max(1, len(all_rows))
    if args.dedup:
        rows = dedup_rows(rows)
    ablation = {"responses_per_instruction": args.responses_per_instruction, "instruction_frac": args.instruction_frac,
                "dedup": args.dedup, "n_rows": len(rows), "n_rows_available": len(all_rows),
                "n_instructions": len({r["id"] for r in rows}), "step_labels": bool(args.step_labels)}
    if args.kind == "implicit":
        meta.update(beta=float(rmc["implicit_beta"]), loss=args.loss)
        rm = ImplicitPRM.init_from_policy(args.policy, meta)
        examples = implicit_examples(rows, rm.tokenizer)
        step_coef = 0.0
        if args.step_labels:
            ablation["n_step_labelled"] = attach_step_labels(examples, rows, read_jsonl(args.step_labels),
                                                             args.prm_label)
            step_coef = args.step_coef
            ablation.update(step_label=args.prm_label, step_coef=step_coef)
        losses, train_compute = train_implicit(rm, examples, rmc, args.loss, seed, step_coef)
        # trained against the reference either way; rm.implicit_score_reference decides whether
        # every scorer (held-out metrics here, score_pool, search) reads the ratio or log pi_phi
        rm.score_with_reference(rmc["implicit_score_reference"])
        weights = None
        n_params = count_params(rm.model)
    else:
        if rmc["head_balance"] == "instruction":
            rows = balance_rows(rows, seed)
            ablation.update(head_balance="instruction", n_rows_balanced=len(rows))
        rm = HeadRewardModel.init_from_policy(args.policy, args.kind, meta, dropout=float(rmc["head_dropout"]))
        examples = build_examples(rows, rm.tokenizer, args.kind, args.prm_label)
        weights = class_balance_weights([t for e in examples for t in e["targets"]]) if args.kind == "pav" else None
        losses, train_compute = train_head(rm, examples, rmc, weights, seed, args.kind)
        n_params = count_params(rm.model)
    metrics = heldout_metrics(rm, read_jsonl(args.heldout), bs)
    data_compute = Compute()
    for path in args.data_cost:
        data_compute = data_compute.merge(Compute.from_dict(read_json(path)["compute"]))
    data_compute.flops *= data_frac
    for path in args.step_labels_cost:
        data_compute = data_compute.merge(Compute.from_dict(read_json(path)["compute"]))
    metrics.update(kind=args.kind, loss=args.loss if args.kind == "implicit" else "bce", n_examples=len(examples),
                   n_targets=sum(len(e.get("targets", [0])) for e in examples),
                   final_loss=sum(losses[-10:]) / max(1, len(losses[-10:])), loss_curve=losses,
                   train_flops=train_compute.flops, data_flops=data_compute.flops,
                   total_flops=train_compute.flops + data_compute.flops, n_params=n_params, wall_s=time.time() - t0,
                   class_balance=weights, data_fraction=data_frac, ablation=ablation,
                   recipe=recipe_summary(args.kind, args.policy, len(rows), rm.meta.get("score_with_reference")))
    rm.meta.update(train_flops=train_compute.flops, data_flops=data_compute.flops)
    rm.save(Path(args.out) / "model")
    if not is_main():  # rank 0 writes the outputs
        return
    write_json(Path(args.out) / "metrics.json", metrics)
    log.info("%s: %s", args.kind, json.dumps({k: v for k, v in metrics.items() if k != "loss_curve"}))
    track_rm(cfg, args.out, losses, metrics)


if __name__ == "__main__":
    main()
