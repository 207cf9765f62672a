"""Config validation: the schema and cross-key checks, in Python and at Snakemake DAG build."""
from __future__ import annotations

import copy

import pytest
import yaml

from pipeline.config import REPO, ConfigError, load_preset, merge_configs, validate_config
from conftest import snakemake

TINY = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())


def with_change(change: dict) -> dict:
    return merge_configs(copy.deepcopy(TINY), change)


def test_presets_are_valid():
    assert validate_config(copy.deepcopy(TINY))["rl"]["algos"] == [
        "rloo", "grpo", "prime", "prime_frozen", "pav", "vineppo", "ppo", "jepo"]
    assert len(TINY["rl"]["seeds"]) >= 3  # fair comparison: at least three seeds per method
    smoke = load_preset(REPO / "config" / "smoke.yaml")
    assert smoke["rl"]["iterations"] == 6 and smoke["rl"]["lr"] == TINY["rl"]["lr"]  # overlay keeps the rest


def test_merge_is_recursive_and_replaces_lists():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 0}
    assert merge_configs(base, {"a": {"c": [3]}}) == {"a": {"b": 1, "c": [3]}, "d": 0}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 0}  # input untouched


@pytest.mark.parametrize("change, message", [
    ({"rl": {"bogus": 1}}, "config key rl.bogus: unknown key"),
    ({"verify": {"likelihood_verifiers": ["huge"]}}, "config key verify.likelihood_verifiers: unknown policy 'huge'"),
    ({"verify": {"likelihood_verifiers": ["medium"]}, "search": {"verifiers": ["loglik_weak"]}},
     "config key search.verifiers: 'loglik_weak' is neither a trained reward model (rm.models) nor a likelihood "
     "baseline of verify.likelihood_verifiers (loglik_medium)"),
    ({"search": {"verifiers": ["pav", "loglik_medium"], "alpha": 1.0}}, "config key search.alpha: applies to PAV"),
    ({"rl": {"lr": "fast"}}, "config key rl.lr: 'fast' is not of type 'number'"),
    ({"rl": {"lr": -1}}, "config key rl.lr"),
    ({"rl": {"samples_per_prompt": 1}}, "config key rl.samples_per_prompt"),
    ({"rl": {"top_p": 0}}, "config key rl.top_p"),
    ({"eval": {"top_p": 1.5}}, "config key eval.top_p"),
    ({"rl": {"logprob_temperature": 0.6}}, "config key rl.logprob_temperature"),
    ({"rl": {"algos": ["trpo"]}}, "config key rl.algos.0"),
    ({"sampling": {"backend": "tgi"}}, "config key sampling.backend"),
    ({"sft": {"tiers": {"weak": 1.5}}}, "config key sft.tiers.weak"),
    ({"rl": {"base_policy": "huge"}}, "config key rl.base_policy: unknown policy 'huge'"),
    ({"rollouts": {"policy": "huge"}}, "config key rollouts.policy: unknown policy"),
    ({"eval": {"splits": ["test", "nope"]}}, "config key eval.splits: split 'nope'"),
    ({"task": {"arith": {"chain_len": [5, 3]}}}, "config key task.arith.chain_len: range [5, 3] is empty"),
    ({"task": {"name": "math"}}, "config key task.sources"),
    ({"resources": {"rl": {"gpus": 1}}}, "config key resources.rl.gpus: unknown key"),
    ({"mc_label": {"n_cov": 9}}, "config key mc_label.n_cov: 9 seed rollouts per prompt, but rollouts.n_samples makes only 4"),
    ({"mc_label": {"completer": "oracle"}}, "config key mc_label.completer: unknown policy 'oracle'"),
    ({"mc_label": {"n_mc": 0}}, "config key mc_label.n_mc"),
    ({"rl": {"pav": {"rm": "orm"}}}, "config key rl.pav.rm: 'orm' must be a PAV reward model"),
    ({"rl": {"prime": {"frozen_prm": "prm_se"}}}, "config key rl.prime.frozen_prm: 'prm_se' must be an implicit PRM"),
    ({"rl": {"prime": {"prm_init": "implicit_zzz"}}}, "config key rl.prime.prm_init: 'implicit_zzz'"),
    ({"rl": {"prime": {"acc_band": [0.8, 0.2]}}}, "config key rl.prime.acc_band: [0.8, 0.2] is empty"),
    ({"rl": {"prime": {"base": "ppo"}}}, "config key rl.prime.base"),
    ({"rl": {"reference": "trpo"}}, "config key rl.reference: 'trpo' is not in rl.algos"),
    ({"rl": {"seeds": []}}, "config key rl.seeds"),
    ({"rl": {"jepo": {"sup_coef": -1}}}, "config key rl.jepo.sup_coef"),
])
def test_bad_values_are_reported_with_their_key(change, message):
    with pytest.raises(ConfigError) as err:
        validate_config(with_change(change), source="x.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("x.yaml: invalid config")


def test_missing_required_key_is_named():
    cfg = copy.deepcopy(TINY)
    del cfg["rl"]["clip_eps"]
    with pytest.raises(ConfigError, match="config key rl: 'clip_eps' is a required property"):
        validate_config(cfg)


def test_method_reward_models_are_checked_only_for_listed_methods():
    # PAV-RL is not run, so its reward model need not exist
    cfg = with_change({"rl": {"algos": ["rloo", "prime"]}, "rm": {"models": ["orm", "prm_se"]},
                       "search": {"verifiers": ["prm_se"]}})
    assert validate_config(cfg)["rl"]["algos"] == ["rloo", "prime"]
    with pytest.raises(ConfigError, match="rl.pav.rm: 'pav' must be a PAV reward model"):
        validate_config(merge_configs(cfg, {"rl": {"algos": ["rloo", "pav"]}}))


def test_policies_given_by_path_are_known():
    cfg = with_change({"policies": {"llama8b": "meta-llama/Llama-3.1-8B-Instruct"}, "rl": {"base_policy": "llama8b"}})
    assert validate_config(cfg)["rl"]["base_policy"] == "llama8b"


@pytest.mark.parametrize("bad, key", [
    ({"rl": {"bogus": 1}}, "rl.bogus: unknown key"),
    ({"rl": {"lr": "fast"}}, "rl.lr"),
    ({"eval": {"splits": ["test", "nope"]}}, "eval.splits"),
])
def test_invalid_config_stops_snakemake_before_any_job(tmp_path, bad, key):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    proc = snakemake(tmp_path, "-n", "results/table2.csv", "--configfile", str(path), check=False)
    assert proc.returncode != 0
    assert key in proc.stderr + proc.stdout
    assert not (tmp_path / "results").exists()
