"""Stage: Monte-Carlo step labels from partial rollouts (Math-Shepherd, PAV).

From every step boundary of each seed rollout, sample `n_mc` completions with a completer
policy mu and grade them. Q_hat(s_h, a_h) is the fraction that reach the right answer. Per
step we store:
- Math-Shepherd hard / soft estimates: HE = 1 if any completion is right, SE = Q_hat;
- PAV targets: Q under a Best-of-K prover, 1 - (1 - Q_hat)^K, and step advantages
  A_h = Q_h - Q_{h-1}, with Q_0 = V(x) estimated from `n_mc` completions of the bare prompt,
  both for mu itself (`adv`) and for the Best-of-K prover (`adv_bok`).
The last step of a finished response needs no sampling: its Q is the response's outcome.

Seed selection (`mc_label.seed_selection`):
- `random`: n_cov seed rollouts per prompt drawn uniformly (seeded) from those sampled, every
  step boundary labelled in one batched pass.
- `first_pit` (Self-Explore's "first pit", the strategy of PAV's final data): the same seeds,
  but labelled step by step in rounds, and a seed stops at its first pit, the first prefix
  from which none of the n_mc completions reaches the answer. Its later steps are labelled
  Q_hat = 0 without sampling (their prefix contains the pit; the convention of Math-Shepherd
  and PRM800K that everything after the first mistake is wrong), except an exact last step.
  This spends the completions before and at the mistake instead of after it. The rows say
  which steps were sampled (`mc_sampled`). Our reading of the papers: PAV cites the strategy
  without spelling it out.

Completions of one prefix share its computation (`Sampler.generate_from_prefixes`: one
prefill and a copied KV cache on the HF backend, prefix caching on vLLM). Every generated
and prefilled token is counted as the data-collection cost of the models trained on this.
On the testbed, a small table reports how the MC labels agree with the true step validity.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from .mc_values import SEED_SELECTIONS, fill_after_pit, prefix_success_counts, prefix_truth, select_seeds, step_labels
from .metrics import auroc
from .sampler import make_sampler
from .steps import step_token_ends
from .utils import read_jsonl, read_records, stage_parser, start_stage, write_csv, write_json, write_jsonl

log = logging.getLogger("pipeline.mc_label")


def agreement_table(rows: list[dict]) -> pd.DataFrame:
    """How MC labels agree with the ground-truth prefix correctness (testbed only).

    Truth for step h: every step up to h is valid (h < first_error). Rows: HE and SE >= 0.5
    as classifiers of that truth, with accuracy, the share of wrong prefixes they catch and
    the share of correct prefixes they falsely flag; plus AUROC of the soft scores."""
    truth = prefix_truth(rows)
    he = [x for r in rows for x in r["he"]]
    se = [x for r in rows for x in r["se"]]
    q_bok = [x for r in rows for x in r["q_bok"]]
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

def main(argv=None) -> None:
    p = stage_parser(__doc__)
    p.add_argument("--rollouts", required=True, help="seed rollouts JSONL (pipeline.rollouts)")
    p.add_argument("--records", required=True,
                   help="the split's records (data/<split>.jsonl): completions are judged as the task judges any "
                        "response (the testbeds' checkers need the record's meta, Minerva its source)")
    p.add_argument("--completer", required=True, help="completer policy mu (model dir or hub id)")
    p.add_argument("--out", required=True, help="MC labels JSONL; .summary.json and .agreement.csv beside it")
    args, cfg = start_stage(p, argv)
    mc, task_cfg, samp = cfg["mc_label"], cfg["task"], cfg["sampling"]
    n_mc, k = int(mc["n_mc"]), int(mc["prover_k"])
    how = mc["seed_selection"]
    if how not in SEED_SELECTIONS:
        raise SystemExit(f"config key mc_label.seed_selection: {how!r} is not one of {SEED_SELECTIONS}")
    t0 = time.time()
    seeds = select_seeds(read_jsonl(args.rollouts), int(mc["n_prompts"]), int(mc["n_cov"]), int(cfg["seed"]))
    # the records are read and checked before the completer loads
    needed = {r["id"] for r in seeds}
    records = {r["id"]: r for r in read_records(args.records) if r["id"] in needed}
    missing = sorted(needed - set(records))
    if missing:
        raise SystemExit(f"{args.records}: no record for {len(missing)} seed rollout id(s), e.g. {missing[0]!r}; "
                         "the rollouts were sampled from another split")
    sampler = make_sampler(samp, model_path=args.completer)
    tokenizer = sampler.tokenizer
    prompt_ids = {r["id"]: tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in seeds}
    n_sampled = []  # per seed: the steps that need completions (all but an exact last step)
    for r in seeds:
        r["step_token_ends"] = step_token_ends(tokenizer, r["response_ids"], r["step_ends"])
        n_sampled.append(len(r["steps"]) - 1 if r["finished"] else len(r["steps"]))

    def label(owners: list[tuple], round_idx: int, desc: str) -> list[int]:
        """Correct completions out of n_mc for each (seed index or None, step h, prompt id)."""
        prefixes = [prompt_ids[pid] + ([] if i is None else seeds[i]["response_ids"][: seeds[i]["step_token_ends"][h]])
                    for i, h, pid in owners]
        return prefix_success_counts(sampler, prefixes, [len(prompt_ids[pid]) for _, _, pid in owners],
                                     [records[pid] for _, _, pid in owners], task_cfg, n=n_mc,
                                     temperature=float(mc["temperature"]), top_p=float(mc["top_p"]),
                                     max_new_tokens=int(samp["max_new_tokens"]),
                                     seed=int(cfg["seed"]) + 7919 * round_idx,
                                     share_prefix=bool(mc["share_prefix"]), desc=desc)

    # the bare prompt once per prompt (V(x)), then prompt + steps 1..h
    v_owners = [(None, -1, pid) for pid in prompt_ids]
    counts: list[list[int | None]] = [[None] * len(r["steps"]) for r in seeds]
    if how == "random":  # every boundary in one batched pass
        owners = v_owners + [(i, h, r["id"]) for i, r in enumerate(seeds) for h in range(n_sampled[i])]
        log.info("%d seed rollouts, %d prefixes x %d completions", len(seeds), len(owners), n_mc)
        results = label(owners, 0, "mc completions")
    else:  # first pit: round h labels step h of every seed that has not hit its pit yet
        owners, results, rnd = list(v_owners), [], 0
        results += label(v_owners, rnd, "mc V(x)")
        live = [i for i in range(len(seeds)) if n_sampled[i] > 0]
        while live:
            rnd += 1
            batch = [(i, rnd - 1, seeds[i]["id"]) for i in live]
            got = label(batch, rnd, f"mc step {rnd}")
            owners += batch
            results += got
            live = [i for i, c in zip(live, got) if c > 0 and rnd < n_sampled[i]]
            log.info("round %d: %d prefixes labelled, %d seeds still before their first pit", rnd, len(batch), len(live))
    v0_correct: dict[str, int] = {}
    for (i, h, pid), c in zip(owners, results):
        if i is None:
            v0_correct[pid] = c
        else:
            counts[i][h] = c
    rows = []
    for i, r in enumerate(seeds):
        n_correct = fill_after_pit(counts[i], r["outcome"], n_mc, bool(r["finished"]))
        row = {key: r[key] for key in ("id", "sample_idx", "policy", "prompt", "response", "response_ids", "steps",
                                        "step_ends", "step_token_ends", "outcome", "answer", "finished") if key in r}
        row.update({key: r[key] for key in ("step_valid", "first_error", "process_correct") if key in r})
        row.update(n_mc=n_mc, n_correct=n_correct, mc_sampled=[c is not None for c in counts[i]], prover_k=k,
                   **step_labels(n_correct, n_mc, v0_correct[r["id"]], k))
        rows.append(row)
    write_jsonl(args.out, rows)
    out = Path(args.out)
    summary = {"n_seed_rollouts": len(rows), "n_prefixes": len(owners), "n_mc": n_mc, "prover_k": k,
               "seed_selection": how, "compute": sampler.compute.to_dict(), "wall_s": time.time() - t0}
    if rows and "first_error" in rows[0]:
        table = agreement_table(rows)
        write_csv(table, out.with_suffix(".agreement.csv"))
        summary["agreement"] = table.to_dict(orient="records")
        log.info("agreement with ground truth:\n%s", table.to_string(index=False))
    write_json(out.with_suffix(".summary.json"), summary)


if __name__ == "__main__":
    main()
