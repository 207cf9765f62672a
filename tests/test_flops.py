"""Tests of compute accounting (`pipeline/flops.py`) against hand values."""
from __future__ import annotations

import torch

from pipeline.flops import Compute, count_params, forward_flops, train_flops


def test_flops_by_hand():
    assert forward_flops(1000, 10) == 20_000.0    # 2 * 1000 * 10
    assert train_flops(1000, 10) == 60_000.0      # 6 * 1000 * 10
    assert forward_flops(0, 10) == 0.0
    assert train_flops(7, 0) == 0.0


def test_count_params_by_hand():
    # Linear(3, 4): 3*4 weights + 4 biases = 16; Linear(4, 2, bias=False): 8 -> 24
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2, bias=False))
    assert count_params(m) == 24
    # a tied weight is one parameter, counted once
    emb = torch.nn.Embedding(5, 3)
    head = torch.nn.Linear(3, 5, bias=False)
    head.weight = emb.weight
    assert count_params(torch.nn.ModuleList([emb, head])) == 15


def test_compute_add_by_hand():
    c = Compute()
    c.add_sampling(100, prompt_tokens=10, generated_tokens=5, samples=2)   # 2*100*(10+5) = 3000
    assert (c.prompt_tokens, c.generated_tokens, c.samples, c.flops) == (10, 5, 2, 3000.0)
    c.add_training(100, 7)                                                 # + 6*100*7 = 4200
    assert c.trained_tokens == 7 and c.flops == 7200.0
    c.add_scoring(100, 3)                                                  # + 2*100*3 = 600
    assert c.scored_tokens == 3 and c.flops == 7800.0
    c.add_sampling(50, 4, 6, 1)                                            # + 2*50*10 = 1000
    assert (c.prompt_tokens, c.generated_tokens, c.samples, c.flops) == (14, 11, 3, 8800.0)


def test_merge_sums_and_leaves_inputs_alone():
    a = Compute(prompt_tokens=1, generated_tokens=2, trained_tokens=3, scored_tokens=4, samples=5, flops=6.0,
                extra={"note": "a"})
    b = Compute(prompt_tokens=10, generated_tokens=20, trained_tokens=30, scored_tokens=40, samples=50, flops=60.5)
    m = a.merge(b)
    assert (m.prompt_tokens, m.generated_tokens, m.trained_tokens, m.scored_tokens, m.samples, m.flops) == \
        (11, 22, 33, 44, 55, 66.5)
    assert m.extra == {"note": "a"} and m.extra is not a.extra
    assert a.to_dict()["flops"] == 6.0 and b.to_dict()["flops"] == 60.5


def test_to_from_dict_round_trip():
    c = Compute()
    c.add_sampling(10, 3, 4, 1)
    c.add_training(10, 5)
    c.extra["stage"] = "rl"
    d = c.to_dict()
    assert d == {"prompt_tokens": 3, "generated_tokens": 4, "trained_tokens": 5, "scored_tokens": 0, "samples": 1,
                 "flops": 2 * 10 * 7 + 6 * 10 * 5, "extra": {"stage": "rl"}}
    assert Compute.from_dict(d) == c
    # unknown keys (from a newer artifact) are ignored, missing ones default to 0
    assert Compute.from_dict({"samples": 3, "wall_s": 9.0}) == Compute(samples=3)
