# Config loading, validation and the helpers every rule uses.
import json
import os
import re
import shlex
import sys

from pipeline.config import ConfigError, backend_import_problem, data_splits, rl_reward_model, validate_config
from pipeline.registry import is_testbed

# The default preset, found next to the Snakefile whatever the working directory
# (--directory); --configfile/--config values are merged over it.
configfile: os.path.join(workflow.basedir, "config", "tiny.yaml")

try:
    validate_config(config, source="config (config/tiny.yaml + --configfile/--config overrides)")
except ConfigError as err:
    sys.stderr.write(f"\n{err}\n\n")
    sys.exit(1)


onstart:
    # before the first job, not after SFT: the engine the sampling jobs need imports here. (A dry
    # run plans without it, so presets can be checked on a machine without the GPU extra; with a
    # cluster executor the jobs run elsewhere, where a login node's import says nothing.)
    if config["sampling"]["backend"] != "hf" and workflow.local_exec:
        problem = backend_import_problem(config["sampling"]["backend"])
        if problem:
            sys.stderr.write(f"\n{problem}\n\n")
            sys.exit(1)


OUT = config["out_dir"].rstrip("/")
PY = shlex.quote(sys.executable)  # the interpreter running Snakemake (the project venv)
SPLITS = data_splits(config)


def cfg_json(*keys, **sections):
    """The config sections a rule uses, as one shell-quoted JSON argument. Passed as a rule
    param so Snakemake's params trigger reruns exactly the rules whose values changed.
    `sections` adds or replaces sections with a rule's own view of them (a stage reused with
    other settings, or only the keys one job reads)."""
    cfg = {k: config[k] for k in keys if k in config}
    cfg.update(sections)
    return shlex.quote(json_no_wildcards(cfg))


from pipeline.tracking import tracking_flags

# the `tracking` section for the training stages (SFT, RL, reward models), passed only when it
# differs from the schema's defaults: the default (TensorBoard on) is what a stage does without
# it, so existing results do not rerun for a section they never read
TRACKING_VIEW = {} if config["tracking"] == tracking_flags({}) else {"tracking": config["tracking"]}


def tracking_view():
    return TRACKING_VIEW


def json_no_wildcards(obj):
    """JSON whose string values carry no literal braces ("\\u007b" instead), so Snakemake never
    reads a value such as a prompt template's "{problem}" as a wildcard in a params string."""
    text = json.dumps(obj, sort_keys=True)
    return re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: m.group(0).replace("{", "\\u007b").replace("}", "\\u007d"), text)


def res(rule_name):
    """Resources of a rule: config resources.<rule> over resources.default."""
    merged = {**config["resources"]["default"], **config["resources"].get(rule_name, {})}
    return merged


# `priority:` of the rules, the order in which Snakemake starts jobs that are ready at once. On
# 2 cores packing was near perfect except at the ends: the reward-model chain (rollouts -> MC
# labels -> reward models) waited behind RL jobs while it gates PAV-RL and PRIME-frozen, and a
# long RL job ran alone at the end. So that chain goes first, RL next, and the short evaluation
# and scoring jobs (the default 0) last, where they fill both cores while the last RL job ends.
PRIORITY = {"gates_rl": 2, "rl": 1}

SLURM_KEYS = ("slurm_partition", "slurm_account", "constraint", "qos", "slurm_extra")


def resources_of(rule_name):
    """A rule's Snakemake resources. The SLURM profile's executor turns them into sbatch flags:
    threads -> --cpus-per-task, mem_mb -> --mem, runtime -> -t (minutes), gpu -> --gpus=N,
    slurm_partition -> -p, slurm_account -> -A, constraint -> -C, qos -> --qos, slurm_extra
    verbatim. A GPU job also gets nodes=1 (--nodes=1): its launcher runs on one node."""
    r = res(rule_name)
    out = {"mem_mb": r["mem_mb"], "runtime": r["runtime"], "gpu": r.get("gpu", 0)}
    out.update({k: r[k] for k in SLURM_KEYS if k in r})
    if out["gpu"] > 0:
        out["nodes"] = 1
    return out


def launcher(rule_name):
    """The command that starts a training stage (`launcher("rl") + " pipeline.rl ..."`): one
    process (`{PY} -m`) without GPUs or with one, else torchrun with one DeepSpeed rank per GPU
    of the job (pipeline/engine.py takes RANK/WORLD_SIZE from it). `{PY}` is left for Snakemake
    to fill in, so the one-process command is exactly the plain `{PY} -m ...` rule."""
    n = int(res(rule_name).get("gpu", 0))
    if n <= 1:
        return "{PY} -m"
    return f"{{PY}} -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node {n} -m"


def sampling_of(rule_name):
    """The sampling section as one rule sees it: with vLLM and no explicit
    sampling.tensor_parallel_size, tensor parallel over all of the job's GPUs
    (resources.<rule>.gpu); otherwise the section unchanged."""
    s = dict(config["sampling"])
    n = int(res(rule_name).get("gpu", 0))
    if s["backend"] == "vllm" and n >= 1:
        s.setdefault("tensor_parallel_size", n)
    return s


def task_for(policy):
    """The task section as a rule that samples from `policy` sees it: the policy's own prompt
    template (`prompt_templates.<policy>`, its chat format) in place of task.prompt_template;
    without one the section unchanged (so a config without templates keeps its params)."""
    t = dict(config["task"])
    tpl = config.get("prompt_templates", {}).get(policy)
    if tpl:
        t["prompt_template"] = tpl
    return t


def rl_sampling():
    """The sampling section RL jobs see. With one GPU a vLLM backend is an engine colocated with
    the trainer and synced after every update; data-parallel RL (resources.rl.gpu > 1: torchrun,
    one DeepSpeed rank per GPU) samples with the HF loop on every rank instead, since the ranks
    would otherwise each start an engine of their own."""
    s = dict(config["sampling"])
    if s["backend"] == "vllm" and int(res("rl").get("gpu", 0)) > 1:
        s["backend"] = "hf"
    return s


def policy_dir(name):
    """Where a named policy lives: a configured dir/hub id, or an SFT tier of the testbed."""
    if name in config.get("policies", {}):
        return config["policies"][name]
    return f"{OUT}/models/sft/{name}"


def policy_input(name):
    """Snakemake input for a policy: nothing for a hub id / external dir, the SFT output otherwise."""
    return [] if name in config.get("policies", {}) else [f"{OUT}/models/sft/{name}"]
