# Ablation grids (issue 6). Each grid is declared under `ablations.<grid>.grid` in the config;
# pipeline/config.py::ablation_grid turns it into a DataFrame (one row per cell) and Snakemake's
# Paramspace turns the rows into paths, `<axis>~<value>/...`. One job per cell, and one table +
# plot per grid: `snakemake -c2 results/ablations/<grid>.csv`.
#
# Cells share every upstream artifact they can:
# - implicit_prm: every cell trains on the same seed rollouts (rm.data_policy, mc_label.split);
#   responses per instruction and the share of instructions are subsamples drawn inside
#   training (train_rm --responses-per-instruction / --instruction-frac), beta and the loss are
#   training knobs. No cell samples anything. Every reward-model cell (implicit_prm, factors)
#   scores the main DAG's best-of-N pools (verify/pools/<generator>), so its row has best-of-N
#   accuracy at the largest verify.n_values beside its held-out AUROC.
# - factors: the same rollouts (or data_policy's), deduplicated inside training (--dedup), plus the
#   MC labels of those rollouts for the step-label cells (--step-labels).
# - mc_label: labels depend on (n_mc, n_cov) only, so cells differing in prover K share them; all
#   label the same seed rollouts. Each cell trains its PAV with rm.pav_prover_k = K.
# - pav_rl / vineppo: every cell starts from the same base policy (and PAV-RL reads the same PAV).
# A cell equal to the main config on every axis (the implicit PRM's loss aside, each loss being
# its own main model) *is* the main DAG's artifact (rm/<name>, mc/..., rl/<algo>/s<seed>): its
# table row reads that, and no ablation job runs for it.
from snakemake.utils import Paramspace

from pipeline.config import ABLATION_AXES, AXIS_TYPES, ablation_grid, is_default_cell

ABL = config.get("ablations", {})
ABL_OUT = f"{OUT}/ablations"
ABL_GRIDS = [g for g in ABLATION_AXES if g in ABL]
RL_GRID_ALGO = {"pav_rl": ("pav", "alpha"), "vineppo": ("vineppo", "k")}  # grid -> (RL algorithm, axis)


def abl_space(grid, cols=None, single_wildcard=None):
    df = ablation_grid(config, grid)
    if cols is not None:
        df = df[list(cols)].drop_duplicates().reset_index(drop=True)
    return Paramspace(df, param_sep="~", single_wildcard=single_wildcard)


def abl_cells(grid):
    """(path pattern of the cell, {axis: plain Python value}) per cell, in grid order."""
    space = abl_space(grid)
    records = [{a: AXIS_TYPES[a](v) for a, v in r.items()} for r in space.dataframe.to_dict("records")]
    return list(zip(space.instance_patterns, records))


def abl_constraints(space):
    return {c: r"[^/]+" for c in space.dataframe.columns}


def abl_rm_cfg(**over):
    """The rm section an ablation cell trains with: without the list of models (adding one to
    rm.models reruns no cell), with the cell's overrides."""
    rm = {k: v for k, v in config["rm"].items() if k != "models"}
    rm.update(over)
    return cfg_json("seed", rm=rm)


RM_HELDOUT = f"{OUT}/rollouts/{RM['data_policy']}/{RM['heldout_split']}.jsonl"


def rm_cell_metrics(grid, path, cell):
    """metrics.json of a reward-model cell: the main DAG's rm/implicit_<loss> for the default cell."""
    if is_default_cell(config, grid, cell):
        loss = cell["loss"] if grid == "implicit_prm" else ABL["factors"]["loss"]
        return f"{OUT}/rm/implicit_{loss}/metrics.json"
    return f"{ABL_OUT}/{grid}/{path}/metrics.json"


def rm_cell_scores(grid, path, cell):
    """Score directory of a reward-model cell over the best-of-N pools: the main DAG's
    verify/scores/implicit_<loss> for the default cell."""
    if is_default_cell(config, grid, cell):
        loss = cell["loss"] if grid == "implicit_prm" else ABL["factors"]["loss"]
        return f"{OUT}/verify/scores/implicit_{loss}"
    return f"{ABL_OUT}/{grid}/{path}/scores"


ABL_RM_GRIDS = [g for g in ("implicit_prm", "factors") if g in ABL]
if ABL_RM_GRIDS:

    rule ablation_rm_scores:
        """A reward-model cell scores every best-of-N pool, as rule score_pool does for the main
        models (no calibration rows: step verification is the main models' table4)."""
        input:
            model=f"{ABL_OUT}/{{rmgrid}}/{{cellpath}}/model",
            pools=expand(f"{OUT}/verify/pools/{{gen}}.jsonl", gen=VERIFY_GENS),
            records=score_records(calib=False),
        output:
            scores=expand(f"{ABL_OUT}/{{{{rmgrid}}}}/{{{{cellpath}}}}/scores/{{gen}}.jsonl", gen=VERIFY_GENS),
            meta=f"{ABL_OUT}/{{rmgrid}}/{{cellpath}}/scores/meta.json",
        wildcard_constraints:
            rmgrid="|".join(ABL_RM_GRIDS),
            cellpath=r"[^/]+~[^/]+(/[^/]+~[^/]+)*",
        params:
            cfg=score_cfg(),
            inputs=" ".join(f"{g}={OUT}/verify/pools/{g}.jsonl" for g in VERIFY_GENS) + score_reads(calib=False),
            out=f"{ABL_OUT}/{{rmgrid}}/{{cellpath}}/scores",
        log:
            f"{OUT}/logs/ablations/{{rmgrid}}/{{cellpath}}/score_pools.log",
        benchmark:
            f"{OUT}/benchmarks/ablations/{{rmgrid}}/{{cellpath}}/score_pools.tsv"
        threads: res("score_pool")["threads"]
        resources:
            **resources_of("score_pool"),
        shell:
            "{PY} -m pipeline.score_pool --cfg {params.cfg} --rm {input.model:q} --inputs {params.inputs} "
            "--out-dir {params.out:q} --threads {threads} > {log:q} 2>&1"


if "implicit_prm" in ABL:
    IMP = abl_space("implicit_prm")
    IMP_DIR = f"{ABL_OUT}/implicit_prm/{IMP.wildcard_pattern}"

    rule ablation_implicit_prm:
        """One implicit-PRM cell: a loss and beta, trained on a subsample (responses per
        instruction x share of instructions) of the seed rollouts every cell shares."""
        input:
            labels=f"{RM_TRAIN_ROLLOUTS}.jsonl",
            cost=f"{RM_TRAIN_ROLLOUTS}.summary.json",
            heldout=RM_HELDOUT,
            policy=policy_input(RM["init_policy"]),
        output:
            model=directory(f"{IMP_DIR}/model"),
            metrics=f"{IMP_DIR}/metrics.json",
        wildcard_constraints:
            **abl_constraints(IMP),
        params:
            cfg=lambda wc: abl_rm_cfg(implicit_beta=float(IMP.instance(wc)["beta"])),
            policy=policy_dir(RM["init_policy"]),
            out=IMP_DIR,
        log:
            f"{OUT}/logs/ablations/implicit_prm/{IMP.wildcard_pattern}.log",
        benchmark:
            f"{OUT}/benchmarks/ablations/implicit_prm/{IMP.wildcard_pattern}.tsv"
        threads: res("train_rm")["threads"]
        resources:
            **resources_of("train_rm"),
        shell:
            launcher("train_rm") + " pipeline.train_rm --cfg {params.cfg} --kind implicit --loss {wildcards.loss} "
            "--responses-per-instruction {wildcards.responses_per_instruction} "
            "--instruction-frac {wildcards.instruction_frac} --labels {input.labels:q} --policy {params.policy:q} "
            "--heldout {input.heldout:q} --data-cost {input.cost:q} --out {params.out:q} --threads {threads} > {log:q} 2>&1"


if "factors" in ABL:
    FAC = abl_space("factors")
    FAC_DIR = f"{ABL_OUT}/factors/{FAC.wildcard_pattern}"
    FAC_CFG = ABL["factors"]

    def fac_rollouts(wc):
        return f"{OUT}/rollouts/{wc.data_policy}/{MC['split']}"

    def fac_mc(wc):
        """The MC labels of the cell's rollouts, for a step-label cell."""
        return [f"{OUT}/mc/{wc.data_policy}/{MC['split']}.jsonl"] if FAC.instance(wc)["step_labels"] else []

    def fac_flags(wc):
        cell = FAC.instance(wc)
        flags = ["--dedup"] if cell["dedup"] else []
        if cell["step_labels"]:
            mc = f"{OUT}/mc/{wc.data_policy}/{MC['split']}"
            flags += [f"--step-labels {mc}.jsonl", f"--step-labels-cost {mc}.summary.json",
                      f"--prm-label {FAC_CFG['step_label']}", f"--step-coef {FAC_CFG['step_coef']}"]
        return " ".join(flags)

    rule ablation_factors:
        """One cell of the Implicit PRM paper's factors: responses from another policy, duplicate
        responses removed, MC step labels added. AUROC on the main held-out rollouts."""
        input:
            labels=lambda wc: f"{fac_rollouts(wc)}.jsonl",
            cost=lambda wc: f"{fac_rollouts(wc)}.summary.json",
            steps=fac_mc,
            heldout=RM_HELDOUT,
            policy=policy_input(RM["init_policy"]),
        output:
            model=directory(f"{FAC_DIR}/model"),
            metrics=f"{FAC_DIR}/metrics.json",
        wildcard_constraints:
            **abl_constraints(FAC),
        params:
            cfg=abl_rm_cfg(),
            loss=FAC_CFG["loss"],
            flags=fac_flags,
            policy=policy_dir(RM["init_policy"]),
            out=FAC_DIR,
        log:
            f"{OUT}/logs/ablations/factors/{FAC.wildcard_pattern}.log",
        benchmark:
            f"{OUT}/benchmarks/ablations/factors/{FAC.wildcard_pattern}.tsv"
        threads: res("train_rm")["threads"]
        resources:
            **resources_of("train_rm"),
        shell:
            launcher("train_rm") + " pipeline.train_rm --cfg {params.cfg} --kind implicit --loss {params.loss} {params.flags} "
            "--labels {input.labels:q} --policy {params.policy:q} --heldout {input.heldout:q} --data-cost {input.cost:q} "
            "--out {params.out:q} --threads {threads} > {log:q} 2>&1"


if "mc_label" in ABL:
    MCG = abl_space("mc_label")
    MCL = abl_space("mc_label", ["n_mc", "n_cov"])
    MCG_DIR = f"{ABL_OUT}/mc_label/{MCG.wildcard_pattern}"
    MCL_DIR = f"{ABL_OUT}/mc_label/{MCL.wildcard_pattern}"
    MC_SEEDS = f"{OUT}/rollouts/{RM['data_policy']}/{MC['split']}"  # what the PAV's labels label

    def mc_cell_labels(n_mc, n_cov):
        """Labels of (n_mc, n_cov), without suffix: the main DAG's for its own setting."""
        if (int(n_mc), int(n_cov)) == (int(MC["n_mc"]), int(MC["n_cov"])):
            return RM_MC_LABELS
        return f"{ABL_OUT}/mc_label/n_mc~{n_mc}/n_cov~{n_cov}/labels"

    def mcl_outputs():
        out = {"rows": f"{MCL_DIR}/labels.jsonl", "summary": f"{MCL_DIR}/labels.summary.json"}
        if is_testbed(config["task"]):
            out["agreement"] = f"{MCL_DIR}/labels.agreement.csv"
        return out

    rule ablation_mc_label:
        """MC labels of the shared seed rollouts with a cell's n_mc and n_cov (prover K only
        post-processes them, so the cells of every K share this job)."""
        input:
            rollouts=f"{MC_SEEDS}.jsonl",
            records=f"{OUT}/data/{MC['split']}.jsonl",
            completer=policy_input(MC["completer"]),
        output:
            **mcl_outputs(),
        wildcard_constraints:
            **abl_constraints(MCL),
        params:
            cfg=lambda wc: cfg_json("task", "seed", sampling=sampling_of("mc_label"),
                                    mc_label={**MC, "n_mc": int(wc.n_mc), "n_cov": int(wc.n_cov)}),
            completer=policy_dir(MC["completer"]),
        log:
            f"{OUT}/logs/ablations/mc_label/{MCL.wildcard_pattern}.log",
        benchmark:
            f"{OUT}/benchmarks/ablations/mc_label/{MCL.wildcard_pattern}.tsv"
        threads: res("mc_label")["threads"]
        resources:
            **resources_of("mc_label"),
        shell:
            "{PY} -m pipeline.mc_label --cfg {params.cfg} --rollouts {input.rollouts:q} --records {input.records:q} "
            "--completer {params.completer:q} "
            "--out {output.rows:q} --threads {threads} > {log:q} 2>&1"

    rule ablation_mc_pav:
        """The PAV trained on one cell's MC labels, scored with the cell's Best-of-K prover."""
        input:
            labels=lambda wc: mc_cell_labels(wc.n_mc, wc.n_cov) + ".jsonl",
            cost=lambda wc: [f"{RM_TRAIN_ROLLOUTS}.summary.json", mc_cell_labels(wc.n_mc, wc.n_cov) + ".summary.json"],
            heldout=RM_HELDOUT,
            policy=policy_input(RM["init_policy"]),
        output:
            model=directory(f"{MCG_DIR}/pav/model"),
            metrics=f"{MCG_DIR}/pav/metrics.json",
        wildcard_constraints:
            **abl_constraints(MCG),
        params:
            cfg=lambda wc: abl_rm_cfg(pav_prover_k=int(wc.prover_k)),
            policy=policy_dir(RM["init_policy"]),
            out=f"{MCG_DIR}/pav",
        log:
            f"{OUT}/logs/ablations/mc_label/{MCG.wildcard_pattern}.log",
        benchmark:
            f"{OUT}/benchmarks/ablations/mc_label/{MCG.wildcard_pattern}.tsv"
        threads: res("train_rm")["threads"]
        resources:
            **resources_of("train_rm"),
        shell:
            launcher("train_rm") + " pipeline.train_rm --cfg {params.cfg} --kind pav --prm-label se --labels {input.labels:q} "
            "--policy {params.policy:q} --heldout {input.heldout:q} --data-cost {input.cost:q} --out {params.out:q} "
            "--threads {threads} > {log:q} 2>&1"


ABL_RL_GRIDS = [g for g in RL_GRID_ALGO if g in ABL]
if ABL_RL_GRIDS:
    # one rule for both RL grids: the cell is one wildcard, parsed by the grid's Paramspace
    RL_SPACES = {g: abl_space(g, single_wildcard="cell") for g in ABL_RL_GRIDS}

    def abl_rl_seeds(grid):
        return [int(s) for s in ABL[grid].get("seeds", [0])]

    def abl_rl_cfg(wc):
        """The rl section as the grid's algorithm sees it (rl.smk's rl_view), with the cell's value."""
        algo, axis = RL_GRID_ALGO[wc.rlgrid]
        value = AXIS_TYPES[axis](RL_SPACES[wc.rlgrid].instance(wc)[axis])
        rl = rl_view(algo)
        section, key = {"pav": ("pav", "alpha"), "vineppo": ("vineppo", "k")}[algo]
        rl[section] = {**rl[section], key: value}
        return rl_cfg(algo, rl)

    def abl_rl_rm(wc):
        name = rl_reward_model(config, RL_GRID_ALGO[wc.rlgrid][0])
        return [] if name is None else [f"{OUT}/rm/{name}/model"]

    def abl_rl_rm_arg(wc):
        return " ".join(f"--rm {p}" for p in abl_rl_rm(wc))

    rule ablation_rl:
        """One RL cell (PAV-RL alpha or VinePPO K) and seed, from the base policy every cell shares."""
        input:
            policy=policy_input(config["rl"]["base_policy"]),
            train=f"{OUT}/data/train.jsonl",
            val=f"{OUT}/data/val.jsonl",
            rm=abl_rl_rm,
        output:
            policy=directory(f"{ABL_OUT}/{{rlgrid}}/{{cell}}/s{{seed}}/policy"),
            metrics=f"{ABL_OUT}/{{rlgrid}}/{{cell}}/s{{seed}}/metrics.jsonl",
            summary=f"{ABL_OUT}/{{rlgrid}}/{{cell}}/s{{seed}}/summary.json",
        wildcard_constraints:
            rlgrid="|".join(ABL_RL_GRIDS),
            cell=r"[^/]+",
            seed=r"\d+",
        params:
            cfg=abl_rl_cfg,
            algo=lambda wc: RL_GRID_ALGO[wc.rlgrid][0],
            policy=policy_dir(config["rl"]["base_policy"]),
            data=f"{OUT}/data",
            out=f"{ABL_OUT}/{{rlgrid}}/{{cell}}/s{{seed}}",
            ckpt=f"{OUT}/checkpoints/ablations/{{rlgrid}}/{{cell}}/s{{seed}}",
            rm=abl_rl_rm_arg,
        log:
            f"{OUT}/logs/ablations/{{rlgrid}}/{{cell}}/s{{seed}}.log",
        benchmark:
            f"{OUT}/benchmarks/ablations/{{rlgrid}}/{{cell}}/s{{seed}}.tsv"
        threads: res("rl")["threads"]
        resources:
            **resources_of("rl"),
        shell:
            launcher("rl") + " pipeline.rl --cfg {params.cfg} --algo {params.algo} --seed {wildcards.seed} "
            "--policy {params.policy:q} {params.rm} --data {params.data:q} --out {params.out:q} --ckpt {params.ckpt:q} "
            "--threads {threads} > {log:q} 2>&1"

    rule ablation_rl_evaluate:
        """pass@1 and greedy accuracy of one RL cell's policy, as rule evaluate does for table2."""
        input:
            policy=f"{ABL_OUT}/{{rlgrid}}/{{cell}}/s{{seed}}/policy",
            data=expand(f"{OUT}/data/{{split}}.jsonl", split=config["eval"]["splits"]),
        output:
            f"{ABL_OUT}/{{rlgrid}}/{{cell}}/s{{seed}}/eval.json",
        wildcard_constraints:
            rlgrid="|".join(ABL_RL_GRIDS),
            cell=r"[^/]+",
            seed=r"\d+",
        params:
            cfg=EVAL_CFG,
            data=f"{OUT}/data",
        log:
            f"{OUT}/logs/ablations/{{rlgrid}}/{{cell}}/s{{seed}}_eval.log",
        benchmark:
            f"{OUT}/benchmarks/ablations/{{rlgrid}}/{{cell}}/s{{seed}}_eval.tsv"
        threads: res("evaluate")["threads"]
        resources:
            **resources_of("evaluate"),
        shell:
            "{PY} -m pipeline.evaluate --cfg {params.cfg} --policy {input.policy:q} --seed {wildcards.seed} "
            "--data {params.data:q} --out {output:q} --threads {threads} > {log:q} 2>&1"


def rl_cell_files(grid, path, cell):
    """Run dirs and evals of an RL cell per seed: the main DAG's rl/<algo>/s<seed> for its own setting."""
    algo = RL_GRID_ALGO[grid][0]
    seeds = abl_rl_seeds(grid)
    if is_default_cell(config, grid, cell) and algo in RL_ALGOS:
        return {"runs": [f"{OUT}/rl/{algo}/s{s}" for s in seeds], "evals": [f"{OUT}/eval/{algo}/s{s}.json" for s in seeds]}
    base = f"{ABL_OUT}/{grid}/{path}"
    return {"runs": [f"{base}/s{s}" for s in seeds], "evals": [f"{base}/s{s}/eval.json" for s in seeds]}


def abl_cell_files(grid):
    """{cell, files} per cell of a grid: what pipeline.ablation_table reads."""
    out = []
    for path, cell in abl_cells(grid):
        if grid in ("implicit_prm", "factors"):
            files = {"metrics": rm_cell_metrics(grid, path, cell), "scores": rm_cell_scores(grid, path, cell)}
        elif grid == "mc_label":
            labels = mc_cell_labels(cell["n_mc"], cell["n_cov"])
            pav = (f"{OUT}/rm/pav/metrics.json" if is_default_cell(config, grid, cell)
                   else f"{ABL_OUT}/mc_label/{path}/pav/metrics.json")
            files = {"labels": f"{labels}.jsonl", "label_summary": f"{labels}.summary.json", "pav": pav}
        else:
            files = rl_cell_files(grid, path, cell)
        out.append({"cell": cell, "files": files})
    return out


def abl_table_inputs(wc):
    files = []
    for c in abl_cell_files(wc.grid):
        f = c["files"]
        if wc.grid in RL_GRID_ALGO:
            files += [f"{d}/{name}" for d in f["runs"] for name in ("summary.json", "metrics.jsonl")] + f["evals"]
        elif wc.grid in ABL_RM_GRIDS:
            files += [f["metrics"], f"{f['scores']}/meta.json"] + [f"{f['scores']}/{g}.jsonl" for g in VERIFY_GENS]
        else:
            files += list(f.values())
    if wc.grid in ABL_RM_GRIDS:
        files += [f"{OUT}/verify/pools/{g}.jsonl" for g in VERIFY_GENS]
    return files


if ABL_GRIDS:

    rule ablation_table:
        """One ablation grid's table (one row per cell) and bar plot."""
        input:
            abl_table_inputs,
        output:
            table=report(f"{ABL_OUT}/{{grid}}.csv", category="Ablations"),
            plot=report(f"{ABL_OUT}/{{grid}}.png", category="Ablations"),
        wildcard_constraints:
            grid="|".join(ABL_GRIDS),
        params:
            cells=lambda wc: shlex.quote(json.dumps(abl_cell_files(wc.grid))),
            axes=lambda wc: " ".join(ABLATION_AXES[wc.grid]),
            splits=" ".join(config["eval"]["splits"]),
            # reward-model grids: best-of-N at the largest N of table1, on its pools and subset draws
            bon=lambda wc: (" ".join(["--pools"] + [f"{g}={OUT}/verify/pools/{g}.jsonl" for g in VERIFY_GENS]) +
                            f" --bon-n {max(VERIFY['n_values'])} --bon-subsets {VERIFY['n_subsets']}"
                            f" --seed {config['seed']} --grader {config['task']['grader']}"
                            if wc.grid in ABL_RM_GRIDS else ""),
        log:
            f"{OUT}/logs/ablations/{{grid}}_table.log",
        benchmark:
            f"{OUT}/benchmarks/ablations/{{grid}}_table.tsv"
        threads: res("tables")["threads"]
        resources:
            **resources_of("tables"),
        shell:
            "{PY} -m pipeline.ablation_table --grid {wildcards.grid} --axes {params.axes} --cells {params.cells} "
            "--splits {params.splits} {params.bon} --out {output.table:q} --plot {output.plot:q} > {log:q} 2>&1"
