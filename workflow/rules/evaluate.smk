def eval_policy_dir(method, seed):
    """`base` is the RL starting policy; every other method is an RL output of that seed."""
    if method == "base":
        return policy_dir(config["rl"]["base_policy"])
    return f"{OUT}/rl/{method}/s{seed}/policy"


def eval_policy_input(method, seed):
    if method == "base":
        return policy_input(config["rl"]["base_policy"])
    return [f"{OUT}/rl/{method}/s{seed}/policy"]


# every evaluation (table2's and the RL ablation cells') samples in the base policy's template
EVAL_CFG = cfg_json("eval", "seed", task=task_for(config["rl"]["base_policy"]), sampling=sampling_of("evaluate"))


rule evaluate:
    """Benchmark evaluation: mean pass@1 over k samples and greedy accuracy per eval split, for
    one policy and seed (the seed also moves the evaluation's sampling, so the base policy's
    spread over seeds is its evaluation noise)."""
    input:
        policy=lambda wc: eval_policy_input(wc.method, wc.seed),
        data=expand(f"{OUT}/data/{{split}}.jsonl", split=config["eval"]["splits"]),
    output:
        f"{OUT}/eval/{{method}}/s{{seed}}.json",
    wildcard_constraints:
        seed=r"\d+",
    params:
        cfg=EVAL_CFG,
        policy=lambda wc: eval_policy_dir(wc.method, wc.seed),
        data=f"{OUT}/data",
    log:
        f"{OUT}/logs/evaluate/{{method}}/s{{seed}}.log",
    benchmark:
        f"{OUT}/benchmarks/evaluate/{{method}}/s{{seed}}.tsv"
    threads: res("evaluate")["threads"]
    resources:
        **resources_of("evaluate"),
    shell:
        "{PY} -m pipeline.evaluate --cfg {params.cfg} --policy {params.policy:q} --seed {wildcards.seed} "
        "--data {params.data:q} --out {output:q} --threads {threads} > {log:q} 2>&1"
