"""PAV-RL (Setlur et al. 2024): the policy gradient weights step h by Q^pi(s_h, a_h) + alpha *
A^mu(s_h, a_h). Q^pi of the current policy is its own Monte-Carlo return, the outcome (here with
the RLOO baseline); A^mu, the progress under the Best-of-K prover, comes from the trained PAV
(`rl.pav.rm`, `rl.pav.alpha`)."""
from __future__ import annotations

import torch

from ..rewards import HeadRewardModel
from .base import Method, Rollouts, TrainBatch, mean_or_none, response_step_token_ends
from .losses import rloo_advantages, step_to_token


def pav_step_advantages(outcome_adv: float, prover_adv: list[float], alpha: float) -> list[float]:
    """One advantage per step: the outcome advantage plus alpha * A^mu_h."""
    return [float(outcome_adv) + alpha * float(a) for a in prover_adv]


def pav_token_advantages(pav: HeadRewardModel, encoded: list[list[int]], gens, rewards: torch.Tensor,
                         delimiter: str, alpha: float, batch_size: int) -> tuple[list[torch.Tensor], list[float]]:
    """PAV-RL's per-token advantages for gens[p][k]: on step h, the RLOO outcome advantage plus
    alpha * A^mu_h from the trained PAV (`pav_step_advantages`); a response without steps gets
    the outcome advantage alone. Also returns every step's prover advantage (for logging)."""
    out_adv = rloo_advantages(rewards)
    flat = [(p, k, g, response_step_token_ends(pav.tokenizer, g, delimiter)) for p, gs in enumerate(gens)
            for k, g in enumerate(gs)]
    examples = [{"prompt_ids": encoded[p], "response_ids": g.token_ids, "step_token_ends": te}
                for p, k, g, te in flat if te]
    terms = iter(pav.pav_terms(examples, batch_size))
    adv_tok, prover = [], []
    for p, k, g, te in flat:
        if not te:
            adv_tok.append(torch.full((len(g.token_ids),), float(out_adv[p, k])))
            continue
        a_mu = next(terms)["a_prover"]
        prover += a_mu
        adv_tok.append(step_to_token(pav_step_advantages(float(out_adv[p, k]), a_mu, alpha), te, len(g.token_ids)))
    return adv_tok, prover


class PAVRL(Method):
    def __init__(self, ctx):
        super().__init__(ctx)
        if not ctx.rm:
            raise SystemExit("PAV-RL needs --rm (the trained PAV, rl.pav.rm)")
        self.pav = HeadRewardModel.load(ctx.rm)
        if self.pav.kind != "pav":
            raise SystemExit(f"--rm {ctx.rm}: a {self.pav.kind!r} reward model, PAV-RL needs a PAV")
        self.pav.model.eval()

    def batch(self, ro: Rollouts, compute) -> TrainBatch:
        prompt_ids, response_ids = ro.prompt_ids, ro.response_ids
        adv_tok, a_mu = pav_token_advantages(self.pav, ro.encoded, ro.gens, ro.rewards, self.ctx.delimiter,
                                             float(self.ctx.rl["pav"]["alpha"]), self.ctx.minibatch)
        compute.add_scoring(self.pav.n_scoring_params, sum(len(a) + len(b) for a, b in zip(prompt_ids, response_ids)))
        return TrainBatch(prompt_ids, response_ids, adv_tok,
                          metrics={"prover_adv_mean": mean_or_none(a_mu)})
