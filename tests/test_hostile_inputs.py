"""Hostile configs stop at DAG build with a message naming the key (issue 15). Each case here
passed validation before: NaN / inf numbers, names that escape out_dir or carry shell syntax,
out_dir at the filesystem root or with a space, policies that are neither a folder nor a hub id.
The injection case runs the real Snakemake CLI and checks the command never ran."""
from __future__ import annotations

import pytest
import yaml

from pipeline.config import ConfigError, load_preset, merge_configs, validate_config
from conftest import save_tiny_policy, snakemake


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
    save_tiny_policy(tmp_path / "my model")
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
    model = save_tiny_policy(tmp_path / "my model")
    over = tmp_path / "over.yaml"
    over.write_text(yaml.safe_dump({"policies": {"medium": str(model)}}))
    proc = snakemake(tmp_path, "-n", "-p", "results/rollouts/medium/train.jsonl", "--configfile", str(over))
    line = next(x for x in proc.stdout.splitlines() if "-m pipeline.rollouts" in x)
    assert f"--policy '{model}' --policy-name medium" in line


# ---- model folders: what is missing or unreadable is named before anything loads ------------------

def _break(model, how):
    if how == "missing":
        return model.parent / "no_such_model"
    if how == "empty":
        for f in model.iterdir():
            f.unlink()
    elif how == "no tokenizer":
        (model / "tokenizer.json").unlink()
    elif how == "truncated weights":
        w = model / "model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    elif how == "garbage weights":
        (model / "model.safetensors").write_bytes(b"not a safetensors file" * 4)
    elif how == "lost shard":
        (model / "model.safetensors").rename(model / "model-00001-of-00002.safetensors")
        (model / "model.safetensors.index.json").write_text(
            '{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}')
    return model


MODEL_FOLDER_CASES = [
    ("missing", "no_such_model: no such model folder"),
    ("empty", "model folder lacks config.json, a tokenizer (tokenizer.json / tokenizer.model / vocab.json / vocab.txt), "
              "weights (model.safetensors"),
    ("no tokenizer", "model folder lacks a tokenizer"),
    ("truncated weights", "model.safetensors: unreadable weights (Error while deserializing header"),
    ("garbage weights", "model.safetensors: unreadable weights"),
    ("lost shard", "model.safetensors.index.json: names shards that are missing: model-00002-of-00002.safetensors"),
]


@pytest.mark.parametrize("how, message", MODEL_FOLDER_CASES)
def test_a_broken_model_folder_is_named_by_every_loader(tmp_path, how, message):
    """The loaders' own errors were "Repo id must be in the form namespace/repo_name", "install
    sentencepiece or tiktoken" and a bare SafetensorError; each now names the folder or file."""
    from pipeline.modeling import ModelFolderError, load_policy, load_scalar_head_model
    from pipeline.rewards import ImplicitPRM, LikelihoodVerifier

    model = _break(save_tiny_policy(tmp_path / "policy"), how)
    for load in (load_policy, load_scalar_head_model, LikelihoodVerifier.init_from_policy,
                 lambda p: ImplicitPRM.init_from_policy(p, {"beta": 0.05})):
        with pytest.raises(ModelFolderError) as e:
            load(str(model))
        assert message in str(e.value) and str(model.parent) in str(e.value), (load, str(e.value))


def test_a_broken_policy_folder_stops_the_dag_build_naming_the_key(tmp_path):
    model = _break(save_tiny_policy(tmp_path / "policy"), "truncated weights")
    text = check({"policies": {"medium": str(model)}})
    assert "config key policies.medium:" in text and "model.safetensors: unreadable weights" in text, text


def test_a_stage_given_a_broken_policy_names_it_before_reading_anything_else(tmp_path):
    """rollouts with a folder lacking its tokenizer: the message names the folder (exit before sampling)."""
    import json

    from pipeline.rollouts import main as rollouts_main
    from pipeline.modeling import ModelFolderError

    model = _break(save_tiny_policy(tmp_path / "policy"), "no tokenizer")
    records = tmp_path / "test.jsonl"
    records.write_text(json.dumps({"id": "a", "problem": "1+1=?", "answer": "2"}) + "\n")
    cfg = load_preset()
    with pytest.raises(ModelFolderError, match="policy: model folder lacks a tokenizer"):
        rollouts_main(["--cfg", json.dumps({k: cfg[k] for k in ("rollouts", "task", "seed", "sampling")}),
                       "--policy", str(model), "--policy-name", "medium", "--records", str(records),
                       "--out", str(tmp_path / "out.jsonl")])
    assert not (tmp_path / "out.jsonl").exists()


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


# ---- checkpoints: an unreadable one is moved aside and the run starts fresh ---------------------

def _corrupt(ckpt, how):
    latest = ckpt / "latest.json"
    tag = ckpt / "step0000001"
    state = next(f for f in sorted(tag.rglob("*.pt")))
    if how == "garbage latest.json":
        latest.write_bytes(b"\x00\xffnot json")
    elif how == "empty latest.json":
        latest.write_text("")
    elif how == "list latest.json":
        latest.write_text("[]")
    elif how == "missing tag folder":
        import shutil
        shutil.rmtree(tag)
    elif how == "truncated state file":
        state.write_bytes(state.read_bytes()[:100])
    elif how == "same-size garbage":
        state.write_bytes(b"x" * state.stat().st_size)
    return state


CHECKPOINT_CASES = [
    ("garbage latest.json", "latest.json: not UTF-8 text"),
    ("empty latest.json", "latest.json:1: not valid JSON"),
    ("list latest.json", "latest.json: not a published checkpoint"),
    ("missing tag folder", "step0000001: the published tag folder is missing"),
    ("truncated state file", "mp_rank_00_model_states.pt: 100 bytes, "),
]


def _engine(seed=0):
    from conftest import MODEL_SECTION, TRAINER
    from pipeline.engine import build_engine
    from pipeline.modeling import build_char_tokenizer, build_tiny_llama

    tok = build_char_tokenizer()
    small = {**MODEL_SECTION, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2,
             "max_position_embeddings": 64}
    return build_engine(build_tiny_llama(tok, small, seed=seed), {**TRAINER, "lr": 1e-3}, total_steps=4, batch_size=1)


@pytest.mark.parametrize("how, message", CHECKPOINT_CASES)
def test_an_unreadable_checkpoint_is_moved_aside_and_the_run_starts_fresh(tmp_path, caplog, how, message):
    """Each case crashed every rerun until the folder was deleted by hand; now the resume warns with
    the path and what is wrong, moves the folder to <name>.unreadable and returns nothing to resume,
    and the next save publishes a checkpoint that loads."""
    import logging

    from pipeline.engine import load_checkpoint, save_checkpoint

    ckpt = tmp_path / "ckpt"
    save_checkpoint(_engine(), ckpt, 1, "h", {"step": 1})
    assert load_checkpoint(_engine(), ckpt, "h") == {"step": 1}  # intact: resumes
    _corrupt(ckpt, how)
    with caplog.at_level(logging.WARNING, logger="pipeline.engine"):
        assert load_checkpoint(_engine(), ckpt, "h") is None
    text = caplog.text
    assert "unreadable checkpoint, starting fresh" in text and message in text and str(ckpt) in text, text
    assert not ckpt.exists() and (tmp_path / "ckpt.unreadable").is_dir()
    save_checkpoint(_engine(), ckpt, 2, "h", {"step": 2})
    assert load_checkpoint(_engine(), ckpt, "h") == {"step": 2}


def test_a_checkpoint_that_fails_to_load_is_moved_aside_for_the_rerun(tmp_path):
    """Files of the saved sizes that do not load (here: overwritten with bytes): the error names the
    checkpoint, the folder is moved aside, and the rerun starts fresh."""
    from pipeline.engine import load_checkpoint, save_checkpoint

    ckpt = tmp_path / "ckpt"
    save_checkpoint(_engine(), ckpt, 1, "h", {"step": 1})
    _corrupt(ckpt, "same-size garbage")
    with pytest.raises(RuntimeError, match=rf"checkpoint {ckpt}/step0000001 could not be loaded .*moved aside to "
                                           rf"{tmp_path}/ckpt.unreadable: rerun the job to start fresh"):
        load_checkpoint(_engine(), ckpt, "h")
    assert load_checkpoint(_engine(), ckpt, "h") is None and not ckpt.exists()


# ---- outputs: a folder that cannot take the output is reported before any work ---------------------

@pytest.fixture
def small_mount(tmp_path):
    """A 512 KiB tmpfs (full for the 1 MiB probe), and a read-only one; skipped where mounting is not allowed."""
    import subprocess

    mounts = {}
    for name, opts in (("full", "size=512k"), ("readonly", "ro,size=512k")):
        d = tmp_path / name
        d.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)], capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs here")
        mounts[name] = d
    yield mounts
    for d in mounts.values():
        subprocess.run(["umount", str(d)], capture_output=True)


def _rollouts(tmp_path, out):
    import json

    from pipeline.rollouts import main as rollouts_main

    records = tmp_path / "test.jsonl"
    records.write_text(json.dumps({"id": "a", "problem": "1+1=?", "answer": "2"}) + "\n")
    cfg = load_preset()
    rollouts_main(["--cfg", json.dumps({k: cfg[k] for k in ("rollouts", "task", "seed", "sampling")}),
                   "--policy", str(tmp_path / "no_model"), "--policy-name", "medium", "--records", str(records),
                   "--out", str(out)])


@pytest.mark.parametrize("case, reason", [("full", "No space left on device"), ("readonly", "Read-only file system")])
def test_a_full_or_read_only_output_folder_stops_the_stage_first(tmp_path, small_mount, case, reason):
    """The policy does not exist: an error about it would mean work had started before the check."""
    out = small_mount[case] / "rollouts" / "test.jsonl"
    with pytest.raises(SystemExit, match=rf"--out {out}: cannot write in {out.parent} \({reason}\); free space or"):
        _rollouts(tmp_path, out)
    assert not out.exists()


def test_an_output_below_a_file_stops_the_stage_first(tmp_path):
    (tmp_path / "results").write_text("a file where the results folder should be")
    out = tmp_path / "results" / "rollouts.jsonl"
    with pytest.raises(SystemExit, match=rf"--out {out}: cannot write in {tmp_path}/results \(.*\); free space or"):
        _rollouts(tmp_path, out)


# ---- runs: an engine that does not import stops the run before its first job --------------------

def test_a_sampling_backend_that_does_not_import_stops_the_run_before_any_job(tmp_path):
    """sampling.backend: vllm on an install without it failed at the first sampling job, after SFT.
    Now the run stops before any job, naming the key; a dry run still plans (presets are checked
    on machines without the GPU extra)."""
    import importlib.util

    from pipeline.config import backend_import_problem

    assert backend_import_problem("hf") is None
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    problem = backend_import_problem("vllm")
    assert problem.startswith("config key sampling.backend: 'vllm' needs `import vllm` in ") and "ModuleNotFoundError" in problem
    over = tmp_path / "vllm.yaml"
    over.write_text(yaml.safe_dump({"sampling": {"backend": "vllm"}}))
    assert snakemake(tmp_path, "-n", "results/data/train.jsonl", "--configfile", str(over)).returncode == 0
    proc = snakemake(tmp_path, "-c1", "results/data/train.jsonl", "--configfile", str(over), check=False)
    assert proc.returncode != 0 and "config key sampling.backend: 'vllm' needs `import vllm`" in proc.stderr + proc.stdout
    assert not (tmp_path / "results").exists()
