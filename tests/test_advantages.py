"""Advantages and policy losses (pipeline/rl/losses.py and each method's module) against hand computation."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.rl.losses import (OUTCOME_ADVANTAGES, grpo_advantages, kl_k3, masked_mean, ppo_clip_loss,
                                 rloo_advantages)

# --------------------------------------------------------------------------- RLOO


def test_rloo_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    # A^i = r^i - mean of the other three:
    #   i=0: 1 - (0+0+1)/3 = 2/3     i=1: 0 - (1+0+1)/3 = -2/3
    #   i=2: 0 - (1+0+1)/3 = -2/3    i=3: 1 - (1+0+0)/3 = 2/3
    expected = torch.tensor([[1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3, 1 - 1 / 3]])
    torch.testing.assert_close(rloo_advantages(r), expected)


def test_rloo_several_groups_at_once():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0],
                      [0.0, 0.0, 0.0, 1.0],     # i=3: 1 - 0 = 1; others: 0 - 1/3
                      [1.0, 1.0, 1.0, 1.0],     # all equal: 1 - 1 = 0
                      [0.5, 2.0, -1.0, 0.0]])   # i=0: 0.5 - (2-1+0)/3 = 1/6; i=1: 2 - (0.5-1+0)/3 = 13/6
    #                                           # i=2: -1 - (0.5+2+0)/3 = -11/6; i=3: 0 - (0.5+2-1)/3 = -1/2
    expected = torch.tensor([[2 / 3, -2 / 3, -2 / 3, 2 / 3],
                             [-1 / 3, -1 / 3, -1 / 3, 1.0],
                             [0.0, 0.0, 0.0, 0.0],
                             [1 / 6, 13 / 6, -11 / 6, -1 / 2]])
    torch.testing.assert_close(rloo_advantages(r), expected)


def test_rloo_k2():
    # K=2: A = r_i - r_other: [1-0, 0-1]
    torch.testing.assert_close(rloo_advantages(torch.tensor([[1.0, 0.0]])), torch.tensor([[1.0, -1.0]]))


def test_rloo_k1_raises():
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(torch.tensor([[1.0], [0.0]]))


# --------------------------------------------------------------------------- GRPO


def test_grpo_by_hand_unbiased_std():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    # mean 0.5; deviations +-0.5; unbiased var = (4 * 0.25) / (4-1) = 1/3; std = 0.57735
    # A = +-0.5 / (0.57735 + 1e-6) = +-0.866024 (biased std 0.5 would give +-1)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    torch.testing.assert_close(grpo_advantages(r), torch.tensor([[a, -a, -a, a]]))
    assert abs(a - 0.866024) < 1e-5


def test_grpo_several_groups_at_once():
    r = torch.tensor([[1.0, 0.0],            # mean .5, std sqrt((.25+.25)/1) = 0.70711 -> +-0.70711
                      [3.0, 3.0]])           # all equal -> 0 / (0 + eps) = 0
    s = 0.5 / (math.sqrt(0.5) + 1e-6)
    torch.testing.assert_close(grpo_advantages(r), torch.tensor([[s, -s], [0.0, 0.0]]))
    # K=3, [0, 1, 2]: mean 1, unbiased var (1+0+1)/2 = 1, std 1 -> [-1, 0, 1] / (1 + 1e-6)
    torch.testing.assert_close(grpo_advantages(torch.tensor([[0.0, 1.0, 2.0]])),
                               torch.tensor([[-1.0, 0.0, 1.0]]) / (1 + 1e-6))


def test_grpo_all_equal_is_zero():
    out = grpo_advantages(torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]))
    assert torch.equal(out, torch.zeros(2, 4))


def test_grpo_k1_raises():
    with pytest.raises(ValueError, match="at least 2"):
        grpo_advantages(torch.tensor([[1.0]]))


def test_outcome_advantage_registry():
    assert OUTCOME_ADVANTAGES == {"rloo": rloo_advantages, "grpo": grpo_advantages}


# --------------------------------------------------------------------------- masked mean, KL


def test_masked_mean_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    # (1 + 3 + 6) / 3 = 10/3
    torch.testing.assert_close(masked_mean(x, m), torch.tensor(10 / 3))
    # an all-zero mask gives 0 (denominator clamped to 1), not nan
    assert masked_mean(x, torch.zeros_like(m)).item() == 0.0


def test_kl_k3_by_hand():
    logp = torch.tensor([math.log(0.25), math.log(0.5), math.log(0.3)])
    ref = torch.tensor([math.log(0.5), math.log(0.25), math.log(0.3)])
    # d = ref - logp:
    #   ln(0.5/0.25) = ln 2:   e^d - d - 1 = 2 - 0.693147 - 1   = 0.306853
    #   ln(0.25/0.5) = -ln 2:  e^d - d - 1 = 0.5 + 0.693147 - 1 = 0.193147
    #   0:                     1 - 0 - 1 = 0
    expected = torch.tensor([1 - math.log(2), math.log(2) - 0.5, 0.0])
    torch.testing.assert_close(kl_k3(logp, ref), expected)
    assert abs(expected[0].item() - 0.306853) < 1e-6 and abs(expected[1].item() - 0.193147) < 1e-6


def test_kl_k3_zero_when_equal_and_nonnegative():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(4, 7, generator=g)
    assert torch.equal(kl_k3(logp, logp), torch.zeros(4, 7))
    assert (kl_k3(logp, torch.randn(4, 7, generator=g)) >= 0).all()


# --------------------------------------------------------------------------- PPO clip loss


RATIOS = torch.tensor([[1.1, 1.5, 0.5],
                       [1.5, 0.5, 3.0]])   # (1, 2) is padding
MASK = torch.tensor([[1.0, 1.0, 1.0],
                     [1.0, 1.0, 0.0]])
ADV = torch.tensor([1.0, -2.0])            # one advantage per sequence


def _logps(ratios):
    old = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -0.2, -1.0]])
    return (old + torch.log(ratios)).requires_grad_(True), old


def test_ppo_clip_loss_by_hand():
    # eps = 0.2 -> clip range [0.8, 1.2]; surrogate = min(r*A, clip(r)*A)
    # row 0, A=+1:  r=1.1 inside: min(1.1, 1.1) = 1.1
    #               r=1.5 above:  min(1.5, 1.2) = 1.2   (clipped)
    #               r=0.5 below:  min(0.5, 0.8) = 0.5   (unclipped: pessimistic side)
    # row 1, A=-2:  r=1.5 above:  min(-3.0, -2.4) = -3.0 (unclipped: pessimistic side)
    #               r=0.5 below:  min(-1.0, -1.6) = -1.6 (clipped)
    #               r=3.0 padding: excluded
    # loss = -(1.1 + 1.2 + 0.5 - 3.0 - 1.6) / 5 = -(-1.8) / 5 = 0.36
    logp, old = _logps(RATIOS)
    loss, stats = ppo_clip_loss(logp, old, ADV, MASK, clip_eps=0.2)
    torch.testing.assert_close(loss, torch.tensor(0.36))
    # |r-1| > 0.2 for 1.5, 0.5, 1.5, 0.5 of the 5 real tokens -> 4/5 (padding's 3.0 not counted)
    assert stats["clip_frac"] == pytest.approx(0.8)
    # (1.1 + 1.5 + 0.5 + 1.5 + 0.5) / 5 = 1.02
    assert stats["ratio_mean"] == pytest.approx(1.02)

    # d loss / d logp = -r*A/5 where the unclipped term is the min, 0 where the clipped one is:
    #   (0,0): -1.1*1/5 = -0.22   (0,1): 0   (0,2): -0.5*1/5 = -0.1
    #   (1,0): -1.5*-2/5 = 0.6    (1,1): 0   (1,2): padding, 0
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.22, 0.0, -0.1], [0.6, 0.0, 0.0]]))


def test_ppo_per_token_advantage_equals_broadcast():
    logp, old = _logps(RATIOS)
    loss_seq, _ = ppo_clip_loss(logp, old, ADV, MASK)
    loss_tok, _ = ppo_clip_loss(logp, old, ADV[:, None].expand(2, 3).clone(), MASK)
    torch.testing.assert_close(loss_seq, loss_tok)


def test_ppo_per_token_advantages_by_hand():
    # one sequence, per-token A = [2, -1, 0.5], ratios [1.0, 1.3, 0.7], eps 0.1 -> [0.9, 1.1]
    #   r=1.0, A=2:    min(2.0, 2.0) = 2.0
    #   r=1.3, A=-1:   min(-1.3, -1.1) = -1.3
    #   r=0.7, A=0.5:  min(0.35, 0.45) = 0.35
    # loss = -(2.0 - 1.3 + 0.35) / 3 = -0.35
    ratios = torch.tensor([[1.0, 1.3, 0.7]])
    old = torch.zeros(1, 3)
    loss, stats = ppo_clip_loss(torch.log(ratios), old, torch.tensor([[2.0, -1.0, 0.5]]), torch.ones(1, 3),
                                clip_eps=0.1)
    torch.testing.assert_close(loss, torch.tensor(-0.35))
    assert stats["clip_frac"] == pytest.approx(2 / 3)


def test_ppo_padding_values_do_not_matter():
    # Finite garbage at the padded position (ratio e^40 = 2.4e17) changes neither loss nor stats.
    # (Non-finite padding values would: inf * 0 = nan in masked_mean. token_logprobs and
    # join_responses only ever put finite values there, so that case is not exercised.)
    logp, old = _logps(RATIOS)
    logp2 = logp.detach().clone()
    logp2[1, 2] = 20.0
    old2 = old.clone()
    old2[1, 2] = -20.0
    a, stats_a = ppo_clip_loss(logp, old, ADV, MASK)
    b, stats_b = ppo_clip_loss(logp2, old2, ADV, MASK)
    torch.testing.assert_close(a, b)
    assert stats_a == pytest.approx(stats_b)


def test_ppo_on_policy_loss_is_minus_mean_advantage():
    # ratio 1 everywhere: loss = -mean(A) over real tokens = -(1*3 + -2*2)/5 = 0.2
    old = torch.zeros(2, 3)
    loss, stats = ppo_clip_loss(old.clone(), old, ADV, MASK)
    torch.testing.assert_close(loss, torch.tensor(0.2))
    assert stats == {"clip_frac": 0.0, "ratio_mean": 1.0}


# ---- dense-reward advantages (issue 5), by hand ----

def test_prime_advantages_by_hand():
    from pipeline.rl.prime import prime_advantages
    # y1 token rewards [1, 3] (mean 2), y2 [0.5] (mean 0.5); outcomes [1, 0]
    # baselines: y1 -> mean of others' means = 0.5; y2 -> 2. Outcome RLOO: [1, -1]
    a1, a2 = prime_advantages([torch.tensor([1.0, 3.0]), torch.tensor([0.5])], torch.tensor([1.0, 0.0]), gamma=1.0)
    # y1: r - b = [0.5, 2.5] -> returns [3.0, 2.5] -> + 1 = [4.0, 3.5]; y2: [-1.5] - 1 = [-2.5]
    assert a1.tolist() == pytest.approx([4.0, 3.5]) and a2.tolist() == pytest.approx([-2.5])
    # gamma 0.5: y1 returns [0.5 + 0.5 * 2.5, 2.5] = [1.75, 2.5] -> [2.75, 3.5]
    a1, _ = prime_advantages([torch.tensor([1.0, 3.0]), torch.tensor([0.5])], torch.tensor([1.0, 0.0]), gamma=0.5)
    assert a1.tolist() == pytest.approx([2.75, 3.5])
    with pytest.raises(ValueError):
        prime_advantages([torch.tensor([1.0])], torch.tensor([1.0]))


def test_discounted_returns_by_hand():
    from pipeline.rl.losses import discounted_returns
    # r = [1, 0, 2], gamma 0.5: G2 = 2, G1 = 0 + 1 = 1, G0 = 1 + 0.5 = 1.5
    assert discounted_returns(torch.tensor([1.0, 0.0, 2.0]), 0.5).tolist() == pytest.approx([1.5, 1.0, 2.0])


def test_vineppo_step_advantages_by_hand_including_the_terminal_step():
    from pipeline.rl.vineppo import vineppo_step_advantages
    # V(x) = 0.5, V(s_2) = 0.75, V(s_3) = 0.25; outcome 1:
    # A = [0.75 - 0.5, 0.25 - 0.75, 1 - 0.25] = [0.25, -0.5, 0.75], summing to outcome - V(x)
    adv = vineppo_step_advantages([0.5, 0.75, 0.25], 1.0)
    assert adv == pytest.approx([0.25, -0.5, 0.75]) and sum(adv) == pytest.approx(1.0 - 0.5)
    assert vineppo_step_advantages([0.5, 0.75, 0.25], 0.0)[-1] == pytest.approx(-0.25)  # terminal value 0


def test_step_to_token_broadcasts_each_step():
    from pipeline.rl.losses import step_to_token
    # steps end after tokens 2, 5, 6; the 7th token (EOS) belongs to the last step
    assert step_to_token([1.0, 2.0, 3.0], [2, 5, 6], 7).tolist() == [1, 1, 2, 2, 2, 3, 3]


def test_jepo_advantages_by_hand():
    from pipeline.rl.jepo import jepo_advantages
    lp = torch.tensor([-1.0, -2.0, -3.0, -6.0])
    # leave-one-out: -1 + 11/3, -2 + 10/3, -3 + 3, -6 + 2 = [2.667, 1.333, 0, -4]
    raw = jepo_advantages(lp, normalize=False, clip=None)
    assert raw.tolist() == pytest.approx([8 / 3, 4 / 3, 0.0, -4.0], abs=1e-5)
    # JEPO App. B.2 divides the *advantages* by their std: mean 0, unbiased var (64/9 + 16/9 + 0 + 16) / 3
    # = 8.2963, std 2.88033 -> [0.92582, 0.46291, 0, -1.38873] -> clipped to [-1, 1]
    # (dividing by std(R) = sqrt(14/3) instead, the old code, gave [1.0, 0.61721, 0, -1])
    assert jepo_advantages(lp).tolist() == pytest.approx([0.92582, 0.46291, 0.0, -1.0], abs=1e-4)


def test_jepo_normalises_the_advantages_not_the_rewards():
    """The audit's examples (Tang et al. App. B.2: clip(A_i / std(A), -1, 1))."""
    from pipeline.rl.jepo import jepo_weights
    # Jensen, R = [-3, -1, -7, -2.5]: A = [0.5, 3.1667, -4.8333, 1.1667], std(A) = 3.41565
    adv, _ = jepo_weights(torch.tensor([-3.0, -1.0, -7.0, -2.5]))
    assert adv.tolist() == pytest.approx([0.146, 0.927, -1.0, 0.342], abs=1e-3)
    # multi-sample, R = [-40, -1, -2, -30]: VIMCO terms [-0.2877, 1.0256, 0.0256, -0.2877], their std
    # 0.62223 -> [-0.462, 1.648 -> 1.0, 0.041, -0.462] (divided by std(R) = 19.5 they were ~19x smaller)
    adv, _ = jepo_weights(torch.tensor([-40.0, -1.0, -2.0, -30.0]), multisample=True)
    assert adv.tolist() == pytest.approx([-0.462, 1.0, 0.041, -0.462], abs=1e-3)


def test_jepo_multisample_terms_by_hand():
    import math

    from pipeline.rl.jepo import jepo_multisample_terms
    # p = [0.5, 0.25]: L = log 0.375; leave-one-out bounds log 0.25, log 0.5 -> A = [log 1.5, log 0.75]
    adv, w = jepo_multisample_terms(torch.log(torch.tensor([0.5, 0.25])))
    assert adv.tolist() == pytest.approx([math.log(1.5), math.log(0.75)], abs=1e-6)
    assert w.tolist() == pytest.approx([2 / 3, 1 / 3], abs=1e-6)


def test_accuracy_band_keeps_groups_with_mixed_outcomes():
    from pipeline.rl.prime import accuracy_band
    r = torch.tensor([[1.0, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]])
    assert accuracy_band(r, 0.2, 0.8).tolist() == [False, True, False, True]
    # inclusive edges: 1 of 5 solved is exactly 0.2
    assert accuracy_band(torch.tensor([[1.0, 0, 0, 0, 0], [1, 1, 1, 1, 0]]), 0.2, 0.8).tolist() == [True, True]


def test_prime_advantages_with_grpo_base_follow_eq7_by_hand():
    from pipeline.rl.prime import prime_advantages
    # PRIME v2 eq. 7: token rewards normalised by the group's mean and std of rbar^j = r_phi(y^j)/|y^j|.
    # rbar = [2, 0.5, 0]: mean 0.83333, unbiased std sqrt(((7/6)^2 + (1/3)^2 + (5/6)^2) / 2) = 1.040833
    # normalised tokens: [0.160128, 2.081666], [-0.320256], [-0.800641]; returns (gamma 1):
    # [2.241794, 2.081666], [-0.320256], [-0.800641]
    # GRPO on outcomes [1, 0, 0]: mean 1/3, unbiased std sqrt(1/3) -> [1.1547, -0.57735, -0.57735]
    a = prime_advantages([torch.tensor([1.0, 3.0]), torch.tensor([0.5]), torch.tensor([0.0])],
                         torch.tensor([1.0, 0.0, 0.0]), gamma=1.0, base="grpo")
    assert a[0].tolist() == pytest.approx([3.39649, 3.23637], abs=1e-4)
    assert a[1].tolist() == pytest.approx([-0.89761], abs=1e-4)
    assert a[2].tolist() == pytest.approx([-1.37799], abs=1e-4)
    # the old code swapped only the outcome term: the process term kept RLOO's raw returns
    assert a[0].tolist() != pytest.approx([4.6547, 3.9047], abs=1e-3)
    with pytest.raises(ValueError, match="base algorithm"):
        prime_advantages([torch.tensor([1.0]), torch.tensor([0.0])], torch.tensor([1.0, 0.0]), base="ppo")


def test_pav_step_advantages_by_hand():
    from pipeline.rl.pav import pav_step_advantages
    # outcome advantage 0.5 on every step, plus alpha * prover advantage of the step
    assert pav_step_advantages(0.5, [0.2, -0.4], 3.0) == pytest.approx([1.1, -0.7])
    assert pav_step_advantages(-0.25, [0.1], 0.0) == pytest.approx([-0.25])


def test_jepo_weights_jensen_and_multisample_by_hand():
    from pipeline.rl.jepo import jepo_advantages, jepo_weights
    lp = torch.log(torch.tensor([0.5, 0.25]))
    adv, w = jepo_weights(lp)
    assert adv.tolist() == pytest.approx(jepo_advantages(lp).tolist()) and w.tolist() == [1.0, 1.0]
    # multi-sample: L = log(0.375); VIMCO terms log(0.375/0.25), log(0.375/0.5) = 0.405465, -0.287682;
    # divided by std(lp) = ln2 / sqrt2 = 0.490129; weights 2 * softmax = [4/3, 2/3]
    adv, w = jepo_weights(lp, multisample=True)
    assert adv.tolist() == pytest.approx([0.405465 / 0.490129, -0.287682 / 0.490129], abs=1e-4)
    assert w.tolist() == pytest.approx([4 / 3, 2 / 3])
    adv, _ = jepo_weights(lp, multisample=True, normalize=False, clip=0.3)
    assert adv.tolist() == pytest.approx([0.3, -0.287682], abs=1e-5)


def test_jepo_loss_by_hand():
    from pipeline.rl.jepo import jepo_loss
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.25, 0.9]]))
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # last position is padding
    cot = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    w = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    adv = torch.tensor([[2.0, 2.0, 0.0, 0.0]])
    # ratio 1: surrogate 2 + 2 on c, supervised log 0.25 on a*; one mean over 3 tokens
    loss, stats = jepo_loss(logp, logp.clone(), adv, cot, w, mask, 0.2, 1.0)
    assert loss.item() == pytest.approx(-(4 + math.log(0.25)) / 3, abs=1e-6) and stats["clip_frac"] == 0.0
    # ratio 2 on the first token is clipped to 1.2; sup_coef 0.5 halves the answer term
    old = logp.clone()
    old[0, 0] = math.log(0.25)
    loss, stats = jepo_loss(logp, old, adv, cot, w, mask, 0.2, 0.5)
    assert loss.item() == pytest.approx(-(1.2 * 2 + 2 + 0.5 * math.log(0.25)) / 3, abs=1e-6)
    assert stats["clip_frac"] == pytest.approx(0.5)
