"""A reward model reads every pool sample in its own prompt template and tokenizer
(pipeline/score_pool.py), so a pool from another model family (the Implicit PRM preset's
Mistral pool under a Llama PRM) is scored as the reward model's own samples would be.

The "foreign" generator here is a character tokenizer with a shuffled vocabulary (different ids
for the same text) and its own chat-like prompt format, both built locally."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from pipeline.modeling import SPECIAL_TOKENS, build_char_tokenizer, build_tiny_llama, save_policy
from pipeline.rewards import HeadRewardModel
from pipeline.score_pool import as_reward_model_reads, main as score_pool_main, same_vocabulary
from pipeline.steps import split_steps_with_ends
from pipeline.task import format_prompt
from conftest import MODEL_SECTION

TINY = {**MODEL_SECTION, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 2, "max_position_embeddings": 128}
RM_TEMPLATE = "{problem}\n"                      # the testbed format the reward model knows
FOREIGN_TEMPLATE = "[Q] {problem} [A]\n"         # the other family's chat format


def shuffled_char_tokenizer(seed: int = 3) -> PreTrainedTokenizerFast:
    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    random.Random(seed).shuffle(chars)
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + chars)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")


RECORDS = [{"id": "t1", "problem": "3+4*2=?"}, {"id": "t2", "problem": "9-5+1=?"}]
RESPONSES = {"t1": ["3+4=7\n7*2=14\n#### 4", "3+4=7\n7*2=4\n#### 4"], "t2": ["9-5=4\n4+1=5\n#### 5", "9-5=3\n#### 3"]}


def pool_rows(tok, template: str) -> list[dict]:
    """Rollout rows as pipeline.rollouts writes them, tokenised by `tok` in `template`."""
    rows = []
    for r in RECORDS:
        for k, text in enumerate(RESPONSES[r["id"]]):
            _, ends = split_steps_with_ends(text, "\n")
            rows.append({"id": r["id"], "sample_idx": k, "policy": "g", "prompt": format_prompt(r, {"prompt_template": template}),
                         "response": text, "response_ids": tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
                         "finished": True, "step_ends": ends, "outcome": int(k == 0)})
    return rows


def test_reads_rerender_the_prompt_and_retokenise_the_response():
    ours, theirs = build_char_tokenizer(), shuffled_char_tokenizer()
    assert same_vocabulary(ours, build_char_tokenizer()) and not same_vocabulary(ours, theirs)
    foreign = pool_rows(theirs, FOREIGN_TEMPLATE)
    assert foreign[0]["response_ids"] != pool_rows(ours, RM_TEMPLATE)[0]["response_ids"]  # same text, other ids
    read = as_reward_model_reads(foreign, ours, problems={r["id"]: r for r in RECORDS}, template=RM_TEMPLATE,
                                 retokenize=True)
    assert read == pool_rows(ours, RM_TEMPLATE)
    unfinished = as_reward_model_reads([dict(foreign[0], finished=False)], ours, retokenize=True)[0]
    assert unfinished["response_ids"][-1] != ours.eos_token_id and unfinished["prompt"] == foreign[0]["prompt"]
    with pytest.raises(SystemExit, match="no record with id 't1'"):
        as_reward_model_reads(foreign, ours, problems={}, template=RM_TEMPLATE)


def test_score_pool_scores_a_foreign_pool_as_its_own(tmp_path: Path):
    """score_pool on the foreign pool, with the records, the reward model's template and the
    generator's tokenizer, writes exactly the scores of the same samples written natively."""
    ours, theirs = build_char_tokenizer(), shuffled_char_tokenizer()
    save_policy(build_tiny_llama(ours, TINY, seed=0), ours, tmp_path / "policy")
    HeadRewardModel.init_from_policy(str(tmp_path / "policy"), "prm", {}).save(tmp_path / "rm")
    theirs.save_pretrained(tmp_path / "foreign_tok")
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    for name, rows in (("native", pool_rows(ours, RM_TEMPLATE)), ("foreign", pool_rows(theirs, FOREIGN_TEMPLATE))):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    score_pool_main(["--cfg", json.dumps({"verify": {"score_batch_size": 64}}), "--rm", str(tmp_path / "rm"), "--inputs", f"g={tmp_path}/native.jsonl",
                     "--out-dir", str(tmp_path / "native_scores")])
    cfg = {"score_prompt": {"prompt_template": RM_TEMPLATE}, "verify": {"score_batch_size": 64}}
    score_pool_main(["--cfg", json.dumps(cfg), "--rm", str(tmp_path / "rm"), "--inputs", f"g={tmp_path}/foreign.jsonl",
                     "--records", str(tmp_path / "records.jsonl"),
                     "--generator-tokenizers", f"g={tmp_path / 'foreign_tok'}", "--out-dir", str(tmp_path / "read")])
    score_pool_main(["--cfg", json.dumps({"verify": {"score_batch_size": 64}}), "--rm", str(tmp_path / "rm"), "--inputs", f"g={tmp_path}/foreign.jsonl",
                     "--out-dir", str(tmp_path / "raw")])
    load = lambda d: [json.loads(x)["step_scores"] for x in (tmp_path / d / "g.jsonl").read_text().splitlines()]  # noqa: E731
    native, read, raw = load("native_scores"), load("read"), load("raw")
    assert all(len(s) >= 1 for s in native)
    assert read == native      # the foreign pool, read the reward model's way
    assert raw != native       # without it: other token ids, another prompt
