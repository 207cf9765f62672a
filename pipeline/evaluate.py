"""Stage: benchmark evaluation of one policy on each eval split: mean pass@1 over k samples
(at the configured temperature) and greedy accuracy. `evaluate_policy` is also what SFT
uses to pick its tiers and RL uses for validation curves, so every number in the project's
tables is measured the same way.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

from .sampler import make_sampler
from .task import format_prompt, judge
from .utils import read_json, read_records, stage_parser, start_stage, write_json

log = logging.getLogger("pipeline.evaluate")


def evaluate_policy(sampler, records: list[dict], task_cfg: dict, *, k: int, temperature: float,
                    max_new_tokens: int, seed: int, greedy: bool = False, per_prompt: bool = False,
                    top_p: float = 1.0) -> dict:
    """Mean pass@1 over k sampled responses per prompt (and greedy accuracy if asked), plus
    the histogram of the first wrong step (testbed) so error positions can be inspected. With
    `per_prompt`, also each prompt's number of correct samples out of k (`per_prompt_correct`,
    in record order), which the claims table bootstraps over."""
    prompts = [format_prompt(r, task_cfg) for r in records]
    result: dict = {"n_prompts": len(records), "k": k, "temperature": temperature, "top_p": top_p}
    gens = sampler.generate(prompts, n=k, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                            seed=seed, desc="eval")
    correct, first_errors, wrong_process_right_answer, final_value = 0, Counter(), 0, []
    by_prompt = []
    for r, gs in zip(records, gens):
        by_prompt.append(0)
        for g in gs:
            j = judge(r, g.text, task_cfg)
            correct += j["outcome"]
            by_prompt[-1] += j["outcome"]
            if "final_value_correct" in j:  # testbed: the final value, whatever the answer format
                final_value.append(int(j["final_value_correct"]))
            if j.get("first_error") is not None:
                first_errors[j["first_error"]] += 1
                wrong_process_right_answer += j["outcome"]
    result["pass1"] = correct / max(1, len(records) * k)
    if per_prompt:
        result["per_prompt_correct"] = by_prompt
    if final_value:  # equals pass1 unless the answer is long-form (then pass1 is the whole line's match)
        result["final_value_pass1"] = sum(final_value) / len(final_value)
    result["first_error_hist"] = {str(h): c for h, c in sorted(first_errors.items())}
    result["right_answer_wrong_process"] = wrong_process_right_answer
    if greedy:
        ggens = sampler.generate(prompts, n=1, greedy=True, max_new_tokens=max_new_tokens, seed=seed, desc="greedy")
        result["greedy"] = sum(judge(r, gs[0].text, task_cfg)["outcome"] for r, gs in zip(records, ggens)) / max(1, len(records))
    return result


def main(argv=None) -> None:
    p = stage_parser(__doc__)
    p.add_argument("--policy", required=True, help="model directory or hub id")
    p.add_argument("--data", required=True, help="directory with <split>.jsonl")
    p.add_argument("--out", required=True, help="output JSON")
    p.add_argument("--seed", type=int, default=0, help="evaluation seed index (moves the sampling seeds)")
    args, cfg = start_stage(p, argv)
    ev, task_cfg, samp = cfg["eval"], cfg["task"], cfg["sampling"]
    t0 = time.time()
    # every split is read and checked before the model loads
    split_records = {split: read_records(Path(args.data) / f"{split}.jsonl") for split in ev["splits"]}
    sampler = make_sampler(samp, model_path=args.policy)
    out = {"policy": args.policy, "seed_index": args.seed, "splits": {}}
    for i, split in enumerate(ev["splits"]):
        records = split_records[split]
        res = evaluate_policy(sampler, records, task_cfg, k=int(ev["k"]), temperature=float(ev["temperature"]),
                              top_p=float(ev["top_p"]),
                              max_new_tokens=int(samp["max_new_tokens"]), seed=int(cfg["seed"]) + 1000 * i + 100_003 * args.seed,
                              greedy=bool(ev["greedy"]), per_prompt=True)
        out["splits"][split] = res
        log.info("%s: pass@1 %.3f greedy %s", split, res["pass1"], res.get("greedy"))
    meta_path = Path(args.policy) / "policy_meta.json"
    out["policy_meta"] = read_json(meta_path) if meta_path.exists() else {}
    out["eval_compute"] = sampler.compute.to_dict()
    out["wall_s"] = time.time() - t0
    write_json(args.out, out)


if __name__ == "__main__":
    main()
