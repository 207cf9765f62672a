"""Stage: Monte-Carlo step labels from partial rollouts (Math-Shepherd, PAV).

From every step boundary of each seed rollout, sample `n_mc` completions with a completer
policy mu and grade them. Q_hat(s_h, a_h) is the fraction that reach the right answer. Per
step we store:
- Math-Shepherd hard / soft estimates: HE = 1 if any completion is right, SE = Q_hat;
- PAV targets: Q under a Best-of-K prover, 1 - (1 - Q_hat)^K, and step advantages
  A_h = Q_h - Q_{h-1}, with Q_0 = V(x) estimated from `n_mc` completions of the bare prompt,
  both for mu itself (`adv`) and for the Best-of-K prover (`adv_bok`).
The last step of a finished response needs no sampling: its Q is the response's outcome.

Completions of one prefix share its computation (`Sampler.generate_from_prefixes`: one
prefill and a copied KV cache on the HF backend, prefix caching on vLLM). Every generated
and prefilled token is counted as the data-collection cost of the models trained on this.
On the testbed, a small table reports how the MC labels agree with the true step validity.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd

from .metrics import auroc
from .sampler import make_sampler
from .steps import step_token_ends
from .task import judge
from .utils import atomic_path, read_jsonl, stage_parser, start_stage, write_json, write_jsonl

log = logging.getLogger("pipeline.mc_label")


# ---- pure label functions (tests/test_mc_label.py checks them by hand) ----

def hard_estimate(q_hat: float) -> int:
    """Math-Shepherd HE: 1 if any completion from the prefix reached the right answer."""
    return int(q_hat > 0)


def best_of_k(q: float, k: int) -> float:
    """Q under a Best-of-K prover built from a policy with value q: 1 - (1 - q)^K."""
    return 1.0 - (1.0 - q) ** k


def step_advantages(q_steps: list[float], v0: float) -> list[float]:
    """A_h = Q_h - Q_{h-1} with Q_0 = V(x) (PAV's process reward under a prover)."""
    prev = [v0] + list(q_steps[:-1])
    return [q - p for q, p in zip(q_steps, prev)]


def step_labels(n_correct: list[int], n_mc: int, v0_correct: int, prover_k: int) -> dict:
    """All per-step targets from completion counts (last step may carry an exact 0/1 outcome,
    passed as n_correct == 0 or n_mc)."""
    q = [c / n_mc for c in n_correct]
    v0 = v0_correct / n_mc
    q_bok = [best_of_k(x, prover_k) for x in q]
    v0_bok = best_of_k(v0, prover_k)
    return {"q_hat": q, "he": [hard_estimate(x) for x in q], "se": q, "v0": v0, "adv": step_advantages(q, v0),
            "q_bok": q_bok, "v0_bok": v0_bok, "adv_bok": step_advantages(q_bok, v0_bok)}


def agreement_table(rows: list[dict]) -> pd.DataFrame:
    """How MC labels agree with the ground-truth prefix correctness (testbed only).

    Truth for step h: every step up to h is valid (h < first_error). Rows: HE and SE >= 0.5
    as classifiers of that truth, with accuracy, the share of wrong prefixes they catch and
    the share of correct prefixes they falsely flag; plus AUROC of the soft scores."""
    truth, he, se, q_bok = [], [], [], []
    for r in rows:
        fe = r.get("first_error")
        for h in range(len(r["q_hat"])):
            truth.append(int(fe is None or h < fe))
            he.append(r["he"][h])
            se.append(r["se"][h])
            q_bok.append(r["q_bok"][h])
    out = []
    for name, pred, score in (("HE (any completion right)", he, he), ("SE >= 0.5", [int(s >= 0.5) for s in se], se),
                              ("Q_BoK >= 0.5", [int(s >= 0.5) for s in q_bok], q_bok)):
        wrong = [p for p, t in zip(pred, truth) if t == 0]
        right = [p for p, t in zip(pred, truth) if t == 1]
        out.append({"label": name, "n_steps": len(truth), "accuracy": sum(p == t for p, t in zip(pred, truth)) / len(truth),
                    "wrong_caught": (sum(1 - p for p in wrong) / len(wrong)) if wrong else None,
                    "correct_flagged": (sum(1 - p for p in right) / len(right)) if right else None,
                    "auroc": auroc(score, truth) if wrong and right else None})
    return pd.DataFrame(out)


# ---- the stage ----

def select_seeds(rollouts: list[dict], n_prompts: int, n_cov: int) -> list[dict]:
    """The first `n_cov` seed rollouts of each of the first `n_prompts` prompts (the samples
    are i.i.d., so the first n_cov are a random selection)."""
    by_id: dict[str, list[dict]] = defaultdict(list)
    for r in rollouts:
        by_id[r["id"]].append(r)
    ids = list(by_id)[:n_prompts]
    return [r for i in ids for r in sorted(by_id[i], key=lambda r: r["sample_idx"])[:n_cov]]


def main(argv=None) -> None:
    p = stage_parser(__doc__)
    p.add_argument("--rollouts", required=True, help="seed rollouts JSONL (pipeline.rollouts)")
    p.add_argument("--completer", required=True, help="completer policy mu (model dir or hub id)")
    p.add_argument("--out", required=True, help="MC labels JSONL; .summary.json and .agreement.csv beside it")
    args, cfg = start_stage(p, argv)
    mc, task_cfg, samp = cfg["mc_label"], cfg["task"], cfg["sampling"]
    n_mc, k = int(mc["n_mc"]), int(mc["prover_k"])
    t0 = time.time()
    seeds = select_seeds(read_jsonl(args.rollouts), int(mc["n_prompts"]), int(mc["n_cov"]))
    sampler = make_sampler(samp, model_path=args.completer)
    tokenizer = sampler.tokenizer

    # prefixes: the bare prompt once per prompt (V(x)), then prompt + steps 1..h for h < H
    prompt_ids = {r["id"]: tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in seeds}
    prefixes, owners = [], []  # owners[i] = (seed index or None, step h, prompt id)
    for pid, ids in prompt_ids.items():
        prefixes.append(ids)
        owners.append((None, -1, pid))
    for i, r in enumerate(seeds):
        r["step_token_ends"] = step_token_ends(tokenizer, r["response_ids"], r["step_ends"])
        last = len(r["steps"]) - 1 if r["finished"] else len(r["steps"])
        for h in range(last):
            prefixes.append(prompt_ids[r["id"]] + r["response_ids"][: r["step_token_ends"][h]])
            owners.append((i, h, r["id"]))
    log.info("%d seed rollouts, %d prefixes x %d completions", len(seeds), len(prefixes), n_mc)
    gens = sampler.generate_from_prefixes(prefixes, n=n_mc, temperature=float(mc["temperature"]),
                                          max_new_tokens=int(samp["max_new_tokens"]), seed=int(cfg["seed"]),
                                          share_prefix=bool(mc.get("share_prefix", True)), desc="mc completions")

    answers = {r["id"]: r["answer"] for r in seeds}
    v0_correct: dict[str, int] = {}
    counts = [[None] * len(r["steps"]) for r in seeds]
    for (i, h, pid), prefix, completions in zip(owners, prefixes, gens):
        n_prompt = len(prompt_ids[pid])
        correct = 0
        for g in completions:
            text = tokenizer.decode(prefix[n_prompt:] + g.token_ids, skip_special_tokens=True)
            correct += judge({"answer": answers[pid]}, text, task_cfg)["outcome"]
        if i is None:
            v0_correct[pid] = correct
        else:
            counts[i][h] = correct
    rows = []
    for i, r in enumerate(seeds):
        n_correct = [c if c is not None else r["outcome"] * n_mc for c in counts[i]]  # exact last step
        row = {key: r[key] for key in ("id", "sample_idx", "policy", "prompt", "response", "response_ids", "steps",
                                        "step_ends", "step_token_ends", "outcome", "answer") if key in r}
        row.update({key: r[key] for key in ("step_valid", "first_error", "process_correct") if key in r})
        row.update(n_mc=n_mc, n_correct=n_correct, prover_k=k, **step_labels(n_correct, n_mc, v0_correct[r["id"]], k))
        rows.append(row)
    write_jsonl(args.out, rows)
    out = Path(args.out)
    summary = {"n_seed_rollouts": len(rows), "n_prefixes": len(prefixes), "n_mc": n_mc, "prover_k": k,
               "compute": sampler.compute.to_dict(), "wall_s": time.time() - t0}
    if rows and "first_error" in rows[0]:
        table = agreement_table(rows)
        with atomic_path(out.with_suffix(".agreement.csv")) as tmp:
            table.to_csv(tmp, index=False, float_format="%.4f")
        summary["agreement"] = table.to_dict(orient="records")
        log.info("agreement with ground truth:\n%s", table.to_string(index=False))
    write_json(out.with_suffix(".summary.json"), summary)


if __name__ == "__main__":
    main()
