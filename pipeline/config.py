"""Config loading and validation: the JSON schema in workflow/schemas/ plus the cross-key
checks a schema cannot express. Called by the Snakefile when the DAG is built, so a wrong
key, type or value stops the run with a message naming the key before any job starts.
"""
from __future__ import annotations

from pathlib import Path

import yaml
from jsonschema import Draft202012Validator

REPO = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO / "workflow" / "schemas" / "config.schema.yaml"
SFT_SPLITS = ("train", "val", "test", "ood")


class ConfigError(ValueError):
    pass


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def validate_config(cfg: dict, source: str = "config") -> dict:
    """Raise ConfigError listing every problem as `<source>: config key a.b.c: message`."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    errors = sorted(Draft202012Validator(schema).iter_errors(cfg), key=lambda e: list(e.absolute_path))
    problems = []
    for e in errors:
        if e.validator == "additionalProperties":
            extra = sorted(set(e.instance) - set(e.schema.get("properties", {})))
            for k in extra:
                problems.append(f"config key {_key([*e.absolute_path, k])}: unknown key")
        else:
            problems.append(f"config key {_key(e.absolute_path)}: {e.message}")
    if not problems:
        problems = semantic_problems(cfg)
    if problems:
        raise ConfigError(f"{source}: invalid config\n  " + "\n  ".join(problems))
    return cfg


def policy_names(cfg: dict) -> set[str]:
    """Policies a rule may name: the SFT tiers on the testbed, plus any given as dir/hub id."""
    names = set(cfg.get("policies", {}))
    if cfg["task"]["name"] == "arith":
        names |= set(cfg["sft"]["tiers"])
    return names


def data_splits(cfg: dict) -> list[str]:
    if cfg["task"]["name"] == "arith":
        return list(SFT_SPLITS)
    return list(cfg["task"].get("sources", {}))


def semantic_problems(cfg: dict) -> list[str]:
    problems = []
    task = cfg["task"]
    if task["name"] == "arith":
        if "arith" not in task:
            problems.append("config key task.arith: required when task.name is 'arith'")
        else:
            a = task["arith"]
            for k in ("chain_len", "ood_chain_len"):
                if a[k][0] > a[k][1]:
                    problems.append(f"config key task.arith.{k}: range {a[k]} is empty (min > max)")
    elif not task.get("sources"):
        problems.append("config key task.sources: real-data tasks need at least one split source")
    names = policy_names(cfg)
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
    for v in sc["verifiers"]:
        if v not in rm_models:
            problems.append(f"config key search.verifiers: {v!r} is not a trained reward model (rm.models)")
    if "orm" not in rm_models:
        problems.append("config key rm.models: the ORM ('orm') is needed: it picks best-of-N and beam answers")
    if sc.get("alpha") is not None and any(not v.startswith("pav") for v in sc["verifiers"]):
        problems.append("config key search.alpha: applies to PAV verifiers only")
    rl = cfg["rl"]
    kinds = {"pav": ("pav", "a PAV"), "prime_frozen": ("implicit_", "an implicit PRM"),
             "prime": ("implicit_", "an implicit PRM")}
    keys = {"pav": "rl.pav.rm", "prime_frozen": "rl.prime.frozen_prm", "prime": "rl.prime.prm_init"}
    for algo in rl["algos"]:
        name = rl_reward_model(cfg, algo)
        if algo in kinds and name is not None:
            prefix, kind = kinds[algo]
            if name not in rm_models or not name.startswith(prefix):
                problems.append(f"config key {keys[algo]}: {name!r} must be {kind} reward model listed in "
                                f"rm.models {rm_models}")
        elif algo in ("pav", "prime_frozen"):
            problems.append(f"config key {keys[algo]}: required when rl.algos has {algo!r}")
    lo, hi = rl.get("prime", {}).get("acc_band", [0.0, 1.0])
    if lo > hi:
        problems.append(f"config key rl.prime.acc_band: [{lo}, {hi}] is empty (min > max)")
    if rl.get("reference", "rloo") not in rl["algos"] and "reference" in rl:
        problems.append(f"config key rl.reference: {rl['reference']!r} is not in rl.algos {rl['algos']}")
    for need in ("train", "val"):
        if need not in splits:
            problems.append(f"config key task.sources: RL needs a {need!r} split")
    return problems


def rl_reward_model(cfg: dict, algo: str) -> str | None:
    """The trained reward model (a name in rm.models) an RL algorithm reads, or None: PAV-RL's
    PAV, the frozen implicit PRM of PRIME without online update, PRIME's PRM init when it names
    one (`policy`, the default, starts the PRM from the base policy)."""
    rl = cfg["rl"]
    if algo == "pav":
        return rl.get("pav", {}).get("rm")
    if algo == "prime_frozen":
        return rl.get("prime", {}).get("frozen_prm")
    if algo == "prime" and rl.get("prime", {}).get("prm_init", "policy") != "policy":
        return rl["prime"]["prm_init"]
    return None


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
