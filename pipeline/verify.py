"""Stage: verifier evaluation tables from scored sample pools.

Best-of-N (results/table1.csv, the Implicit PRM paper's Table 1 on our generators): every
test prompt has a pool of M samples from each generator (weak / medium / strong), and every
reward model has scored every step of every sample (pipeline.score_pool). For N in
`verify.n_values`, `n_subsets` random N-subsets are drawn per prompt (the same subsets for
every method: common random numbers), a method picks one answer per subset, and the table
reports the accuracy averaged over subsets (its spread across subset draws in
table1_long.csv). Methods:
- a reward model with an aggregation (min / last / mean / product of step scores): the
  sample with the highest solution score;
- weighted majority voting with a reward model: the answer with the largest sum of
  sigmoid(score) over the samples giving it (for probability-valued scores sigmoid(logit p) = p);
- baselines: random (expected pass@1 of the subset), majority vote, oracle (pass@N);
- untrained likelihood verifiers (`loglik_<policy>`, verify.likelihood_verifiers): a policy's
  mean step log-likelihood and its worst step (family "untrained best-of-N"), the bar every
  trained verifier has to clear.
Each reward model appears with its best aggregation (the one with the highest held-out
within-prompt AUROC in its training metrics, so the choice is not made on this table) and
with min.

Step-level verification (results/table4.csv, testbed only): AUROC of step scores against
the true prefix correctness, and locating the first wrong step ProcessBench-style: the
predicted first error is the first step scoring below a threshold (fit per model on its
scores of the training rollouts, never on the test pools); accuracy on solutions with an
error, on error-free solutions, their harmonic mean (F1), and accuracy on
right-answer-wrong-process solutions, which an outcome label cannot catch. As in ProcessBench's
reference evaluation, an accuracy over an empty class, and the F1 of a set missing either class,
is nan (an empty cell in table4.csv, like every other undefined metric there); the threshold fit
refuses a calibration set with one class. table4 has one row per reward model and no mean over
rows; a mean of F1 values would have to skip nan cells and say how many it kept.
"""
from __future__ import annotations

import logging
import math
import random
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd

from .grader import extract_answer
from .metrics import auroc
from .registry import REWARD_KINDS
from .rewards import AGGREGATIONS, aggregate
from .utils import parse_pairs, read_json, read_jsonl, save_figure, stage_parser, start_stage, write_csv

log = logging.getLogger("pipeline.verify")

UNTRAINED_KINDS = tuple(k for k, spec in REWARD_KINDS.items() if not spec.trained)
LIKELIHOOD_AGGREGATIONS = ("mean", "min")  # mean step log-likelihood, worst step


# ---- selection rules (tests/test_verify.py checks them by hand) ----

def pick_best(scores: list[float]) -> int:
    """Index of the highest score; the earliest one on ties."""
    best = 0
    for i, s in enumerate(scores):
        if s > scores[best]:
            best = i
    return best


def vote(answers: list[str | None], weights: list[float] | None = None) -> int | None:
    """Index of a representative of the winning answer: the answer with the largest total weight
    (a count when `weights` is None). Samples without an answer do not vote; ties go to the
    answer seen first. None when nobody answered."""
    totals: dict[str, float] = {}
    first: dict[str, int] = {}
    for i, a in enumerate(answers):
        if a is None:
            continue
        totals[a] = totals.get(a, 0.0) + (1.0 if weights is None else float(weights[i]))
        first.setdefault(a, i)
    if not totals:
        return None
    winner = max(totals, key=lambda a: (totals[a], -first[a]))
    return first[winner]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def vote_weight(score: float, is_probability: bool) -> float:
    """sigmoid of the model's logit: a probability-valued score already is one. A sample
    without steps (score -inf) weighs 0."""
    if score == -math.inf:
        return 0.0
    return float(score) if is_probability else sigmoid(float(score))


def draw_subsets(pool_size: int, n: int, n_subsets: int, n_prompts: int, seed: int) -> list[list[list[int]]]:
    """subsets[d][p]: the indices of draw d for prompt p (sorted). N = pool size has one draw."""
    if n > pool_size:
        raise ValueError(f"N = {n} exceeds the pool of {pool_size} samples per prompt")
    if n == pool_size:
        return [[list(range(pool_size)) for _ in range(n_prompts)]]
    rng = random.Random(f"subsets/{seed}/{pool_size}/{n}")
    return [[sorted(rng.sample(range(pool_size), n)) for _ in range(n_prompts)] for _ in range(n_subsets)]


def draw_outcomes(pools: list[dict], subsets: list[list[list[int]]], method) -> list[list[float]]:
    """outcomes[d][p]: the outcome (0/1, or an expectation) of `method(pool, idx)`'s pick for
    prompt p in draw d."""
    return [[method(pool, idx) for pool, idx in zip(pools, draw)] for draw in subsets]


def accuracy_over_draws(outcomes: list[list[float]]) -> tuple[float, float]:
    """Mean and standard deviation over draws of the accuracy over prompts."""
    accs = [sum(row) / len(row) for row in outcomes]
    mean = sum(accs) / len(accs)
    std = (sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) ** 0.5 if len(accs) > 1 else 0.0
    return mean, std


def prompt_accuracies(outcomes: list[list[float]]) -> list[float]:
    """Each prompt's accuracy averaged over the draws (what a bootstrap over prompts resamples)."""
    return [sum(row[p] for row in outcomes) / len(outcomes) for p in range(len(outcomes[0]))]


def subset_accuracy(pools: list[dict], subsets: list[list[list[int]]], method) -> tuple[float, float]:
    """Mean and standard deviation over draws of the accuracy over prompts. `method(pool, idx)`
    returns the outcome (0/1, or an expectation) of its pick among the pool's samples idx."""
    return accuracy_over_draws(draw_outcomes(pools, subsets, method))


def m_random(pool, idx):
    return sum(pool["outcome"][i] for i in idx) / len(idx)


def m_oracle(pool, idx):
    return float(max(pool["outcome"][i] for i in idx))


def m_majority(pool, idx):
    w = vote([pool["answer"][i] for i in idx])
    return 0.0 if w is None else float(pool["outcome"][idx[w]])


def m_best_of_n(key: str):
    def method(pool, idx):
        return float(pool["outcome"][idx[pick_best([pool[key][i] for i in idx])]])
    return method


def m_weighted_vote(key: str, is_probability: bool):
    def method(pool, idx):
        w = vote([pool["answer"][i] for i in idx], [vote_weight(pool[key][i], is_probability) for i in idx])
        return 0.0 if w is None else float(pool["outcome"][idx[w]])
    return method


# ---- step-level verification against ground truth ----

def predicted_first_error(step_scores: list[float], threshold: float) -> int | None:
    """The first step scoring below the threshold (None: the verifier finds no error)."""
    return next((h for h, s in enumerate(step_scores) if s < threshold), None)


def localisation(pred: list[int | None], truth: list[int | None]) -> dict:
    """ProcessBench's metric: accuracy of the exact first-error step on solutions with an error,
    accuracy of "no error" on error-free ones, and their harmonic mean (F1).

    A class without samples has accuracy nan, and then F1 is nan too (ProcessBench's reference
    evaluation gives nan there; 0.0 would read as a verifier that is always wrong). With both
    classes present and both accuracies 0, F1 is 0 (the harmonic mean's limit)."""
    err = [p == t for p, t in zip(pred, truth) if t is not None]
    ok = [p is None for p, t in zip(pred, truth) if t is None]
    acc_err = sum(err) / len(err) if err else float("nan")
    acc_ok = sum(ok) / len(ok) if ok else float("nan")
    if not err or not ok:
        f1 = float("nan")
    else:
        f1 = 2 * acc_err * acc_ok / (acc_err + acc_ok) if (acc_err + acc_ok) > 0 else 0.0
    return {"acc_error": acc_err, "acc_correct": acc_ok, "f1": f1, "n_error": len(err), "n_correct": len(ok)}


def fit_threshold(step_scores: list[list[float]], truth: list[int | None], source: str | None = None) -> float:
    """The threshold maximising localisation F1 on (calibration) solutions: candidates are the
    midpoints between consecutive distinct step scores, plus one below and one above them all.

    F1 needs both classes: a set without solutions with an error, or without error-free ones,
    raises ValueError (naming `source`, the calibration file, when given) instead of returning
    an arbitrary candidate."""
    where = f" ({source})" if source else ""
    n_err = sum(t is not None for t in truth)
    n_ok = len(truth) - n_err
    if n_err == 0 or n_ok == 0:
        missing = ("error-free solutions (first_error null)" if n_ok == 0
                   else "solutions with an error (first_error set)")
        raise ValueError(f"cannot fit a first-error threshold on the calibration set{where}: it has no {missing}; "
                         f"it has {n_err} solutions with an error and {n_ok} error-free ones "
                         f"(with steps), and localisation F1 is undefined without both classes")
    values = sorted({s for ss in step_scores for s in ss})
    if not values:
        raise ValueError(f"no step scores to fit a threshold on{where}")
    cands = [values[0] - 1.0] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [values[-1] + 1.0]
    if len(cands) > 400:  # quantiles are plenty; keeps the fit linear in the data
        cands = [cands[int(i * (len(cands) - 1) / 399)] for i in range(400)]
    best, best_f1 = cands[0], -1.0
    for c in cands:
        f1 = localisation([predicted_first_error(s, c) for s in step_scores], truth)["f1"]
        if f1 > best_f1:
            best, best_f1 = c, f1
    return best


def step_verification(step_scores: list[list[float]], rows: list[dict], threshold: float) -> dict:
    """Table-4 metrics of one verifier on rows carrying the testbed's `first_error`."""
    truth = [r["first_error"] for r in rows]
    flat_s, flat_t = [], []
    for ss, fe in zip(step_scores, truth):
        flat_s += ss
        flat_t += [int(fe is None or h < fe) for h in range(len(ss))]
    pred = [predicted_first_error(ss, threshold) for ss in step_scores]
    out = {"step_auroc": auroc(flat_s, flat_t) if 0 < sum(flat_t) < len(flat_t) else float("nan"),
           "threshold": threshold, **localisation(pred, truth)}
    rawp = [p == r["first_error"] for p, r in zip(pred, rows) if r["outcome"] and r["first_error"] is not None]
    out["acc_right_answer_wrong_process"] = sum(rawp) / len(rawp) if rawp else float("nan")
    out["n_right_answer_wrong_process"] = len(rawp)
    return out


# ---- the stage ----

def load_pool(path: str | Path, task_cfg: dict) -> tuple[list[dict], list[tuple[str, int]]]:
    """Per prompt {id, outcome[], answer[]} in sample order, and the (id, sample_idx) order."""
    by_id: dict[str, list[dict]] = defaultdict(list)
    for r in read_jsonl(path):
        by_id[r["id"]].append(r)
    pools, keys = [], []
    kind = task_cfg["grader"]
    for pid, rows in by_id.items():
        rows.sort(key=lambda r: r["sample_idx"])
        pools.append({"id": pid, "outcome": [int(r["outcome"]) for r in rows],
                      "answer": [_norm(extract_answer(r["response"], kind)) for r in rows], "rows": rows})
        keys += [(pid, r["sample_idx"]) for r in rows]
    sizes = Counter(len(p["outcome"]) for p in pools)
    if len(sizes) != 1:
        raise ValueError(f"{path}: pools of unequal size {dict(sizes)}")
    return pools, keys


def _norm(answer: str | None) -> str | None:
    """Answers group by their text without spaces (math-verify equivalence is not used for
    grouping: "1/2" and "0.5" vote apart, as in the papers' majority-vote baselines)."""
    return None if answer is None else "".join(answer.split())


def attach_scores(pools: list[dict], scores_path: str | Path, rm: str, aggregations) -> None:
    """Adds, per pool, `<rm>:<agg>` solution scores and `<rm>:steps`."""
    by_key = {(s["id"], s["sample_idx"]): s["step_scores"] for s in read_jsonl(scores_path)}
    for pool in pools:
        steps = []
        for r in pool["rows"]:
            key = (pool["id"], r["sample_idx"])
            if key not in by_key:
                raise ValueError(f"{scores_path}: no scores for sample {key}")
            steps.append(by_key[key])
        pool[f"{rm}:steps"] = steps
        for how in aggregations:
            # a response without steps (empty output) gets the lowest score: it is never picked over one with steps
            pool[f"{rm}:{how}"] = [aggregate(s, how) if s else -math.inf for s in steps]


def best_aggregation(metrics: dict, allowed) -> str:
    """The aggregation with the highest held-out within-prompt AUROC (the ranking best-of-N
    needs), falling back to the pooled AUROC; the first listed on ties."""
    def key(how):
        v = metrics.get(f"within_prompt_auroc_{how}")
        return v if v is not None else metrics.get(f"auroc_{how}", -1.0)
    return max(((key(how), -i, how) for i, how in enumerate(allowed)))[2]


def score_aggregations(is_probability: bool) -> list[str]:
    """The aggregations reported for a reward model (`product` needs probability scores)."""
    return [a for a in AGGREGATIONS if a != "product" or is_probability]


def best_of_n_accuracy(pools: list[dict], scores_path: str | Path, rm: str, metrics: dict, is_probability: bool,
                       n: int, n_subsets: int, seed: int) -> float:
    """Best-of-N accuracy of one reward model on one generator's pools, as table1 reports it:
    its best aggregation by held-out AUROC (`best_aggregation`), mean accuracy over the same
    subset draws. Attaches the scores to `pools` under `rm`."""
    aggs = score_aggregations(is_probability)
    attach_scores(pools, scores_path, rm, aggs)
    subsets = draw_subsets(len(pools[0]["outcome"]), n, n_subsets, len(pools), seed)
    return subset_accuracy(pools, subsets, m_best_of_n(f"{rm}:{best_aggregation(metrics, aggs)}"))[0]


def table1(pools: dict[str, list[dict]], rms: dict[str, dict], n_values: list[int], n_subsets: int,
           seed: int, prompt_rows: list[dict] | None = None) -> pd.DataFrame:
    """Long table: one row per (method, generator, N) with mean / std accuracy over subset draws.
    `rms[name]` = {"aggs": aggregations to report, "best": its best one, "prob": probability scores?,
    "flops": total FLOPs, "recipe": what it was built from (optional)}. `prompt_rows`, if given, receives each prompt's accuracy (mean over the
    draws) per (method, generator, N): the unit a bootstrap over prompts resamples."""
    out = []
    for gen, gen_pools in pools.items():
        pool_size = len(gen_pools[0]["outcome"])
        for n in n_values:
            subsets = draw_subsets(pool_size, n, n_subsets, len(gen_pools), seed)
            methods = [("random (pass@1)", "baseline", None, m_random), ("majority vote", "baseline", None, m_majority),
                       ("oracle (pass@N)", "baseline", None, m_oracle)]
            for rm, info in rms.items():
                prefix = "untrained " if info.get("untrained") else ""
                for how in info["aggs"]:
                    tag = f"best: {how}" if how == info["best"] else how
                    methods.append((f"{rm} ({tag})", prefix + "best-of-N", rm, m_best_of_n(f"{rm}:{how}")))
                methods.append((f"{rm} weighted vote ({info['best']})", prefix + "weighted vote", rm,
                                m_weighted_vote(f"{rm}:{info['best']}", info["prob"])))
            for name, family, rm, method in methods:
                outcomes = draw_outcomes(gen_pools, subsets, method)
                mean, std = accuracy_over_draws(outcomes)
                if prompt_rows is not None:
                    prompt_rows.extend({"method": name, "generator": gen, "N": n, "prompt": pool["id"], "accuracy": a}
                                       for pool, a in zip(gen_pools, prompt_accuracies(outcomes)))
                out.append({"method": name, "family": family, "rm": rm, "generator": gen, "N": n,
                            "accuracy": mean, "std": std, "n_draws": len(subsets),
                            "rm_flops": rms[rm]["flops"] if rm else 0.0,
                            "recipe": rms[rm].get("recipe", "") if rm else ""})
    return pd.DataFrame(out)


def wide_table1(long: pd.DataFrame) -> pd.DataFrame:
    """Rows: methods; columns: generator@N accuracy, avg, spread (mean std over cells), FLOPs."""
    long = long.assign(cell=long["generator"] + "@" + long["N"].astype(str))
    cells = list(dict.fromkeys(long["cell"]))
    acc = long.pivot_table(index="method", columns="cell", values="accuracy", sort=False)[cells]
    wide = acc.copy()
    wide["avg"] = acc.mean(axis=1)
    wide["spread"] = long.pivot_table(index="method", columns="cell", values="std", sort=False)[cells].mean(axis=1)
    meta = long.drop_duplicates("method").set_index("method")
    wide["family"] = meta["family"]
    wide["rm_flops"] = meta["rm_flops"]
    if "recipe" in meta:  # what each verifier was built from (train_rm.recipe_summary)
        wide["recipe"] = meta["recipe"]
    return wide.reset_index()


def plot_table1(long: pd.DataFrame, path: str | Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gens = list(dict.fromkeys(long["generator"]))
    fig, axes = plt.subplots(1, len(gens), figsize=(5 * len(gens), 4), sharey=True, squeeze=False)
    shown = long[(long["family"] == "baseline") | long["method"].str.contains(r"\(best: ")]
    for ax, gen in zip(axes[0], gens):
        for method, d in shown[shown["generator"] == gen].groupby("method", sort=False):
            style = {"baseline": "--", "untrained best-of-N": ":"}.get(d["family"].iloc[0], "-")
            ax.errorbar(d["N"], d["accuracy"], yerr=d["std"], fmt=style + "o", ms=3, capsize=2, label=method)
        ax.set_xscale("log", base=2)
        ax.set_title(f"generator: {gen}")
        ax.set_xlabel("N (samples per prompt)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("best-of-N accuracy")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    save_figure(fig, path)


def table4(pools: dict[str, list[dict]], calib: dict[str, list[dict]], rms: list[str],
           calib_paths: dict[str, str] | None = None) -> pd.DataFrame:
    """Per reward model: step AUROC and first-error localisation on all generators' pools,
    threshold fit on the calibration rows (`calib[rm]`: rows with `step_scores`, `first_error`;
    `calib_paths[rm]`, their file, names it in errors). Metrics undefined on these pools (a
    class absent) are nan."""
    out = []
    for rm in rms:
        cal = [r for r in calib[rm] if r["step_scores"]]
        thr = fit_threshold([r["step_scores"] for r in cal], [r["first_error"] for r in cal],
                            source=(calib_paths or {}).get(rm))
        rows, scores = [], []
        for gen_pools in pools.values():
            for pool in gen_pools:
                for r, s in zip(pool["rows"], pool[f"{rm}:steps"]):
                    if s:
                        rows.append(r)
                        scores.append(s)
        out.append({"rm": rm, **step_verification(scores, rows, thr), "n_solutions": len(rows)})
    return pd.DataFrame(out)


def main(argv=None) -> None:
    p = stage_parser(__doc__)
    p.add_argument("--pools", nargs="+", required=True, help="generator=pool.jsonl (pipeline.rollouts rows)")
    p.add_argument("--scores", nargs="+", required=True, help="rm=scores dir (pipeline.score_pool)")
    p.add_argument("--rm-metrics", nargs="+", required=True, help="rm=metrics.json (pipeline.train_rm)")
    p.add_argument("--table1", required=True)
    p.add_argument("--plot", required=True)
    p.add_argument("--table4", help="step-verification table (testbed: rows carry first_error)")
    p.add_argument("--calib", default="calib", help="name of the calibration rows in each scores dir")
    args, cfg = start_stage(p, argv)
    vc, task_cfg = cfg["verify"], cfg["task"]
    pools = {g: load_pool(path, task_cfg)[0] for g, path in parse_pairs(args.pools, "--pools", single=True).items()}
    scores = parse_pairs(args.scores, "--scores", single=True)
    metrics = parse_pairs(args.rm_metrics, "--rm-metrics", single=True)
    rms = {}
    for rm, d in scores.items():
        meta = read_json(Path(d) / "meta.json")
        untrained = meta["kind"] in UNTRAINED_KINDS
        # a likelihood baseline is reported by its mean and its worst step, whichever ranks better
        aggs = list(LIKELIHOOD_AGGREGATIONS) if untrained else score_aggregations(meta["scores_are_probabilities"])
        m = read_json(metrics[rm])
        best = best_aggregation(m, aggs)
        for gen, gen_pools in pools.items():
            attach_scores(gen_pools, Path(d) / f"{gen}.jsonl", rm, aggs)
        rms[rm] = {"aggs": [best] + [a for a in (aggs if untrained else ["min"]) if a != best], "best": best,
                   "prob": meta["scores_are_probabilities"], "flops": float(m["total_flops"]), "untrained": untrained,
                   "recipe": m.get("recipe", "")}
        log.info("%s: best aggregation %s (held-out AUROC)", rm, best)
    prompt_rows: list[dict] = []
    long = table1(pools, rms, [int(n) for n in vc["n_values"]], int(vc["n_subsets"]), int(cfg["seed"]), prompt_rows)
    wide = wide_table1(long)
    write_csv(wide, args.table1)
    write_csv(long, Path(args.table1).with_name(Path(args.table1).stem + "_long.csv"))
    write_csv(pd.DataFrame(prompt_rows), Path(args.table1).with_name(Path(args.table1).stem + "_prompts.csv"))
    plot_table1(long, args.plot)
    log.info("table1:\n%s", wide.to_string(index=False))
    if args.table4:
        calib, calib_paths = {}, {}
        for rm, d in scores.items():
            calib_paths[rm] = str(Path(d) / f"{args.calib}.jsonl")
            rows = read_jsonl(calib_paths[rm])
            if rows and "first_error" not in rows[0]:
                raise SystemExit(f"{d}/{args.calib}.jsonl: no first_error; table4 needs the testbed")
            calib[rm] = rows
        t4 = table4(pools, calib, list(scores), calib_paths)
        # nan (an undefined metric: step AUROC or F1 with one class, no right-answer-wrong-process
        # solutions) is written as an empty cell, pandas' default na_rep, for every column alike
        write_csv(t4, args.table4)
        log.info("table4:\n%s", t4.to_string(index=False))


if __name__ == "__main__":
    main()
