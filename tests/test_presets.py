"""The paper presets (config/paper_*.yaml): each is valid, carries the published numbers a reviewer
would check, and its whole default DAG dry-runs through the real Snakemake CLI with the expected
rules. Nothing here downloads a model or a dataset: `snakemake -n` only plans the jobs."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from conftest import snakemake
from pipeline.config import REPO, default_targets, load_preset, targets
from pipeline.loaders import LOADERS
from pipeline.task import format_prompt

PRESETS = {
    # preset -> rules its default DAG must plan (job counts where they are fixed by the paper's setup)
    "implicit_prm": {"data_prep": 1, "rollouts": 2, "mc_label": 1, "train_rm": 8, "bon_pool": 3, "score_pool": 9,
                     "likelihood_verifier": 1, "verify_tables": 1},  # 8 reward models + 1 likelihood baseline
    "prime": {"data_prep": 1, "rl": 2, "evaluate": 3, "table2": 1},
    "pav": {"data_prep": 1, "rollouts": 2, "mc_label": 1, "train_rm": 3, "bon_pool": 3, "score_pool": 5,
            "likelihood_verifier": 2,
            "verify_tables": 1, "beam_search": 3, "table3": 1, "rl": 2, "evaluate": 3, "table2": 1},
    "vineppo": {"data_prep": 1, "rl": 3, "evaluate": 4, "table2": 1},
}
TRAINING = ("rm", "rl")


def preset(name: str) -> dict:
    return load_preset(REPO / "config" / f"paper_{name}.yaml")


def dry_run(workdir: Path, name: str) -> tuple[dict[str, int], str]:
    """Job counts per rule of the preset's default target, and the printed shell commands."""
    proc = snakemake(workdir, "-n", "-p", "-c2", "--configfile", str(REPO / "config" / f"paper_{name}.yaml"))
    text = proc.stdout + proc.stderr
    stats = text[text.index("Job stats:"):]
    jobs: dict[str, int] = {}
    for line in stats.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m or m.group(1) == "total":
            break
        jobs[m.group(1)] = int(m.group(2))
    return jobs, text


def stage_cfg(text: str, stage: str) -> dict:
    """The --cfg JSON of the first planned `python -m pipeline.<stage>` command."""
    for line in text.splitlines():
        if f"-m pipeline.{stage} " in line:
            toks = shlex.split(line.split("Shell command:", 1)[-1])
            return json.loads(toks[toks.index("--cfg") + 1])
    raise AssertionError(f"no pipeline.{stage} command planned")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_dag_dry_runs_with_expected_rules(tmp_path, name):
    cfg = preset(name)  # validation passes (load_preset raises ConfigError otherwise)
    jobs, text = dry_run(tmp_path, name)
    for rule, count in PRESETS[name].items():
        assert jobs.get(rule) == count, (rule, jobs)
    assert "sft" not in jobs  # real models come from `policies:`, no testbed SFT
    assert jobs["all"] == 1
    # every stage gets the real-data task: math grader and the preset's prompt template, braces intact
    ev = stage_cfg(text, "data_prep")["task"]
    assert ev["name"] == "math" and ev["grader"] == "math"
    assert ev["prompt_template"] == cfg["task"]["prompt_template"]
    assert "{problem}" in format_prompt({"problem": "{problem}"}, ev)
    assert not any(k.startswith("sft/") for k in default_targets(cfg, "R"))
    # each generator's pool is drawn in its own chat format (prompt_templates), the rest in task's
    pools = {}
    for line in text.splitlines():
        if "-m pipeline.rollouts " in line and "--policy-name" in line:
            toks = shlex.split(line.split("Shell command:", 1)[-1])
            pools[toks[toks.index("--policy-name") + 1]] = json.loads(toks[toks.index("--cfg") + 1])["task"]
    for gen, task in pools.items():
        assert task["prompt_template"] == cfg.get("prompt_templates", {}).get(gen, cfg["task"]["prompt_template"])
    if name == "implicit_prm":
        assert set(pools) == {"llama8b", "mistral7b", "llama70b"}
        assert pools["mistral7b"]["prompt_template"].startswith("<s>[INST] {problem}")
        assert pools["llama70b"]["prompt_template"].startswith("<|begin_of_text|><|start_header_id|>user")
        # the Llama PRMs read the Mistral pool in their own template and tokenizer (score_pool)
        score = stage_cfg(text, "score_pool")
        assert score["score_prompt"]["prompt_template"] == cfg["task"]["prompt_template"]
        line = next(x for x in text.splitlines() if "-m pipeline.score_pool " in x)
        assert "mistral7b=mistralai/Mistral-7B-Instruct-v0.2" in line.split("--generator-tokenizers", 1)[1]
        assert "--records results/paper_implicit_prm/data/test.jsonl" in line


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_scale_and_backends(name):
    cfg = preset(name)
    assert cfg["sampling"]["backend"] == "vllm"
    assert cfg["task"]["name"] == "math" and cfg["task"]["grader"] == "math"
    for section in TRAINING:
        assert cfg[section]["bf16"] is True and cfg[section]["zero_stage"] == 3, section
    # the sections that train a 7-8B model in this preset's DAG cap their forwards (gradient accumulation)
    trained = {"implicit_prm": ["rm"], "prime": ["rl"], "vineppo": ["rl"], "pav": ["rm", "rl"]}[name]
    for section in trained:
        batch = cfg[section]["minibatch_size" if section == "rl" else "batch_size"]
        assert 1 <= cfg[section]["micro_batch_size"] <= 8 < batch, section
    for pol in cfg["policies"].values():
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", pol), pol  # hub ids
    for split, src in cfg["task"]["sources"].items():
        assert src["name"] in LOADERS, split
        if src.get("split"):
            assert src["split"] in LOADERS[src["name"]].hub_splits, (split, src)
    res = cfg["resources"]
    used = {"implicit_prm": ["rollouts", "mc_label", "bon_pool", "train_rm", "score_pool"],
            "prime": ["rl", "evaluate"], "vineppo": ["rl", "evaluate"],
            "pav": ["rollouts", "mc_label", "bon_pool", "train_rm", "score_pool", "beam_search", "rl",
                    "evaluate"]}[name]
    for rule in used:  # GPU rules get GPUs, and vLLM's tensor parallelism fits in them
        r = {**res["default"], **res[rule]}
        assert r["gpu"] >= 1 and r["mem_mb"] >= 64000 and r["runtime"] >= 60, rule
    assert res["default"]["gpu"] == 0 and res.get("tables", {"gpu": 0})["gpu"] == 0


def test_implicit_prm_published_setting():
    cfg = preset("implicit_prm")
    pol = cfg["policies"]
    assert pol[cfg["rollouts"]["policy"]] == pol[cfg["rm"]["init_policy"]] == "meta-llama/Llama-3.1-8B-Instruct"
    assert (cfg["rollouts"]["n_prompts"], cfg["rollouts"]["n_samples"]) == (33000, 8)  # 33K instructions x 8
    assert cfg["task"]["sources"]["train"]["name"] == "ultrainteract_math"
    assert cfg["rm"]["implicit_beta"] == 0.05 and cfg["rm"]["implicit_lr"] == 5e-7
    assert (cfg["rm"]["epochs"], cfg["rm"]["batch_size"], cfg["rm"]["schedule"]) == (1, 64, "cosine")
    assert {"implicit_ce", "implicit_ce_inst", "implicit_ce_data", "implicit_dpo", "implicit_kto",
            "implicit_nca", "prm_he"} <= set(cfg["rm"]["models"])
    assert cfg["mc_label"]["n_mc"] == 8  # Math-Shepherd baseline on the same data
    v = cfg["verify"]
    assert [pol[g] for g in v["generators"]] == ["mistralai/Mistral-7B-Instruct-v0.2",
                                                 "meta-llama/Llama-3.1-8B-Instruct",
                                                 "meta-llama/Llama-3.1-70B-Instruct"]
    assert v["n_values"] == [4, 16, 64] and v["temperature"] == 0.5 and v["n_prompts"] == 500
    assert cfg["task"]["sources"][v["split"]]["name"] == "math500"
    assert targets(cfg) == ["table1", "reward_models", "mc_labels"]


def test_prime_published_setting():
    cfg = preset("prime")
    rl, prime = cfg["rl"], cfg["rl"]["prime"]
    assert cfg["policies"][rl["base_policy"]] == "PRIME-RL/Eurus-2-7B-SFT"
    assert rl["samples_per_prompt"] == 4 and rl["prompts_per_iter"] == 256
    assert rl["lr"] == 5e-7 and prime["lr"] == 1e-6 and prime["beta"] == 0.05
    assert prime["acc_band"] == [0.2, 0.8] and prime["prm_init"] == "policy"
    assert rl["kl_coef"] == 0 and rl["clip_eps"] == 0.2
    assert rl["algos"] == ["rloo", "prime"] and rl["reference"] == "rloo"
    assert cfg["task"]["sources"]["train"]["name"] == "eurus2_rl_math"
    # PRIME's math benchmarks, each a data split backed by its loader
    bench = {cfg["task"]["sources"][s]["name"] for s in cfg["eval"]["splits"]}
    assert bench == {"math500", "aime24", "amc", "minerva_math", "olympiadbench"}
    assert cfg["eval"]["greedy"] is True
    assert targets(cfg) == ["table2"]


def test_pav_published_setting():
    cfg = preset("pav")
    assert cfg["mc_label"]["n_mc"] == 20 and cfg["mc_label"]["seed_selection"] == "first_pit"
    assert cfg["mc_label"]["prover_k"] == cfg["rm"]["pav_prover_k"] == 4  # Bo4 prover
    assert cfg["rm"]["pav_alpha"] == 0.5  # search alpha (2B / 9B)
    assert cfg["rl"]["pav"] == {"rm": "pav", "alpha": 3.0} and cfg["rl"]["kl_coef"] == 0.001  # RL, 9B
    assert cfg["search"]["n_candidates"] == 3 and cfg["search"]["verifiers"] == ["pav"]
    assert set(cfg["policies"].values()) == {"google/gemma-2-2b", "google/gemma-2-9b", "google/gemma-2-27b"}


def test_vineppo_published_setting():
    cfg = preset("vineppo")
    rl = cfg["rl"]
    assert rl["vineppo"]["k"] == 9
    assert (rl["prompts_per_iter"], rl["samples_per_prompt"]) == (64, 8)  # 64 prompts x 8 episodes
    assert rl["clip_eps"] == 0.2 and rl["kl_coef"] == 1e-4 and rl["lr"] == 1e-6
    assert rl["algos"] == ["rloo", "ppo", "vineppo"]  # PPO with a value network: the paper's baseline
    # the released trainer (ppo_MATH.jsonnet): whitened advantages, KL summed over a sequence's tokens
    assert rl["whiten_advantages"] is True and rl["kl_reduction"] == "sequence_sum"
    assert rl["ppo"] == {"gamma": 1.0, "lam": 0.96, "critic_lr": 1e-6, "value_clip": 0.2}
    assert cfg["policies"][rl["base_policy"]] == "realtreetune/deepseekmath-7b-sft-MATH-v2"
    assert cfg["task"]["sources"]["train"]["name"] == "math"


@pytest.mark.parametrize("change, message", [
    ({"targets": ["table4"]}, "config key targets: table4 needs a testbed's ground-truth step labels"),
    ({"targets": ["table9"]}, "config key targets.0"),
    ({"rm": {"zero_stage": 0}}, "config key rm.offload_optimizer: needs ZeRO"),
    ({"resources": {"bon_pool": {"gpu": 2}}},
     "config key resources.bon_pool.gpu: 2 GPU(s), but sampling.tensor_parallel_size is 4"),
    ({"task": {"sources": {"test": {"name": "aime"}}}}, "config key task.sources.test.name"),
    ({"prompt_templates": {"gemma": "{problem}"}}, "config key prompt_templates.gemma: unknown policy"),
    ({"prompt_templates": {"mistral7b": "no field"}}, "config key prompt_templates.mistral7b"),
])
def test_preset_cross_checks(change, message):
    import copy

    from pipeline.config import ConfigError, merge_configs, validate_config

    cfg = merge_configs(copy.deepcopy(preset("implicit_prm")), change)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert message in str(err.value)


def test_rl_splits_are_required_only_when_rl_runs():
    """A preset without RL (Implicit PRM: no table2 target) needs no `train` split; with table2 it does."""
    import copy

    from pipeline.config import ConfigError, merge_configs, validate_config

    cfg = copy.deepcopy(preset("implicit_prm"))
    del cfg["task"]["sources"]["train"]
    cfg = merge_configs(cfg, {"rollouts": {"split": "val"}, "mc_label": {"split": "val", "n_prompts": 100},
                              "rm": {"heldout_split": "test"}})
    cfg["rollouts"]["n_prompts"] = 100
    validate_config(cfg)  # no table2 target: no 'train' split needed
    with pytest.raises(ConfigError, match="RL needs a 'train' split"):
        validate_config(merge_configs(cfg, {"targets": ["table1", "table2"]}))
