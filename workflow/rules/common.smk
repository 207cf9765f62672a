# Config loading, validation and the helpers every rule uses.
import json
import os
import shlex
import sys

from pipeline.config import ConfigError, data_splits, rl_reward_model, validate_config

# The default preset, found next to the Snakefile whatever the working directory
# (--directory); --configfile/--config values are merged over it.
configfile: os.path.join(workflow.basedir, "config", "tiny.yaml")

try:
    validate_config(config, source="config (config/tiny.yaml + --configfile/--config overrides)")
except ConfigError as err:
    sys.stderr.write(f"\n{err}\n\n")
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
    return shlex.quote(json.dumps(cfg, sort_keys=True))


def res(rule_name):
    """Resources of a rule: config resources.<rule> over resources.default."""
    merged = {**config["resources"]["default"], **config["resources"].get(rule_name, {})}
    return merged


def resources_of(rule_name):
    r = res(rule_name)
    out = {"mem_mb": r["mem_mb"], "runtime": r["runtime"], "gpu": r.get("gpu", 0)}
    if "slurm_partition" in r:
        out["slurm_partition"] = r["slurm_partition"]
    return out


def policy_dir(name):
    """Where a named policy lives: a configured dir/hub id, or an SFT tier of the testbed."""
    if name in config.get("policies", {}):
        return config["policies"][name]
    return f"{OUT}/models/sft/{name}"


def policy_input(name):
    """Snakemake input for a policy: nothing for a hub id / external dir, the SFT output otherwise."""
    return [] if name in config.get("policies", {}) else [f"{OUT}/models/sft/{name}"]
