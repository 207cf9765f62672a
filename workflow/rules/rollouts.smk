rule rollouts:
    """Seed rollouts: n samples per prompt from a policy, graded and split into steps."""
    input:
        policy=lambda wc: policy_input(wc.policy),
        records=f"{OUT}/data/{{split}}.jsonl",
    output:
        rows=f"{OUT}/rollouts/{{policy}}/{{split}}.jsonl",
        summary=f"{OUT}/rollouts/{{policy}}/{{split}}.summary.json",
    params:
        cfg=lambda wc: cfg_json("rollouts", "seed", task=task_for(wc.policy), sampling=sampling_of("rollouts")),
        policy=lambda wc: policy_dir(wc.policy),
    log:
        f"{OUT}/logs/rollouts/{{policy}}_{{split}}.log",
    benchmark:
        f"{OUT}/benchmarks/rollouts/{{policy}}_{{split}}.tsv"
    priority: PRIORITY["gates_rl"]
    threads: res("rollouts")["threads"]
    resources:
        **resources_of("rollouts"),
    shell:
        "{PY} -m pipeline.rollouts --cfg {params.cfg} --policy {params.policy:q} --policy-name {wildcards.policy} "
        "--records {input.records:q} --out {output.rows:q} --threads {threads} > {log:q} 2>&1"
