TABLE2_METHODS = ["base", *RL_ALGOS]


def per_seed(pattern, method):
    return ",".join(pattern.format(m=method, s=s) for s in RL_SEEDS)


rule table2:
    """Online-RL results: one row per method (mean and spread over seeds), one column per eval
    split, avg, compute, wall time and sample efficiency against rl.reference."""
    input:
        evals=expand(f"{OUT}/eval/{{method}}/s{{seed}}.json", method=TABLE2_METHODS, seed=RL_SEEDS),
        rl=expand(f"{OUT}/rl/{{algo}}/s{{seed}}/summary.json", algo=RL_ALGOS, seed=RL_SEEDS),
        metrics=expand(f"{OUT}/rl/{{algo}}/s{{seed}}/metrics.jsonl", algo=RL_ALGOS, seed=RL_SEEDS),
    output:
        table=report(f"{OUT}/table2.csv", category="Tables", caption="../report/table2.rst"),
        plot=report(f"{OUT}/plots/rl_val_curves.png", category="Online RL", caption="../report/rl_val_curves.rst"),
    params:
        evals=" ".join(f"{m}={per_seed(f'{OUT}/eval/{{m}}/s{{s}}.json', m)}" for m in TABLE2_METHODS),
        rl=" ".join(f"{a}={per_seed(f'{OUT}/rl/{{m}}/s{{s}}', a)}" for a in RL_ALGOS),
        splits=" ".join(config["eval"]["splits"]),
        reference=config["rl"]["reference"],
        # long-form answers: pass1 is the whole answer line's match; also report the final value alone
        final_value="--final-value" if config["task"].get("arith", {}).get("answer_format") == "longform" else "",
    log:
        f"{OUT}/logs/table2.log",
    benchmark:
        f"{OUT}/benchmarks/table2.tsv"
    threads: res("tables")["threads"]
    resources:
        **resources_of("tables"),
    shell:
        "{PY} -m pipeline.table2 --eval {params.evals} --rl {params.rl} --splits {params.splits} "
        "--reference {params.reference} {params.final_value} --out {output.table:q} --plot {output.plot:q} > {log:q} 2>&1"
