"""VinePPO (Kazemnejad et al. 2024): PPO without a value network. From every step boundary,
`rl.vineppo.k` auxiliary completions under the *current* policy give V_hat(s_h) (V(x) shared by
a prompt's responses); A_h = V(s_{h+1}) - V(s_h), the outcome in place of V after the last step,
on every token of step h. Completions of one prefix share its computation, and every auxiliary
token counts as the method's compute.

States are deduplicated as the released code does (`_create_value_estimation_requests` keys its
value requests by the query text): responses of one prompt that begin with the same steps reach
the same state, whose value is estimated once from k completions and shared, as V(x) is shared
by a prompt's responses. On tiny about half of a group's step boundaries repeat one
(BENCHMARKS.md); `rl.vineppo.dedupe_states: false` estimates each occurrence on its own."""
from __future__ import annotations

import torch

from ..mc_values import prefix_success_counts
from .base import Method, Rollouts, TrainBatch, response_step_token_ends
from .losses import step_to_token


def vineppo_step_advantages(values: list[float], outcome: float) -> list[float]:
    """A_h = r_h + V(s_{h+1}) - V(s_h), gamma = 1, r_h = 0 except the last step's outcome,
    terminal value 0. `values[h]` = V(s_h) is the MC value of the state *before* step h
    (values[0] = V(x))."""
    H = len(values)
    return [(outcome if h == H - 1 else values[h + 1]) - values[h] for h in range(H)]


def vineppo_token_advantages(sampler, encoded: list[list[int]], records: list[dict], gens, rewards: torch.Tensor,
                             task_cfg: dict, *, k_aux: int, temperature: float, max_new_tokens: int,
                             seed: int, dedupe_states: bool = True, top_p: float = 1.0) -> tuple[list[torch.Tensor], list[list[float]]]:
    """VinePPO's per-token advantages for gens[p][k] (P prompts x K responses), and each
    response's state values [V(x), V(s_2), ..., V(s_H)]. A value is the mean outcome of k_aux
    completions of the prefix under the sampler's (current) policy, each held to the response
    budget `max_new_tokens` counted from the start of the response. With `dedupe_states`, one
    estimate per distinct state (prompt, response tokens so far); else one per response and step
    (V(x) is one per prompt either way)."""
    tok = sampler.tokenizer
    delim = task_cfg["step_delimiter"]
    prefixes: list[list[int]] = []
    prompt_of: list[int] = []
    state_index: dict[tuple, int] = {}    # state key -> its row in `prefixes`

    def state(p: int, k: int | None, done: list[int]) -> int:
        key = (p, tuple(done)) if dedupe_states or k is None else (p, k, len(done))
        if key not in state_index:
            state_index[key] = len(prefixes)
            prefixes.append(list(encoded[p]) + done)
            prompt_of.append(p)
        return state_index[key]

    roots = [state(p, None, []) for p in range(len(gens))]  # V(x): one per prompt, shared by its K responses
    plan = []
    for p, gs in enumerate(gens):
        for k, g in enumerate(gs):
            tends = response_step_token_ends(tok, g, delim)
            rows = [roots[p]] + [state(p, k, list(g.token_ids[:tends[h - 1]])) if tends[h - 1] < max_new_tokens else None
                          for h in range(1, len(tends))]
            plan.append((p, k, tends, rows))
    wins = prefix_success_counts(sampler, prefixes, [len(encoded[p]) for p in prompt_of],
                                 [records[p] for p in prompt_of], task_cfg, n=k_aux, temperature=temperature, top_p=top_p,
                                 max_new_tokens=max_new_tokens, seed=seed, response_budget=max_new_tokens,
                                 desc="vineppo values")
    adv_tok, all_values = [], []
    for p, k, tends, rows in plan:
        n_tok, outcome = len(gens[p][k].token_ids), float(rewards[p, k])
        # a state past the token budget has no completions: value 0, as the budget ends the response
        v = [0.0 if r is None else wins[r] / k_aux for r in rows]
        all_values.append(v)
        if not tends:  # no step at all: the whole response is one step from the prompt
            adv_tok.append(torch.full((n_tok,), outcome - v[0]))
            continue
        adv_tok.append(step_to_token(vineppo_step_advantages(v, outcome), tends, n_tok))
    return adv_tok, all_values


class VinePPO(Method):
    def batch(self, ro: Rollouts, compute) -> TrainBatch:
        rl = self.ctx.rl
        adv_tok, _ = vineppo_token_advantages(ro.sampler, ro.encoded, ro.records, ro.gens, ro.rewards, self.ctx.task,
                                              k_aux=int(rl["vineppo"]["k"]), temperature=float(rl["temperature"]),
                                              max_new_tokens=int(self.ctx.sampling["max_new_tokens"]),
                                              seed=self.ctx.seed * 104_729 + ro.iteration,
                                              dedupe_states=bool(rl["vineppo"]["dedupe_states"]),
                                              top_p=float(rl["top_p"]))
        return TrainBatch(ro.prompt_ids, ro.response_ids, adv_tok)
