"""Stage: score sample pools with one reward model, through the one scoring interface.

For every response of every input JSONL (rollout rows: prompt, response_ids, step_ends) the
reward model's per-step scores (`step_scores`: a head's probability at each step end, PAV's
Q + alpha * A, or the implicit PRM's per-step reward) are written as
{id, sample_idx, step_scores, outcome[, first_error]} to `<out-dir>/<name>.jsonl`; a response without steps gets [].
`meta.json` says whether the scores are probabilities (for voting weights and `product`) and
what scoring cost. Aggregation happens downstream, so one pass serves every aggregation.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from .flops import Compute
from .reward_models import load_reward_model, scoring_examples
from .utils import read_jsonl, stage_parser, start_stage, write_json, write_jsonl

log = logging.getLogger("pipeline.score_pool")


def score_rows(rm, rows: list[dict], batch_size: int) -> tuple[list[list[float]], list[dict]]:
    """Step scores per row ([] for a row without steps) in row order, and the examples actually
    scored: a pool repeats itself (a strong generator often samples one solution many times),
    and identical (prompt, response) pairs are scored once."""
    examples = scoring_examples(rows, rm.tokenizer)
    first: dict[tuple, int] = {}
    for i, (r, ex) in enumerate(zip(rows, examples)):
        if ex is not None:
            first.setdefault((r["prompt"], tuple(r["response_ids"])), i)
    unique = sorted(first.values())
    scored = [examples[i] for i in unique]
    scores = dict(zip(unique, rm.step_scores(scored, batch_size)))
    out = [[float(x) for x in scores[first[(r["prompt"], tuple(r["response_ids"]))]]] if ex is not None else []
           for r, ex in zip(rows, examples)]
    return out, scored


def main(argv=None) -> None:
    p = stage_parser(__doc__)
    p.add_argument("--rm", required=True, help="reward model dir (pipeline.train_rm output)")
    p.add_argument("--inputs", nargs="+", required=True, help="name=rollouts.jsonl pairs to score")
    p.add_argument("--out-dir", required=True)
    args, cfg = start_stage(p, argv)
    bs = int(cfg.get("verify", {}).get("score_batch_size", 64))
    t0 = time.time()
    rm = load_reward_model(args.rm)
    compute = Compute()
    out = Path(args.out_dir)
    counts = {}
    for spec in args.inputs:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"--inputs {spec!r}: expected name=path")
        rows = read_jsonl(path)
        scores, scored = score_rows(rm, rows, bs)
        n_unique = len(scored)
        compute.add_scoring(rm.n_scoring_params, sum(len(e["prompt_ids"]) + len(e["response_ids"]) for e in scored))
        # outcome and the testbed's first_error ride along, so calibration needs no join
        write_jsonl(out / f"{name}.jsonl", [{"id": r["id"], "sample_idx": r["sample_idx"], "step_scores": s,
                                             **{k: r[k] for k in ("outcome", "first_error") if k in r}}
                                            for r, s in zip(rows, scores)])
        counts[name] = {"responses": len(rows), "distinct_scored": n_unique}
        log.info("%s: %d responses, %d distinct scored", name, len(rows), n_unique)
    write_json(out / "meta.json", {"rm": args.rm, "kind": rm.kind,
                                   "scores_are_probabilities": rm.scores_are_probabilities,
                                   "n_scored": counts, "compute": compute.to_dict(), "wall_s": time.time() - t0})


if __name__ == "__main__":
    main()
