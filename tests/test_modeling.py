"""Tests of tokenizer/model construction, saving and loading (`pipeline/modeling.py`)."""
from __future__ import annotations

import json
import os

import pytest
import torch

from pipeline.modeling import SPECIAL_TOKENS, build_char_tokenizer, build_tiny_llama, load_policy, save_policy
from conftest import MODEL_SECTION

TINY = {**MODEL_SECTION, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2, "max_position_embeddings": 64}
TEXT = "3+4=7\n#### 7"


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory):
    model = build_tiny_llama(tok, TINY, seed=0)
    out = tmp_path_factory.mktemp("m") / "policy"
    save_policy(model, tok, out, extra_files={"policy_meta.json": json.dumps({"tier": "weak"})})
    return model, out


def test_char_tokenizer_one_token_per_character(tok):
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    # vocab = 4 specials, then chr(32)..chr(126) at 4.., then "\n" at 4 + 95 = 99
    expected = [4 + ord(ch) - 32 if ch != "\n" else 99 for ch in TEXT]
    assert ids == expected
    assert tok.decode(ids) == TEXT
    assert len(tok) == len(SPECIAL_TOKENS) + 95 + 1 == 100


def test_char_tokenizer_special_tokens(tok):
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.padding_side == "left"
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True) == TEXT


def test_char_tokenizer_round_trips_all_printable_ascii(tok):
    text = "".join(chr(i) for i in range(32, 127)) + "\n  two  spaces\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert tok.decode(ids) == text


def test_build_tiny_llama_is_seeded(tok):
    a = build_tiny_llama(tok, TINY, seed=3)
    b = build_tiny_llama(tok, TINY, seed=3)
    c = build_tiny_llama(tok, TINY, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.config.vocab_size == 100 and a.config.hidden_size == 32 and a.config.num_hidden_layers == 1
    assert a.config.eos_token_id == tok.eos_token_id and a.config.pad_token_id == tok.pad_token_id


def test_save_load_identical_logits_and_tokenizer(tok, saved):
    model, out = saved
    model2, tok2 = load_policy(str(out))
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert tok2(TEXT, add_special_tokens=False)["input_ids"] == ids
    assert tok2(TEXT)["input_ids"] == tok(TEXT)["input_ids"] == ids   # no BOS added by default, either
    assert tok2.decode(ids) == TEXT
    assert (tok2.pad_token_id, tok2.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)
    assert tok2.padding_side == "left"
    x = torch.tensor([ids])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, model2(input_ids=x).logits)
    assert next(model2.parameters()).dtype == torch.float32
    assert json.loads((out / "policy_meta.json").read_text()) == {"tier": "weak"}


def test_save_policy_replaces_directory_whole(tok, tmp_path):
    out = tmp_path / "policy"
    out.mkdir()
    (out / "stale.safetensors").write_text("old")
    model = build_tiny_llama(tok, TINY, seed=1)
    save_policy(model, tok, out)
    files = set(os.listdir(out))
    assert "stale.safetensors" not in files
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert os.listdir(tmp_path) == ["policy"]   # no temp or .old siblings


def test_save_policy_failure_keeps_old_directory(tok, tmp_path):
    out = tmp_path / "policy"
    out.mkdir()
    (out / "weights").write_text("old")
    model = build_tiny_llama(tok, TINY, seed=1)
    # an extra file in a missing subdirectory fails after the model was written
    with pytest.raises(FileNotFoundError):
        save_policy(model, tok, out, extra_files={"missing_dir/meta.json": "{}"})
    assert os.listdir(out) == ["weights"] and (out / "weights").read_text() == "old"
    assert os.listdir(tmp_path) == ["policy"]
