RL_ALGOS = list(config["rl"]["algos"])


rule rl:
    """Outcome-reward online RL (RLOO / GRPO) from the base policy; resumes from its checkpoint."""
    input:
        policy=policy_input(config["rl"]["base_policy"]),
        train=f"{OUT}/data/train.jsonl",
        val=f"{OUT}/data/val.jsonl",
    output:
        policy=directory(f"{OUT}/rl/{{algo}}/policy"),
        metrics=f"{OUT}/rl/{{algo}}/metrics.jsonl",
        summary=f"{OUT}/rl/{{algo}}/summary.json",
    wildcard_constraints:
        algo="|".join(RL_ALGOS),
    params:
        cfg=cfg_json("rl", "task", "sampling", "seed"),
        policy=policy_dir(config["rl"]["base_policy"]),
        data=f"{OUT}/data",
        out=f"{OUT}/rl/{{algo}}",
        ckpt=f"{OUT}/checkpoints/rl/{{algo}}",
    log:
        f"{OUT}/logs/rl/{{algo}}.log",
    benchmark:
        f"{OUT}/benchmarks/rl/{{algo}}.tsv"
    threads: res("rl")["threads"]
    resources:
        **resources_of("rl"),
    shell:
        "{PY} -m pipeline.rl --cfg {params.cfg} --algo {wildcards.algo} --policy {params.policy} "
        "--data {params.data} --out {params.out} --ckpt {params.ckpt} --threads {threads} > {log} 2>&1"
