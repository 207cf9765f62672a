from pipeline.registry import method_view

RL_ALGOS = list(config["rl"]["algos"])
RL_SEEDS = [int(s) for s in config["rl"]["seeds"]]


def rl_view(algo):
    """The rl section as one method's jobs see it (pipeline.registry.method_view): the shared
    keys and the method's own sections only, so adding a method to rl.algos or tuning one
    reruns no other (also the base of the RL ablation cells)."""
    return method_view(config["rl"], algo)


def rl_cfg(algo, rl=None):
    """The RL stage's config: the algorithm's rl view (or `rl`, an ablation cell's variant of
    it), the base policy's task view and RL's sampling view."""
    return cfg_json("seed", task=task_for(config["rl"]["base_policy"]), sampling=rl_sampling(),
                    rl=rl_view(algo) if rl is None else rl, **tracking_view())


def rl_rm_input(wc):
    name = rl_reward_model(config, wc.algo)
    return [] if name is None else [f"{OUT}/rm/{name}/model"]


def rl_rm_arg(wc):
    name = rl_reward_model(config, wc.algo)
    return "" if name is None else f"--rm {OUT}/rm/{name}/model"


rule rl:
    """Online RL (every method in pipeline/registry.py: RLOO, GRPO, PRIME, PRIME frozen, PAV-RL,
    VinePPO, PPO, JEPO) from the base policy, one job per method and seed; resumes from its
    checkpoint."""
    input:
        policy=policy_input(config["rl"]["base_policy"]),
        train=f"{OUT}/data/train.jsonl",
        val=f"{OUT}/data/val.jsonl",
        rm=rl_rm_input,
    output:
        policy=directory(f"{OUT}/rl/{{algo}}/s{{seed}}/policy"),
        metrics=f"{OUT}/rl/{{algo}}/s{{seed}}/metrics.jsonl",
        summary=f"{OUT}/rl/{{algo}}/s{{seed}}/summary.json",
    wildcard_constraints:
        algo="|".join(RL_ALGOS),
        seed=r"\d+",
    params:
        cfg=lambda wc: rl_cfg(wc.algo),
        policy=policy_dir(config["rl"]["base_policy"]),
        data=f"{OUT}/data",
        out=f"{OUT}/rl/{{algo}}/s{{seed}}",
        ckpt=f"{OUT}/checkpoints/rl/{{algo}}/s{{seed}}",
        rm=rl_rm_arg,
    log:
        f"{OUT}/logs/rl/{{algo}}/s{{seed}}.log",
    benchmark:
        f"{OUT}/benchmarks/rl/{{algo}}/s{{seed}}.tsv"
    priority: PRIORITY["rl"]
    threads: res("rl")["threads"]
    resources:
        **resources_of("rl"),
    shell:
        launcher("rl") + " pipeline.rl --cfg {params.cfg} --algo {wildcards.algo} --seed {wildcards.seed} "
        "--policy {params.policy:q} {params.rm} --data {params.data:q} --out {params.out:q} --ckpt {params.ckpt:q} "
        "--threads {threads} > {log:q} 2>&1"
