"""Head reward models (ORM, MC-PRM, PAV): the scoring interface, PAV's effective reward,
aggregation, training targets and the loss, by hand."""
from __future__ import annotations

import math
import os

import pytest
import torch

from pipeline.modeling import build_char_tokenizer, build_tiny_llama, save_policy
from pipeline.rewards import HeadRewardModel, aggregate, pav_effective_rewards, score_positions
from pipeline.train_rm import build_examples, class_balance_weights, head_loss
from conftest import MODEL_SECTION, TRAINER

TINY = {**MODEL_SECTION, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 2, "max_position_embeddings": 128}


def test_aggregate_by_hand():
    s = [0.9, 0.2, 0.7]
    assert aggregate(s, "min") == 0.2 and aggregate(s, "last") == 0.7
    assert aggregate(s, "mean") == pytest.approx(0.6)
    assert aggregate(s, "product") == pytest.approx(0.9 * 0.2 * 0.7)  # 0.126
    with pytest.raises(ValueError, match="min"):
        aggregate(s, "max")
    with pytest.raises(ValueError):
        aggregate([], "min")


def test_pav_effective_reward_by_hand():
    # V = 0.5, Q = [0.75, 0.25], K = 2, alpha = 0.5
    # Q_Bo2 = 1-(1-Q)^2: V -> 0.75, 0.75 -> 0.9375, 0.25 -> 0.4375
    # A = [0.9375-0.75, 0.4375-0.9375] = [0.1875, -0.5]; reward = Q + 0.5 A = [0.84375, 0.0]
    assert pav_effective_rewards(0.5, [0.75, 0.25], 2, 0.5) == pytest.approx([0.84375, 0.0])
    assert pav_effective_rewards(0.5, [0.75, 0.25], 2, 0.0) == pytest.approx([0.75, 0.25])  # alpha 0: Q only


def test_score_positions_are_the_last_token_of_each_step():
    # prompt of 4 tokens, steps ending after response tokens 3 and 7 -> sequence indices 6 and 10
    assert score_positions(4, [3, 7]) == [6, 10]


def test_class_balance_weights_by_hand():
    # 3 targets >= 0.5 and 1 below: w_high = 0.5*4/3, w_low = 0.5*4/1 -> each half weighs 2 in total
    w_high, w_low = class_balance_weights([0.9, 0.5, 1.0, 0.1])
    assert w_high == pytest.approx(2 / 3) and w_low == pytest.approx(2.0)
    assert 3 * w_high == pytest.approx(1 * w_low)
    assert class_balance_weights([1.0, 1.0]) == (1.0, 1.0)  # one class only: nothing to balance


def test_head_loss_by_hand():
    logits = torch.zeros(2, 5)
    logits[0, 1], logits[1, 3] = 2.0, -1.0
    examples = [{"positions": [1], "targets": [1.0]}, {"positions": [3, 0], "targets": [0.0, 0.5]}]
    # BCE(z=2, t=1) = log(1+e^-2); BCE(z=-1, t=0) = log(1+e^-1); BCE(z=0, t=.5) = log 2
    expected = (math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)) + math.log(2)) / 3
    assert head_loss(logits, examples, None).item() == pytest.approx(expected, rel=1e-6)
    # weights (w_high=3, w_low=1): targets 1.0 and 0.5 are "high"
    weighted = (3 * math.log1p(math.exp(-2)) + 1 * math.log1p(math.exp(-1)) + 3 * math.log(2)) / 3
    assert head_loss(logits, examples, (3.0, 1.0)).item() == pytest.approx(weighted, rel=1e-6)


@pytest.fixture
def policy_dir(tmp_path):
    tok = build_char_tokenizer()
    save_policy(build_tiny_llama(tok, TINY, seed=0), tok, tmp_path / "policy")
    return tmp_path / "policy"


def mc_row(tok):
    response = "3+4=7\n7*2=4\n#### 4"
    ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return {"prompt": "3+4*2=?\n", "response_ids": ids, "step_ends": [6, 12, 18], "outcome": 1,
            "he": [1, 0, 1], "q_hat": [0.75, 0.0, 1.0], "v0": 0.4, "v0_bok": 1 - 0.6 ** 4, "first_error": None}


def test_build_examples_targets_and_positions(policy_dir):
    rm = HeadRewardModel.init_from_policy(str(policy_dir), "prm")
    row = mc_row(rm.tokenizer)
    p = len("3+4*2=?\n")  # one token per character
    orm, = build_examples([row], rm.tokenizer, "orm")
    assert orm["positions"] == [p + 18 - 1] and orm["targets"] == [1.0]  # last step's final token, no V(x)
    # MC-label kinds: the prompt's last token (p - 1, where scoring reads V(x)) first, then each step end
    he, = build_examples([row], rm.tokenizer, "prm", "he")
    assert he["positions"] == [p - 1, p + 5, p + 11, p + 17] and he["targets"] == [1.0, 1.0, 0.0, 1.0]  # v0 > 0: HE 1
    he0, = build_examples([dict(row, v0=0.0, v0_bok=0.0)], rm.tokenizer, "prm", "he")
    assert he0["targets"][0] == 0.0  # no completion of the bare prompt was right
    se, = build_examples([row], rm.tokenizer, "prm", "se")
    pav, = build_examples([row], rm.tokenizer, "pav")
    # PAV's V(x) target is the completer's v0 (the head learns Q^pi; Best-of-K is applied at scoring)
    assert se["targets"] == pav["targets"] == [0.4, 0.75, 0.0, 1.0]
    assert se["positions"] == pav["positions"] == he["positions"]


def test_scoring_interface_save_load_roundtrip_and_pav(policy_dir, tmp_path):
    rm = HeadRewardModel.init_from_policy(str(policy_dir), "pav", {"prover_k": 4, "alpha": 0.5})
    ex = build_examples([mc_row(rm.tokenizer)] * 3, rm.tokenizer, None)
    probs = rm.head_probs(ex)
    scores = rm.step_scores(ex, batch_size=2)  # batching must not change scores
    assert len(scores) == 3 and all(len(s) == 3 for s in scores)
    v0, q = probs[0]
    assert scores[0] == pytest.approx(pav_effective_rewards(v0, q, 4, 0.5))
    assert scores[1] == pytest.approx(scores[0], abs=1e-6)
    terms = rm.pav_terms(ex)[0]  # Q^pi and A^mu separately: Q + 0.5 A is the effective reward
    assert terms["q"] == pytest.approx(q) and terms["v0"] == pytest.approx(v0)
    assert [a + 0.5 * b for a, b in zip(terms["q"], terms["a_prover"])] == pytest.approx(scores[0])
    rm.save(tmp_path / "rm")
    again = HeadRewardModel.load(tmp_path / "rm")
    assert again.kind == "pav" and again.meta["prover_k"] == 4
    flat = [x for s in scores for x in s]
    assert [x for s in again.step_scores(ex) for x in s] == pytest.approx(flat, abs=1e-6)
    assert again.solution_scores(ex, "min") == pytest.approx([min(s) for s in scores], abs=1e-6)


def test_unknown_kind_is_rejected(policy_dir):
    with pytest.raises(ValueError, match="orm"):
        HeadRewardModel.init_from_policy(str(policy_dir), "value")


# ---- implicit PRM -------------------------------------------------------------------------

from pipeline.rewards import ImplicitPRM, load_reward_model  # noqa: E402
from pipeline.train_rm import implicit_examples, preference_pairs, train_implicit  # noqa: E402


def rollout_row(tok, pid, response, outcome):
    ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ends = [i + 1 for i, c in enumerate(response) if c == "\n"] + [len(response)]
    return {"id": pid, "prompt": "3+4*2=?\n", "response_ids": ids, "step_ends": ends, "outcome": outcome,
            "first_error": None if outcome else 0}


def test_preference_pairs_within_each_instruction():
    ex = [{"instruction": "a", "label": 1.0}, {"instruction": "a", "label": 0.0}, {"instruction": "b", "label": 0.0},
          {"instruction": "a", "label": 0.0}, {"instruction": "b", "label": 1.0}]
    assert preference_pairs(ex) == [(0, 1), (0, 3), (4, 2)]


def test_implicit_prm_rewards_are_zero_at_init_and_match_log_ratio(policy_dir, tmp_path):
    prm = ImplicitPRM.init_from_policy(str(policy_dir), {"beta": 0.05})
    tok = prm.tokenizer
    rows = [rollout_row(tok, "a", "3+4=7\n7*2=4\n#### 4", 1), rollout_row(tok, "a", "3+4=8\n8*2=6\n#### 6", 0)]
    ex = implicit_examples(rows, tok)
    # pi_phi == pi_ref at initialisation: every step reward is exactly 0
    assert all(x == 0.0 for s in prm.step_scores(ex) for x in s)
    # after changing pi_phi, step rewards sum to beta * sum_t (log pi - log pi_ref) of the response
    with torch.no_grad():
        for p in prm.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    scores = prm.step_scores(ex)
    from pipeline.scoring import collate, token_logprobs
    batch = collate([e["prompt_ids"] for e in ex], [e["response_ids"] for e in ex], tok.pad_token_id)
    with torch.no_grad():
        diff = (token_logprobs(prm.model, batch) - token_logprobs(prm.ref_model, batch)) * batch["response_mask"]
    for b, s in enumerate(scores):
        assert len(s) == 3
        assert sum(s) == pytest.approx(0.05 * diff[b].sum().item(), abs=1e-5)
    # save / load: the same scores; without the reference: beta * log pi_phi
    prm.save(tmp_path / "implicit")
    again = load_reward_model(tmp_path / "implicit")
    assert isinstance(again, ImplicitPRM) and again.meta["ref_policy"] == str(policy_dir)
    assert [x for s in again.step_scores(ex) for x in s] == pytest.approx([x for s in scores for x in s], abs=1e-6)
    # the reference is found relative to the model: loading from another directory whose own
    # relative path of the same name holds a different policy still picks the right one
    other = tmp_path / "elsewhere"
    tok2 = build_char_tokenizer()
    save_policy(build_tiny_llama(tok2, TINY, seed=7), tok2, other / policy_dir.name)
    cwd = os.getcwd()
    try:
        prm.meta["ref_policy"] = policy_dir.name  # as Snakemake records it: relative to its workdir
        os.chdir(policy_dir.parent)
        prm.save(tmp_path / "implicit_rel")
        os.chdir(other)
        moved = load_reward_model(tmp_path / "implicit_rel")
    finally:
        os.chdir(cwd)
    assert [x for s in moved.step_scores(ex) for x in s] == pytest.approx([x for s in scores for x in s], abs=1e-6)
    no_ref = load_reward_model(tmp_path / "implicit", use_ref=False)
    with torch.no_grad():
        lp = token_logprobs(no_ref.model, batch) * batch["response_mask"]
    assert sum(no_ref.step_scores(ex)[0]) == pytest.approx(0.05 * lp[0].sum().item(), abs=1e-5)


@pytest.mark.parametrize("loss", ["ce", "ce_inst", "dpo", "kto", "nca"])
def test_train_implicit_runs_each_loss_and_moves_rewards_apart(policy_dir, loss):
    prm = ImplicitPRM.init_from_policy(str(policy_dir), {"beta": 0.5})
    tok = prm.tokenizer
    rows = [rollout_row(tok, "a", "3+4=7\n7*2=4\n#### 4", 1), rollout_row(tok, "a", "3+4=8\n8*2=6\n#### 6", 0),
            rollout_row(tok, "b", "3+4=7\n7*2=4\n#### 4", 1), rollout_row(tok, "b", "3+4=9\n9*2=8\n#### 8", 0)]
    ex = implicit_examples(rows, tok)
    rmc = {**TRAINER, "batch_size": 4, "epochs": 8, "lr": 0.003, "implicit_lr": 0.003, "warmup_steps": 0,
           "schedule": "constant", "grad_clip": 1.0, "zero_stage": 0, "bf16": False}
    losses, compute = train_implicit(prm, ex, rmc, loss, seed=0)
    assert all(math.isfinite(x) for x in losses) and compute.trained_tokens > 0 and compute.scored_tokens > 0
    assert losses[-1] < losses[0]
    r = [sum(s) for s in prm.step_scores(ex)]
    assert min(r[0], r[2]) > max(r[1], r[3])  # correct responses now get the higher sequence reward


def test_unknown_implicit_loss_is_rejected(policy_dir):
    prm = ImplicitPRM.init_from_policy(str(policy_dir), {"beta": 0.05})
    with pytest.raises(ValueError, match="ce_inst"):
        train_implicit(prm, [], {**TRAINER, "batch_size": 2, "epochs": 1, "lr": 0.1}, "ipo", seed=0)


def test_every_registered_kind_has_one_class_behind_the_base_interface(tmp_path):
    """registry.REWARD_KINDS names the class of each kind; the loader resolves it, the class
    claims the kind, and every class shares the base's save and solution_scores."""
    from pipeline.registry import OUTCOME_LABELLED_KINDS, REWARD_KINDS, REWARD_MODELS
    from pipeline.rewards import RewardModel, read_meta, reward_model_class

    assert {s.kind for s in REWARD_MODELS.values()} <= set(REWARD_KINDS)
    assert set(OUTCOME_LABELLED_KINDS) == {"orm", "implicit"}
    for kind in REWARD_KINDS:
        cls = reward_model_class(kind)
        assert issubclass(cls, RewardModel) and kind in cls.kinds
        assert cls.save is RewardModel.save and cls.solution_scores is RewardModel.solution_scores
    with pytest.raises(ValueError, match="unknown reward-model kind 'qrm'"):
        reward_model_class("qrm")
    with pytest.raises(ValueError, match="HeadRewardModel kind must be one of"):
        HeadRewardModel(None, None, "implicit", {})
    # a saved model's meta names its file when it is missing, garbage or of an unknown kind
    with pytest.raises(FileNotFoundError, match="no rm_meta.json"):
        read_meta(tmp_path)
    (tmp_path / "rm_meta.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"rm_meta.json: not valid JSON"):
        read_meta(tmp_path)
    (tmp_path / "rm_meta.json").write_text('{"kind": "qrm"}')
    with pytest.raises(ValueError, match=r"rm_meta.json: 'kind' must be one of orm, prm, pav, implicit, likelihood; got 'qrm'"):
        read_meta(tmp_path)


# ---- the untrained likelihood baseline ----------------------------------------------------------

def test_step_mean_logprobs_by_hand():
    from pipeline.rewards.likelihood import step_mean_logprobs

    lp = torch.tensor([-1.0, -2.0, -3.0, -4.0, -5.0])
    assert step_mean_logprobs(lp, [2, 5]) == pytest.approx([-1.5, -4.0])
    assert step_mean_logprobs(lp, [5]) == pytest.approx([-3.0])
    with pytest.raises(ValueError, match="empty step"):
        step_mean_logprobs(lp, [2, 2, 5])


def test_likelihood_verifier_scores_the_policy_log_likelihood_and_loads_by_kind(policy_dir, tmp_path):
    """Step h's score is the mean of log pi(y_t | x, y_<t) over its tokens, the last step through
    EOS, under the policy it was built from; saved and loaded through the kind registry it scores
    the same, and the stage writes held-out metrics with no training compute."""
    import json

    from pipeline.modeling import load_policy
    from pipeline.rewards import LikelihoodVerifier, load_reward_model
    from pipeline.scoring import token_logprobs
    from pipeline.train_rm import main as train_rm_main
    from pipeline.utils import write_jsonl

    v = LikelihoodVerifier.init_from_policy(str(policy_dir))
    tok = v.tokenizer
    row = rollout_row(tok, "a", "3+4=7\n7*2=14\n#### 14", 1)
    ex, = build_examples([row], tok, None)
    scores, = v.step_scores([ex])
    # by hand: one sequence through the policy, log-softmax, the response's next-token log-probs
    model, _ = load_policy(str(policy_dir))
    seq = ex["prompt_ids"] + ex["response_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([seq])).logits[0, :-1].float(), -1)
    p = len(ex["prompt_ids"])
    resp = [float(logp[p - 1 + t, seq[p + t]]) for t in range(len(ex["response_ids"]))]
    ends = [0] + list(ex["step_token_ends"][:-1]) + [len(ex["response_ids"])]
    hand = [sum(resp[a:b]) / (b - a) for a, b in zip(ends, ends[1:])]
    assert len(scores) == 3 and scores == pytest.approx(hand, abs=1e-5)
    assert not v.scores_are_probabilities and all(s < 0 for s in scores)
    v.save(tmp_path / "loglik" / "model")
    again = load_reward_model(tmp_path / "loglik" / "model")
    assert type(again) is LikelihoodVerifier and again.kind == "likelihood"
    assert again.step_scores([ex])[0] == pytest.approx(scores, abs=1e-6)
    assert again.solution_scores([ex], "min")[0] == pytest.approx(min(scores), abs=1e-6)

    rows = [rollout_row(tok, pid, r, o) for pid in ("a", "b")
            for r, o in (("3+4=7\n7*2=14\n#### 14", 1), ("3+4=8\n8*2=16\n#### 16", 0))]
    write_jsonl(tmp_path / "heldout.jsonl", rows)
    cfg = json.dumps({"verify": {"score_batch_size": 2}})
    train_rm_main(["--cfg", cfg, "--kind", "likelihood", "--policy", str(policy_dir),
                   "--heldout", str(tmp_path / "heldout.jsonl"), "--out", str(tmp_path / "stage")])
    m = json.loads((tmp_path / "stage" / "metrics.json").read_text())
    assert m["kind"] == "likelihood" and m["train_flops"] == m["total_flops"] == 0 and m["n_heldout"] == 4
    assert 0 <= m["within_prompt_auroc_mean"] <= 1 and "auroc_product" not in m
    assert load_reward_model(tmp_path / "stage" / "model").kind == "likelihood"
    with pytest.raises(SystemExit, match="--labels: --kind likelihood is not trained"):
        train_rm_main(["--cfg", cfg, "--kind", "likelihood", "--policy", str(policy_dir), "--labels", "x.jsonl",
                       "--heldout", str(tmp_path / "heldout.jsonl"), "--out", str(tmp_path / "stage2")])


def test_implicit_prm_scoring_follows_the_saved_reference_choice(policy_dir, tmp_path):
    """rm.implicit_score_reference: false trains against the reference but saves
    `score_with_reference: false`, so every loader scores beta * log pi_phi alone (the paper's
    "reference dropped at inference"); PRIME's explicit use_ref=True still gets the ratio. The
    metrics carry the recipe table 1 prints."""
    import json

    from pipeline.config import load_preset
    from pipeline.scoring import collate, token_logprobs
    from pipeline.train_rm import main as train_rm_main
    from pipeline.train_rm import recipe_summary
    from pipeline.utils import write_jsonl

    tok = ImplicitPRM.init_from_policy(str(policy_dir), {"beta": 0.05}).tokenizer
    rows = [rollout_row(tok, pid, r, o) for pid in ("a", "b")
            for r, o in (("3+4=7\n7*2=4\n#### 4", 1), ("3+4=8\n8*2=6\n#### 6", 0))]
    write_jsonl(tmp_path / "labels.jsonl", rows)
    rmc = {**load_preset()["rm"], "epochs": 1, "batch_size": 4, "implicit_score_reference": False}
    cfg = json.dumps({"rm": rmc, "seed": 0})
    train_rm_main(["--cfg", cfg, "--kind", "implicit", "--loss", "ce", "--labels", str(tmp_path / "labels.jsonl"),
                   "--policy", str(policy_dir), "--heldout", str(tmp_path / "labels.jsonl"),
                   "--out", str(tmp_path / "stage")])
    m = json.loads((tmp_path / "stage" / "metrics.json").read_text())
    assert m["recipe"] == f"init {policy_dir.name}; 4 outcome-labelled rollouts; scored without reference"
    saved = load_reward_model(tmp_path / "stage" / "model")
    assert saved.meta["score_with_reference"] is False and saved.ref_model is None
    ex = implicit_examples(rows, tok)
    batch = collate([e["prompt_ids"] for e in ex], [e["response_ids"] for e in ex], tok.pad_token_id)
    with torch.no_grad():
        lp = token_logprobs(saved.model, batch) * batch["response_mask"]
        ref_lp = token_logprobs(ImplicitPRM.init_from_policy(str(policy_dir), {"beta": 0.05}).model, batch)
    scores = saved.step_scores(ex)
    for b, s in enumerate(scores):
        assert sum(s) == pytest.approx(0.05 * lp[b].sum().item(), abs=1e-5)
    # the held-out metrics were measured the same way the tables will score
    from pipeline.metrics import within_group_auroc
    assert m["within_prompt_auroc_mean"] == pytest.approx(
        within_group_auroc([sum(s) / len(s) for s in scores], [r["outcome"] for r in rows], [r["id"] for r in rows]))
    ratio = ImplicitPRM.load(tmp_path / "stage" / "model", use_ref=True)
    assert ratio.ref_model is not None
    for b, s in enumerate(ratio.step_scores(ex)):
        assert sum(s) == pytest.approx(0.05 * (lp[b].sum() - (ref_lp[b] * batch["response_mask"][b]).sum()).item(),
                                       abs=1e-5)
    # the recipe of the other kinds, by hand
    assert recipe_summary("pav", "results/models/sft/strong", 512) == "init strong; 512 MC-labelled rollouts"
    assert recipe_summary("likelihood", "results/models/sft/medium", 0) == "untrained medium policy"
    assert recipe_summary("implicit", "x/medium", 9, True) == "init medium; 9 outcome-labelled rollouts; scored with reference"
