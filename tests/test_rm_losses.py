"""Reward-model math (`pipeline/rewards/losses.py`) against hand computation.

Constants used throughout (softplus(x) = log(1 + e^x), log sigma(x) = -softplus(-x)):
  sigma(0) = 0.5                  -log sigma(0)  = log 2 = 0.6931472
  sigma(1) = 0.7310586            -log sigma(1)  = softplus(-1) = 0.3132617
  sigma(-1) = 0.2689414           -log sigma(-1) = softplus(1)  = 1.3132617   (= 0.3132617 + 1)
Soft BCE at logit z with target t: -[t log sigma(z) + (1-t) log sigma(-z)] = softplus(z) - t z,
so at z = 1 it is 1.3132617 - t.
"""
from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
import torch.nn.functional as F

from pipeline.metrics import auroc
from pipeline.rewards import AGGREGATIONS
from pipeline.rewards import aggregate as aggregate_steps
from pipeline.rewards.losses import (balanced_ce_weights, ce_loss, dpo_loss, implicit_q_values, implicit_token_rewards,
                                kto_kl_estimate, kto_loss, nca_loss, sequence_reward, step_q_values, step_rewards)

LOG2 = 0.6931472
SP_M1 = 0.3132617   # softplus(-1) = -log sigma(1)
SP_P1 = 1.3132617   # softplus(1)  = -log sigma(-1)


def close(a, b, tol=1e-6):
    return abs(float(a) - float(b)) < tol


def test_constants():
    # the hand constants above are what torch computes
    assert close(-F.logsigmoid(torch.tensor(0.0)), LOG2)
    assert close(-F.logsigmoid(torch.tensor(1.0)), SP_M1)
    assert close(-F.logsigmoid(torch.tensor(-1.0)), SP_P1)


# --------------------------------------------------------------------------- implicit rewards


def test_implicit_token_rewards_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -1.0, -3.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # beta (logp - ref) mask = 0.5 * [0.5, -1.0, 0.0] * [1, 1, 0] = [0.25, -0.5, 0]
    torch.testing.assert_close(implicit_token_rewards(logp, ref, mask, beta=0.5), torch.tensor([[0.25, -0.5, 0.0]]))


def test_implicit_token_rewards_reference_free():
    logp = torch.tensor([[-1.0, -2.0, -3.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # no reference: 0.5 * [-1, -2, -3] * [1, 1, 0] = [-0.5, -1.0, 0]
    torch.testing.assert_close(implicit_token_rewards(logp, None, mask, beta=0.5), torch.tensor([[-0.5, -1.0, 0.0]]))


def test_q_values_and_sequence_reward_by_hand():
    r = torch.tensor([[0.25, -0.5, 0.7], [0.0, 1.0, 2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])   # row 1: left-padded prompt token
    # row 0: cumsum [0.25, -0.25, -0.25] (the 0.7 is masked out), zero outside the response
    # row 1: cumsum of [0, 1, 2] = [0, 1, 3]
    torch.testing.assert_close(implicit_q_values(r, mask), torch.tensor([[0.25, -0.25, 0.0], [0.0, 1.0, 3.0]]))
    # r(y) = 0.25 - 0.5 = -0.25 ; 1 + 2 = 3
    torch.testing.assert_close(sequence_reward(r, mask), torch.tensor([-0.25, 3.0]))


def test_q_at_last_response_token_is_sequence_reward():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(4, 7, generator=g)
    mask = torch.ones(4, 7)
    mask[1, 5:] = 0
    mask[2, :2] = 0
    q = implicit_q_values(r, mask)
    last = torch.tensor([6, 4, 6, 6])
    torch.testing.assert_close(q[torch.arange(4), last], sequence_reward(r, mask))


def test_step_rewards_by_hand():
    tr = torch.tensor([0.1, 0.2, -0.3, 0.4, 0.5])
    ends = [2, 3, 5]
    # q at ends: sum of first 2 = 0.3, first 3 = 0.0, all 5 = 0.9
    torch.testing.assert_close(step_q_values(tr, ends), torch.tensor([0.3, 0.0, 0.9]))
    # r_h = q_h - q_{h-1}: [0.3 - 0, 0.0 - 0.3, 0.9 - 0.0]
    torch.testing.assert_close(step_rewards(tr, ends), torch.tensor([0.3, -0.3, 0.9]))


def test_step_rewards_sum_to_sequence_reward():
    g = torch.Generator().manual_seed(1)
    tr = torch.randn(11, generator=g)
    ends = [3, 4, 8, 11]
    seq = sequence_reward(tr.unsqueeze(0), torch.ones(1, 11))[0]
    torch.testing.assert_close(step_rewards(tr, ends).sum(), seq)
    # each step reward is the sum of its own tokens
    torch.testing.assert_close(step_rewards(tr, ends)[2], tr[4:8].sum())
    # if the last end does not cover all tokens, the sum is only the covered prefix
    torch.testing.assert_close(step_rewards(tr, [3, 4]).sum(), tr[:4].sum())


def test_step_ends_validated():
    tr = torch.zeros(5)
    with pytest.raises(ValueError):
        step_rewards(tr, [3, 2])          # decreasing
    with pytest.raises(ValueError):
        step_rewards(tr, [2, 6])          # past the end
    with pytest.raises(ValueError):
        step_rewards(torch.zeros(2, 5), [1])  # not one sequence


# --------------------------------------------------------------------------- CE and balancing


def test_ce_loss_by_hand():
    # r=0: -log sigma(0) = log 2 whatever the label
    assert close(ce_loss(torch.tensor([0.0]), torch.tensor([1.0])), LOG2)
    assert close(ce_loss(torch.tensor([0.0]), torch.tensor([0.0])), LOG2)
    # r=1, l=1: -log sigma(1) = 0.3132617 ; r=1, l=0: -log(1 - sigma(1)) = -log sigma(-1) = 1.3132617
    r = torch.tensor([1.0, 1.0])
    l = torch.tensor([1.0, 0.0])
    assert close(ce_loss(r, l), (SP_M1 + SP_P1) / 2)                     # 0.8132617
    # weights [3, 1]: (3 * 0.3132617 + 1.3132617) / 4 = 2.2530468 / 4 = 0.5632617
    assert close(ce_loss(r, l, torch.tensor([3.0, 1.0])), 0.5632617)


def test_ce_loss_equals_minus_logsigmoid_for_positive_labels():
    r = torch.tensor([-3.0, -0.2, 0.0, 0.7, 5.0])
    torch.testing.assert_close(ce_loss(r, torch.ones(5)), -F.logsigmoid(r).mean())
    torch.testing.assert_close(ce_loss(r, torch.zeros(5)), -F.logsigmoid(-r).mean())


def test_ce_loss_is_stable_for_large_rewards():
    loss = ce_loss(torch.tensor([200.0, -200.0]), torch.tensor([0.0, 1.0]))
    assert close(loss, 200.0, tol=1e-3)   # -log sigma(-200) = softplus(200) ~ 200, not inf


def test_ce_loss_all_zero_weights_is_zero():
    r = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = ce_loss(r, torch.tensor([1.0, 0.0]), torch.zeros(2))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(r.grad, torch.zeros(2))


def test_balanced_weights_by_hand():
    labels = torch.tensor([1, 1, 1, 0, 1, 0, 0, 1, 1])
    groups = ["a", "a", "a", "a", "b", "b", "b", "c", "c"]
    # a: n1=3, n0=1, m=1 -> pos 1/3, neg 1/1
    # b: n1=1, n0=2, m=1 -> pos 1/1, neg 1/2
    # c: n1=2, n0=0, m=0 -> all 0 (one class only; filtering drops the group)
    expected = torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0, 1.0, 0.5, 0.5, 0.0, 0.0])
    torch.testing.assert_close(balanced_ce_weights(labels, groups), expected)
    # dataset-wise: one group, n1=6, n0=3, m=3 -> pos 3/6, neg 3/3
    expected_ds = torch.tensor([0.5, 0.5, 0.5, 1.0, 0.5, 1.0, 1.0, 0.5, 0.5])
    torch.testing.assert_close(balanced_ce_weights(labels, ["d"] * 9), expected_ds)


def test_balanced_weights_equal_class_totals_in_every_group():
    rng = random.Random(0)
    labels = torch.tensor([rng.randint(0, 1) for _ in range(60)])
    groups = torch.tensor([rng.randint(0, 6) for _ in range(60)])   # tensor group ids work too
    w = balanced_ce_weights(labels, groups)
    for g in set(groups.tolist()):
        in_g = groups == g
        pos_total = w[in_g & (labels == 1)].sum()
        neg_total = w[in_g & (labels == 0)].sum()
        n1 = int((in_g & (labels == 1)).sum())
        n0 = int((in_g & (labels == 0)).sum())
        torch.testing.assert_close(pos_total, neg_total)
        assert close(pos_total, min(n0, n1), tol=1e-5)


def test_balanced_ce_is_expected_loss_over_random_filtering():
    # group a: 3 positives, 1 negative. Filtering keeps the negative and 1 of the 3 positives
    # (3 equally likely subsets). The weighted CE must equal the mean over those subsets of the
    # subset-mean CE.
    r = torch.tensor([0.5, -1.0, 2.0, 0.3])
    labels = torch.tensor([1.0, 1.0, 1.0, 0.0])
    w = balanced_ce_weights(labels, ["a"] * 4)
    subset_means = [ce_loss(r[[p, 3]], labels[[p, 3]]) for p in (0, 1, 2)]
    torch.testing.assert_close(ce_loss(r, labels, w), torch.stack(subset_means).mean())


def test_balanced_weights_reject_soft_labels():
    with pytest.raises(ValueError):
        balanced_ce_weights(torch.tensor([0.5, 1.0]), [0, 0])
    with pytest.raises(ValueError):
        balanced_ce_weights(torch.tensor([0, 1]), [0])


# --------------------------------------------------------------------------- DPO / KTO / NCA


def test_dpo_by_hand():
    # equal rewards: -log sigma(0) = log 2
    assert close(dpo_loss(torch.tensor([0.7, -2.0]), torch.tensor([0.7, -2.0])), LOG2)
    # r_w - r_l = 1: 0.3132617 ; = -1: 1.3132617 ; mean 0.8132617
    assert close(dpo_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])), (SP_M1 + SP_P1) / 2)


def test_kto_at_reference_point_is_half_lambda():
    # r = z0: 1 - sigma(0) = 0.5, times lambda
    r = torch.tensor([0.3, 0.3])
    assert close(kto_loss(r, torch.tensor([1.0, 1.0]), kl_ref=0.3, lambda_d=2.0), 1.0)   # 0.5 * 2
    assert close(kto_loss(r, torch.tensor([0.0, 0.0]), kl_ref=0.3, lambda_u=3.0), 1.5)   # 0.5 * 3


def test_kto_by_hand():
    r = torch.tensor([1.0, -1.0])
    labels = torch.tensor([1.0, 0.0])
    # z0 = 0. desirable r=1: 1 - sigma(1) = 0.2689414 ; undesirable r=-1: 1 - sigma(0 - (-1)) = 0.2689414
    # lambda_D = 1, lambda_U = 2: (0.2689414 + 2 * 0.2689414) / 2 = 0.4034121
    assert close(kto_loss(r, labels, kl_ref=0.0, lambda_d=1.0, lambda_u=2.0), 0.4034121)
    # a negative KL estimate is clamped to 0: same value
    assert close(kto_loss(r, labels, kl_ref=-5.0, lambda_d=1.0, lambda_u=2.0), 0.4034121)
    # z0 = 1: desirable 1 - sigma(0) = 0.5 ; undesirable 1 - sigma(1 - (-1)) = 1 - 0.8807971 = 0.1192029
    assert close(kto_loss(r, labels, kl_ref=torch.tensor(1.0)), (0.5 + 0.1192029) / 2)


def test_kto_reference_point_gets_no_gradient():
    r = torch.tensor([0.5, -0.5], requires_grad=True)
    kl = torch.tensor(0.2, requires_grad=True)
    kto_loss(r, torch.tensor([1.0, 0.0]), kl).backward()
    assert kl.grad is None
    assert torch.isfinite(r.grad).all() and (r.grad != 0).all()


def test_kto_kl_estimate_by_hand():
    # mean(0.2, -0.6, 1.0) = 0.2 ; mean(-1, -2) = -1.5 -> clamped to 0
    assert close(kto_kl_estimate(torch.tensor([0.2, -0.6, 1.0])), 0.2)
    assert close(kto_kl_estimate(torch.tensor([-1.0, -2.0])), 0.0)
    x = torch.tensor([0.4, 0.6], requires_grad=True)
    assert not kto_kl_estimate(x).requires_grad


def test_nca_by_hand():
    # r_w = r_l = 0: log 2 + 0.5 log 2 + 0.5 log 2 = 2 log 2 = 1.3862944
    assert close(nca_loss(torch.tensor([0.0]), torch.tensor([0.0])), 2 * LOG2)
    # r_w = 1, r_l = -1: -log sigma(1) - 0.5 log sigma(-1) - 0.5 log sigma(1)
    #   = 0.3132617 + 0.5 * 1.3132617 + 0.5 * 0.3132617 = 1.1265234
    assert close(nca_loss(torch.tensor([1.0]), torch.tensor([-1.0])), 1.1265234)
    # unlike DPO it is not shift-invariant: adding 5 to both rewards changes it
    a = nca_loss(torch.tensor([1.0]), torch.tensor([-1.0]))
    b = nca_loss(torch.tensor([6.0]), torch.tensor([4.0]))
    assert abs(float(a) - float(b)) > 0.1


# --------------------------------------------------------------------------- aggregation, AUROC


@pytest.mark.parametrize("scores", [[0.9, 0.2, 0.7], torch.tensor([0.9, 0.2, 0.7])])
def test_aggregate_by_hand(scores):
    assert close(aggregate_steps(scores, "min"), 0.2)
    assert close(aggregate_steps(scores, "last"), 0.7)
    assert close(aggregate_steps(scores, "mean"), 0.6)        # 1.8 / 3
    assert close(aggregate_steps(scores, "product"), 0.126)   # 0.9 * 0.2 * 0.7
    assert set(AGGREGATIONS) == {"min", "last", "mean", "product"}


def test_aggregate_errors():
    with pytest.raises(ValueError, match="min, last, mean, product"):
        aggregate_steps([0.5], "max")
    with pytest.raises(ValueError):
        aggregate_steps([], "min")


def test_auroc_by_hand():
    # pos {0.35, 0.8} vs neg {0.1, 0.4}: 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 -> 3/4
    assert close(auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]), 0.75)
    # with a tie: pos {0.5, 0.9} vs neg {0.2, 0.5}: 1 + 1/2 (tie) + 1 + 1 = 3.5 of 4 pairs
    assert close(auroc(torch.tensor([0.2, 0.5, 0.5, 0.9]), torch.tensor([0, 0, 1, 1])), 0.875)
    # all scores equal: every pair a tie -> 0.5
    assert close(auroc([0.3, 0.3, 0.3], [1, 0, 1]), 0.5)
    assert close(auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]), 1.0)
    assert close(auroc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]), 0.0)


def test_auroc_matches_pair_count():
    rng = random.Random(3)
    scores = [rng.choice([0.0, 0.25, 0.5, 0.75, 1.0]) for _ in range(40)]   # many ties
    labels = [rng.randint(0, 1) for _ in range(40)]
    pos = [s for s, l in zip(scores, labels) if l == 1]
    neg = [s for s, l in zip(scores, labels) if l == 0]
    pairs = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    assert close(auroc(scores, labels), pairs / (len(pos) * len(neg)), tol=1e-12)


def test_auroc_one_class_raises():
    with pytest.raises(ValueError):
        auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError):
        auroc([0.1, 0.2], [0, 2])


# --------------------------------------------------------------------------- gradients


def _grad_ok(x: torch.Tensor) -> bool:
    return x.grad is not None and bool(torch.isfinite(x.grad).all()) and bool((x.grad != 0).any())


def test_gradients_flow_through_every_loss():
    g = torch.Generator().manual_seed(4)

    def leaf(*shape):
        return torch.randn(*shape, generator=g).requires_grad_(True)

    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])

    r = leaf(4)
    ce_loss(r, labels, balanced_ce_weights(labels, [0, 0, 1, 1])).backward()
    assert _grad_ok(r)

    rw, rl = leaf(3), leaf(3)
    dpo_loss(rw, rl).backward()
    assert _grad_ok(rw) and _grad_ok(rl)

    rw, rl = leaf(3), leaf(3)
    nca_loss(rw, rl).backward()
    assert _grad_ok(rw) and _grad_ok(rl)

    r = leaf(4)
    kto_loss(r, labels, kto_kl_estimate(r)).backward()
    assert _grad_ok(r)



def test_gradient_flows_from_ce_to_policy_logprobs():
    logp = (-torch.rand(2, 4)).requires_grad_(True)
    ref = -torch.rand(2, 4)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    r = sequence_reward(implicit_token_rewards(logp, ref, mask, beta=0.05), mask)
    ce_loss(r, torch.tensor([1.0, 0.0])).backward()
    assert torch.isfinite(logp.grad).all()
    # masked tokens get no gradient; response tokens do
    assert torch.equal(logp.grad * (1 - mask), torch.zeros(2, 4))
    assert ((logp.grad != 0) == mask.bool()).all()
    # d loss / d logp_t = beta * (sigma(r) - l) / B for every response token of a row
    expected_row0 = 0.05 * (torch.sigmoid(r[0]) - 1.0) / 2
    assert math.isclose(float(logp.grad[0, 0]), expected_row0.item(), rel_tol=1e-5)
