"""Stage: the verdict table (results/claims.csv): one row per headline claim of the seed papers,
measured on this run, with a 95% interval and a verdict.

Every interval is a percentile bootstrap (`claims.n_boot` replicates, seeded) over the units
that vary between reruns:
- RL claims (table 2): prompts of the test split (resampled once per replicate and shared by
  both methods: a paired comparison) and, independently per method, the RL seeds. A shift of the
  starting policy that moves every method alike (another machine's SFT path) cancels in these
  differences, which is why the claims compare methods instead of quoting absolute accuracies.
  Sample-efficiency ratios resample the seeds of each method's validation curves.
- Verifier claims (table 1): prompts (`table1_prompts.csv`: each prompt's best-of-N accuracy,
  averaged over the subset draws), shared by the verifiers compared.
- Data-scaling claims of the Implicit PRM paper (the `implicit_prm` ablation grid's cells, each
  scored on table 1's pools): prompts, shared by the two models compared.
- Search claims (table 3): prompts of the beam searches and of the best-of-N pool.
- Step accuracy against the testbed's truth (table 4): solutions.

Verdicts follow each row's `criterion`: "reproduced" when the whole interval is on the claim's
side of its threshold, "not reproduced" when the whole interval is on the other side, and
"inconclusive" otherwise. Which model stands for a family ("best of its losses", "the MC-PRM")
is chosen on held-out within-prompt AUROC from training, never on the table it is judged on.
"""
from __future__ import annotations

import logging
import math
import random
from pathlib import Path

import pandas as pd

from .registry import is_testbed
from .rl_summary import final_val, iterations_to_target, mean_curve
from .rl_summary import efficiency as iteration_efficiency
from .search_table import efficiency as token_efficiency
from .utils import parse_pairs, read_json, read_jsonl, stage_parser, start_stage, write_csv
from .verify import (attach_scores, best_aggregation, draw_outcomes, draw_subsets, load_pool, m_best_of_n, m_random,
                     prompt_accuracies, score_aggregations)

log = logging.getLogger("pipeline.claims")

COLUMNS = ["claim", "paper", "paper_value", "measure", "ours", "ci_lo", "ci_hi", "criterion", "verdict",
           "compute", "n_seeds", "n_units", "source"]


# ---- statistics (tests/test_claims.py checks them by hand) ----

def percentile(xs: list[float], q: float) -> float:
    """numpy's linear-interpolation percentile, q in [0, 1]; nan for no values."""
    import numpy as np

    return float(np.percentile(xs, 100 * q)) if len(xs) else math.nan


def bootstrap(stat, n_boot: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of `stat(rng)` over `n_boot` replicates; `stat` draws its own
    resample from the `random.Random` it is given."""
    rng = random.Random(seed)
    vals = [stat(rng) for _ in range(n_boot)]
    vals = [v for v in vals if not math.isnan(v)]
    return percentile(vals, 0.025), percentile(vals, 0.975)


def resample(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(n) for _ in range(n)]


def verdict(lo: float, hi: float, threshold: float, higher_is_claim: bool = True) -> str:
    """Reproduced when the interval lies on the claim's side of the threshold (>= for claims of
    "at least"), not reproduced when it lies on the other side, inconclusive otherwise."""
    if math.isnan(lo) or math.isnan(hi):
        return "inconclusive"
    if higher_is_claim:
        return "reproduced" if lo >= threshold else "not reproduced" if hi < threshold else "inconclusive"
    return "reproduced" if hi <= threshold else "not reproduced" if lo > threshold else "inconclusive"


def pass1_matrix(evals: list[dict], split: str) -> list[list[float]]:
    """[seed][prompt] share of correct samples, from evaluate.py JSONs with per_prompt_correct."""
    out = []
    for ev in evals:
        s = ev["splits"][split]
        if "per_prompt_correct" not in s:
            raise ValueError(f"{ev.get('policy')}: evaluation of {split!r} has no per_prompt_correct (rerun evaluate)")
        out.append([c / s["k"] for c in s["per_prompt_correct"]])
    return out


def mean_of(mat: list[list[float]], seeds: list[int], prompts: list[int]) -> float:
    return sum(mat[s][p] for s in seeds for p in prompts) / (len(seeds) * len(prompts))


def paired_draw(a: list[list[float]], b: list[list[float]], rng: random.Random | None = None) -> float:
    """mean(a) - mean(b) over seeds and prompts ([seed][prompt] each); with `rng`, one bootstrap
    draw of it: prompts resampled once for both (paired), each method's seeds on their own."""
    n_p = len(a[0])
    if any(len(row) != n_p for row in a + b):
        raise ValueError("the methods were evaluated on different prompts")
    if rng is None:
        all_p = list(range(n_p))
        return mean_of(a, list(range(len(a))), all_p) - mean_of(b, list(range(len(b))), all_p)
    ps = resample(rng, n_p)
    return mean_of(a, resample(rng, len(a)), ps) - mean_of(b, resample(rng, len(b)), ps)


def paired_difference(a: list[list[float]], b: list[list[float]], n_boot: int, seed: int
                      ) -> tuple[float, float, float]:
    """mean(a) - mean(b) over seeds and prompts, with its interval (`paired_draw`)."""
    point = paired_draw(a, b)
    return (point, *bootstrap(lambda rng: paired_draw(a, b, rng), n_boot, seed))


def efficiency_ratio(runs: list[list[dict]], ref_runs: list[list[dict]]) -> float:
    """The reference's iterations to reach its own final validation pass@1 over this method's
    (table 2's efficiency_vs_ref); never reaching it counts as 0, below any claimed ratio."""
    target = final_val(ref_runs)
    eff = iteration_efficiency(iterations_to_target(mean_curve(ref_runs), target),
                               iterations_to_target(mean_curve(runs), target))
    return 0.0 if isinstance(eff, str) else float(eff)


def efficiency_interval(runs, ref_runs, n_boot: int, seed: int) -> tuple[float, float, float]:
    point = efficiency_ratio(runs, ref_runs)

    def stat(rng):
        return efficiency_ratio([runs[i] for i in resample(rng, len(runs))],
                                [ref_runs[i] for i in resample(rng, len(ref_runs))])
    return (point, *bootstrap(stat, n_boot, seed))


def curve_gap(runs_a, runs_b) -> float:
    """Mean over the common validation iterations of the mean-curve difference a - b: accuracy
    per iteration, the whole curve rather than its end."""
    ca = {p.iteration: p.val for p in mean_curve(runs_a)}
    cb = {p.iteration: p.val for p in mean_curve(runs_b)}
    common = sorted(set(ca) & set(cb) - {0})  # iteration 0 is the shared starting policy
    return sum(ca[i] - cb[i] for i in common) / len(common) if common else math.nan


def curve_gap_interval(runs_a, runs_b, n_boot: int, seed: int) -> tuple[float, float, float]:
    def stat(rng):
        return curve_gap([runs_a[i] for i in resample(rng, len(runs_a))], [runs_b[i] for i in resample(rng, len(runs_b))])
    return (curve_gap(runs_a, runs_b), *bootstrap(stat, n_boot, seed))


def prompt_difference(a: list[float], b: list[float], n_boot: int, seed: int) -> tuple[float, float, float]:
    """Paired mean difference over prompts (index-aligned), with its bootstrap interval."""
    n = len(a)

    def stat(rng):
        idx = resample(rng, n)
        return sum(a[i] - b[i] for i in idx) / n
    return (sum(x - y for x, y in zip(a, b)) / n, *bootstrap(stat, n_boot, seed))


def step_auroc_interval(scores: list[list[float]], truths: list[list[int]], n_boot: int, seed: int
                        ) -> tuple[float, float, float]:
    """Pooled step AUROC against the true prefix correctness, solutions resampled. Ranks are
    computed once; a resample only reweights the steps by how often their solution was drawn
    (Mann-Whitney with weights, ties counted 1/2), so thousands of solutions stay cheap."""
    import numpy as np

    flat = np.array([x for s in scores for x in s], dtype=np.float64)
    truth = np.array([x for t in truths for x in t], dtype=np.int64)
    owner = np.repeat(np.arange(len(scores)), [len(s) for s in scores])
    _, group = np.unique(flat, return_inverse=True)  # tie groups in increasing score order
    n_groups = int(group.max()) + 1 if len(group) else 0

    def weighted(w_solution):
        w = w_solution[owner]
        pos = np.bincount(group, weights=w * truth, minlength=n_groups)
        neg = np.bincount(group, weights=w * (1 - truth), minlength=n_groups)
        if pos.sum() == 0 or neg.sum() == 0:
            return math.nan
        below = np.cumsum(neg) - neg
        return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))

    point = weighted(np.ones(len(scores)))
    rng = np.random.default_rng(seed)
    vals = [weighted(np.bincount(rng.integers(0, len(scores), len(scores)), minlength=len(scores)).astype(np.float64))
            for _ in range(n_boot)]
    vals = [v for v in vals if not math.isnan(v)]
    return point, percentile(vals, 0.025), percentile(vals, 0.975)


# ---- the rows ----

def row(claim, paper, paper_value, measure, est, criterion, threshold, higher=True, **kw) -> dict:
    point, lo, hi = est
    return {"claim": claim, "paper": paper, "paper_value": paper_value, "measure": measure, "ours": point,
            "ci_lo": lo, "ci_hi": hi, "criterion": criterion, "verdict": verdict(lo, hi, threshold, higher), **kw}


# (method, against, measure kind, claim, paper, paper's number, criterion, threshold)
RL_CLAIMS = [
    ("prime", "rloo", "efficiency", "PRIME is more sample-efficient than outcome-only RLOO", "PRIME", "2.5x",
     ">= 1.5x", 1.5),
    ("prime", "rloo", "accuracy", "PRIME is more accurate than RLOO", "PRIME", "+6.9 points", "> 0", 0.0),
    ("prime", "prime_frozen", "accuracy", "PRIME's online PRM beats a frozen one", "PRIME", "online > offline",
     "> 0", 0.0),
    ("pav", "rloo", "efficiency", "PAV-RL is more sample-efficient than outcome-only RL", "PAV", "5-6x", "> 1x",
     1.0 + 1e-9),
    ("pav", "rloo", "accuracy", "PAV-RL is more accurate than outcome-only RL", "PAV", ">6 points", "> 0", 0.0),
    ("vineppo", "ppo", "curve", "VinePPO beats PPO (value network) in accuracy per iteration", "VinePPO",
     "+3.2 to +4.9 points", "> 0", 0.0),
    ("vineppo", "ppo", "accuracy", "VinePPO is more accurate than PPO", "VinePPO", "+3.2 to +4.9 points", "> 0", 0.0),
    ("jepo", "rloo", "accuracy", "JEPO (no verifier) is within a few points of verifier RL", "JEPO",
     "matches RL on MATH", ">= -0.05", -0.05),
]


def rl_claims(evals: dict[str, list[dict]], metrics: dict[str, list[list[dict]]], split: str, n_boot: int,
              seed: int) -> list[dict]:
    """The RL rows of RL_CLAIMS whose two methods were run: test-split accuracy differences
    (prompts paired, seeds per method), sample-efficiency ratios and validation-curve gaps (seeds)."""
    out = []
    mats = {m: pass1_matrix(evs, split) for m, evs in evals.items() if m != "base"}
    names = {"rloo": "RLOO", "ppo": "PPO", "prime_frozen": "PRIME frozen", "prime": "PRIME", "pav": "PAV-RL",
             "vineppo": "VinePPO", "jepo": "JEPO"}
    for a, b, kind, claim, paper, value, criterion, threshold in RL_CLAIMS:
        if not all(m in mats and m in metrics for m in (a, b)):
            continue
        if kind == "accuracy":
            measure = f"{split} pass@1, {names[a]} - {names[b]}"
            est, units = paired_difference(mats[a], mats[b], n_boot, seed), len(mats[a][0])
        elif kind == "efficiency":
            measure = f"{names[b]}'s iterations to its final val pass@1 / {names[a]}'s"
            est, units = efficiency_interval(metrics[a], metrics[b], n_boot, seed), len(metrics[a])
        else:
            measure = f"mean val pass@1 gap over the validation curve, {names[a]} - {names[b]}"
            est, units = curve_gap_interval(metrics[a], metrics[b], n_boot, seed), len(metrics[a])
        out.append(row(claim, paper, value, measure, est, criterion, threshold,
                       n_seeds=f"{len(evals[a])}/{len(evals[b])}", n_units=units, source="table2"))
    return out


def family_pick(rms: dict[str, dict], kinds: tuple[str, ...], prefix: str = "") -> str | None:
    """The reward model of a family with the highest held-out within-prompt AUROC (its best
    aggregation's), so the choice is never made on the table it is judged on."""
    best, key = None, -1.0
    for name, m in rms.items():
        if m["kind"] in kinds and name.startswith(prefix):
            v = max((x for k, x in m.items() if k.startswith("within_prompt_auroc_") and x is not None), default=-1.0)
            if v > key:
                best, key = name, v
    return best


def best_row_name(methods, rm: str) -> str | None:
    return next((m for m in methods if m.startswith(f"{rm} (best: ")), None)


def per_prompt(prompts: pd.DataFrame, method: str, gens=None, ns=None) -> list[float]:
    """Each prompt's accuracy of one table-1 method, averaged over the chosen generators and N."""
    d = prompts[prompts["method"] == method]
    if gens is not None:
        d = d[d["generator"].isin(gens)]
    if ns is not None:
        d = d[d["N"].isin(ns)]
    return list(d.groupby("prompt", sort=True)["accuracy"].mean())


def verifier_claims(prompts: pd.DataFrame, rms: dict[str, dict], generator: str, n_boot: int, seed: int) -> list[dict]:
    out = []
    methods = list(dict.fromkeys(prompts["method"]))
    implicit, mc = family_pick(rms, ("implicit",)), family_pick(rms, ("prm",))
    if implicit and mc:
        a, b = best_row_name(methods, implicit), best_row_name(methods, mc)
        ratio = rms[mc]["total_flops"] / rms[implicit]["total_flops"] if rms[implicit]["total_flops"] else math.inf
        est = prompt_difference(per_prompt(prompts, a), per_prompt(prompts, b), n_boot, seed)
        r = row("Implicit PRM (best of its losses) at least matches the Math-Shepherd MC-PRM", "Implicit PRM",
                "+0.6 to +2.6 points at 38.8x less compute", f"best-of-N accuracy over all generators and N, {a} - {b}",
                est, ">= -0.02 and MC-PRM compute >= 10x", -0.02, compute=f"MC-PRM / implicit FLOPs = {ratio:.1f}x",
                n_units=len(per_prompt(prompts, a)), source="table1")
        if ratio < 10:
            r["verdict"] = "not reproduced"  # the compute half of the claim fails whatever the accuracy says
        out.append(r)
    n_max = int(prompts["N"].max())
    baseline = f"loglik_{generator}"
    base_row = best_row_name(methods, baseline)
    if base_row is not None:
        for kinds, family in ((("orm",), "ORM"), (("prm",), "MC-PRM"), (("pav",), "PAV"), (("implicit",), "implicit PRM")):
            rm = family_pick(rms, kinds)
            if rm is None:
                continue
            a = best_row_name(methods, rm)
            est = prompt_difference(per_prompt(prompts, a, [generator], [n_max]),
                                    per_prompt(prompts, base_row, [generator], [n_max]), n_boot, seed)
            out.append(row(f"A trained {family} ranks better than the generator's own likelihood", "(testbed)",
                           "", f"best-of-{n_max} accuracy on the {generator} pool, {a} - {base_row}", est, "> 0", 1e-9,
                           compute=f"{rms[rm]['total_flops']:.3g} FLOPs vs 0",
                           n_units=len(per_prompt(prompts, a, [generator], [n_max])), source="table1"))
    return out


def pool_prompt_accuracy(pools: dict[str, list[dict]], scores_dir: str | Path | None, key: str, metrics: dict | None,
                         n_values: list[int], n_subsets: int, seed: int) -> dict[str, float]:
    """Each prompt's best-of-N accuracy, as table 1 computes it (the model's best aggregation on
    held-out AUROC, the same subset draws), averaged over the generators' pools and N. With
    `scores_dir` None: a random pick (pass@1)."""
    acc: dict[str, list[float]] = {}
    for gen, gen_pools in pools.items():
        if scores_dir is None:
            method = m_random
        else:
            aggs = score_aggregations(bool(read_json(Path(scores_dir) / "meta.json")["scores_are_probabilities"]))
            attach_scores(gen_pools, Path(scores_dir) / f"{gen}.jsonl", key, aggs)
            method = m_best_of_n(f"{key}:{best_aggregation(metrics, aggs)}")
        for n in n_values:
            subsets = draw_subsets(len(gen_pools[0]["outcome"]), n, n_subsets, len(gen_pools), seed)
            for pool, a in zip(gen_pools, prompt_accuracies(draw_outcomes(gen_pools, subsets, method))):
                acc.setdefault(pool["id"], []).append(a)
    return {pid: sum(v) / len(v) for pid, v in sorted(acc.items())}


def data_scaling_claims(one: dict[str, float], many: dict[str, float], untrained: dict[str, float], r: int,
                        n_responses: int, untrained_name: str, n_boot: int, seed: int) -> list[dict]:
    """The Implicit PRM paper's data claims from two cells of its grid trained on the same number
    of responses (`n_responses`): one response for each instruction (`one`) and r for a 1/r
    share of the instructions (`many`); `untrained` is the model CE starts from, scored the same
    way (prompt -> best-of-N accuracy, as `pool_prompt_accuracy` gives)."""
    ids = sorted(set(one) & set(many) & set(untrained))
    a, b, u = [one[i] for i in ids], [many[i] for i in ids], [untrained[i] for i in ids]
    measure = "best-of-N accuracy over all generators and N, "
    return [
        row("CE works with one response per instruction", "Implicit PRM", "CE trains with 1 response / instruction",
            measure + f"CE on 1 response x {n_responses} instructions - {untrained_name} (untrained)",
            prompt_difference(a, u, n_boot, seed), "> 0", 1e-9, n_seeds="1", n_units=len(ids), source="ablations"),
        row("More responses per instruction help more than more instructions", "Implicit PRM",
            "responses / instruction > instructions",
            measure + f"CE on {r} responses x {n_responses // r} instructions - 1 x {n_responses}",
            prompt_difference(b, a, n_boot, seed), "> 0", 1e-9, n_seeds="1", n_units=len(ids), source="ablations"),
    ]


def search_claims(search_rows: dict[tuple[str, int], list[dict]], pools: list[dict], tokens_per_sample: float,
                  n_subsets: int, seed: int, n_boot: int) -> list[dict]:
    """PAV's search claims from the beam-search rows ({(verifier, width): rows}) and the search
    policy's pool with ORM scores attached (`orm:last`): best-of-N at N = 1, 2, 4, ..., pool size
    as in table 3, each prompt's accuracy averaged over the subset draws."""
    out = []
    pool_size = len(pools[0]["outcome"])
    ns, n = [], 1
    while n < pool_size:
        ns.append(n)
        n *= 2
    ns.append(pool_size)
    pool_of = {p["id"]: i for i, p in enumerate(pools)}
    bon = {n: prompt_accuracies(draw_outcomes(pools, draw_subsets(pool_size, n, n_subsets, len(pools), seed),
                                              m_best_of_n("orm:last"))) for n in ns}
    by_id = {key: {r["id"]: r for r in rows} for key, rows in search_rows.items()}
    ids = sorted(set.intersection(*(set(d) for d in by_id.values())))
    verifiers = list(dict.fromkeys(v for v, _ in search_rows))

    def best_ratio(verifier: str, picks: list[str]) -> float:
        """The best efficiency over the verifier's beam widths on the prompts `picks`."""
        curve = [(n * tokens_per_sample, sum(bon[n][pool_of[i]] for i in picks) / len(picks)) for n in ns]
        best = -math.inf
        for (v, _), rows in by_id.items():
            if v == verifier:
                acc = sum(float(rows[i]["outcome"]) for i in picks) / len(picks)
                tok = sum(float(rows[i]["generated_tokens"]) for i in picks) / len(picks)
                best = max(best, token_efficiency(tok, acc, curve)[0])
        return best

    if "pav" in verifiers and ids:
        est = (best_ratio("pav", ids), *bootstrap(lambda rng: best_ratio("pav", [ids[k] for k in resample(rng, len(ids))]),
                                                  n_boot, seed))
        out.append(row("PAV beam search is more compute-efficient than ORM best-of-N", "PAV", "1.5-5x",
                       "best-of-N tokens to match the beam's accuracy / the beam's tokens (best width)", est, ">= 1.5x",
                       1.5, n_units=len(ids), source="table3"))
        q = next((v for v in verifiers if v.startswith("prm")), None)
        if q is not None:
            widths = sorted({w for v, w in search_rows if v == "pav"} & {w for v, w in search_rows if v == q})

            def acc(v):
                return [sum(float(by_id[(v, w)][i]["outcome"]) for w in widths) / len(widths) for i in ids]
            out.append(row("PAV-guided search is more accurate than Q-value (PRM) search", "PAV", "PAV > PQV",
                           f"beam-search accuracy, PAV - {q}, mean over widths {widths}",
                           prompt_difference(acc("pav"), acc(q), n_boot, seed), "> 0", 1e-9, n_units=len(ids),
                           source="table3"))
    return out


def step_claims(pools: dict[str, list[dict]], scores: dict[str, str], n_boot: int, seed: int) -> list[dict]:
    """Each verifier's step AUROC against the testbed's true prefix correctness, over every pool."""
    out = []
    for rm, d in scores.items():
        s, t = [], []
        for gen, gen_pools in pools.items():
            by_key = {(x["id"], x["sample_idx"]): x for x in read_jsonl(Path(d) / f"{gen}.jsonl")}
            for pool in gen_pools:
                for r in pool["rows"]:
                    x = by_key[(pool["id"], r["sample_idx"])]
                    if x["step_scores"] and "first_error" in x:
                        fe = x["first_error"]
                        s.append(x["step_scores"])
                        t.append([int(fe is None or h < fe) for h in range(len(x["step_scores"]))])
        if not s:
            continue
        out.append(row(f"{rm}: step scores separate right from wrong prefixes (ground truth)", "(testbed)", "",
                       "pooled step AUROC against the true prefix correctness", step_auroc_interval(s, t, n_boot, seed),
                       "> 0.5", 0.5 + 1e-9, n_units=len(s), source="table4"))
    return out


def main(argv=None) -> None:
    p = stage_parser(__doc__)
    p.add_argument("--eval", nargs="+", required=True, help="METHOD=eval.json,... per seed (as table2)")
    p.add_argument("--rl", nargs="+", required=True, help="METHOD=rl_dir,... per seed (as table2)")
    p.add_argument("--table1-prompts", required=True, help="verify's per-prompt best-of-N accuracies")
    p.add_argument("--rm-metrics", nargs="+", required=True, help="rm=metrics.json")
    p.add_argument("--pools", nargs="+", required=True, help="generator=pool.jsonl")
    p.add_argument("--scores", nargs="+", required=True, help="rm=scores dir (step claims: testbed)")
    p.add_argument("--search", nargs="*", default=[], help="verifier:width=search rows JSONL")
    p.add_argument("--search-policy", required=True,
                   help="search.policy: the generator whose pool beam search, and the likelihood comparison, use")
    p.add_argument("--scaling", nargs=4, metavar=("METRICS_ONE", "SCORES_ONE", "METRICS_MANY", "SCORES_MANY"),
                   default=None, help="two cells of the implicit_prm grid trained on as many responses: 1 per "
                   "instruction, and r for 1/r of the instructions; each its metrics.json and its scores folder over "
                   "the pools (the data-scaling claims)")
    p.add_argument("--scaling-untrained", default=None,
                   help="the untrained model those cells start from: a name in --scores / --rm-metrics, or "
                        "'random' (pass@1; what an implicit PRM scored with its reference is before training)")
    p.add_argument("--out", required=True)
    args, cfg = start_stage(p, argv)
    task_cfg, vc = cfg["task"], cfg["verify"]
    n_boot, seed = int(cfg["claims"]["n_boot"]), int(cfg["seed"])
    split, generator = cfg["eval"]["splits"][0], args.search_policy  # in-distribution split; the searched pool
    evals = {m: [read_json(x) for x in xs] for m, xs in parse_pairs(args.eval, "--eval").items()}
    metrics = {m: [read_jsonl(Path(d) / "metrics.jsonl") for d in ds] for m, ds in parse_pairs(args.rl, "--rl").items()}
    rows = rl_claims(evals, metrics, split, n_boot, seed)
    rms = {name: read_json(path) for name, path in parse_pairs(args.rm_metrics, "--rm-metrics", single=True).items()}
    prompts = pd.read_csv(args.table1_prompts)
    rows += verifier_claims(prompts, rms, generator, n_boot, seed)
    pool_paths = parse_pairs(args.pools, "--pools", single=True)
    pools = {g: load_pool(path, task_cfg)[0] for g, path in pool_paths.items()}
    scores = parse_pairs(args.scores, "--scores", single=True)
    if args.search:
        search_rows = {}
        for spec in args.search:
            key, _, path = spec.partition("=")
            v, _, w = key.rpartition(":")
            search_rows[(v, int(w))] = read_jsonl(path)
        sp = pools[args.search_policy]
        attach_scores(sp, Path(scores["orm"]) / f"{args.search_policy}.jsonl", "orm", ["last"])
        summary = read_json(Path(pool_paths[args.search_policy]).with_suffix(".summary.json"))
        per_sample = summary["compute"]["generated_tokens"] / (len(sp) * len(sp[0]["outcome"]))
        rows += search_claims(search_rows, sp, per_sample, int(vc["n_subsets"]), seed, n_boot)
    if args.scaling:
        cells = [read_json(m) for m in args.scaling[0::2]]
        ns, n_sub = [int(n) for n in vc["n_values"]], int(vc["n_subsets"])
        acc = [pool_prompt_accuracy(pools, d, f"scaling{i}", m, ns, n_sub, seed)
               for i, (d, m) in enumerate(zip(args.scaling[1::2], cells))]
        base = args.scaling_untrained or "random"
        untrained = (pool_prompt_accuracy(pools, None, base, None, ns, n_sub, seed) if base == "random" else
                     pool_prompt_accuracy(pools, scores[base], base, rms[base], ns, n_sub, seed))
        one, many = (int(c["ablation"]["n_rows"]) for c in cells)
        if one != many:
            raise SystemExit(f"--scaling: the cells trained on {one} and {many} responses; the claim compares equal counts")
        r = int(cells[1]["ablation"]["responses_per_instruction"])
        rows += data_scaling_claims(acc[0], acc[1], untrained, r, one, base, n_boot, seed)
    if is_testbed(task_cfg):
        rows += step_claims(pools, scores, n_boot, seed)
    df = pd.DataFrame(rows, columns=COLUMNS)
    write_csv(df, args.out)
    with pd.option_context("display.width", 250, "display.max_columns", None, "display.max_colwidth", 60):
        log.info("claims:\n%s", df[["claim", "ours", "ci_lo", "ci_hi", "verdict"]].to_string(index=False))


if __name__ == "__main__":
    main()
