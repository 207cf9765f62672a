# Verifier evaluation: sample pools per generator, every reward model scores them, tables.
VERIFY = config["verify"]
VERIFY_GENS = list(VERIFY["generators"])
VERIFY_RMS = list(config["rm"]["models"]) + LIKELIHOOD_RMS  # trained reward models, then the untrained baselines
VERIFY_CALIB = f"{OUT}/rollouts/{config['rm']['data_policy']}/{VERIFY['calib_split']}.jsonl"
IS_TESTBED = is_testbed(config["task"])


def pool_cfg(wc):
    """The rollouts stage, reconfigured to draw verify.pool_size samples of verify.n_prompts
    prompts from one generator (in its own prompt template)."""
    ro = {"n_prompts": VERIFY["n_prompts"], "n_samples": VERIFY["pool_size"], "temperature": VERIFY["temperature"],
          "top_p": VERIFY["top_p"]}
    return cfg_json("seed", task=task_for(wc.policy), rollouts=ro, sampling=sampling_of("bon_pool"))


rule bon_pool:
    """A pool of verify.pool_size samples per prompt from one generator, graded and split into steps."""
    input:
        policy=lambda wc: policy_input(wc.policy),
        records=f"{OUT}/data/{VERIFY['split']}.jsonl",
    output:
        rows=f"{OUT}/verify/pools/{{policy}}.jsonl",
        summary=f"{OUT}/verify/pools/{{policy}}.summary.json",
    params:
        cfg=pool_cfg,
        policy=lambda wc: policy_dir(wc.policy),
    log:
        f"{OUT}/logs/bon_pool/{{policy}}.log",
    benchmark:
        f"{OUT}/benchmarks/bon_pool/{{policy}}.tsv"
    threads: res("bon_pool")["threads"]
    resources:
        **resources_of("bon_pool"),
    shell:
        "{PY} -m pipeline.rollouts --cfg {params.cfg} --policy {params.policy:q} --policy-name {wildcards.policy} "
        "--records {input.records:q} --out {output.rows:q} --threads {threads} > {log:q} 2>&1"


def score_cfg():
    """score_pool's config: the batch size only (how pools are evaluated must not rescore them)
    and, with real models, the prompt template the reward model reads samples in (its init
    policy's)."""
    c = {"verify": {"score_batch_size": VERIFY["score_batch_size"]}}
    tpl = task_for(RM["init_policy"]).get("prompt_template")
    if config.get("policies") and tpl:
        c["score_prompt"] = {"prompt_template": tpl}
    return cfg_json(**c)


def score_records(calib=True):
    """The problems a reward model re-renders prompts from (real models only: the testbed's
    tiers share one template and tokenizer, so nothing is re-read)."""
    if not config.get("policies"):
        return []
    return [f"{OUT}/data/{VERIFY['split']}.jsonl"] + ([f"{OUT}/data/{VERIFY['calib_split']}.jsonl"] if calib else [])


def score_reads(calib=True):
    """score_pool arguments that make a reward model read every sample in its own prompt
    template and tokenizer (`pipeline/score_pool.py`); empty on the testbed."""
    if not config.get("policies"):
        return ""
    gens = {g: policy_dir(g) for g in VERIFY_GENS}
    if calib:
        gens["calib"] = policy_dir(RM["data_policy"])
    return (" --records " + " ".join(score_records(calib)) + " --generator-tokenizers "
            + " ".join(f"{k}={v}" for k, v in gens.items()))


rule score_pool:
    """One reward model scores every step of every pool sample (and the calibration rollouts)."""
    input:
        model=f"{OUT}/rm/{{rm}}/model",
        pools=expand(f"{OUT}/verify/pools/{{gen}}.jsonl", gen=VERIFY_GENS),
        calib=VERIFY_CALIB,
        ref=policy_input(config["rm"]["init_policy"]),  # the implicit PRM's reference
        records=score_records(),
    output:
        scores=expand(f"{OUT}/verify/scores/{{{{rm}}}}/{{name}}.jsonl", name=VERIFY_GENS + ["calib"]),
        meta=f"{OUT}/verify/scores/{{rm}}/meta.json",
    wildcard_constraints:
        rm="|".join([*RM_SPECS, *LIKELIHOOD_RMS]),  # any trainable model (an ablation grid's default cell may be outside rm.models) or baseline
    params:
        cfg=score_cfg(),
        # real models add how the reward model reads the samples (score_reads; empty on the
        # testbed, whose command is unchanged)
        inputs=" ".join(f"{g}={OUT}/verify/pools/{g}.jsonl" for g in VERIFY_GENS) + f" calib={VERIFY_CALIB}"
        + score_reads(),
        out=f"{OUT}/verify/scores/{{rm}}",
    log:
        f"{OUT}/logs/score_pool/{{rm}}.log",
    benchmark:
        f"{OUT}/benchmarks/score_pool/{{rm}}.tsv"
    threads: res("score_pool")["threads"]
    resources:
        **resources_of("score_pool"),
    shell:
        "{PY} -m pipeline.score_pool --cfg {params.cfg} --rm {input.model:q} --inputs {params.inputs} "
        "--out-dir {params.out:q} --threads {threads} > {log:q} 2>&1"


def verify_outputs():
    out = {"table1": report(f"{OUT}/table1.csv", category="Tables", caption="../report/table1.rst"),
           "long": f"{OUT}/table1_long.csv",
           "prompts": f"{OUT}/table1_prompts.csv",  # per-prompt accuracies: the claims table bootstraps them
           "plot": report(f"{OUT}/plots/bon_accuracy.png", category="Verifiers",
                          caption="../report/bon_accuracy.rst")}
    if IS_TESTBED:  # step verification needs ground-truth step labels
        out["table4"] = report(f"{OUT}/table4.csv", category="Tables", caption="../report/table4.rst")
    return out


rule verify_tables:
    """Best-of-N / weighted voting (table1) and step verification against ground truth (table4)."""
    input:
        pools=expand(f"{OUT}/verify/pools/{{gen}}.jsonl", gen=VERIFY_GENS),
        scores=expand(f"{OUT}/verify/scores/{{rm}}/meta.json", rm=VERIFY_RMS),
        metrics=expand(f"{OUT}/rm/{{rm}}/metrics.json", rm=VERIFY_RMS),
    output:
        **verify_outputs(),
    params:
        cfg=cfg_json("verify", "task", "seed"),
        pools=" ".join(f"{g}={OUT}/verify/pools/{g}.jsonl" for g in VERIFY_GENS),
        scores=" ".join(f"{m}={OUT}/verify/scores/{m}" for m in VERIFY_RMS),
        metrics=" ".join(f"{m}={OUT}/rm/{m}/metrics.json" for m in VERIFY_RMS),
        table4=f"--table4 {OUT}/table4.csv" if IS_TESTBED else "",
    log:
        f"{OUT}/logs/verify_tables.log",
    benchmark:
        f"{OUT}/benchmarks/verify_tables.tsv"
    threads: res("tables")["threads"]
    resources:
        **resources_of("tables"),
    shell:
        "{PY} -m pipeline.verify --cfg {params.cfg} --pools {params.pools} --scores {params.scores} "
        "--rm-metrics {params.metrics} --table1 {output.table1:q} --plot {output.plot:q} {params.table4} "
        "--threads {threads} > {log:q} 2>&1"


SEARCH = config["search"]


def search_cfg(wc):
    """The search stage's config: the `search` section at one beam width, on the pools' prompts."""
    sc = {k: v for k, v in SEARCH.items() if k not in ("policy", "verifiers", "beam_widths")}
    sc.update(beam_width=int(wc.width), n_prompts=VERIFY["n_prompts"])
    return cfg_json("seed", task=task_for(SEARCH["policy"]), search=sc, sampling=sampling_of("beam_search"))


rule beam_search:
    """Step-level beam search with one verifier and beam width; the ORM picks the answer."""
    input:
        policy=policy_input(SEARCH["policy"]),
        records=f"{OUT}/data/{VERIFY['split']}.jsonl",
        verifier=f"{OUT}/rm/{{verifier}}/model",
        final=f"{OUT}/rm/orm/model",
        ref=policy_input(config["rm"]["init_policy"]),
    output:
        rows=f"{OUT}/search/{{verifier}}_b{{width}}.jsonl",
        summary=f"{OUT}/search/{{verifier}}_b{{width}}.summary.json",
    wildcard_constraints:
        verifier="|".join(SEARCH["verifiers"]),
        width=r"\d+",
    params:
        cfg=search_cfg,
        policy=policy_dir(SEARCH["policy"]),
    log:
        f"{OUT}/logs/beam_search/{{verifier}}_b{{width}}.log",
    benchmark:
        f"{OUT}/benchmarks/beam_search/{{verifier}}_b{{width}}.tsv"
    threads: res("beam_search")["threads"]
    resources:
        **resources_of("beam_search"),
    shell:
        "{PY} -m pipeline.search --cfg {params.cfg} --policy {params.policy:q} --verifier {input.verifier:q} "
        "--final {input.final:q} --records {input.records:q} --out {output.rows:q} --threads {threads} > {log:q} 2>&1"


SEARCH_RUNS = expand(f"{OUT}/search/{{v}}_b{{w}}.summary.json", v=SEARCH["verifiers"], w=SEARCH["beam_widths"])


rule table3:
    """Beam search against best-of-N with the ORM, by generated tokens."""
    input:
        pool=f"{OUT}/verify/pools/{SEARCH['policy']}.jsonl",
        pool_summary=f"{OUT}/verify/pools/{SEARCH['policy']}.summary.json",
        orm=f"{OUT}/verify/scores/orm/{SEARCH['policy']}.jsonl",
        search=SEARCH_RUNS,
    output:
        table=report(f"{OUT}/table3.csv", category="Tables", caption="../report/table3.rst"),
        plot=report(f"{OUT}/plots/search_vs_bon.png", category="Verifiers", caption="../report/search_vs_bon.rst"),
    params:
        cfg=cfg_json("verify", "task", "seed"),
    log:
        f"{OUT}/logs/table3.log",
    benchmark:
        f"{OUT}/benchmarks/table3.tsv"
    threads: res("tables")["threads"]
    resources:
        **resources_of("tables"),
    shell:
        "{PY} -m pipeline.search_table --cfg {params.cfg} --pool {input.pool:q} --pool-summary {input.pool_summary:q} "
        "--orm-scores {input.orm:q} --search {input.search:q} --out {output.table:q} --plot {output.plot:q} "
        "--threads {threads} > {log:q} 2>&1"
