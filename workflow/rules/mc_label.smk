MC = config["mc_label"]


def mc_outputs(wc=None):
    out = {"rows": f"{OUT}/mc/{{policy}}/{{split}}.jsonl", "summary": f"{OUT}/mc/{{policy}}/{{split}}.summary.json"}
    if is_testbed(config["task"]):  # ground-truth agreement only where step labels exist
        out["agreement"] = f"{OUT}/mc/{{policy}}/{{split}}.agreement.csv"
    return out


rule mc_label:
    """Monte-Carlo step labels: n_mc completions from every step boundary of the seed rollouts."""
    input:
        rollouts=f"{OUT}/rollouts/{{policy}}/{{split}}.jsonl",
        records=f"{OUT}/data/{{split}}.jsonl",
        completer=policy_input(MC["completer"]),
    output:
        **mc_outputs(),
    params:
        cfg=cfg_json("mc_label", "task", "seed", sampling=sampling_of("mc_label")),
        completer=policy_dir(MC["completer"]),
    log:
        f"{OUT}/logs/mc_label/{{policy}}_{{split}}.log",
    benchmark:
        f"{OUT}/benchmarks/mc_label/{{policy}}_{{split}}.tsv"
    priority: PRIORITY["gates_rl"]
    threads: res("mc_label")["threads"]
    resources:
        **resources_of("mc_label"),
    shell:
        "{PY} -m pipeline.mc_label --cfg {params.cfg} --rollouts {input.rollouts:q} --records {input.records:q} "
        "--completer {params.completer:q} "
        "--out {output.rows:q} --threads {threads} > {log:q} 2>&1"
