"""Stage: seed rollouts. n samples per prompt from a chosen policy, graded, split into steps,
with ground-truth step labels where the task has them (the testbed). These are the seed
rollouts that MC labelling, reward-model training and best-of-N pools are built from.

Artifact (JSONL, one line per sample; see docs/ARCHITECTURE.md):
  id, sample_idx, policy, prompt, response, response_ids, finished, steps, step_ends,
  answer (reference), outcome (0/1), and on the testbed step_valid, first_error, process_correct.
A sibling `<split>.summary.json` holds pass@1, counts and the sampling compute.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from .sampler import make_sampler
from .steps import split_steps_with_ends
from .task import format_prompt, judge
from .utils import read_records, stage_parser, start_stage, write_json, write_jsonl

log = logging.getLogger("pipeline.rollouts")


def rollout_rows(records: list[dict], gens, policy: str, task_cfg: dict) -> list[dict]:
    delim = task_cfg["step_delimiter"]
    rows = []
    for r, gs in zip(records, gens):
        for j, g in enumerate(gs):
            steps, ends = split_steps_with_ends(g.text, delim)
            rows.append({"id": r["id"], "sample_idx": j, "policy": policy, "prompt": format_prompt(r, task_cfg),
                         "response": g.text, "response_ids": g.token_ids, "finished": g.finished,
                         "steps": steps, "step_ends": ends, "answer": r["answer"], **judge(r, g.text, task_cfg)})
    return rows


def main(argv=None) -> None:
    p = stage_parser(__doc__)
    p.add_argument("--policy", required=True, help="model directory or hub id")
    p.add_argument("--policy-name", required=True)
    p.add_argument("--records", required=True, help="records JSONL (a data split)")
    p.add_argument("--out", required=True, help="rollouts JSONL")
    args, cfg = start_stage(p, argv)
    ro, task_cfg, samp = cfg["rollouts"], cfg["task"], cfg["sampling"]
    records = read_records(args.records)[: int(ro["n_prompts"])]
    t0 = time.time()
    sampler = make_sampler(samp, model_path=args.policy)
    gens = sampler.generate([format_prompt(r, task_cfg) for r in records], n=int(ro["n_samples"]),
                            temperature=float(ro["temperature"]), top_p=float(ro["top_p"]),
                            max_new_tokens=int(samp["max_new_tokens"]), seed=int(cfg["seed"]),
                            desc=f"rollouts {args.policy_name}")
    rows = rollout_rows(records, gens, args.policy_name, task_cfg)
    write_jsonl(args.out, rows)
    summary = {"policy": args.policy_name, "n_prompts": len(records), "n_samples": int(ro["n_samples"]),
               "pass1": sum(r["outcome"] for r in rows) / max(1, len(rows)), "compute": sampler.compute.to_dict(),
               "wall_s": time.time() - t0}
    if rows and "process_correct" in rows[0]:
        summary["right_answer_wrong_process"] = sum(r["outcome"] and not r["process_correct"] for r in rows)
    write_json(Path(args.out).with_suffix(".summary.json"), summary)
    log.info("%d rollouts, pass@1 %.3f", len(rows), summary["pass1"])


if __name__ == "__main__":
    main()
