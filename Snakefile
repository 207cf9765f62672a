# Process reward models and RL for LLM reasoning: the whole pipeline as one DAG.
#   snakemake -c2 results/table2.csv                                  # tiny preset (default)
#   snakemake -c2 --configfile config/smoke.yaml results/table2.csv   # another preset
#   snakemake --profile slurm results/table2.csv                      # on a SLURM cluster
# Stages live in pipeline/ (one module each); rules in workflow/rules/ by stage.
from snakemake.utils import min_version

min_version("8.0")

include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/sft.smk"
include: "workflow/rules/rollouts.smk"
include: "workflow/rules/mc_label.smk"
include: "workflow/rules/reward_models.smk"
include: "workflow/rules/rl.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/verify.smk"


rule all:
    default_target: True
    input:
        f"{OUT}/table1.csv",
        f"{OUT}/table2.csv",
        f"{OUT}/table3.csv",
        f"{OUT}/table4.csv" if config["task"]["name"] == "arith" else [],
        f"{OUT}/mc/{config['mc_label']['seed_policy']}/{config['mc_label']['split']}.jsonl",
        expand(f"{OUT}/rm/{{rm}}/metrics.json", rm=config["rm"]["models"]),
