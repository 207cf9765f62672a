"""Tokenizer and model construction/loading. Every stage loads policies with
`load_policy`, i.e. `AutoTokenizer` / `AutoModelForCausalLM` from a directory or hub id,
exactly as it would a hub model; the testbed's tiny Llama is saved with `save_pretrained`
so it goes through the same path.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM,
                          PreTrainedTokenizerFast)

from .config import HUB_ID

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
# what a model folder must hold for AutoTokenizer (one of these: fast, sentencepiece, BPE, WordPiece
# vocabularies) and for from_pretrained (a config and the weights, single-file or sharded)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class ModelFolderError(ValueError):
    """A model folder that is missing, incomplete or unreadable; the message names it and what is wrong."""


def check_model_dir(path, tokenizer: bool = True, weights: bool = True, config: bool = True) -> None:
    """Before any loading: a local model folder holds a config, a tokenizer (if `tokenizer`) and
    readable weights (if `weights`: every safetensors file's header and extent are checked, so a
    truncated or garbage file is named here, not in a bare SafetensorError); `config: False` for a
    folder that only has to hold a tokenizer. A hub id that is
    not a local folder passes (from_pretrained resolves it); any other missing path is an error."""
    p = Path(path)
    if not p.is_dir():
        if p.exists():
            raise ModelFolderError(f"{path}: not a folder (a model is a folder written by save_pretrained)")
        if HUB_ID.match(str(path)):
            return
        raise ModelFolderError(f"{path}: no such model folder (nor a hub id of the form org/name)")
    missing = []
    if config and not (p / "config.json").is_file():
        missing.append("config.json")
    if tokenizer and not any((p / f).is_file() for f in TOKENIZER_FILES):
        missing.append("a tokenizer (" + " / ".join(TOKENIZER_FILES) + ")")
    present = [f for f in WEIGHT_FILES if (p / f).is_file()]
    if weights and not present:
        missing.append("weights (" + " / ".join(WEIGHT_FILES) + ")")
    if missing:
        raise ModelFolderError(f"{path}: model folder lacks " + ", ".join(missing))
    if not weights:
        return
    shards = []
    for f in present:
        if f.endswith(".index.json"):
            try:
                index = json.loads((p / f).read_text(encoding="utf-8"))
                names = sorted(set(index["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise ModelFolderError(f"{p / f}: unreadable shard index ({e})") from e
            lost = [n for n in names if not (p / n).is_file()]
            if lost:
                raise ModelFolderError(f"{p / f}: names shards that are missing: {', '.join(lost)}")
            shards += [p / n for n in names if n.endswith(".safetensors")]
        elif f.endswith(".safetensors"):
            shards.append(p / f)
    from safetensors import safe_open

    for shard in shards:
        try:
            with safe_open(str(shard), "pt"):
                pass
        except Exception as e:  # SafetensorError (truncated, garbage) or OSError
            raise ModelFolderError(f"{shard}: unreadable weights ({e}); the file is truncated or not safetensors") from e


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII and newline.

    Built as a BPE model with no merges (so every character is one token) and a Fuse
    decoder (so decoding concatenates characters back without spaces)."""
    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + chars)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>", unk_token="<unk>")
    tok.padding_side = "left"  # decoder-only generation pads on the left
    return tok


def build_tiny_llama(tokenizer, model_cfg: dict, seed: int) -> LlamaForCausalLM:
    """A small Llama-architecture model from a config, randomly initialised with `seed`."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=int(model_cfg["hidden_size"]),
        intermediate_size=int(model_cfg["intermediate_size"]),
        num_hidden_layers=int(model_cfg["num_layers"]),
        num_attention_heads=int(model_cfg["num_heads"]),
        num_key_value_heads=int(model_cfg.get("num_kv_heads") or model_cfg["num_heads"]),  # absent: multi-head
        max_position_embeddings=int(model_cfg["max_position_embeddings"]),
        rms_norm_eps=1e-5,
        tie_word_embeddings=bool(model_cfg["tie_word_embeddings"]),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def load_policy(path: str, dtype: str = "float32", trust_remote_code: bool = False):
    """(model, tokenizer) from a local directory or hub id. `trust_remote_code` stays off
    unless a preset turns it on explicitly."""
    check_model_dir(path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype),
                                                 trust_remote_code=trust_remote_code)
    return model, tokenizer


def load_scalar_head_model(path: str, dropout: float = 0.1, trust_remote_code: bool = False):
    """(model, tokenizer): a policy's backbone with one scalar output per position (a token-
    classification head with one label, freshly initialised): reward-model heads and PPO's
    value network. `dropout` acts on the hidden states under the head in training (0.1 is
    transformers' default for such heads; the released VinePPO critic turns it off)."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    check_model_dir(path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = AutoConfig.from_pretrained(path, num_labels=1, trust_remote_code=trust_remote_code)
    config.classifier_dropout = float(dropout)
    model = AutoModelForTokenClassification.from_pretrained(path, config=config, trust_remote_code=trust_remote_code)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def param_count_from_config(path: str, trust_remote_code: bool = False) -> int:
    """Parameter count of a model directory or hub id without loading its weights (the model
    is built on the meta device). Used where an engine such as vLLM holds the real weights."""
    from transformers import AutoConfig

    check_model_dir(path, tokenizer=False, weights=False)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return sum(p.numel() for p in model.parameters())


def save_policy(model, tokenizer, out_dir, extra_files: dict[str, str] | None = None) -> None:
    """Save model + tokenizer atomically (a killed job leaves no half-written model dir). Under
    ZeRO-3 (`engine.module` of a stage-3 engine) the full weights are gathered first and only
    rank 0 writes."""
    from .engine import full_state_dict, is_main
    from .utils import atomic_dir

    state = full_state_dict(model)  # gathered by every rank before rank 0 writes
    if not is_main():
        return
    with atomic_dir(out_dir) as tmp:
        if state is None:
            model.save_pretrained(tmp)
        else:
            model.save_pretrained(tmp, state_dict=state)
        tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
