# The verdict table: every seed paper's headline claim, measured on this run with a 95% interval.
from pipeline.config import data_scaling_pair

CLAIM_SEARCH = [(v, w) for v in SEARCH["verifiers"] for w in SEARCH["beam_widths"]]


def scaling_cells():
    """[(metrics.json, scores dir)] of the implicit_prm cells behind the data-scaling claims (one
    response x every instruction, r x 1/r of them), or [] when the grid has no such pair."""
    if "implicit_prm" not in ABL:
        return []
    cells = abl_cells("implicit_prm")
    pair = data_scaling_pair([c for _, c in cells])
    if pair is None:
        return []
    return [(rm_cell_metrics("implicit_prm", *cells[i]), rm_cell_scores("implicit_prm", *cells[i])) for i in pair]


SCALING = scaling_cells()
# what an implicit PRM is before training: its init policy's likelihood when scored without the
# reference (when that baseline is built), a constant (a random pick) with it
SCALING_UNTRAINED = (f"loglik_{RM['init_policy']}" if not RM["implicit_score_reference"]
                     and f"loglik_{RM['init_policy']}" in VERIFY_RMS else "random")
SCALING_FLAGS = "".join([" --scaling", *(f" {shlex.quote(p)}" for cell in SCALING for p in cell),
                         f" --scaling-untrained {shlex.quote(SCALING_UNTRAINED)}"]) if SCALING else ""


rule claims:
    """results/claims.csv: one row per claim (RL, verifiers, search, step accuracy against the
    truth), paper's number, ours with a bootstrap interval, and a verdict (pipeline/claims.py)."""
    input:
        evals=expand(f"{OUT}/eval/{{method}}/s{{seed}}.json", method=TABLE2_METHODS, seed=RL_SEEDS),
        metrics=expand(f"{OUT}/rl/{{algo}}/s{{seed}}/metrics.jsonl", algo=RL_ALGOS, seed=RL_SEEDS),
        prompts=f"{OUT}/table1_prompts.csv",
        rm_metrics=expand(f"{OUT}/rm/{{rm}}/metrics.json", rm=VERIFY_RMS),
        pools=expand(f"{OUT}/verify/pools/{{gen}}.jsonl", gen=VERIFY_GENS),
        pool_summaries=expand(f"{OUT}/verify/pools/{{gen}}.summary.json", gen=VERIFY_GENS),
        scores=expand(f"{OUT}/verify/scores/{{rm}}/meta.json", rm=VERIFY_RMS),
        search=[f"{OUT}/search/{v}_b{w}.jsonl" for v, w in CLAIM_SEARCH],
        scaling=[p for m, d in SCALING for p in (m, f"{d}/meta.json")],
    output:
        table=report(f"{OUT}/claims.csv", category="Tables", caption="../report/claims.rst"),
    params:
        cfg=cfg_json("claims", "eval", "verify", "task", "seed"),
        evals=" ".join(f"{m}={per_seed(f'{OUT}/eval/{{m}}/s{{s}}.json', m)}" for m in TABLE2_METHODS),
        rl=" ".join(f"{a}={per_seed(f'{OUT}/rl/{{m}}/s{{s}}', a)}" for a in RL_ALGOS),
        rm_metrics=" ".join(f"{m}={OUT}/rm/{m}/metrics.json" for m in VERIFY_RMS),
        pools=" ".join(f"{g}={OUT}/verify/pools/{g}.jsonl" for g in VERIFY_GENS),
        scores=" ".join(f"{m}={OUT}/verify/scores/{m}" for m in VERIFY_RMS),
        search=" ".join(f"{v}:{w}={OUT}/search/{v}_b{w}.jsonl" for v, w in CLAIM_SEARCH),
        search_policy=SEARCH["policy"],
        scaling=SCALING_FLAGS,
    log:
        f"{OUT}/logs/claims.log",
    benchmark:
        f"{OUT}/benchmarks/claims.tsv"
    threads: res("tables")["threads"]
    resources:
        **resources_of("tables"),
    shell:
        "{PY} -m pipeline.claims --cfg {params.cfg} --eval {params.evals} --rl {params.rl} "
        "--table1-prompts {input.prompts:q} --rm-metrics {params.rm_metrics} --pools {params.pools} "
        "--scores {params.scores} --search {params.search} --search-policy {params.search_policy}{params.scaling} "
        "--out {output.table:q} > {log:q} 2>&1"
