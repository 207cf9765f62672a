from pipeline.registry import LIKELIHOOD_PREFIX, OUTCOME_LABELLED_KINDS, REWARD_MODELS, likelihood_verifier_names

RM = config["rm"]
# model name -> (kind, MC-PRM label, implicit loss): every reward model goes through one rule
RM_SPECS = {name: (s.kind, s.label, s.loss) for name, s in REWARD_MODELS.items()}
OUTCOME_LABELLED = OUTCOME_LABELLED_KINDS  # trained on seed rollouts' outcomes, not on MC labels
RM_TRAIN_ROLLOUTS = f"{OUT}/rollouts/{RM['data_policy']}/{config['mc_label']['split']}"
RM_MC_LABELS = f"{OUT}/mc/{RM['data_policy']}/{config['mc_label']['split']}"
# untrained likelihood baselines (verify.likelihood_verifiers): loglik_<policy> scores like a reward model
LIKELIHOOD_RMS = likelihood_verifier_names(config["verify"])


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
        cfg=cfg_json("rm", "seed", **tracking_view()),
        kind=lambda wc: RM_SPECS[wc.rm][0],
        label=lambda wc: RM_SPECS[wc.rm][1],
        loss=lambda wc: RM_SPECS[wc.rm][2],
        policy=policy_dir(RM["init_policy"]),
        out=f"{OUT}/rm/{{rm}}",
    log:
        f"{OUT}/logs/train_rm/{{rm}}.log",
    benchmark:
        f"{OUT}/benchmarks/train_rm/{{rm}}.tsv"
    priority: PRIORITY["gates_rl"]
    threads: res("train_rm")["threads"]
    resources:
        **resources_of("train_rm"),
    shell:
        launcher("train_rm") + " pipeline.train_rm --cfg {params.cfg} --kind {params.kind} --prm-label {params.label} --loss {params.loss} "
        "--labels {input.labels:q} --policy {params.policy:q} --heldout {input.heldout:q} --data-cost {input.cost:q} "
        "--out {params.out:q} --threads {threads} > {log:q} 2>&1"


rule likelihood_verifier:
    """The untrained baseline: a policy's own step log-likelihood as a verifier (no labels, no
    training), with the held-out metrics every reward model gets."""
    input:
        heldout=f"{OUT}/rollouts/{RM['data_policy']}/{RM['heldout_split']}.jsonl",
        policy=lambda wc: policy_input(wc.policy),
    output:
        model=directory(f"{OUT}/rm/{LIKELIHOOD_PREFIX}{{policy}}/model"),
        metrics=f"{OUT}/rm/{LIKELIHOOD_PREFIX}{{policy}}/metrics.json",
    wildcard_constraints:
        policy="|".join(config["verify"]["likelihood_verifiers"]) or "(?!)",
    params:
        # scoring's batch size only: nothing is trained, so no rm knob reruns the baselines
        cfg=cfg_json(verify={"score_batch_size": config["verify"]["score_batch_size"]}),
        policy=lambda wc: policy_dir(wc.policy),
        out=f"{OUT}/rm/{LIKELIHOOD_PREFIX}{{policy}}",
    log:
        f"{OUT}/logs/likelihood_verifier/{{policy}}.log",
    benchmark:
        f"{OUT}/benchmarks/likelihood_verifier/{{policy}}.tsv"
    threads: res("score_pool")["threads"]
    resources:
        **resources_of("score_pool"),
    shell:
        "{PY} -m pipeline.train_rm --cfg {params.cfg} --kind likelihood --policy {params.policy:q} "
        "--heldout {input.heldout:q} --out {params.out:q} --threads {threads} > {log:q} 2>&1"
