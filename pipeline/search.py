"""Stage: step-level beam search guided by a process verifier (PAV's search; Snell et al. 2024).

A solution is built one step at a time (a step ends at the task's step delimiter). Per prompt
the search keeps up to B (beam width) partial solutions, the beams, all starting empty:

1. Expand. Round 1 samples B*C next steps from the empty beam; later rounds sample C next
   steps from each live beam (C candidates per beam, PAV: C = 3). All live beams of all
   prompts go to the sampler in one batch (`Sampler.generate_from_prefixes(..., stop=delim)`).
2. Score. The verifier scores every candidate, i.e. the beam's steps plus the new one. With
   `aggregation: last` that is the newest step's score, which for PAV is its effective reward
   Q^pi + alpha * A^mu (Best-of-K prover advantage); `min` / `mean` / `product` aggregate all
   steps (`rewards.aggregate`).
3. Select. Keep the top (B - |pool|) candidates of the prompt by score (ties: candidate order).
   A kept candidate that is complete (ended with EOS, or cannot be extended because the
   response hit `sampling.max_new_tokens`) moves to the prompt's pool and stops, so the beam
   shrinks as solutions finish; the others are the next round's beams.
4. Stop a prompt once its pool holds B candidates (no live beams left), or after `max_steps`
   rounds, when the live beams join the pool unfinished.

The answer is the pool candidate the final scorer (the ORM) ranks highest. Compute: every
generated token counts (`generated_tokens`, the sampler's `Compute`), and the verifier's and
ORM's forward passes are counted as scoring tokens.

`beam_search` and `pick_final` are pure: they see the policy and the verifiers only through
the `expand` and `score` functions, so tests drive them with toy problems.

Config: the `search` section: `beam_width` (B) and `max_steps` (rounds), both required;
`n_candidates` (C, default 3); `temperature` (1.0) and `top_p` (1.0) for the steps;
`aggregation` (`last`, or min / mean / product over the steps); `dedupe` (true: skip a
candidate identical to a better one of the same round); `n_prompts` (the first n
records; default all); `alpha` (overrides a PAV verifier's rm_meta alpha); `score_batch_size`
(64). Also read: `seed` (round r samples with seed + r), `task` (`step_delimiter`, the prompt
format, the judge) and `sampling` (backend, batch size, and `max_new_tokens`, the budget of a
whole response, as for rollouts).

Text handling: a step is the sampled text cut after the first delimiter (a BPE token may carry
text past it). The prefix for the next step and the reward models' inputs re-tokenise
prompt and response text separately (through `rewards.scoring_examples`), with EOS appended
to a finished response.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .flops import Compute
from .rewards import AGGREGATIONS, aggregate, load_reward_model, scoring_examples
from .sampler import make_sampler
from .steps import split_steps_with_ends
from .task import format_prompt, judge
from .utils import read_records, stage_parser, start_stage, write_json, write_jsonl

log = logging.getLogger("pipeline.search")


@dataclass
class Step:
    """One candidate next step from `expand`."""
    text: str
    n_tokens: int              # tokens generated for it (all of them count as compute)
    finished: bool             # ended with EOS: the response is complete
    truncated: bool = False    # hit the response length budget without EOS: cannot be extended

    @property
    def terminal(self) -> bool:
        return self.finished or self.truncated


# a request is (prompt index, steps so far); a score request is (prompt index, steps, finished)
Expand = Callable[[list[tuple[int, list[str]]], int], Sequence[Sequence["Step | dict"]]]
Score = Callable[[list[tuple[int, list[str], bool]]], Sequence[float]]


def _as_step(c) -> Step:
    return c if isinstance(c, Step) else Step(**c)


def beam_search(n_prompts: int, expand: Expand, score: Score, *, beam_width: int, n_candidates: int,
                max_steps: int, dedupe: bool = False) -> list[dict]:
    """Step-level beam search for `n_prompts` prompts at once (see the module docstring).

    `expand(requests, n)`: for each request (prompt index, steps so far) a list of n `Step`s
    (or dicts with the same fields). `score(requests)`: one float per request (prompt index,
    steps including the new one, finished). Returns per prompt {"pool": [{"steps", "score",
    "finished"}] in the order they completed, "generated_tokens", "n_generated" (candidate
    steps), "rounds"}. With `dedupe`, a candidate identical to a better one of the same prompt
    and round is skipped, so the beam does not fill with copies of one prefix (a small
    vocabulary samples the same step often); the beam is then narrower, never wider."""
    if beam_width < 1 or n_candidates < 1 or max_steps < 0:
        raise ValueError(f"need beam_width >= 1, n_candidates >= 1, max_steps >= 0; got "
                         f"{beam_width}, {n_candidates}, {max_steps}")
    beams: list[list[tuple[list[str], float]]] = [[([], -math.inf)] for _ in range(n_prompts)]
    pools: list[list[dict]] = [[] for _ in range(n_prompts)]
    tokens, n_gen, rounds = [0] * n_prompts, [0] * n_prompts, [0] * n_prompts
    for rnd in range(max_steps):
        requests = [(p, list(steps)) for p in range(n_prompts) for steps, _ in beams[p]]
        if not requests:
            break
        n = beam_width * n_candidates if rnd == 0 else n_candidates
        cands = expand(requests, n)
        if len(cands) != len(requests) or any(len(cs) != n for cs in cands):
            raise ValueError(f"expand must return {n} candidates for each of {len(requests)} requests")
        flat = [(p, steps, _as_step(c)) for (p, steps), cs in zip(requests, cands) for c in cs]
        scores = [float(s) for s in score([(p, steps + [c.text], c.finished) for p, steps, c in flat])]
        if len(scores) != len(flat):
            raise ValueError(f"score returned {len(scores)} scores for {len(flat)} candidates")
        by_prompt: list[list[tuple[float, list[str], Step]]] = [[] for _ in range(n_prompts)]
        for (p, steps, c), s in zip(flat, scores):
            by_prompt[p].append((s, steps + [c.text], c))
            tokens[p] += int(c.n_tokens)
            n_gen[p] += 1
        for p, cs in enumerate(by_prompt):
            if not cs:
                continue
            rounds[p] = rnd + 1
            order = sorted(range(len(cs)), key=lambda i: -cs[i][0])  # stable: ties keep candidate order
            if dedupe:
                seen, unique = set(), []
                for i in order:
                    key = (tuple(cs[i][1]), cs[i][2].terminal)
                    if key not in seen:
                        seen.add(key)
                        unique.append(i)
                order = unique
            beams[p] = []
            for i in order[:beam_width - len(pools[p])]:
                s, steps, c = cs[i]
                if c.terminal:
                    pools[p].append({"steps": steps, "score": s, "finished": c.finished})
                else:
                    beams[p].append((steps, s))
        log.info("round %d: %d beams expanded into %d candidates; %d live beams, %d complete candidates, "
                 "%d/%d prompts done", rnd + 1, len(requests), len(flat), sum(map(len, beams)), sum(map(len, pools)),
                 sum(not b for b in beams), n_prompts)
    for p in range(n_prompts):  # out of rounds: live beams join the pool as they are
        pools[p].extend({"steps": steps, "score": s, "finished": False} for steps, s in beams[p] if steps)
    return [{"pool": pools[p], "generated_tokens": tokens[p], "n_generated": n_gen[p], "rounds": rounds[p]}
            for p in range(n_prompts)]


def pick_final(pools: list[list[dict]], final_score: Score) -> tuple[list[int | None], list[list[float]]]:
    """Index of the pool candidate with the highest final score per prompt (first on ties; None
    for an empty pool), and every candidate's final score. One batched `final_score` call."""
    reqs = [(p, c["steps"], c["finished"]) for p, pool in enumerate(pools) for c in pool]
    flat = [float(s) for s in final_score(reqs)] if reqs else []
    scores, k = [], 0
    for pool in pools:
        scores.append(flat[k:k + len(pool)])
        k += len(pool)
    best = [max(range(len(s)), key=lambda i: (s[i], -i)) if s else None for s in scores]
    return best, scores


def truncate_after(text: str, delimiter: str) -> tuple[str, bool]:
    """`text` up to and including the first `delimiter` (and whether anything was cut)."""
    i = text.find(delimiter)
    if i < 0 or i + len(delimiter) == len(text):
        return text, False
    return text[:i + len(delimiter)], True


# ---- the stage: expand with the policy, score with reward models ----

def make_expand(sampler, prompt_ids: list[list[int]], *, delimiter: str, max_new_tokens: int,
                temperature: float, top_p: float, seed: int) -> Expand:
    """`expand` backed by the sampler. Prefix = prompt ids + the response so far (re-tokenised).
    A response may hold `max_new_tokens` tokens in all; a step that would pass that is cut
    there and marked truncated. Round r samples with seed `seed + r`."""
    tok = sampler.tokenizer
    calls = [0]

    def expand(requests, n):
        rnd, calls[0] = calls[0], calls[0] + 1
        resp = [tok("".join(steps), add_special_tokens=False)["input_ids"] if steps else [] for _, steps in requests]
        budget = [max_new_tokens - len(r) for r in resp]
        live = [i for i, b in enumerate(budget) if b > 0]
        # a beam with no room left cannot grow (only after re-tokenisation drift): n empty, terminal steps
        out: list[list[Step]] = [[Step("", 0, False, True) for _ in range(n)] for _ in requests]
        if not live:
            return out
        gens = sampler.generate_from_prefixes([prompt_ids[requests[i][0]] + resp[i] for i in live], n=n,
                                              temperature=temperature, top_p=top_p,
                                              max_new_tokens=[budget[i] for i in live], seed=seed + rnd,
                                              stop=delimiter, desc=f"search round {rnd + 1}")
        for i, gs in zip(live, gens):
            steps = []
            for g in gs:  # each row stopped at its own budget (the sampler's per-prefix limits)
                text, cut = truncate_after(g.text, delimiter)
                finished = g.finished and not cut
                # the response is full without EOS: the step cannot be extended
                truncated = not finished and len(g.token_ids) >= budget[i]
                steps.append(Step(text, len(g.token_ids), finished, truncated))
            out[i] = steps
        return out

    return expand


def rm_examples(tokenizer, prompts: list[str], reqs, delimiter: str) -> tuple[list[dict], list[int]]:
    """Scoring examples for (prompt index, steps, finished) requests, through the one
    row -> example path (`rewards.scoring_examples`), and the indices of the requests that
    have at least one non-blank step. A finished response gets its EOS back."""
    rows = []
    for p, steps, finished in reqs:
        text = "".join(steps)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if finished and tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        rows.append({"prompt": prompts[p], "response_ids": ids, "step_ends": split_steps_with_ends(text, delimiter)[1]})
    examples = scoring_examples(rows, tokenizer)
    keep = [j for j, ex in enumerate(examples) if ex is not None]
    return [examples[j] for j in keep], keep


def make_scorer(rm, prompts: list[str], *, delimiter: str, how: str, compute: Compute,
                batch_size: int = 64) -> Score:
    """`score` backed by a reward model: `how` aggregates the step scores (`last`: the newest
    step's). A response with no non-blank step scores -inf. Scored tokens go into `compute`."""

    def score(reqs):
        examples, keep = rm_examples(rm.tokenizer, prompts, reqs, delimiter)
        out = [-math.inf] * len(reqs)
        if examples:
            for j, s in zip(keep, rm.step_scores(examples, batch_size)):
                out[j] = aggregate(s, how)
            compute.add_scoring(rm.n_scoring_params, sum(len(e["prompt_ids"]) + len(e["response_ids"])
                                                         for e in examples))
        return out

    return score


def main(argv=None) -> None:
    p = stage_parser(__doc__)
    p.add_argument("--policy", required=True, help="policy model directory or hub id")
    p.add_argument("--verifier", required=True, help="process verifier (reward model dir) that guides the search")
    p.add_argument("--final", required=True, help="reward model dir that picks the answer from the pool (the ORM)")
    p.add_argument("--records", required=True, help="prompts JSONL (data/<split>.jsonl)")
    p.add_argument("--out", required=True, help="JSONL, one row per prompt; <stem>.summary.json beside it")
    args, cfg = start_stage(p, argv)
    sc, task_cfg, samp = cfg["search"], cfg["task"], cfg["sampling"]
    for key in ("beam_width", "max_steps"):
        if key not in sc:
            raise SystemExit(f"config key search.{key} is required")
    beam_width, n_cand, max_steps = int(sc["beam_width"]), int(sc["n_candidates"]), int(sc["max_steps"])
    how = sc["aggregation"]
    if how not in AGGREGATIONS:
        raise SystemExit(f"config key search.aggregation: {how!r} is not one of {AGGREGATIONS}")
    delimiter = task_cfg["step_delimiter"]
    t0 = time.time()
    records = read_records(args.records)
    if sc.get("n_prompts") is not None:
        records = records[:int(sc["n_prompts"])]
    prompts = [format_prompt(r, task_cfg) for r in records]

    sampler = make_sampler(samp, model_path=args.policy)
    verifier, final = load_reward_model(args.verifier), load_reward_model(args.final)
    if sc.get("alpha") is not None:
        if verifier.kind != "pav":
            raise SystemExit(f"config key search.alpha applies to a PAV verifier; {args.verifier} is {verifier.kind!r}")
        verifier.meta["alpha"] = float(sc["alpha"])
    if how == "product" and not verifier.scores_are_probabilities:
        raise SystemExit("config key search.aggregation: product needs probability scores; the verifier's are not")
    prompt_ids = [sampler.tokenizer(x, add_special_tokens=False)["input_ids"] for x in prompts]
    expand = make_expand(sampler, prompt_ids, delimiter=delimiter, max_new_tokens=int(samp["max_new_tokens"]),
                         temperature=float(sc["temperature"]), top_p=float(sc["top_p"]),
                         seed=int(cfg["seed"]))
    verifier_compute, final_compute = Compute(), Compute()
    score_bs = int(sc["score_batch_size"])
    log.info("beam search on %d prompts: B=%d, C=%d, max %d steps, verifier %s (%s, aggregation %s)",
             len(prompts), beam_width, n_cand, max_steps, args.verifier, verifier.kind, how)
    results = beam_search(len(prompts), expand,
                          make_scorer(verifier, prompts, delimiter=delimiter, how=how, compute=verifier_compute,
                                      batch_size=score_bs),
                          beam_width=beam_width, n_candidates=n_cand, max_steps=max_steps,
                          dedupe=bool(sc["dedupe"]))
    pools = [r["pool"] for r in results]
    # the ORM reads one score per solution: the last step's
    best, final_scores = pick_final(pools, make_scorer(final, prompts, delimiter=delimiter, how="last",
                                                       compute=final_compute, batch_size=score_bs))
    rows, correct, any_correct, verifier_pick_correct = [], 0, 0, 0
    for r, prompt, res, b, fs in zip(records, prompts, results, best, final_scores):
        pool = res["pool"]
        pick = pool[b] if b is not None else {"steps": [], "score": None, "finished": False}
        response = "".join(pick["steps"])
        j = judge(r, response, task_cfg)
        outcomes = [judge(r, "".join(c["steps"]), task_cfg)["outcome"] for c in pool]
        correct += j["outcome"]
        any_correct += int(any(outcomes))
        if pool:  # the verifier's own favourite, for comparison with the ORM's pick
            verifier_pick_correct += outcomes[max(range(len(pool)), key=lambda i: (pool[i]["score"], -i))]
        row = {"id": r["id"], "prompt": prompt, "answer": r.get("answer"), "response": response, "steps": pick["steps"],
               "finished": pick["finished"], "verifier_score": pick["score"],
               "final_score": fs[b] if b is not None else None,
               "outcome": j["outcome"], "generated_tokens": res["generated_tokens"], "n_generated": res["n_generated"],
               "rounds": res["rounds"], "pool_size": len(pool), "pool_outcomes": outcomes}
        row.update({k: j[k] for k in ("step_valid", "first_error", "process_correct") if k in j})
        rows.append(row)
    write_jsonl(args.out, rows)
    n = max(1, len(rows))
    summary = {"n_prompts": len(rows), "accuracy": correct / n, "pool_any_correct": any_correct / n,
               "verifier_pick_accuracy": verifier_pick_correct / n, "beam_width": beam_width,
               "n_candidates": n_cand, "max_steps": max_steps, "aggregation": how,
               "dedupe": bool(sc["dedupe"]),
               "temperature": float(sc["temperature"]),
               "alpha": verifier.meta.get("alpha") if verifier.kind == "pav" else None,
               "policy": args.policy, "verifier": args.verifier, "verifier_kind": verifier.kind, "final": args.final,
               "generated_tokens": sum(r["generated_tokens"] for r in rows),
               "generated_tokens_per_prompt": sum(r["generated_tokens"] for r in rows) / n,
               "compute": sampler.compute.to_dict(), "verifier_compute": verifier_compute.to_dict(),
               "final_compute": final_compute.to_dict(), "wall_s": time.time() - t0}
    write_json(Path(args.out).with_suffix(".summary.json"), summary)
    log.info("accuracy %.3f (any in pool %.3f, verifier's pick %.3f), %d generated tokens, %.1fs",
             summary["accuracy"], summary["pool_any_correct"], summary["verifier_pick_accuracy"],
             summary["generated_tokens"], summary["wall_s"])


if __name__ == "__main__":
    main()
