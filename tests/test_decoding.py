"""The own decode loop (pipeline/decoding.py): its logits against transformers' forward, its
tokens against `generate`, and the fallback for models it does not run."""
from __future__ import annotations

import pytest
import torch

from pipeline.decoding import KVDecoder, unsupported_reason
from pipeline.modeling import build_char_tokenizer, build_tiny_llama
from pipeline.sampler import HFSampler

PROMPTS = ["3+4*2=?\n", "1+1=?\n", "9*9-3+2=?\n", "7=?\n", "2*3*4*5-6=?\n"]


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def tiny(tok, num_kv_heads=4, tie=True, seed=0):
    cfg = {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4, "num_kv_heads": num_kv_heads,
           "max_position_embeddings": 128, "tie_word_embeddings": tie}
    return build_tiny_llama(tok, cfg, seed).eval()


def qwen2(tok):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(1)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # q/k/v biases (Qwen2 has them) start at zero: make them count
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("which", ["mha_tied", "gqa_untied", "qwen2_bias"])
def test_prefill_and_every_step_match_the_transformers_forward(tok, which):
    model = {"mha_tied": lambda: tiny(tok), "gqa_untied": lambda: tiny(tok, num_kv_heads=2, tie=False),
             "qwen2_bias": lambda: qwen2(tok)}[which]()
    enc = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert not bool(mask.all()), "the prompts must need left padding"
    dec = KVDecoder(model)
    with torch.no_grad():
        got = dec.prefill(ids, mask, ids.shape[1] + 8)
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        ref = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        torch.testing.assert_close(got, ref.logits[:, -1], rtol=0, atol=1e-5)
        cache, m, logits = ref.past_key_values, mask, ref.logits[:, -1]
        for step in range(8):
            nxt = logits.argmax(-1)
            live = torch.tensor([True, True, step < 3, True, step < 5])  # finished rows are fed masked padding
            fed = torch.where(live, nxt, torch.full_like(nxt, tok.pad_token_id))
            got = dec.step(fed, live)
            m = torch.cat([m, live.long()[:, None]], 1)
            ref = model(input_ids=fed[:, None], attention_mask=m, position_ids=dec.pos[:, None] - 1,
                        past_key_values=cache, use_cache=True)
            cache, logits = ref.past_key_values, ref.logits[:, -1]
            torch.testing.assert_close(got[live], logits[live], rtol=0, atol=1e-5)
        with pytest.raises(RuntimeError, match="KV cache full"):
            dec.step(nxt)


def test_select_and_repeat_keep_each_rows_own_cache(tok):
    model = tiny(tok)
    enc = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    whole, part = KVDecoder(model), KVDecoder(model)
    whole.prefill(enc["input_ids"], enc["attention_mask"], 40)
    part.prefill(enc["input_ids"], enc["attention_mask"], 40)
    part.repeat(2)
    part.select(torch.tensor([1, 4, 9]))  # rows 0, 2 and 4 of the batch, one copy each
    nxt = torch.tensor([5, 6, 7, 8, 9])
    torch.testing.assert_close(part.step(nxt[[0, 2, 4]]), whole.step(nxt)[[0, 2, 4]], rtol=0, atol=1e-6)


@pytest.mark.parametrize("which", ["mha_tied", "gqa_untied", "qwen2_bias"])
def test_a_shared_prefix_gives_the_logits_of_copied_ones(tok, which):
    """repeat(n) keeps one copy of each prefix for its n rows: the same logits as n
    copies, step by step, with rows finishing (masked) and leaving the batch (select)."""
    model = {"mha_tied": lambda: tiny(tok), "gqa_untied": lambda: tiny(tok, num_kv_heads=2, tie=False),
             "qwen2_bias": lambda: qwen2(tok)}[which]()
    enc = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    copied, shared = KVDecoder(model), KVDecoder(model)
    with torch.no_grad():
        # the reference: every prompt encoded 3 times, each copy with a cache of its own
        a = copied.prefill(ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0), ids.shape[1] + 12)
        shared.prefill(ids, mask, ids.shape[1] + 12)
        shared.repeat(3)
        assert shared.k[0].shape[2] == 12 and shared.kp[0].shape[0] == len(PROMPTS)  # no prefix copies
        for step in range(12):
            nxt = a.argmax(-1)
            live = torch.ones(len(nxt), dtype=torch.bool)
            if step >= 2:
                live[1] = False  # finished: fed masked padding
            fed = torch.where(live, nxt, torch.full_like(nxt, tok.pad_token_id))
            a, b = copied.step(fed, live), shared.step(fed, live)
            torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
            if step == 5:  # rows leave: whole groups and single rows of others
                keep = torch.tensor([0, 2, 3, 5, 6, 8, 9, 10, 14])
                copied.select(keep)
                shared.select(keep)
                a = a[keep]
    with pytest.raises(RuntimeError, match="twice"):
        shared.repeat(2)


@pytest.mark.parametrize("tie", [True, False])
def test_own_loop_gives_generates_tokens_greedy_and_sampled(tok, tie):
    model = tiny(tok, tie=tie, seed=3)
    kw = dict(n=4, max_new_tokens=24, seed=11)
    own, hf = HFSampler(model, tok, batch_size=8, progress=False), HFSampler(model, tok, batch_size=8, progress=False,
                                                                              decode="generate")
    assert own.kv_decoder() is not None and hf.kv_decoder() is None
    for extra in (dict(greedy=True), dict(temperature=1.0)):
        a, b = own.generate(PROMPTS, **kw, **extra), hf.generate(PROMPTS, **kw, **extra)
        pairs = [(x.token_ids, y.token_ids) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
        assert len(pairs) == 20 and all(x == y for x, y in pairs), extra
        assert [[g.text for g in r] for r in a] == [[g.text for g in r] for r in b]
    # the own loop prefills each prompt once for its n samples (they share its cache); the rest
    # of the count is the same
    mine, theirs = own.compute.to_dict(), hf.compute.to_dict()
    assert mine["prompt_tokens"] * kw["n"] == theirs["prompt_tokens"] and mine["flops"] < theirs["flops"]
    assert {k: v for k, v in mine.items() if k not in ("prompt_tokens", "flops")} == \
        {k: v for k, v in theirs.items() if k not in ("prompt_tokens", "flops")}


def test_models_it_does_not_run_fall_back_to_the_transformers_forward(tok):
    model = tiny(tok)
    assert unsupported_reason(model) is None
    model.config.rope_parameters = {**model.config.rope_parameters, "rope_type": "linear", "factor": 2.0}
    assert "rope type" in unsupported_reason(model)
    assert HFSampler(model, tok, progress=False).kv_decoder() is None
    with pytest.raises(ValueError, match="cannot run this model"):
        KVDecoder(model)
    assert "model type" in unsupported_reason(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="sampling.decode"):
        HFSampler(tiny(tok), tok, decode="fast")


@pytest.mark.parametrize("lp_temp,top_p", [(1.0, 1.0), (0.7, 0.8)], ids=["raw_logits", "sampling_temperature"])
def test_sampled_logprobs_are_the_trainers_old_logprobs(tok, lp_temp, top_p):
    """RL's old log-probs (rl.old_logprobs: sampler) come from the sampling pass at
    rl.logprob_temperature (the sampling temperature, or 1 for the raw logits), over the whole
    vocabulary whatever top_p kept, equal to the forward the trainer would otherwise run over its
    right-padded batch; rows the sampler did not draw as they are get that forward."""
    from pipeline.rl.train import old_response_logprobs, response_logprobs, sampled_logprobs

    model = tiny(tok, seed=5)
    own = HFSampler(model, tok, batch_size=8, progress=False)
    gens = own.generate(PROMPTS, n=3, temperature=0.7, top_p=top_p, max_new_tokens=20, seed=2, logprobs=True,
                        logprob_temperature=lp_temp)
    encoded = tok(PROMPTS, add_special_tokens=False)["input_ids"]
    prompt_ids = [encoded[i] for i, gs in enumerate(gens) for _ in gs]
    response_ids = [g.token_ids for gs in gens for g in gs]
    assert all(g.logprobs is not None and len(g.logprobs) == len(g.token_ids) for gs in gens for g in gs)
    forward = response_logprobs(model, prompt_ids, response_ids, tok.pad_token_id, mb=4, temperature=lp_temp)
    known = sampled_logprobs(encoded, gens, prompt_ids, response_ids)
    for got, ref in zip(known, forward):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    assert max(float(r.abs().max()) for r in forward) > 0.1  # not all near-certain tokens
    # the other temperature's log-probs are far from these: the check above can tell them apart
    other = response_logprobs(model, prompt_ids, response_ids, tok.pad_token_id, mb=4, temperature=1.7 - lp_temp)
    assert max(float((a - b).abs().max()) for a, b in zip(known, other)) > 0.1

    # a method's own batch: filtered, reordered, and one sequence the sampler never drew
    order = [4, 0, 7]
    p_ids = [prompt_ids[i] for i in order] + [encoded[1]]
    r_ids = [response_ids[i] for i in order] + [response_ids[3][:-1] or [tok.eos_token_id]]
    known = sampled_logprobs(encoded, gens, p_ids, r_ids)
    assert [k is None for k in known] == [False, False, False, True]
    full, n_forward = old_response_logprobs(model, p_ids, r_ids, tok.pad_token_id, 4, known, lp_temp)
    assert n_forward == len(p_ids[3]) + len(r_ids[3])
    for got, ref in zip(full, response_logprobs(model, p_ids, r_ids, tok.pad_token_id, mb=4, temperature=lp_temp)):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)

    # transformers' generate and vLLM do not record them: the trainer runs its forward
    hf = HFSampler(model, tok, batch_size=8, progress=False, decode="generate")
    assert all(g.logprobs is None for gs in hf.generate(PROMPTS, n=2, max_new_tokens=8, logprobs=True) for g in gs)
    assert all(k is None for k in sampled_logprobs(encoded, hf.generate(PROMPTS, n=1, max_new_tokens=8),
                                                   encoded, [[1]] * len(encoded)))
