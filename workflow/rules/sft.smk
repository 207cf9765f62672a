TIERS = list(config["sft"]["tiers"]) if is_testbed(config["task"]) else []


rule sft:
    """Train the testbed policy from scratch; capture weak/medium/strong generator tiers."""
    input:
        train=f"{OUT}/data/train.jsonl",
        val=f"{OUT}/data/val.jsonl",
    output:
        tiers=[directory(f"{OUT}/models/sft/{t}") for t in TIERS],
        metrics=f"{OUT}/models/sft/sft_metrics.json",
    params:
        cfg=cfg_json("sft", "model", "task", "sampling", "seed", **tracking_view()),
        out=f"{OUT}/models/sft",
        ckpt=f"{OUT}/checkpoints/sft",
    log:
        f"{OUT}/logs/sft.log",
    benchmark:
        f"{OUT}/benchmarks/sft.tsv"
    threads: res("sft")["threads"]
    resources:
        **resources_of("sft"),
    shell:
        launcher("sft") + " pipeline.sft --cfg {params.cfg} --train {input.train:q} --val {input.val:q} "
        "--out {params.out:q} --ckpt {params.ckpt:q} --threads {threads} > {log:q} 2>&1"
