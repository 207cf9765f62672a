"""Stage: score sample pools with one reward model, through the one scoring interface.

For every response of every input JSONL (rollout rows: prompt, response_ids, step_ends) the
reward model's per-step scores (`step_scores`: a head's probability at each step end, PAV's
Q + alpha * A, or the implicit PRM's per-step reward) are written as
{id, sample_idx, step_scores, outcome[, first_error]} to `<out-dir>/<name>.jsonl`; a response without steps gets [].
`meta.json` says whether the scores are probabilities (for voting weights and `product`) and
what scoring cost. Aggregation happens downstream, so one pass serves every aggregation.

With real models a pool may come from a generator other than the reward model's own family
(the Implicit PRM's Mistral pool under a Llama PRM). The reward model then reads each sample as
it was trained to:
- `--records` plus the config's `score_prompt.prompt_template` re-render the prompt from the
  record's problem in the reward model's template.
- `--generator-tokenizers name=model` re-tokenise a response from its text when that generator's
  vocabulary is not the reward model's (a response that ended with EOS gets the reward model's
  EOS); step ends are character offsets, so they carry over.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from .flops import Compute
from .rewards import load_reward_model, scoring_examples
from .task import format_prompt
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


def same_vocabulary(a, b) -> bool:
    """Whether two tokenizers map text to the same ids (then stored token ids carry over)."""
    return a.get_vocab() == b.get_vocab()


def as_reward_model_reads(rows: list[dict], tokenizer, *, problems: dict[str, dict] | None = None,
                          template: str | None = None, retokenize: bool = False) -> list[dict]:
    """Rows rewritten for the reward model (`tokenizer`): the prompt re-rendered from the
    record's problem in `template` (when `problems`, id -> record, and a template are given),
    and with `retokenize` the response's token ids taken from its text with the reward
    model's tokenizer (EOS appended where the generator's response ended with EOS)."""
    out = []
    for r in rows:
        r = dict(r)
        if template is not None and problems is not None:
            if r["id"] not in problems:
                raise SystemExit(f"--records: no record with id {r['id']!r} to re-render its prompt")
            r["prompt"] = format_prompt(problems[r["id"]], {"prompt_template": template})
        if retokenize:
            ids = tokenizer(r["response"], add_special_tokens=False)["input_ids"]
            r["response_ids"] = ids + [tokenizer.eos_token_id] if r.get("finished") else ids
            r.pop("step_token_ends", None)  # counted in the generator's tokens
        out.append(r)
    return out


def main(argv=None) -> None:
    p = stage_parser(__doc__)
    p.add_argument("--rm", required=True, help="reward model dir (pipeline.train_rm output)")
    p.add_argument("--inputs", nargs="+", required=True, help="name=rollouts.jsonl pairs to score")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--records", nargs="*", default=[], help="data JSONL files: each sample's problem, by id, to "
                                                            "re-render its prompt (cfg score_prompt.prompt_template)")
    p.add_argument("--generator-tokenizers", nargs="*", default=[],
                   help="name=model dir or hub id of each input's generator: responses are re-tokenised when its "
                        "vocabulary is not the reward model's")
    args, cfg = start_stage(p, argv)
    bs = int(cfg["verify"]["score_batch_size"])
    template = cfg.get("score_prompt", {}).get("prompt_template")
    if template is not None and not args.records:
        raise SystemExit("score_prompt.prompt_template needs --records (the problems to render)")
    problems = {r["id"]: r for path in args.records for r in read_jsonl(path)} if template is not None else None
    t0 = time.time()
    rm = load_reward_model(args.rm)
    retokenize = {}
    for spec in args.generator_tokenizers:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"--generator-tokenizers {spec!r}: expected name=model")
        from transformers import AutoTokenizer

        from .modeling import check_model_dir

        check_model_dir(path, weights=False, config=False)  # a tokenizer folder
        retokenize[name] = not same_vocabulary(AutoTokenizer.from_pretrained(path, trust_remote_code=False),
                                               rm.tokenizer)
        if retokenize[name]:
            log.info("%s: generator vocabulary differs from the reward model's: responses re-tokenised", name)
    compute = Compute()
    out = Path(args.out_dir)
    counts = {}
    for spec in args.inputs:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"--inputs {spec!r}: expected name=path")
        rows = read_jsonl(path)
        if template is not None or retokenize.get(name):
            rows = as_reward_model_reads(rows, rm.tokenizer, problems=problems, template=template,
                                         retokenize=retokenize.get(name, False))
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
