"""Monte-Carlo value estimates from partial rollouts: the label math shared by MC labelling
(Math-Shepherd HE/SE, PAV's Best-of-K targets), PAV scoring and VinePPO. Library code: the
stage that writes MC-label files is `pipeline.mc_label`; RL and reward models import from here.
The pure functions are checked by hand in tests/test_mc_label.py.
"""
from __future__ import annotations

import random
from collections import defaultdict

from .task import judge


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


def prefix_truth(rows: list[dict]) -> list[int]:
    """Ground truth per labelled step (rows in order, steps in order; testbed only): 1 if every
    step up to it is valid (h < first_error)."""
    out = []
    for r in rows:
        fe = r.get("first_error")
        out += [int(fe is None or h < fe) for h in range(len(r["q_hat"]))]
    return out


def prefix_success_counts(sampler, prefixes: list[list[int]], n_prompt: list[int], records: list[dict],
                          task_cfg: dict, *, n: int, temperature: float, max_new_tokens: int, seed: int,
                          top_p: float = 1.0, share_prefix: bool = True, response_budget: int | None = None,
                          desc: str = "mc completions") -> list[int]:
    """How many of n sampled completions of each token-id prefix reach the right answer: the
    Monte-Carlo value estimate shared by MC labelling (Q_hat) and VinePPO (V_hat). `n_prompt[i]`
    leading tokens of prefix i are the prompt of `records[i]`; the response so far plus each
    completion is judged. With `response_budget`, a completion ends where the whole response
    would pass that many tokens, as the policy's own responses do: the sampler stops its rows
    there (per-prefix limits), and a prefix already at the budget keeps no completion tokens."""
    # what each response has left of its budget (None: no budget); the sampler needs >= 1 token
    # per row, so a full response draws one and keeps none
    left = [None if response_budget is None else max(0, response_budget - (len(p) - n_p))
            for p, n_p in zip(prefixes, n_prompt)]
    limit = max_new_tokens if response_budget is None else [max(1, min(max_new_tokens, k)) for k in left]
    gens = sampler.generate_from_prefixes(prefixes, n=n, temperature=temperature, top_p=top_p, max_new_tokens=limit,
                                          seed=seed, share_prefix=share_prefix, desc=desc)
    tok = sampler.tokenizer
    # a response's completions often repeat (the n of one prefix, and those of its later
    # prefixes): each distinct (record, token sequence) is decoded and judged once
    outcomes: dict[tuple[int, tuple[int, ...]], int] = {}

    def outcome(record: dict, ids: list[int]) -> int:
        key = (id(record), tuple(ids))
        if key not in outcomes:
            outcomes[key] = judge(record, tok.decode(ids, skip_special_tokens=True), task_cfg)["outcome"]
        return outcomes[key]

    out = []
    for prefix, n_p, record, completions, keep in zip(prefixes, n_prompt, records, gens, left):
        done = list(prefix[n_p:])
        out.append(sum(outcome(record, done + list(g.token_ids[:keep])) for g in completions))
    return out


SEED_SELECTIONS = ("random", "first_pit")


def select_seeds(rollouts: list[dict], n_prompts: int, n_cov: int, seed: int = 0) -> list[dict]:
    """`n_cov` seed rollouts of each of the first `n_prompts` prompts, drawn uniformly without
    replacement (seeded by the prompt id, so adding prompts does not reshuffle the others), in
    sample order."""
    by_id: dict[str, list[dict]] = defaultdict(list)
    for r in rollouts:
        by_id[r["id"]].append(r)
    out = []
    for pid in list(by_id)[:n_prompts]:
        pool = sorted(by_id[pid], key=lambda r: r["sample_idx"])
        picked = sorted(random.Random(f"{seed}/{pid}").sample(range(len(pool)), min(n_cov, len(pool))))
        out.extend(pool[i] for i in picked)
    return out


def first_pit(n_correct: list[int | None]) -> int | None:
    """Index of the first sampled step whose completions all failed (None: no pit)."""
    return next((h for h, c in enumerate(n_correct) if c == 0), None)


def fill_after_pit(n_correct: list[int | None], outcome: int, n_mc: int, finished: bool) -> list[int]:
    """Counts for every step: steps after the first pit get 0 (the pit convention); the last step
    of a finished response is exact (outcome * n_mc); unsampled steps before a pit cannot occur."""
    pit = first_pit(n_correct)
    out = []
    for h, c in enumerate(n_correct):
        if finished and h == len(n_correct) - 1:
            out.append(outcome * n_mc)
        elif c is not None:
            out.append(c)
        elif pit is not None and h > pit:
            out.append(0)
        else:
            raise ValueError(f"step {h} has no MC count and no pit before it")
    return out
