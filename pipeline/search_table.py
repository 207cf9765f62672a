"""Stage: beam search against best-of-N by compute (results/table3.csv, PAV's search claim).

Best-of-N with the ORM is read off the search policy's sample pool (pipeline.score_pool
scores, averaged over random N-subsets as in table1) at N = 1, 2, 4, ..., pool size; its cost
is N times the pool's mean generated tokens per sample. Each beam search run (a verifier and
a beam width, pipeline.search) gives one (tokens per prompt, accuracy) point. The
compute-efficiency ratio of a beam run is the generated tokens best-of-N needs to reach the
beam's accuracy (interpolated linearly in log tokens between the N points, the first
crossing) divided by the beam's tokens; when best-of-N never reaches it, the ratio is at
least (best-of-N's largest budget / the beam's tokens) and the row says "not reached".
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from .utils import read_json, save_figure, stage_parser, start_stage, write_csv
from .verify import attach_scores, draw_subsets, load_pool, m_best_of_n, subset_accuracy

log = logging.getLogger("pipeline.search_table")


def tokens_to_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """Tokens at which an accuracy curve [(tokens, accuracy)] sorted by tokens first reaches
    `target`, interpolating linearly in log(tokens); None if it never does."""
    if not curve:
        return None
    if curve[0][1] >= target:
        return curve[0][0]
    for (t0, a0), (t1, a1) in zip(curve, curve[1:]):
        if a1 >= target > a0:
            frac = (target - a0) / (a1 - a0)
            return math.exp(math.log(t0) + frac * (math.log(t1) - math.log(t0)))
    return None


def bon_curve(pools: list[dict], key: str, pool_size: int, tokens_per_sample: float, n_subsets: int,
              seed: int) -> list[dict]:
    """Best-of-N accuracy at N = 1, 2, 4, ... (and the pool size) with its token cost."""
    ns, n = [], 1
    while n < pool_size:
        ns.append(n)
        n *= 2
    ns.append(pool_size)
    out = []
    for n in ns:
        mean, std = subset_accuracy(pools, draw_subsets(pool_size, n, n_subsets, len(pools), seed), m_best_of_n(key))
        out.append({"N": n, "accuracy": mean, "std": std, "tokens_per_prompt": n * tokens_per_sample})
    return out


def efficiency(beam_tokens: float, beam_acc: float, curve: list[tuple[float, float]]) -> tuple[float, bool]:
    """(ratio, reached): best-of-N tokens to match the beam / beam tokens."""
    need = tokens_to_reach(curve, beam_acc)
    if need is None:
        return curve[-1][0] / beam_tokens, False
    return need / beam_tokens, True


def plot(bon: list[dict], beams: pd.DataFrame, path: str | Path, policy: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar([b["tokens_per_prompt"] for b in bon], [b["accuracy"] for b in bon], yerr=[b["std"] for b in bon],
                fmt="k--o", ms=3, capsize=2, label="best-of-N (ORM)")
    for b in bon:
        ax.annotate(f"N={b['N']}", (b["tokens_per_prompt"], b["accuracy"]), fontsize=6, xytext=(2, -8),
                    textcoords="offset points")
    for verifier, d in beams.groupby("verifier", sort=False):
        d = d.sort_values("tokens_per_prompt")
        ax.plot(d["tokens_per_prompt"], d["accuracy"], "-s", ms=4, label=f"beam search ({verifier})")
        for _, r in d.iterrows():
            ax.annotate(f"B={r['beam_width']}", (r["tokens_per_prompt"], r["accuracy"]), fontsize=6,
                        xytext=(2, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("generated tokens per prompt")
    ax.set_ylabel("accuracy")
    ax.set_title(f"step-level beam search vs best-of-N ({policy})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def main(argv=None) -> None:
    p = stage_parser(__doc__)
    p.add_argument("--pool", required=True, help="the search policy's pool (pipeline.rollouts rows)")
    p.add_argument("--pool-summary", required=True, help="its .summary.json (generated tokens)")
    p.add_argument("--orm-scores", required=True, help="the ORM's scores of the pool (pipeline.score_pool JSONL)")
    p.add_argument("--search", nargs="+", required=True, help="beam search summary JSONs (pipeline.search)")
    p.add_argument("--out", required=True)
    p.add_argument("--plot", required=True)
    args, cfg = start_stage(p, argv)
    vc = cfg["verify"]
    pools, _ = load_pool(args.pool, cfg["task"])
    attach_scores(pools, args.orm_scores, "orm", ["last"])
    summary = read_json(args.pool_summary)
    pool_size = len(pools[0]["outcome"])
    per_sample = summary["compute"]["generated_tokens"] / (len(pools) * pool_size)
    bon = bon_curve(pools, "orm:last", pool_size, per_sample, int(vc["n_subsets"]), int(cfg["seed"]))
    curve = [(b["tokens_per_prompt"], b["accuracy"]) for b in bon]
    rows = [{"method": f"best-of-{b['N']} (ORM)", "verifier": "orm", "beam_width": None, "N": b["N"],
             "accuracy": b["accuracy"], "std": b["std"], "tokens_per_prompt": b["tokens_per_prompt"],
             "bon_tokens_to_match": None, "efficiency_vs_bon": None, "reached": None} for b in bon]
    beams = []
    for path in args.search:
        s = read_json(path)
        if s["n_prompts"] != len(pools):
            raise SystemExit(f"{path}: {s['n_prompts']} prompts, but the pool has {len(pools)}")
        name = Path(s["verifier"]).parent.name or s["verifier"]
        ratio, reached = efficiency(s["generated_tokens_per_prompt"], s["accuracy"], curve)
        beams.append({"method": f"beam B={s['beam_width']} C={s['n_candidates']} ({name})", "verifier": name,
                      "beam_width": s["beam_width"], "N": None, "accuracy": s["accuracy"], "std": None,
                      "tokens_per_prompt": s["generated_tokens_per_prompt"],
                      "bon_tokens_to_match": ratio * s["generated_tokens_per_prompt"] if reached else None,
                      "efficiency_vs_bon": ratio, "reached": "yes" if reached else "not reached (ratio is a lower bound)"})
    table = pd.DataFrame(rows + beams)
    write_csv(table, args.out)
    plot(bon, pd.DataFrame(beams), args.plot, Path(args.pool).stem)
    log.info("table3:\n%s", table.to_string(index=False))


if __name__ == "__main__":
    main()
