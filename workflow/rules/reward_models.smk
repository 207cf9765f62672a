from pipeline.registry import OUTCOME_LABELLED_KINDS, REWARD_MODELS

RM = config["rm"]
# model name -> (kind, MC-PRM label, implicit loss): every reward model goes through one rule
RM_SPECS = {name: (s.kind, s.label, s.loss) for name, s in REWARD_MODELS.items()}
OUTCOME_LABELLED = OUTCOME_LABELLED_KINDS  # trained on seed rollouts' outcomes, not on MC labels
RM_TRAIN_ROLLOUTS = f"{OUT}/rollouts/{RM['data_policy']}/{config['mc_label']['split']}"
RM_MC_LABELS = f"{OUT}/mc/{RM['data_policy']}/{config['mc_label']['split']}"


def rm_labels(wc):
    return f"{RM_TRAIN_ROLLOUTS}.jsonl" if RM_SPECS[wc.rm][0] in OUTCOME_LABELLED else f"{RM_MC_LABELS}.jsonl"


def rm_data_cost(wc):
    """Summaries whose compute produced the training labels (charged as data collection)."""
    costs = [f"{RM_TRAIN_ROLLOUTS}.summary.json"]
    if RM_SPECS[wc.rm][0] not in OUTCOME_LABELLED:
        costs.append(f"{RM_MC_LABELS}.summary.json")
    return costs


rule train_rm:
    """Train one reward model (ORM / MC-PRM HE, SE / PAV / implicit PRM x loss); AUROC on held-out rollouts."""
    input:
        labels=rm_labels,
        cost=rm_data_cost,
        heldout=f"{OUT}/rollouts/{RM['data_policy']}/{RM['heldout_split']}.jsonl",
        policy=policy_input(RM["init_policy"]),
    output:
        model=directory(f"{OUT}/rm/{{rm}}/model"),
        metrics=f"{OUT}/rm/{{rm}}/metrics.json",
    wildcard_constraints:
        rm="|".join(RM_SPECS),
    params:
        cfg=cfg_json("rm", "seed"),
        kind=lambda wc: RM_SPECS[wc.rm][0],
        label=lambda wc: RM_SPECS[wc.rm][1],
        loss=lambda wc: RM_SPECS[wc.rm][2],
        policy=policy_dir(RM["init_policy"]),
        out=f"{OUT}/rm/{{rm}}",
    log:
        f"{OUT}/logs/train_rm/{{rm}}.log",
    benchmark:
        f"{OUT}/benchmarks/train_rm/{{rm}}.tsv"
    threads: res("train_rm")["threads"]
    resources:
        **resources_of("train_rm"),
    shell:
        launcher("train_rm") + " pipeline.train_rm --cfg {params.cfg} --kind {params.kind} --prm-label {params.label} --loss {params.loss} "
        "--labels {input.labels} --policy {params.policy} --heldout {input.heldout} --data-cost {input.cost} "
        "--out {params.out} --threads {threads} > {log} 2>&1"
