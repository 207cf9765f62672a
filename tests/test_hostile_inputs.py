"""Hostile configs stop at DAG build with a message naming the key (issue 15). Each case here
passed validation before: NaN / inf numbers, names that escape out_dir or carry shell syntax,
out_dir at the filesystem root or with a space, policies that are neither a folder nor a hub id.
The injection case runs the real Snakemake CLI and checks the command never ran."""
from __future__ import annotations

import pytest
import yaml

from pipeline.config import ConfigError, load_preset, merge_configs, validate_config
from conftest import snakemake


def check(change: dict) -> str:
    cfg = merge_configs(load_preset(), change)
    with pytest.raises(ConfigError) as e:
        validate_config(cfg, source="overlay.yaml")
    return str(e.value)


@pytest.mark.parametrize("change, message", [
    ({"sft": {"lr": float("nan")}}, "config key sft.lr: nan is not a finite number"),
    ({"rl": {"lr": float("inf")}}, "config key rl.lr: inf is not a finite number"),
    ({"sft": {"weight_decay": float("nan")}}, "config key sft.weight_decay: nan is not a finite number"),
    ({"rl": {"prime": {"beta": float("-inf")}}}, "config key rl.prime.beta: -inf is not a finite number"),
    ({"sft": {"tiers": {"../../../tmp/evil": 0.5}}}, "config key sft.tiers.../../../tmp/evil: a name must be one word"),
    ({"policies": {"medium x": "org/model"}}, "config key policies.medium x: a name must be one word"),
    ({"policies": {"medium": "/models/medium$(touch pwned)"}},
     "config key policies.medium: '/models/medium$(touch pwned)' is neither an existing model directory nor a hub id"),
    ({"policies": {"medium": "/no/such/model"}}, "config key policies.medium: '/no/such/model' is neither"),
    ({"out_dir": "/"}, "config key out_dir: '/' must name a folder"),
    ({"out_dir": "results/../.."}, "config key out_dir: 'results/../..' must name a folder"),
    ({"out_dir": "my results"}, "config key out_dir: 'my results' may hold only"),
    ({"out_dir": "res;rm -rf x"}, "config key out_dir: 'res;rm -rf x' may hold only"),
])
def test_hostile_config_values_are_refused_naming_the_key(change, message):
    text = check(change)
    assert text.startswith("overlay.yaml: invalid config") and message in text, text


def test_hub_ids_and_existing_folders_are_policies(tmp_path):
    (tmp_path / "my model").mkdir()
    cfg = merge_configs(load_preset(), {"policies": {"hub": "meta-llama/Llama-3.1-8B-Instruct",
                                                     "local": str(tmp_path / "my model")}})
    validate_config(cfg)  # a folder with a space is fine: rules quote it


def test_injection_through_a_policy_never_runs(tmp_path):
    """The issue's reproduction: the overlay ran `touch` and the job "succeeded". Now the DAG is
    never built, the message names the key and file, and nothing was touched."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"policies": {"medium": f"/models/medium$(touch {tmp_path}/pwned)"},
                                   "rollouts": {"policy": "medium"}}))
    proc = snakemake(tmp_path, "-n", "results/rollouts/medium/train.jsonl", "--configfile", str(bad), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "config key policies.medium" in out and "neither an existing model directory nor a hub id" in out
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "results").exists()


def test_a_policy_folder_with_a_space_reaches_the_command_as_one_word(tmp_path):
    """Rules quote every path they interpolate (Snakemake's :q): a policy folder with a space is one
    argument of the planned command, not two."""
    model = tmp_path / "my model"
    model.mkdir()
    over = tmp_path / "over.yaml"
    over.write_text(yaml.safe_dump({"policies": {"medium": str(model)}}))
    proc = snakemake(tmp_path, "-n", "-p", "results/rollouts/medium/train.jsonl", "--configfile", str(over))
    line = next(x for x in proc.stdout.splitlines() if "-m pipeline.rollouts" in x)
    assert f"--policy '{model}' --policy-name medium" in line


# ---- data files: errors name the file and line, before any model loads ---------------------------

def test_json_readers_name_file_and_line(tmp_path):
    from pipeline.utils import DataFileError, read_json, read_jsonl

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"a": 1}\n\xff\xfe{"b": 2}\n')
    with pytest.raises(DataFileError, match=rf"{bad}:2: not UTF-8 text"):
        read_jsonl(bad)
    bad.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataFileError, match=rf"{bad}:2: expected a JSON object, got list"):
        read_jsonl(bad)
    trunc = tmp_path / "summary.json"
    trunc.write_text('{"compute": {"flops": 1')
    with pytest.raises(DataFileError, match=rf"{trunc}:1: not valid JSON"):
        read_json(trunc)
    trunc.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(DataFileError, match=rf"{trunc}: not UTF-8 text"):
        read_json(trunc)


@pytest.mark.parametrize("content, message", [
    ("", "no records"),
    ('{"id": "a", "problem": "1+1=?"}\n', "record 1 (id 'a') lacks answer"),
    ('{"id": "a", "problem": "1+1=?", "answer": "2"}\n{"problem": "2+2=?", "answer": "4"}\n', "record 2 (id None) lacks id"),
])
def test_a_bad_records_file_fails_before_the_model_loads(tmp_path, content, message):
    """The rollouts stage names the records file and the record, and fails before loading the
    policy (which does not exist here: an error about it would mean the model came first)."""
    import json
    import re

    from pipeline.rollouts import main as rollouts_main
    from pipeline.utils import DataFileError

    records = tmp_path / "train.jsonl"
    records.write_text(content)
    cfg = load_preset()
    stage_cfg = json.dumps({k: cfg[k] for k in ("rollouts", "sampling", "task", "seed")})
    with pytest.raises(DataFileError, match=re.escape(f"{records}: {message}")):
        rollouts_main(["--cfg", stage_cfg, "--policy", str(tmp_path / "no_model"), "--policy-name", "medium",
                       "--records", str(records), "--out", str(tmp_path / "out.jsonl")])
    assert not (tmp_path / "out.jsonl").exists()


# ---- numbers: a step that leaves NaN weights stops the stage before anything is saved -----------

@pytest.mark.parametrize("zero_stage", [0, 3])
def test_an_optimizer_step_that_breaks_the_weights_stops_the_stage(zero_stage):
    """A step whose loss is finite but whose gradient is NaN (the issue's case: RLOO at rl.lr 1e6
    kept a loss of 0.0 while the weights became NaN, and the checkpoint was published) leaves NaN
    weights; train_batch stops with the stage's key to change. Here the loss is 0 * sqrt(0): 0.0,
    with gradient 0 * inf = NaN. The same step on the plain loss passes. ZeRO-3 checks each rank's
    partition."""
    import torch

    from conftest import MODEL_SECTION, TRAINER
    from pipeline.engine import NonFiniteWeights, build_engine, train_batch, weights_finite
    from pipeline.modeling import build_char_tokenizer, build_tiny_llama

    tok = build_char_tokenizer()
    ids = torch.tensor([tok("3+4=7", add_special_tokens=False)["input_ids"]])

    def loss_fn(engine, poison: bool):
        def f(sub):
            out = engine(input_ids=ids, labels=ids)
            if poison:  # finite value, NaN gradient
                z = (out.logits.float() - out.logits.float().detach()).pow(2).sum()
                return out.loss * 0.0 + 0.0 * torch.sqrt(z), {}, None
            return out.loss, {}, None
        return f

    small = {**MODEL_SECTION, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2,
             "max_position_embeddings": 64}
    for poison in (False, True):
        model = build_tiny_llama(tok, small, seed=0)
        engine = build_engine(model, {**TRAINER, "lr": 1e-3, "zero_stage": zero_stage}, total_steps=1, batch_size=1)
        if not poison:
            loss, _, _ = train_batch(engine, [0], [1.0], loss_fn(engine, False), 1, what="rloo loss", step=3,
                                     lr_key="rl.lr")
            assert loss == loss and weights_finite(engine.module)
            continue
        if zero_stage == 3:
            # DeepSpeed's ZeRO-3 optimizer detects the NaN gradient and skips the step itself, so
            # the weights stay finite; the check still reads every rank's partition (ds_tensor):
            train_batch(engine, [0], [1.0], loss_fn(engine, True), 1, what="rloo loss", step=3, lr_key="rl.lr")
            assert weights_finite(engine.module)
            p = next(q for q in engine.module.parameters() if getattr(q, "ds_tensor", None) is not None)
            assert p.numel() == 0  # the module holds placeholders: only the partition has the values
            p.ds_tensor.data[0] = float("nan")
            assert not weights_finite(engine.module)
            continue
        with pytest.raises(NonFiniteWeights, match=r"rloo loss: the optimizer step at step 3 left non-finite weights; "
                                                    r"stopping before they are saved \(lower rl.lr"):
            train_batch(engine, [0], [1.0], loss_fn(engine, True), 1, what="rloo loss", step=3, lr_key="rl.lr")
