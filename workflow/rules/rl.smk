RL_ALGOS = list(config["rl"]["algos"])
METHOD_KEYS = {"vineppo_k": "vineppo"}  # rl keys read by one algorithm only


def rl_cfg(algo):
    """The rl section as one algorithm sees it: without the list of algorithms and without other
    methods' keys, so adding a method or tuning one reruns nothing else."""
    rl = {k: v for k, v in config["rl"].items() if k != "algos" and METHOD_KEYS.get(k, algo) == algo}
    return cfg_json("task", "sampling", "seed", rl=rl)


rule rl:
    """Online RL (RLOO / GRPO / VinePPO) from the base policy; resumes from its checkpoint."""
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
        cfg=lambda wc: rl_cfg(wc.algo),
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
