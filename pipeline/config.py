"""Config loading and validation: the JSON schema in workflow/schemas/ plus the cross-key
checks a schema cannot express. Called by the Snakefile when the DAG is built, so a wrong
key, type or value stops the run with a message naming the key before any job starts.
"""
from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator

from .registry import (IMPLICIT_LOSSES, TESTBEDS, is_testbed, KIND_NOUNS, PAIR_LOSSES, REWARD_MODELS, RL_METHODS, likelihood_verifier_names,
                       method_sections, reward_model_kind)
from .registry import rl_reward_model as _method_reward_model

REPO = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO / "workflow" / "schemas" / "config.schema.yaml"
SFT_SPLITS = ("train", "val", "test", "ood")


class ConfigError(ValueError):
    pass


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _closest_form(e) -> list:
    """A value that fits none of several forms (oneOf / anyOf; e.g. an ablation grid, one block or
    a list of them): the errors under the one form whose type it has, so the message says what is
    wrong (`...grid.lr: unknown key`), not only that no form fits."""
    if e.validator not in ("oneOf", "anyOf") or not e.context:
        return [e]
    by_form: dict = {}
    for c in e.context:
        by_form.setdefault(c.schema_path[0], []).append(c)
    fits = [errs for errs in by_form.values() if not any(c.validator == "type" and not c.relative_path for c in errs)]
    return [x for c in fits[0] for x in _closest_form(c)] if len(fits) == 1 else [e]


def load_schema() -> dict:
    """The config schema with the enums that come from the registry: RL methods, reward models
    and implicit-PRM losses (pipeline/registry.py is the one list of what exists)."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    props = schema["properties"]
    props["rl"]["properties"]["algos"]["items"]["enum"] = list(RL_METHODS)
    props["rm"]["properties"]["models"]["items"]["enum"] = list(REWARD_MODELS)
    schema["$defs"]["implicit_block"]["properties"]["loss"]["items"]["enum"] = list(IMPLICIT_LOSSES)
    props["ablations"]["properties"]["factors"]["properties"]["loss"]["enum"] = list(IMPLICIT_LOSSES)
    return schema


def apply_defaults(cfg: dict, schema: dict) -> dict:
    """Fill in, in place, every key the schema gives a `default:` and `cfg` leaves out, in
    every section present (and in each value of a name -> section map, such as task.sources).
    The schema's defaults are the one home of the optional keys' values; config/tiny.yaml holds
    the others, so stage code reads every key without a fallback of its own."""
    if not isinstance(cfg, dict):
        return cfg
    for key, sub in schema.get("properties", {}).items():
        if key not in cfg and "default" in sub:
            cfg[key] = copy.deepcopy(sub["default"])
        if key in cfg:
            apply_defaults(cfg[key], sub)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict) and extra.get("type") == "object":
        for key in set(cfg) - set(schema.get("properties", {})):
            apply_defaults(cfg[key], extra)
    return cfg


def validate_config(cfg: dict, source: str = "config") -> dict:
    """Fill the schema's defaults into `cfg` (in place) and raise ConfigError listing every
    problem as `<source>: config key a.b.c: message`."""
    schema = load_schema()
    apply_defaults(cfg, schema)
    errors = sorted(Draft202012Validator(schema).iter_errors(cfg), key=lambda e: list(e.absolute_path))
    errors = [x for e in errors for x in _closest_form(e)]
    problems = []
    for e in errors:
        if e.validator == "additionalProperties":
            extra = sorted(set(e.instance) - set(e.schema.get("properties", {})))
            for k in extra:
                problems.append(f"config key {_key([*e.absolute_path, k])}: unknown key")
        else:
            problems.append(f"config key {_key(e.absolute_path)}: {e.message}")
    problems = nonfinite_problems(cfg) + name_problems(cfg) + problems
    if not problems:
        problems = semantic_problems(cfg)
    if problems:
        raise ConfigError(f"{source}: invalid config\n  " + "\n  ".join(problems))
    return cfg


# A name becomes a path part (models/sft/<tier>, rollouts/<policy>/<split>.jsonl) and a word of a
# shell command, so it is one plain word: no "/", no "..", no spaces or shell syntax.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# out_dir is a path; these characters keep it a single shell word that Snakemake can plan under
OUT_DIR_PATTERN = re.compile(r"^[A-Za-z0-9_./-]+$")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def nonfinite_problems(cfg, path=()) -> list[str]:
    """Every NaN or infinite number in the config (YAML's .nan / .inf): JSON-schema bounds are
    false for NaN, so `sft.lr: .nan` would pass `minimum` checks and reach training."""
    if isinstance(cfg, dict):
        return [p for k, v in cfg.items() for p in nonfinite_problems(v, (*path, k))]
    if isinstance(cfg, list):
        return [p for i, v in enumerate(cfg) for p in nonfinite_problems(v, (*path, i))]
    if isinstance(cfg, float) and not math.isfinite(cfg):
        return [f"config key {_key(path)}: {cfg} is not a finite number"]
    return []


def name_problems(cfg: dict) -> list[str]:
    """Names that become paths and shell words, and out_dir: plain words only, never a way out of
    out_dir (a tier named ../../tmp/evil) or the filesystem root (out_dir '/')."""
    out = []
    maps = [("policies", cfg.get("policies")), ("prompt_templates", cfg.get("prompt_templates")),
            ("sft.tiers", (cfg.get("sft") or {}).get("tiers")), ("task.sources", (cfg.get("task") or {}).get("sources"))]
    for key, m in maps:
        for name in (m or {}) if isinstance(m, dict) else ():
            if not NAME_PATTERN.match(str(name)):
                out.append(f"config key {key}.{name}: a name must be one word of letters, digits, '_', '.', '-' "
                           "(it becomes a path part and a shell word)")
    od = cfg.get("out_dir")
    if isinstance(od, str):
        parts = [x for x in od.split("/") if x not in ("", ".")]
        if not OUT_DIR_PATTERN.match(od):
            out.append(f"config key out_dir: {od!r} may hold only letters, digits, '_', '.', '-' and '/'")
        elif not parts or ".." in parts:
            out.append(f"config key out_dir: {od!r} must name a folder below the working directory or an absolute "
                       "folder other than '/', without '..'")
    for name, where in (cfg.get("policies") or {}).items() if isinstance(cfg.get("policies"), dict) else ():
        if isinstance(where, str) and not HUB_ID.match(where) and not Path(where).is_dir():
            out.append(f"config key policies.{name}: {where!r} is neither an existing model directory nor a hub id "
                       "(org/name)")
        elif isinstance(where, str) and Path(where).is_dir():
            from .modeling import ModelFolderError, check_model_dir

            try:  # an incomplete or truncated folder is named now, not after the jobs before it ran
                check_model_dir(where)
            except ModelFolderError as e:
                out.append(f"config key policies.{name}: {e}")
    return out


def policy_names(cfg: dict) -> set[str]:
    """Policies a rule may name: the SFT tiers on the testbed, plus any given as dir/hub id."""
    names = set(cfg.get("policies", {}))
    if is_testbed(cfg["task"]):
        names |= set(cfg["sft"]["tiers"])
    return names


def data_splits(cfg: dict) -> list[str]:
    if is_testbed(cfg["task"]):
        return list(SFT_SPLITS)
    return list(cfg["task"].get("sources", {}))


TARGETS = ("table1", "table2", "table3", "table4", "claims", "mc_labels", "reward_models")


def targets(cfg: dict) -> list[str]:
    """The experiments the default target builds: `targets` when set, else all of them (table4
    only on the testbed, whose ground-truth step labels it needs)."""
    return list(cfg.get("targets") or [t for t in TARGETS if t != "table4" or is_testbed(cfg["task"])])


def default_targets(cfg: dict, out: str) -> list[str]:
    """Files of Snakemake's default target (`rule all`) for the experiments in `targets(cfg)`."""
    paths: list[str] = []
    for t in targets(cfg):
        if t.startswith("table") or t == "claims":
            paths.append(f"{out}/{t}.csv")
        elif t == "mc_labels":
            paths.append(f"{out}/mc/{cfg['mc_label']['seed_policy']}/{cfg['mc_label']['split']}.jsonl")
        elif t == "reward_models":
            paths.extend(f"{out}/rm/{rm}/metrics.json" for rm in cfg["rm"]["models"])
    return paths


def semantic_problems(cfg: dict) -> list[str]:
    problems = []
    task = cfg["task"]
    if is_testbed(task):
        name = task["name"]
        if name not in task:
            problems.append(f"config key task.{name}: required when task.name is {name!r}")
        else:
            block = task[name]
            for k in {"arith": ("chain_len", "ood_chain_len"), "countdown": ("n_numbers", "ood_n_numbers")}[name]:
                if block[k][0] > block[k][1]:
                    problems.append(f"config key task.{name}.{k}: range {block[k]} is empty (min > max)")
    elif not task.get("sources"):
        problems.append("config key task.sources: real-data tasks need at least one split source")
    names = policy_names(cfg)
    for name in cfg.get("prompt_templates", {}):
        if name not in names:
            problems.append(f"config key prompt_templates.{name}: unknown policy (known: {sorted(names)})")
    for key, value in (("rl.base_policy", cfg["rl"]["base_policy"]), ("rollouts.policy", cfg["rollouts"]["policy"]),
                       ("mc_label.seed_policy", cfg["mc_label"]["seed_policy"]),
                       ("mc_label.completer", cfg["mc_label"]["completer"]),
                       ("rm.init_policy", cfg["rm"]["init_policy"]), ("rm.data_policy", cfg["rm"]["data_policy"])):
        if value not in names:
            problems.append(f"config key {key}: unknown policy {value!r} (known: {sorted(names)})")
    splits = data_splits(cfg)
    for s in cfg["eval"]["splits"]:
        if s not in splits:
            problems.append(f"config key eval.splits: split {s!r} is not produced by data prep ({splits})")
    if cfg["rollouts"]["split"] not in splits:
        problems.append(f"config key rollouts.split: split {cfg['rollouts']['split']!r} not in {splits}")
    if cfg["mc_label"]["split"] not in splits:
        problems.append(f"config key mc_label.split: split {cfg['mc_label']['split']!r} not in {splits}")
    if cfg["mc_label"]["n_cov"] > cfg["rollouts"]["n_samples"]:
        problems.append(f"config key mc_label.n_cov: {cfg['mc_label']['n_cov']} seed rollouts per prompt, but "
                        f"rollouts.n_samples makes only {cfg['rollouts']['n_samples']}")
    if cfg["mc_label"]["n_prompts"] > cfg["rollouts"]["n_prompts"]:
        problems.append(f"config key mc_label.n_prompts: more than the {cfg['rollouts']['n_prompts']} prompts "
                        "that rollouts.n_prompts samples")
    if cfg["rm"]["heldout_split"] not in splits:
        problems.append(f"config key rm.heldout_split: split {cfg['rm']['heldout_split']!r} not in {splits}")
    vc = cfg["verify"]
    for g in vc["generators"]:
        if g not in names:
            problems.append(f"config key verify.generators: unknown policy {g!r} (known: {sorted(names)})")
    if vc["split"] not in splits:
        problems.append(f"config key verify.split: split {vc['split']!r} not in {splits}")
    if max(vc["n_values"]) > vc["pool_size"]:
        problems.append(f"config key verify.n_values: N = {max(vc['n_values'])} exceeds verify.pool_size "
                        f"({vc['pool_size']})")
    if vc["calib_split"] not in splits:
        problems.append(f"config key verify.calib_split: split {vc['calib_split']!r} not in {splits}")
    sc, rm_models = cfg["search"], cfg["rm"]["models"]
    if sc["policy"] not in vc["generators"]:
        problems.append(f"config key search.policy: {sc['policy']!r} has no pool to compare with; add it to "
                        f"verify.generators {vc['generators']}")
    for p in vc["likelihood_verifiers"]:
        if p not in names:
            problems.append(f"config key verify.likelihood_verifiers: unknown policy {p!r} (known: {sorted(names)})")
    baselines = likelihood_verifier_names(vc)
    for v in sc["verifiers"]:
        if v not in rm_models and v not in baselines:
            problems.append(f"config key search.verifiers: {v!r} is neither a trained reward model (rm.models) nor a "
                            f"likelihood baseline of verify.likelihood_verifiers ({', '.join(baselines) or 'none'})")
    if "orm" not in rm_models:
        problems.append("config key rm.models: the ORM ('orm') is needed: it picks best-of-N and beam answers")
    if sc.get("alpha") is not None and any(v in baselines or (v in REWARD_MODELS and reward_model_kind(v) != "pav")
                                         for v in sc["verifiers"]):
        problems.append("config key search.alpha: applies to PAV verifiers only")
    rl = cfg["rl"]
    for algo in rl["algos"]:
        spec = RL_METHODS[algo]
        if spec.reward_model_key is None:
            continue
        name = rl_reward_model(cfg, algo)
        if name is not None:
            if name not in rm_models or reward_model_kind(name) != spec.reward_model_kind:
                problems.append(f"config key rl.{spec.reward_model_key}: {name!r} must be "
                                f"{KIND_NOUNS[spec.reward_model_kind]} listed in rm.models {rm_models}")
        elif spec.reward_model_none is None:
            problems.append(f"config key rl.{spec.reward_model_key}: required when rl.algos has {algo!r}")
    claimed = method_sections()
    for key, value in rl.items():  # a section no method claims would reach every method's jobs
        if isinstance(value, dict) and key not in claimed:
            problems.append(f"config key rl.{key}: a method section that no method in pipeline/registry.py "
                            "lists in its RLMethodSpec.sections")
    lo, hi = rl["prime"]["acc_band"]
    if lo > hi:
        problems.append(f"config key rl.prime.acc_band: [{lo}, {hi}] is empty (min > max)")
    if "reference" in rl and rl["reference"] not in rl["algos"]:
        problems.append(f"config key rl.reference: {rl['reference']!r} is not in rl.algos {rl['algos']}")
    if "table2" in targets(cfg):  # only presets that run RL need its prompts and validation split
        for need in ("train", "val"):
            if need not in splits:
                problems.append(f"config key task.sources: RL needs a {need!r} split")
    if "table4" in targets(cfg) and not is_testbed(task):
        problems.append("config key targets: table4 needs a testbed's ground-truth step labels "
                        f"(task.name one of {', '.join(TESTBEDS)})")
    for section in ("sft", "rm", "rl"):
        tc = cfg[section]
        if tc.get("offload_optimizer") and int(tc.get("zero_stage", 0)) == 0:
            problems.append(f"config key {section}.offload_optimizer: needs ZeRO (zero_stage 1-3), got stage 0")
    tp = int(cfg["sampling"].get("tensor_parallel_size", 1))
    if cfg["sampling"]["backend"] == "vllm" and tp > 1:
        for rule in ("rollouts", "mc_label", "bon_pool", "evaluate", "beam_search"):
            gpus = {**cfg["resources"]["default"], **cfg["resources"].get(rule, {})}.get("gpu", 0)
            if gpus < tp:
                problems.append(f"config key resources.{rule}.gpu: {gpus} GPU(s), but sampling.tensor_parallel_size "
                                f"is {tp}")
    problems += ablation_problems(cfg, names)
    return problems


# ---- ablation grids (workflow/rules/ablations.smk) ----

# grid -> its axes (the Paramspace columns, in path order); every grid is declared under
# `ablations.<grid>.grid` as {axis: [values]} or a list of them (the union of their products)
ABLATION_AXES = {
    "implicit_prm": ("loss", "beta", "responses_per_instruction", "instruction_frac"),
    "mc_label": ("n_mc", "n_cov", "prover_k"),
    "pav_rl": ("alpha",),
    "vineppo": ("k",),
    "factors": ("data_policy", "dedup", "step_labels"),
}
AXIS_TYPES = {"loss": str, "beta": float, "responses_per_instruction": int, "instruction_frac": float,
              "n_mc": int, "n_cov": int, "prover_k": int, "alpha": float, "k": int, "data_policy": str,
              "dedup": bool, "step_labels": bool}


def ablation_defaults(cfg: dict, grid: str) -> dict:
    """The value an axis takes in a block that does not list it: the main config's own setting,
    so the default cell is exactly the model or run the main DAG builds."""
    rl = cfg["rl"]
    return {
        "implicit_prm": {"loss": "ce", "beta": cfg["rm"]["implicit_beta"],
                         "responses_per_instruction": cfg["rollouts"]["n_samples"], "instruction_frac": 1.0},
        "mc_label": {"n_mc": cfg["mc_label"]["n_mc"], "n_cov": cfg["mc_label"]["n_cov"],
                     "prover_k": cfg["rm"]["pav_prover_k"]},
        "pav_rl": {"alpha": rl["pav"]["alpha"]},
        "vineppo": {"k": rl["vineppo"]["k"]},
        "factors": {"data_policy": cfg["rm"]["data_policy"], "dedup": False, "step_labels": False},
    }[grid]


def ablation_grid(cfg: dict, grid: str):
    """The cells of one ablation grid as a pandas DataFrame (one row per cell, columns =
    ABLATION_AXES[grid]): the union of the products of each block's axes, in declaration order,
    duplicates dropped. The Snakefile wraps it in snakemake.utils.Paramspace."""
    import itertools

    import pandas as pd

    axes = ABLATION_AXES[grid]
    spec = cfg.get("ablations", {}).get(grid, {}).get("grid", [])
    blocks = [spec] if isinstance(spec, dict) else list(spec)
    defaults = ablation_defaults(cfg, grid)
    rows = []
    for block in blocks:
        values = [[AXIS_TYPES[a](v) for v in block.get(a, [defaults[a]])] for a in axes]
        for combo in itertools.product(*values):
            if combo not in rows:
                rows.append(combo)
    df = pd.DataFrame(rows, columns=list(axes))
    return df.astype({a: object if AXIS_TYPES[a] is str else AXIS_TYPES[a] for a in axes})


def is_default_cell(cfg: dict, grid: str, cell: dict) -> bool:
    """Whether a cell is the main config's own setting on every axis but the implicit PRM's loss
    (each loss is a model of its own in the main DAG): then its artifact is the main DAG's."""
    d = ablation_defaults(cfg, grid)
    return all(AXIS_TYPES[a](cell[a]) == AXIS_TYPES[a](d[a]) for a in ABLATION_AXES[grid] if a != "loss")


def data_scaling_pair(cells: list[dict]) -> tuple[int, int] | None:
    """Indices of two implicit_prm grid cells that train on the same number of responses, for the
    Implicit PRM paper's data claims (claims.csv): one response for every instruction, and r > 1
    responses for a 1/r share of the instructions, same loss and beta. The first such pair in
    grid order, or None when the grid has none."""
    for i, one in enumerate(cells):
        if int(one["responses_per_instruction"]) != 1 or float(one["instruction_frac"]) != 1.0:
            continue
        for j, many in enumerate(cells):
            r = int(many["responses_per_instruction"])
            if (r > 1 and abs(float(many["instruction_frac"]) * r - 1.0) < 1e-9 and many["loss"] == one["loss"]
                    and float(many["beta"]) == float(one["beta"])):
                return i, j
    return None


def ablation_problems(cfg: dict, names: set[str]) -> list[str]:
    problems = []
    n_samples = cfg["rollouts"]["n_samples"]
    for grid, sec in cfg.get("ablations", {}).items():
        if grid not in ABLATION_AXES:
            continue  # the schema reports unknown grids
        key = f"ablations.{grid}.grid"
        df = ablation_grid(cfg, grid)
        if df.empty:
            problems.append(f"config key {key}: the grid has no cells")
            continue
        if grid == "implicit_prm":
            for _, c in df.iterrows():
                if c["responses_per_instruction"] > n_samples:
                    problems.append(f"config key {key}: responses_per_instruction {c['responses_per_instruction']} "
                                    f"exceeds the {n_samples} responses per instruction that rollouts.n_samples "
                                    "samples")
                if c["loss"] in PAIR_LOSSES and c["responses_per_instruction"] < 2:
                    problems.append(f"config key {key}: loss {c['loss']!r} trains on (correct, incorrect) pairs "
                                    "of one instruction and needs responses_per_instruction >= 2")
        elif grid == "mc_label":
            for n_cov in sorted(set(df["n_cov"])):
                if n_cov > n_samples:
                    problems.append(f"config key {key}: n_cov {n_cov} exceeds the {n_samples} seed rollouts per "
                                    "prompt that rollouts.n_samples makes")
        elif grid == "factors":
            for pol in sorted(set(df["data_policy"])):
                if pol not in names:
                    problems.append(f"config key {key}: data_policy {pol!r} is not a known policy "
                                    f"(known: {sorted(names)})")
            loss = sec["loss"]
            if df["step_labels"].any() and loss in PAIR_LOSSES:
                problems.append(f"config key ablations.factors.loss: {loss!r} trains on pairs; step labels need a "
                                "per-response loss (ce, ce_inst, ce_data or kto)")
        elif grid == "pav_rl":
            rm_name = cfg["rl"]["pav"].get("rm")
            if not rm_name or rm_name not in REWARD_MODELS or reward_model_kind(rm_name) != "pav":
                problems.append(f"config key {key}: PAV-RL cells read the PAV named by rl.pav.rm, which is "
                                f"{rm_name!r}; set it to 'pav'")
    return problems


def rl_reward_model(cfg: dict, algo: str) -> str | None:
    """The trained reward model (a name in rm.models) an RL method reads, or None: PAV-RL's
    PAV, the frozen implicit PRM of PRIME without online update, PRIME's PRM init when it names
    one (`policy`, the default, starts the PRM from the base policy). From the registry."""
    return _method_reward_model(cfg["rl"], algo)


def merge_configs(base: dict, overlay: dict) -> dict:
    """Recursive dict merge, as Snakemake merges --configfile over the default configfile."""
    out = dict(base)
    for k, v in overlay.items():
        out[k] = merge_configs(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_preset(*overlays: str | Path) -> dict:
    """config/tiny.yaml with preset files merged over it, validated: exactly what the DAG sees
    for `snakemake --configfile <overlays...>`."""
    cfg = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    for path in overlays:
        cfg = merge_configs(cfg, yaml.safe_load(Path(path).read_text()) or {})
    return validate_config(cfg, source=" + ".join(["config/tiny.yaml", *map(str, overlays)]))


# what each sampling backend imports in the jobs (hf's transformers is a core dependency)
BACKEND_MODULES = {"hf": "transformers", "vllm": "vllm"}


def backend_import_problem(backend: str, python: str | None = None) -> str | None:
    """Why `python` (default: this interpreter, the one every job runs) cannot import what
    `sampling.backend` needs, or None. Imported in a child process: a broken install (vLLM's CPU
    build beside CUDA torchvision fails with "operator torchvision::nms does not exist") is caught
    too, and Snakemake's own process never loads the engine."""
    import subprocess
    import sys

    python = python or sys.executable
    module = BACKEND_MODULES[backend]
    proc = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True, timeout=900)
    if proc.returncode == 0:
        return None
    last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
    return (f"config key sampling.backend: {backend!r} needs `import {module}` in {python}, which fails: {last} "
            "(install the extra, pip install -e '.[gpu]', or set sampling.backend: hf)")
