"""What exists: the synthetic testbeds, the online-RL methods and the reward models, by name.
Everything else derives from these tables: which tasks have ground-truth step labels
(`TESTBEDS`), the schema's enums (`pipeline.config` fills them in), which `rl.<section>` config
blocks reach which RL jobs (`method_view`, used by rl.smk), which methods read a trained
reward model and of which kind (`rl_reward_model`), which class holds each reward-model kind
(`REWARD_KINDS`, loaded by `pipeline.rewards.load_reward_model`) and how each reward model is
trained (reward_models.smk). No torch here: the workflow imports this module when it builds the DAG.

Adding an RL method: a module under pipeline/rl/ with a class derived from
`pipeline.rl.base.Method`, one `RLMethodSpec` line below, and (when it has settings) one
`rl.<section>` block in workflow/schemas/config.schema.yaml with its defaults.
"""
from __future__ import annotations

from dataclasses import dataclass

# Synthetic tasks with exact ground truth for any response (outcome, step labels, first error):
# task.name -> the module that draws their splits (`specs`, `generate_split`) and checks
# responses (`check_response`). SFT tiers, table 4 and the step claims exist only for these;
# any other task.name reads real data through pipeline/loaders.py.
TESTBEDS: dict[str, str] = {
    "arith": "pipeline.testbed",      # arithmetic chains mod m: checking a step is writing it
    "countdown": "pipeline.countdown",  # reach a target from given numbers: checking is easier than searching
}


def is_testbed(task: dict) -> bool:
    """Is the `task` config section one of the synthetic testbeds (ground-truth step labels)?"""
    return task["name"] in TESTBEDS


def testbed_module(task: dict):
    import importlib

    return importlib.import_module(TESTBEDS[task["name"]])


@dataclass(frozen=True)
class RLMethodSpec:
    name: str                      # the value in rl.algos, the rl/<name>/ folder, table 2's row
    module: str                    # pipeline.rl.<module> holds the class
    cls: str
    sections: tuple[str, ...] = ()  # rl.<section> blocks this method reads; only its jobs see them
    reward_model_key: str | None = None   # "section.key" naming a trained reward model in rm.models
    reward_model_kind: str | None = None  # the kind that model must be (REWARD_MODELS[...].kind)
    reward_model_none: str | None = None  # the key's value that means "no trained model" (PRIME: policy)
    summary: str = ""


RL_METHODS: dict[str, RLMethodSpec] = {s.name: s for s in (
    RLMethodSpec("rloo", "outcome", "RLOO", summary="outcome reward, leave-one-out baseline"),
    RLMethodSpec("grpo", "outcome", "GRPO", summary="outcome reward, group-normalised"),
    RLMethodSpec("prime", "prime", "PRIME", ("prime",), "prime.prm_init", "implicit", "policy",
                 summary="implicit PRM trained online on the policy's rollouts"),
    RLMethodSpec("prime_frozen", "prime", "PRIMEFrozen", ("prime",), "prime.frozen_prm", "implicit",
                 summary="PRIME with an offline implicit PRM, never updated"),
    RLMethodSpec("pav", "pav", "PAVRL", ("pav",), "pav.rm", "pav", summary="outcome + alpha x prover advantage"),
    RLMethodSpec("vineppo", "vineppo", "VinePPO", ("vineppo",), summary="Monte-Carlo step values, no value net"),
    RLMethodSpec("jepo", "jepo", "JEPO", ("jepo",), summary="Jensen bound on log pi(a*|x), no verifier"),
    RLMethodSpec("ppo", "ppo", "PPO", ("ppo",), summary="PPO with a learned value network and GAE"),
)}

# rl keys that configure the run, not a job: the table reads them, no RL job does
RL_RUN_KEYS = ("algos", "seeds", "reference")


def register_rl_method(spec: RLMethodSpec) -> None:
    """Add a method at run time (tests, plug-ins); the built-in ones are listed above."""
    RL_METHODS[spec.name] = spec


def method_sections() -> set[str]:
    return {s for m in RL_METHODS.values() for s in m.sections}


def method_view(rl: dict, algo: str) -> dict:
    """The rl config as one method's jobs see it: the shared keys and the method's own sections,
    without other methods' sections and the run keys. Passed as the RL rule's params, so a
    change to one method's section reruns that method's jobs only."""
    if algo not in RL_METHODS:
        raise KeyError(f"unknown RL method {algo!r} (known: {', '.join(RL_METHODS)})")
    others = method_sections() - set(RL_METHODS[algo].sections)
    return {k: v for k, v in rl.items() if k not in RL_RUN_KEYS and k not in others}


def rl_reward_model(rl: dict, algo: str) -> str | None:
    """The trained reward model (a name in rm.models) an RL method reads, or None."""
    spec = RL_METHODS[algo]
    if spec.reward_model_key is None:
        return None
    section, key = spec.reward_model_key.split(".")
    name = rl.get(section, {}).get(key)
    return None if name is None or name == spec.reward_model_none else name


@dataclass(frozen=True)
class RewardKindSpec:
    kind: str              # orm | prm | pav | implicit: rm_meta.json's "kind", train_rm's --kind
    module: str            # pipeline.rewards.<module> holds the class that trains, saves and scores it
    cls: str
    noun: str              # for messages: "an ORM"
    outcome_labelled: bool  # trained on seed rollouts' outcomes (True) or on MC step labels
    trained: bool = True    # False: an untrained baseline (a policy's likelihood), built without labels


REWARD_KINDS: dict[str, RewardKindSpec] = {s.kind: s for s in (
    RewardKindSpec("orm", "head", "HeadRewardModel", "an ORM", True),
    RewardKindSpec("prm", "head", "HeadRewardModel", "an MC-PRM", False),
    RewardKindSpec("pav", "head", "HeadRewardModel", "a PAV reward model", False),
    RewardKindSpec("implicit", "implicit", "ImplicitPRM", "an implicit PRM", True),
    RewardKindSpec("likelihood", "likelihood", "LikelihoodVerifier", "a policy's likelihood (untrained)", False,
                   trained=False),
)}
OUTCOME_LABELLED_KINDS = tuple(k for k, s in REWARD_KINDS.items() if s.outcome_labelled and s.trained)
LIKELIHOOD_PREFIX = "loglik_"  # verify.likelihood_verifiers: policy p scores as the verifier loglik_<p>


def likelihood_verifier_names(verify: dict) -> list[str]:
    """The untrained likelihood verifiers a config asks for (verify.likelihood_verifiers)."""
    return [LIKELIHOOD_PREFIX + p for p in verify["likelihood_verifiers"]]
KIND_NOUNS = {k: s.noun for k, s in REWARD_KINDS.items()}


@dataclass(frozen=True)
class RewardModelSpec:
    name: str     # the value in rm.models, the rm/<name>/ folder
    kind: str     # a key of REWARD_KINDS
    label: str    # MC-PRMs: the Math-Shepherd label trained on (he / se)
    loss: str     # implicit PRMs: the outcome loss (rewards.losses); heads: ce


IMPLICIT_LOSSES = ("ce", "ce_inst", "ce_data", "dpo", "kto", "nca")
PAIR_LOSSES = ("dpo", "nca")          # trained on (correct, incorrect) pairs of one instruction
REWARD_MODELS: dict[str, RewardModelSpec] = {s.name: s for s in (
    RewardModelSpec("orm", "orm", "se", "ce"),
    RewardModelSpec("prm_he", "prm", "he", "ce"),
    RewardModelSpec("prm_se", "prm", "se", "ce"),
    RewardModelSpec("pav", "pav", "se", "ce"),
    *(RewardModelSpec(f"implicit_{loss}", "implicit", "se", loss) for loss in IMPLICIT_LOSSES),
)}


def reward_model_kind(name: str) -> str:
    return REWARD_MODELS[name].kind
