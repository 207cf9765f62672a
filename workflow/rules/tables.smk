TABLE2_METHODS = ["base"] + RL_ALGOS


rule table2:
    """Online-RL results: one row per policy, one column per eval split, avg, compute."""
    input:
        evals=expand(f"{OUT}/eval/{{method}}.json", method=TABLE2_METHODS),
        rl=expand(f"{OUT}/rl/{{algo}}/summary.json", algo=RL_ALGOS),
        metrics=expand(f"{OUT}/rl/{{algo}}/metrics.jsonl", algo=RL_ALGOS),
    output:
        table=report(f"{OUT}/table2.csv", category="Tables", caption="../report/table2.rst"),
        plot=report(f"{OUT}/plots/rl_val_curves.png", category="Online RL", caption="../report/rl_val_curves.rst"),
    params:
        evals=" ".join(f"{m}={OUT}/eval/{m}.json" for m in TABLE2_METHODS),
        rl=" ".join(f"{a}={OUT}/rl/{a}" for a in RL_ALGOS),
        splits=" ".join(config["eval"]["splits"]),
    log:
        f"{OUT}/logs/table2.log",
    benchmark:
        f"{OUT}/benchmarks/table2.tsv"
    threads: res("tables")["threads"]
    resources:
        **resources_of("tables"),
    shell:
        "{PY} -m pipeline.tables --eval {params.evals} --rl {params.rl} --splits {params.splits} "
        "--out {output.table} --plot {output.plot} > {log} 2>&1"
