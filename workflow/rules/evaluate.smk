def eval_policy_dir(method):
    """`base` is the RL starting policy; every other method is an RL output."""
    if method == "base":
        return policy_dir(config["rl"]["base_policy"])
    return f"{OUT}/rl/{method}/policy"


def eval_policy_input(method):
    if method == "base":
        return policy_input(config["rl"]["base_policy"])
    return [f"{OUT}/rl/{method}/policy"]


rule evaluate:
    """Benchmark evaluation: mean pass@1 over k samples and greedy accuracy per eval split."""
    input:
        policy=lambda wc: eval_policy_input(wc.method),
        data=expand(f"{OUT}/data/{{split}}.jsonl", split=config["eval"]["splits"]),
    output:
        f"{OUT}/eval/{{method}}.json",
    params:
        cfg=cfg_json("eval", "task", "sampling", "seed"),
        policy=lambda wc: eval_policy_dir(wc.method),
        data=f"{OUT}/data",
    log:
        f"{OUT}/logs/evaluate/{{method}}.log",
    benchmark:
        f"{OUT}/benchmarks/evaluate/{{method}}.tsv"
    threads: res("evaluate")["threads"]
    resources:
        **resources_of("evaluate"),
    shell:
        "{PY} -m pipeline.evaluate --cfg {params.cfg} --policy {params.policy} --data {params.data} "
        "--out {output} --threads {threads} > {log} 2>&1"
