"""Two audited reward-model training fixes, each against a hand computation or a controlled
construction:

1. PAV / MC-PRM heads train V(x): the prompt's last token (where PAV reads Q_0) is a target
   position with the MC value v0 of the bare prompt (train_rm.build_examples / head_loss /
   train_head).
2. KTO's reference point z0 is that of the whole optimizer batch (the mismatched pairs
   (x_k, y_{k+1 mod B}) of all its items), not of each micro batch (train_rm.kto_reference_point,
   implicit_loss, train_implicit)."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.modeling import build_char_tokenizer, build_tiny_llama, save_policy
from pipeline.rewards import HeadRewardModel, ImplicitPRM
from pipeline.scoring import collate
from pipeline.train_rm import (build_examples, class_balance_weights, head_loss, implicit_examples, implicit_loss,
                               kto_mismatched, kto_reference_point, reference_logprobs, train_head, train_implicit)
from conftest import MODEL_SECTION, TRAINER

TINY = {**MODEL_SECTION, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 2,
        "max_position_embeddings": 128}
RMC = {**TRAINER, "batch_size": 4, "epochs": 1, "lr": 0.003, "implicit_lr": 0.003, "warmup_steps": 0, "schedule": "constant",
       "grad_clip": 1.0, "zero_stage": 0, "bf16": False}
PROMPT = "3+4*2=?\n"


@pytest.fixture
def policy_dir(tmp_path):
    tok = build_char_tokenizer()
    save_policy(build_tiny_llama(tok, TINY, seed=0), tok, tmp_path / "policy")
    return tmp_path / "policy"


def mc_row(tok, response: str, q_hat: list[float], v0: float) -> dict:
    ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ends = [i + 1 for i, c in enumerate(response) if c == "\n"] + [len(response)]
    assert len(ends) == len(q_hat)
    return {"id": "a", "prompt": PROMPT, "response_ids": ids, "step_ends": ends, "outcome": int(q_hat[-1] > 0.5),
            "q_hat": q_hat, "he": [int(q > 0) for q in q_hat], "v0": v0, "v0_bok": 1 - (1 - v0) ** 4,
            "first_error": None}


# ---- 1. V(x) is a training target of the MC-label heads ----------------------------------------

def test_head_loss_includes_the_prompt_position_with_target_v0(policy_dir):
    """The loss of one PAV example is the mean BCE over 4 positions: the prompt's last token
    against v0, then the 3 step ends against Q_hat; so it moves with v0 (the old examples had no
    prompt position: 3 terms, independent of v0)."""
    rm = HeadRewardModel.init_from_policy(str(policy_dir), "pav", dropout=0.0)
    rm.model.eval()
    tok = rm.tokenizer
    row = mc_row(tok, "3+4=7\n7*2=4\n#### 4", [0.75, 0.5, 1.0], v0=0.1)
    ex, = build_examples([row], tok, "pav")
    p = len(PROMPT)  # one token per character
    assert ex["positions"][0] == p - 1 and ex["targets"][0] == 0.1
    assert ex["targets"][1:] == [0.75, 0.5, 1.0]
    batch = collate([ex["prompt_ids"]], [ex["response_ids"]], tok.pad_token_id)
    with torch.no_grad():
        logits = rm.position_logits(rm.model, batch)
    # hand BCE: -(t log sigma(z) + (1 - t) log(1 - sigma(z))) at each target position
    z = [float(logits[0, i]) for i in ex["positions"]]
    bce = [-(t * math.log(1 / (1 + math.exp(-zz))) + (1 - t) * math.log(1 - 1 / (1 + math.exp(-zz))))
           for zz, t in zip(z, [0.1, 0.75, 0.5, 1.0])]
    assert head_loss(logits, [ex], None).item() == pytest.approx(sum(bce) / 4, rel=1e-5)
    # the prompt position's logit is the one V(x) is read from at scoring
    assert torch.sigmoid(logits[0, p - 1]).item() == pytest.approx(rm.head_probs([ex])[0][0], abs=1e-6)
    ex9, = build_examples([dict(row, v0=0.9)], tok, "pav")
    assert ex9["targets"][1:] == ex["targets"][1:]  # only the V(x) target changed
    assert head_loss(logits, [ex9], None).item() != pytest.approx(head_loss(logits, [ex], None).item(), abs=1e-4)
    # class balance sees the V(x) target too: 0.1 is the only target below 0.5
    assert class_balance_weights(ex["targets"]) == pytest.approx((0.5 * 4 / 3, 0.5 * 4 / 1))


@pytest.mark.parametrize("kind, label", [("pav", "se"), ("prm", "se")])
def test_training_moves_the_prompt_probability_toward_v0(policy_dir, kind, label):
    """Every step target is high (Q_hat >= 0.8) and v0 = 0.05: training only at step ends would
    push the shared head up everywhere, the prompt position included; training V(x) pulls the
    prompt position's probability down toward v0 while the step ends go up."""
    rm = HeadRewardModel.init_from_policy(str(policy_dir), kind, {"prover_k": 4, "alpha": 0.5}, dropout=0.0)
    tok = rm.tokenizer
    rows = [mc_row(tok, "3+4=7\n7*2=4\n#### 4", [0.9, 0.8, 1.0], v0=0.05),
            mc_row(tok, "3+4=7\n7*2=14\n#### 14", [0.9, 1.0, 1.0], v0=0.05),
            mc_row(tok, "4*2=8\n3+8=11\n#### 11", [0.8, 0.9, 1.0], v0=0.05),
            mc_row(tok, "3+4=7\n#### 14", [0.9, 1.0], v0=0.05)]
    examples = build_examples(rows, tok, kind, label)
    scoring = build_examples(rows, tok, None)
    before = rm.head_probs(scoring)
    losses, _ = train_head(rm, examples, {**RMC, "epochs": 30, "lr": 0.01}, None, seed=0, kind=kind)
    after = rm.head_probs(scoring)
    v_before, v_after = before[0][0], after[0][0]  # the same prompt: one V(x) for every row
    assert all(v == pytest.approx(v_after, abs=1e-5) for v, _ in after)
    assert abs(v_after - 0.05) < 0.5 * abs(v_before - 0.05), (v_before, v_after)
    assert v_after < 0.25
    # the steps still learn their own (high) targets
    assert min(q for _, qs in after for q in qs) > 0.6
    assert losses[-1] < losses[0]


# ---- 2. KTO's reference point is the optimizer batch's -----------------------------------------

def kto_examples(tok):
    def row(pid, response, outcome):
        ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ends = [i + 1 for i, c in enumerate(response) if c == "\n"] + [len(response)]
        return {"id": pid, "prompt": PROMPT if pid == "a" else "5*2-3=?\n", "response_ids": ids, "step_ends": ends,
                "outcome": outcome}
    rows = [row("a", "3+4=7\n7*2=4\n#### 4", 1), row("a", "3+4=8\n8*2=6\n#### 6", 0),
            row("b", "5*2=10\n10-3=7\n#### 7", 1), row("b", "5*2=7\n7-3=4\n#### 4", 0)]
    return implicit_examples(rows, tok)


def perturbed_prm(policy_dir, beta: float = 1.0) -> ImplicitPRM:
    """pi_phi != pi_ref, deterministically, so the rewards (and the reference point) are not 0:
    the reference is perturbed into a peaked distribution, while pi_phi stays the near-uniform
    tiny init, so log pi_phi - log pi_ref is mostly positive on responses the reference does not
    favour, and the mismatched pairs' mean (z0) is positive rather than clamped to 0."""
    prm = ImplicitPRM.init_from_policy(str(policy_dir), {"beta": beta})
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in prm.ref_model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return prm


def test_kto_reference_point_is_the_whole_batch_and_micro_batches_agree(policy_dir):
    prm = perturbed_prm(policy_dir)
    prm.model.eval()
    ex = kto_examples(prm.tokenizer)
    batch = [0, 1, 2, 3]
    ref = reference_logprobs(prm, ex, 4)  # log pi_ref of each response, as train_implicit precomputes it
    # hand: mismatched pairs (x_k, y_{k+1 mod 4}), z0 = max(0, mean of their rewards)
    mism = [dict(ex[k], response_ids=ex[(k + 1) % 4]["response_ids"]) for k in batch]
    with torch.no_grad():
        r_mm = [float(t.sum()) for t in prm.response_token_rewards(prm.model, mism)]
        r = [float(t.sum()) for t in prm.response_token_rewards(prm.model, ex, ref)]
    z0 = max(0.0, sum(r_mm) / 4)
    assert z0 > 0.05  # the construction has a positive reference point, so the clamp does not hide it
    assert float(kto_reference_point(prm, prm.model, ex, batch, 4)) == pytest.approx(z0, rel=1e-5)
    # forwards of one pair each give the same z0
    assert float(kto_reference_point(prm, prm.model, ex, batch, 1)) == pytest.approx(z0, rel=1e-5)
    labels = [e["label"] for e in ex]
    hand = sum((1 - 1 / (1 + math.exp(-(ri - z0)))) if l == 1 else (1 - 1 / (1 + math.exp(-(z0 - ri))))
               for ri, l in zip(r, labels)) / 4
    with torch.no_grad():
        whole = implicit_loss(prm, prm.model, "kto", batch, ex, ref, None).item()  # one micro batch
        z = kto_reference_point(prm, prm.model, ex, batch, 1)
        micro = [implicit_loss(prm, prm.model, "kto", [i], ex, ref, None, kl_ref=z).item() for i in batch]
        # the old behaviour: each micro batch of one its own reference point, max(0, r(x_i, y_i))
        old = [implicit_loss(prm, prm.model, "kto", [i], ex, ref, None).item() for i in batch]
    assert whole == pytest.approx(hand, rel=1e-5)
    assert sum(micro) / 4 == pytest.approx(whole, rel=1e-5)  # train_batch's weighting: one item, weight 1
    assert abs(sum(old) / 4 - whole) > 1e-3


def test_train_implicit_kto_micro_batches_of_one_match_one_forward(policy_dir):
    """The whole training run: micro batches of 1 (4 accumulated micro steps per optimizer step)
    give the loss curve of one forward per batch, now that z0 is fixed per optimizer batch."""
    runs = {}
    for name, micro in (("one", None), ("micro1", 1)):
        prm = perturbed_prm(policy_dir)
        ex = kto_examples(prm.tokenizer)
        losses, compute = train_implicit(prm, ex, {**RMC, "epochs": 3, "micro_batch_size": micro}, "kto", seed=0)
        runs[name] = (losses, compute)
    (l1, c1), (lm, cm) = runs["one"], runs["micro1"]
    assert len(l1) == len(lm) == 3
    assert lm == pytest.approx(l1, rel=1e-4, abs=1e-6)
    assert c1.flops == cm.flops and c1.scored_tokens == cm.scored_tokens


def _z0_on_rank(rank: int, world: int, rendezvous: str, policy_dir: str, out_dir: str) -> None:
    """One rank of a gloo group: the batch's reference point with `distributed` on."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        prm = perturbed_prm(policy_dir)
        prm.model.eval()
        ex = kto_examples(prm.tokenizer)
        # 3 items over 2 ranks: rank 0 scores pairs 0 and 2, rank 1 pair 1 and one padding forward
        z0 = kto_reference_point(prm, prm.model, ex, [2, 0, 3], 1)
        torch.save(z0, f"{out_dir}/z0_{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_kto_reference_point_is_all_reduced_over_ranks(policy_dir, tmp_path):
    """Two gloo ranks, each scoring its share of the mismatched pairs, both get the one-process
    z0 of the whole batch (not that of their own pairs)."""
    import torch.multiprocessing as mp

    mp.spawn(_z0_on_rank, args=(2, str(tmp_path / "rdv"), str(policy_dir), str(tmp_path)), nprocs=2, join=True)
    prm = perturbed_prm(policy_dir)
    prm.model.eval()
    ex = kto_examples(prm.tokenizer)
    single = float(kto_reference_point(prm, prm.model, ex, [2, 0, 3], 3))
    with torch.no_grad():  # rank 0's own pairs, (x_2, y_0) and (x_3, y_2), give another mean
        mism = kto_mismatched(ex, [2, 0, 3])
        own = max(0.0, sum(float(t.sum()) for t in prm.response_token_rewards(prm.model, [mism[0], mism[2]])) / 2)
    assert single > 0 and abs(own - single) > 1e-3
    for rank in (0, 1):
        assert float(torch.load(tmp_path / f"z0_{rank}.pt")) == pytest.approx(single, rel=1e-5)
