"""PPO with a learned value network: VinePPO's baseline (Kazemnejad et al. 2024, and the released
McGill-NLP/VinePPO `ppo_MATH` trainer). A separate critic, initialised from the base policy with a
scalar head (dropout off, as released), predicts V(s_t) before every response token; advantages
are GAE over the tokens (`rl.ppo.gamma`, `rl.ppo.lam`; the reward is the outcome on the last
token, the KL stays a loss term as for every method); returns = advantages + values. After each
policy step, the critic takes one step on the same minibatch with the clipped value loss
0.5 * max((V - R)^2, (clip(V, V_old +- value_clip) - R)^2), a token mean."""
from __future__ import annotations

import torch

from ..engine import build_engine, train_batch
from ..flops import count_params
from ..modeling import load_scalar_head_model
from ..scoring import collate, join_responses, split_responses
from .base import Method, Rollouts, TrainBatch
from .losses import masked_mean


def gae_advantages(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over one response's tokens: values[t] = V(s_t), the state
    before token t, terminal value 0; delta_t = r_t + gamma V(s_{t+1}) - V(s_t),
    A_t = sum_{l>=0} (gamma lam)^l delta_{t+l}. Returns (advantages, returns = A + V)."""
    T = rewards.shape[-1]
    adv = torch.zeros_like(values)
    last = torch.zeros(())
    for t in range(T - 1, -1, -1):
        next_v = values[t + 1] if t < T - 1 else 0.0
        delta = rewards[t] + gamma * next_v - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv, adv + values


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip: float) -> tuple[torch.Tensor, dict]:
    """0.5 * token mean of max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2) ([B, T] tensors)."""
    clipped = torch.clamp(values, old_values - clip, old_values + clip)
    l1, l2 = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(l1, l2), mask)
    with torch.no_grad():
        stats = {"value_clip_frac": masked_mean((l2 > l1).float(), mask).item(),
                 "value_mse": masked_mean(l1, mask).item()}
    return loss, stats


class PPO(Method):
    def __init__(self, ctx):
        super().__init__(ctx)
        self.cfg = ctx.rl["ppo"]
        self.critic, _ = load_scalar_head_model(ctx.policy, dropout=0.0)
        rl = ctx.rl
        steps = ctx.iterations * int(rl["ppo_epochs"]) * -(-int(rl["prompts_per_iter"]) * int(rl["samples_per_prompt"])
                                                           // ctx.minibatch)
        self.engine = build_engine(self.critic, {**rl, "lr": float(self.cfg["critic_lr"])}, total_steps=steps,
                                   batch_size=ctx.minibatch)
        self.n_critic = count_params(self.critic)
        self.pad = ctx.tokenizer.pad_token_id

    @property
    def extra_engines(self) -> dict:
        return {"critic": self.engine}

    def values(self, model, prompt_ids, response_ids) -> tuple[torch.Tensor, dict]:
        """[B, T-1] V(s_t) aligned with the response mask: the head's output at the token before y_t."""
        batch = collate(prompt_ids, response_ids, self.pad)
        device = next(model.parameters()).device
        out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
        return out.logits.squeeze(-1)[:, :-1].float(), batch

    @torch.no_grad()
    def batch(self, ro: Rollouts, compute) -> TrainBatch:
        prompt_ids, response_ids, mb = ro.prompt_ids, ro.response_ids, self.ctx.minibatch
        self.engine.eval()
        old_values: list[torch.Tensor] = []
        for s in range(0, len(prompt_ids), mb):
            v, batch = self.values(self.engine.module, prompt_ids[s:s + mb], response_ids[s:s + mb])
            old_values.extend(x.cpu() for x in split_responses(v, batch))
        compute.add_scoring(self.n_critic, sum(len(a) + len(b) for a, b in zip(prompt_ids, response_ids)))
        adv, returns = [], []
        for v, r in zip(old_values, ro.rewards.flatten().tolist()):
            rew = torch.zeros_like(v)
            if rew.numel():
                rew[-1] = r  # the outcome arrives with the last token
            a, ret = gae_advantages(rew, v, float(self.cfg["gamma"]), float(self.cfg["lam"]))
            adv.append(a)
            returns.append(ret)
        self.old_values, self.returns = old_values, returns  # the critic's targets for this iteration
        flat_v = torch.cat(old_values) if old_values else torch.zeros(0)
        return TrainBatch(prompt_ids, response_ids, adv,
                          metrics={"value_mean": flat_v.mean().item() if flat_v.numel() else None})

    def after_step(self, batch: TrainBatch, idx: list[int], iteration: int, compute) -> dict:
        self.engine.train()

        def value_loss(items):
            v, b = self.values(self.engine, [batch.prompt_ids[i] for i in items], [batch.response_ids[i] for i in items])
            mask = b["response_mask"].to(v.device)
            old = join_responses([self.old_values[i] for i in items], b).to(v.device)
            ret = join_responses([self.returns[i] for i in items], b).to(v.device)
            loss, stats = clipped_value_loss(v, old, ret, mask, float(self.cfg["value_clip"]))
            return loss, stats, None

        loss, stats, _ = train_batch(self.engine, idx, [len(batch.response_ids[i]) for i in idx], value_loss,
                                     self.engine.train_micro_batch_size_per_gpu(), what="ppo value loss",
                                     lr_key="rl.ppo.critic_lr", step=iteration)
        compute.add_training(self.n_critic, sum(len(batch.prompt_ids[i]) + len(batch.response_ids[i]) for i in idx))
        return {"value_loss": loss, **stats}
