# Process reward models and RL for LLM reasoning: the whole pipeline as one DAG.
#   snakemake -c2 results/table2.csv                                  # tiny preset (default)
#   snakemake -c2 --configfile config/smoke.yaml results/table2.csv   # another preset
#   snakemake --profile slurm results/table2.csv                      # on a SLURM cluster
#   snakemake -c2 results/ablations/implicit_prm.csv                  # an ablation grid (config `ablations:`)
# Stages live in pipeline/ (one module each); rules in workflow/rules/ by stage.
from snakemake.utils import min_version

from pipeline.config import default_targets

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
include: "workflow/rules/ablations.smk"
include: "workflow/rules/claims.smk"  # after ablations: it reads two implicit_prm cells


rule all:
    default_target: True
    input:
        # tables 1-4, MC labels, reward models; a preset's `targets:` narrows it to its paper's
        # experiments (pipeline/config.py::default_targets)
        default_targets(config, OUT),
