"""Every config key's default lives once: in config/tiny.yaml (the tiny testbed, always loaded) or
as the schema's `default:` (filled in by validate_config), never both; stage code reads validated
config without literal fallbacks of its own."""
from __future__ import annotations

import ast
from pathlib import Path

import yaml

from pipeline.config import REPO, apply_defaults, load_preset, load_schema

# keys whose absence means something, so they have no default value (the reason beside each)
NO_DEFAULT = {
    "task.prompt_template": "the testbed's bare prompt",
    "task.sources": "real-data tasks only",
    "task.countdown": "the Countdown testbed's block: config/countdown.yaml sets every key of it",
    "targets": "every experiment",
    "policies": "the testbed's SFT tiers",
    "prompt_templates": "each policy samples in task.prompt_template",
    "model.num_kv_heads": "multi-head attention (one KV head per head)",
    "sampling.tensor_parallel_size": "vLLM over the job's GPUs (1 without)",
    "sampling.vllm_kv_cache_gib": "vLLM's own rule (a share of GPU memory; on the CPU build nearly all free RAM)",
    "sft.micro_batch_size": "a rank's whole share in one forward",
    "rm.micro_batch_size": "a rank's whole share in one forward",
    "search.alpha": "the PAV's own alpha",
    **{f"resources.default.{k}": "no such sbatch flag" for k in
       ("slurm_partition", "slurm_account", "constraint", "qos", "slurm_extra")},
}


def resolve(schema: dict, sub: dict) -> dict:
    if "$ref" in sub:
        return {**schema["$defs"][sub["$ref"].split("/")[-1]], **{k: v for k, v in sub.items() if k != "$ref"}}
    return sub


def leaf_keys(schema: dict, node: dict, cfg, path=()):
    """(dotted key, has a schema default, set in cfg) for every leaf of the schema's sections;
    resources.<rule> overlays (absent = resources.default) and grids are not leaves."""
    for key, sub in resolve(schema, node).get("properties", {}).items():
        sub = resolve(schema, sub)
        here = (*path, key)
        if path == ("resources",) and key != "default":
            continue
        present = isinstance(cfg, dict) and key in cfg
        if sub.get("type") == "object" and "properties" in sub and key != "grid" and ".".join(here) not in NO_DEFAULT:
            yield from leaf_keys(schema, sub, cfg.get(key, {}) if isinstance(cfg, dict) else {}, here)
        else:
            yield ".".join(here), "default" in sub, present


def test_every_key_has_exactly_one_default():
    schema = load_schema()
    tiny = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    keys = list(leaf_keys(schema, schema, tiny))
    assert len(keys) > 150
    both = [k for k, d, p in keys if d and p]
    assert both == [], f"set in config/tiny.yaml and defaulted in the schema: {both}"
    neither = sorted(k for k, d, p in keys if not d and not p)
    assert neither == sorted(NO_DEFAULT), "keys without a default (add one, or a reason to NO_DEFAULT)"


def test_validated_config_holds_the_schema_defaults():
    cfg = load_preset()
    assert cfg["task"]["grader_timeout_s"] == 5.0 and cfg["task"]["arith"]["answer_format"] == "value"
    assert cfg["search"]["top_p"] == 1.0 and cfg["rm"]["head_dropout"] == 0.1
    assert cfg["rl"]["offload_optimizer"] is False
    # a preset's own value wins; defaults fill each entry of a name -> section map
    cfg = load_preset(REPO / "config" / "paper_prime.yaml")
    assert all("split" in src for src in cfg["task"]["sources"].values())
    filled = apply_defaults({"task": {"sources": {"x": {"name": "gsm8k"}}}}, load_schema())
    assert filled["task"]["sources"]["x"]["split"] == "test"


def config_key_names() -> set[str]:
    schema = load_schema()
    return {k.split(".")[-1] for k, _, _ in leaf_keys(schema, schema, {})}


LITERAL_FALLBACK_ALLOWED = {
    # fields of records and examples that share a config key's name
    ("testbed.py", "answer_format"), ("train_rm.py", "targets"),
    # validation reads optional keys of a config it has not yet accepted
    ("config.py", "tensor_parallel_size"), ("config.py", "zero_stage"), ("config.py", "gpu"),
}


def literal_fallbacks(path: Path, names: set[str]):
    """`.get("<config key>", <non-empty literal>)` calls in a module."""
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and len(node.args) == 2 and isinstance(node.args[0], ast.Constant) and node.args[0].value in names):
            default = node.args[1]
            empty = (isinstance(default, ast.Constant) and default.value is None) or (
                isinstance(default, (ast.Dict, ast.List, ast.Tuple)) and not getattr(default, "keys", default.elts
                                                                                    if hasattr(default, "elts") else []))
            if not empty:
                yield node.args[0].value, node.lineno


def test_stage_code_has_no_literal_fallbacks_for_config_keys():
    names = config_key_names()
    found = [(p.name, key, line) for p in sorted((REPO / "pipeline").rglob("*.py"))
             for key, line in literal_fallbacks(p, names) if (p.name, key) not in LITERAL_FALLBACK_ALLOWED]
    assert found == [], f"config keys read with a literal fallback (the default belongs in the schema): {found}"
