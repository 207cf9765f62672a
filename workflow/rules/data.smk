rule data_prep:
    """Testbed generation (or real dataset conversion) into one JSONL per split."""
    output:
        expand(f"{OUT}/data/{{split}}.jsonl", split=SPLITS),
        summary=f"{OUT}/data/summary.json",
    params:
        cfg=cfg_json("task", "seed"),
        out=f"{OUT}/data",
    log:
        f"{OUT}/logs/data_prep.log",
    benchmark:
        f"{OUT}/benchmarks/data_prep.tsv"
    threads: res("data_prep")["threads"]
    resources:
        **resources_of("data_prep"),
    shell:
        "{PY} -m pipeline.data_prep --cfg {params.cfg} --out {params.out:q} --threads {threads} > {log:q} 2>&1"
