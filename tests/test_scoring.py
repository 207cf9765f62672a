"""Tests of response scoring (`pipeline/scoring.py`) on a tiny random Llama."""
from __future__ import annotations

import pytest

import torch
import torch.nn.functional as F

from conftest import MODEL_SECTION, scaled_tiny_llama
from pipeline.modeling import build_char_tokenizer
from pipeline.scoring import collate, join_responses, split_responses, token_logprobs

TINY = {**MODEL_SECTION, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 2, "max_position_embeddings": 64}


@pytest.fixture(scope="module")
def model():
    return scaled_tiny_llama(build_char_tokenizer(), TINY).eval()


def test_collate_by_hand():
    prompts = [[5, 6, 7], [8]]
    responses = [[9, 10], [11, 12, 13]]
    b = collate(prompts, responses, pad_id=0)
    # sequences 5 6 7 9 10 and 8 11 12 13 (+1 pad), T = 5
    assert b["input_ids"].tolist() == [[5, 6, 7, 9, 10], [8, 11, 12, 13, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # response_mask[b, t] = 1 where token t+1 is a response token (logit t predicts it):
    #   row 0: tokens 3,4 are the response -> positions 2,3
    #   row 1: tokens 1,2,3 are the response -> positions 0,1,2; position 3 predicts padding
    assert b["response_mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 0]]
    assert b["response_mask"].dtype == torch.float32
    # the targets under the mask are exactly the response tokens, in order
    targets = b["input_ids"][:, 1:]
    for row, r in enumerate(responses):
        assert targets[row][b["response_mask"][row].bool()].tolist() == r


def test_collate_empty_response():
    b = collate([[1, 2], [3]], [[], [4]], pad_id=0)
    assert b["response_mask"].tolist() == [[0.0], [1.0]]


def test_token_logprobs_match_manual_log_softmax(model):
    prompts = [[5, 6, 7], [8, 20, 30, 40]]
    responses = [[9, 10, 11, 12], [13]]
    b = collate(prompts, responses, pad_id=0)
    out = token_logprobs(model, b)
    assert out.shape == (2, b["input_ids"].shape[1] - 1)
    with torch.no_grad():
        for row, (p, r) in enumerate(zip(prompts, responses)):
            seq = torch.tensor([p + r])
            logits = model(input_ids=seq).logits[0]
            for t in range(len(p) - 1, len(p) + len(r) - 1):   # logit t predicts token t+1
                want = F.log_softmax(logits[t], dim=-1)[seq[0, t + 1]]
                torch.testing.assert_close(out[row, t], want)
    # temperature divides the logits before the softmax
    out_t = token_logprobs(model, b, temperature=2.0)
    with torch.no_grad():
        seq = b["input_ids"][:1, :]
        logits = model(input_ids=seq).logits[0, :-1] / 2.0
        want = F.log_softmax(logits, -1).gather(-1, seq[0, 1:, None]).squeeze(-1)
    mask = b["response_mask"][0].bool()
    torch.testing.assert_close(out_t[0][mask], want[mask])
    assert not torch.allclose(out_t[0][mask], out[0][mask])


def test_padding_does_not_change_logprobs(model):
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12]]
    responses = [[20, 21, 22, 23, 24, 25, 26], [30, 31]]
    both = collate(prompts, responses, pad_id=0)
    with torch.no_grad():
        joint = split_responses(token_logprobs(model, both), both)
        for i in range(2):
            alone = collate([prompts[i]], [responses[i]], pad_id=0)
            single = split_responses(token_logprobs(model, alone), alone)[0]
            assert single.shape == (len(responses[i]),)
            torch.testing.assert_close(joint[i], single, rtol=1e-5, atol=1e-5)


def test_split_join_round_trip():
    b = collate([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], pad_id=0)
    values = torch.arange(8, dtype=torch.float32).reshape(2, 4) + 1
    # response positions: row 0 -> 2,3 (values 3,4); row 1 -> 0,1,2 (values 5,6,7)
    parts = split_responses(values, b)
    assert [p.tolist() for p in parts] == [[3.0, 4.0], [5.0, 6.0, 7.0]]
    joined = join_responses(parts, b)
    assert joined.tolist() == [[0, 0, 3, 4], [5, 6, 7, 0]]
    # and the other way: vectors -> batch -> vectors
    vecs = [torch.tensor([-1.0, -2.0]), torch.tensor([0.5, 0.25, 0.125])]
    back = split_responses(join_responses(vecs, b), b)
    for v, w in zip(vecs, back):
        assert torch.equal(v, w)


def test_join_responses_rejects_wrong_length():
    b = collate([[1, 2, 3]], [[5, 6]], pad_id=0)
    with pytest.raises(RuntimeError):
        join_responses([torch.tensor([1.0, 2.0, 3.0])], b)   # 3 values for a 2-token response
