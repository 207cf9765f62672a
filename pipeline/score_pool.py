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

from .flops import Compute, count_params
from .reward_models import ImplicitPRM, load_reward_model
from .train_rm import build_examples
from .utils import read_jsonl, stage_parser, start_stage, write_json, write_jsonl

log = logging.getLogger("pipeline.score_pool")


def score_rows(rm, rows: list[dict], batch_size: int) -> tuple[list[list[float]], int]:
    """Step scores per row ([] for a row without steps) in row order, and the number of distinct
    responses scored: a pool repeats itself (a strong generator often samples one solution many
    times), and identical (prompt, response) pairs are scored once."""
    first: dict[tuple, int] = {}
    for i, r in enumerate(rows):
        if r["response_ids"] and r["step_ends"]:
            first.setdefault((r["prompt"], tuple(r["response_ids"])), i)
    unique = sorted(first.values())
    examples = build_examples([rows[i] for i in unique], rm.tokenizer, None)
    scores = dict(zip(unique, rm.step_scores(examples, batch_size)))
    out: list[list[float]] = []
    for r in rows:
        i = first.get((r["prompt"], tuple(r["response_ids"])))
        out.append([] if i is None else [float(x) for x in scores[i]])
    return out, len(unique)


def main(argv=None) -> None:
    p = stage_parser(__doc__)
    p.add_argument("--rm", required=True, help="reward model dir (pipeline.train_rm output)")
    p.add_argument("--inputs", nargs="+", required=True, help="name=rollouts.jsonl pairs to score")
    p.add_argument("--out-dir", required=True)
    args, cfg = start_stage(p, argv)
    bs = int(cfg.get("verify", {}).get("score_batch_size", 64))
    t0 = time.time()
    rm = load_reward_model(args.rm)
    n_params = count_params(rm.model) * (2 if isinstance(rm, ImplicitPRM) and rm.ref_model is not None else 1)
    compute = Compute()
    out = Path(args.out_dir)
    counts = {}
    for spec in args.inputs:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"--inputs {spec!r}: expected name=path")
        rows = read_jsonl(path)
        scores, n_unique = score_rows(rm, rows, bs)
        seen = set()
        for r, s in zip(rows, scores):  # charge each distinct response once, as it was computed
            key = (r["prompt"], tuple(r["response_ids"]))
            if s and key not in seen:
                seen.add(key)
                compute.add_scoring(n_params, len(rm.tokenizer(r["prompt"], add_special_tokens=False)["input_ids"])
                                    + len(r["response_ids"]))
        # outcome and the testbed's first_error ride along, so calibration needs no join
        write_jsonl(out / f"{name}.jsonl", [{"id": r["id"], "sample_idx": r["sample_idx"], "step_scores": s,
                                             **{k: r[k] for k in ("outcome", "first_error") if k in r}}
                                            for r, s in zip(rows, scores)])
        counts[name] = {"responses": len(rows), "distinct_scored": n_unique}
        log.info("%s: %d responses, %d distinct scored", name, len(rows), n_unique)
    kind = getattr(rm, "kind", "implicit")
    write_json(out / "meta.json", {"rm": args.rm, "kind": kind,  # PAV's Q + alpha * A is no probability
                                   "scores_are_probabilities": bool(rm.scores_are_probabilities and kind != "pav"),
                                   "n_scored": counts, "compute": compute.to_dict(), "wall_s": time.time() - t0})


if __name__ == "__main__":
    main()
