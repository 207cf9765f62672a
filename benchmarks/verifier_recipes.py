"""Verifier recipes side by side on one tiny run's artifacts (issue 14): which way of building a
verifier ranks one prompt's samples, against the untrained likelihood baselines.

For each recipe the real stage trains the model (`python -m pipeline.train_rm`, the tiny preset's
rm section) on the run's own labels; then, in this process, the model scores the held-out
rollouts (within-prompt AUROC, the ranking best-of-N needs) and the medium generator's verify
pool (best-of-N accuracy, the same subset draws as table 1), with the aggregation chosen on the
held-out AUROC as table 1 chooses it.

    python benchmarks/verifier_recipes.py RESULTS_DIR --out /tmp/recipes [--only NAME ...]
    python benchmarks/verifier_recipes.py results/countdown --preset config/countdown.yaml --out /tmp/cd_recipes

RESULTS_DIR is a finished run of the preset (`snakemake -c2 results/table1.csv`, tiny by
default): its SFT tiers, seed rollouts, MC labels, verify pools and loglik baselines are read,
never written.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from pipeline.config import load_preset
from pipeline.metrics import within_group_auroc
from pipeline.rewards import AGGREGATIONS, aggregate, load_reward_model, scoring_examples
from pipeline.utils import read_jsonl
from pipeline.verify import attach_scores, draw_subsets, load_pool, m_best_of_n, subset_accuracy

# name -> (kind, init tier, label file key, loss, prm label, score with the reference[, rm overrides])
# label file keys: rollouts (the run's seed rollouts), mc (their MC labels), rollouts_<k>x / mc_<k>x
# (made on first use by the real rollouts / mc_label stages: k times tiny's rollouts.n_prompts /
# mc_label.n_prompts, whatever the preset sets, so k means the same on every preset)
RECIPES = {
    "orm @ medium": ("orm", "medium", "rollouts", "ce", "se", True),
    "orm @ strong (default)": ("orm", "strong", "rollouts", "ce", "se", True),
    "orm @ strong, 8x rollouts": ("orm", "strong", "rollouts_8x", "ce", "se", True),
    "orm @ strong, 32x rollouts": ("orm", "strong", "rollouts_32x", "ce", "se", True),
    "orm @ strong, lr 3e-5 x 8 epochs": ("orm", "strong", "rollouts", "ce", "se", True, {"lr": 3e-5, "epochs": 8}),
    "prm_he @ strong (default)": ("prm", "strong", "mc", "ce", "he", True),
    "prm_he @ strong, MC labels made again": ("prm", "strong", "mc_1x", "ce", "he", True),
    "prm_se @ strong, MC labels made again": ("prm", "strong", "mc_1x", "ce", "se", True),
    "pav @ strong, MC labels made again": ("pav", "strong", "mc_1x", "ce", "se", True),
    "prm_he @ strong, 8x MC labels": ("prm", "strong", "mc_8x", "ce", "he", True),
    "prm_se @ strong, 8x MC labels": ("prm", "strong", "mc_8x", "ce", "se", True),
    "pav @ strong, 8x MC labels": ("pav", "strong", "mc_8x", "ce", "se", True),
    "prm_he @ strong, 32x MC labels": ("prm", "strong", "mc_32x", "ce", "he", True),
    "prm_se @ strong, 32x MC labels": ("prm", "strong", "mc_32x", "ce", "se", True),
    "pav @ strong, 32x MC labels": ("pav", "strong", "mc_32x", "ce", "se", True),
    "prm_he @ strong, lr 3e-5 x 8 epochs": ("prm", "strong", "mc", "ce", "he", True, {"lr": 3e-5, "epochs": 8}),
    "pav @ strong (default)": ("pav", "strong", "mc", "ce", "se", True),
    "pav @ strong, lr 3e-5 x 8 epochs": ("pav", "strong", "mc", "ce", "se", True, {"lr": 3e-5, "epochs": 8}),
    "orm @ strong, balanced per instruction": ("orm", "strong", "rollouts", "ce", "se", True,
                                               {"head_balance": "instruction"}),
    "orm @ strong, 8x rollouts, balanced": ("orm", "strong", "rollouts_8x", "ce", "se", True,
                                            {"head_balance": "instruction"}),
    "prm_he @ strong, balanced per instruction": ("prm", "strong", "mc", "ce", "he", True,
                                                  {"head_balance": "instruction"}),
    "pav @ strong, balanced per instruction": ("pav", "strong", "mc", "ce", "se", True,
                                               {"head_balance": "instruction"}),
    "implicit_ce @ medium, no ref": ("implicit", "medium", "rollouts", "ce", "se", False),
    "implicit_ce @ strong, with ref": ("implicit", "strong", "rollouts", "ce", "se", True),
    "implicit_ce @ strong, no ref (default)": ("implicit", "strong", "rollouts", "ce", "se", False),
    "implicit_ce_inst @ strong, no ref (default)": ("implicit", "strong", "rollouts", "ce_inst", "se", False),
    "implicit_nca @ strong, no ref (default)": ("implicit", "strong", "rollouts", "nca", "se", False),
}


def label_file(res: Path, cfg: dict, labels: str) -> Path:
    rm, split = cfg["rm"], cfg["mc_label"]["split"]
    if labels == "rollouts":
        return res / "rollouts" / rm["data_policy"] / f"{split}.jsonl"
    if labels == "mc":
        return res / "mc" / rm["data_policy"] / f"{split}.jsonl"
    if labels.startswith("mc_"):  # MC labels of the k-x rollouts' first k x mc_label.n_prompts prompts
        factor = int(labels.removeprefix("mc_").removesuffix("x"))
        seeds = label_file(res, cfg, f"rollouts_{factor}x")
        out = seeds.with_name(f"{res.name}_{split}_mc_{factor}x.jsonl")
        if not out.exists():
            mc = {**cfg["mc_label"], "n_prompts": factor * int(load_preset()["mc_label"]["n_prompts"])}
            stage = {"mc_label": mc, "task": cfg["task"], "seed": cfg["seed"], "sampling": cfg["sampling"]}
            subprocess.run([sys.executable, "-m", "pipeline.mc_label", "--cfg", json.dumps(stage), "--rollouts",
                            str(seeds), "--records", str(res / "data" / f"{split}.jsonl"), "--completer", str(res / "models" / "sft" / cfg["mc_label"]["completer"]),
                            "--out", str(out), "--threads", "1"], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        return out
    factor = int(labels.removeprefix("rollouts_").removesuffix("x"))
    out = res.parent / "recipe_data" / f"{res.name}_{split}_{factor}x.jsonl"
    if not out.exists():
        ro = {**cfg["rollouts"], "n_prompts": factor * int(load_preset()["rollouts"]["n_prompts"])}
        stage = {"rollouts": ro, "task": cfg["task"], "seed": cfg["seed"], "sampling": cfg["sampling"]}
        subprocess.run([sys.executable, "-m", "pipeline.rollouts", "--cfg", json.dumps(stage),
                        "--policy", str(res / "models" / "sft" / rm["data_policy"]), "--policy-name", rm["data_policy"],
                        "--records", str(res / "data" / f"{split}.jsonl"), "--out", str(out), "--threads", "1"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def train(res: Path, out: Path, cfg: dict, kind: str, tier: str, labels: str, loss: str, label: str, use_ref: bool,
          overrides: dict) -> None:
    rm = {**cfg["rm"], "implicit_score_reference": use_ref, **overrides}
    cmd = [sys.executable, "-m", "pipeline.train_rm", "--cfg", json.dumps({"rm": rm, "seed": cfg["seed"]}),
           "--kind", kind, "--loss", loss, "--prm-label", label, "--labels", str(label_file(res, cfg, labels)),
           "--policy", str(res / "models" / "sft" / tier),
           "--heldout", str(res / "rollouts" / rm["data_policy"] / f"{rm['heldout_split']}.jsonl"),
           "--out", str(out), "--threads", "1"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(model_dir: Path, res: Path, cfg: dict) -> dict:
    rm = load_reward_model(model_dir)  # scores as saved (implicit: with or without its reference)
    bs = int(cfg["verify"]["score_batch_size"])
    aggs = [a for a in AGGREGATIONS if a != "product" or rm.scores_are_probabilities]
    held = [r for r in read_jsonl(res / "rollouts" / cfg["rm"]["data_policy"] / f"{cfg['rm']['heldout_split']}.jsonl")
            if r["response_ids"] and r["step_ends"]]
    steps = rm.step_scores([e for e in scoring_examples(held, rm.tokenizer)], bs)
    wp = {a: within_group_auroc([aggregate(s, a) for s in steps], [r["outcome"] for r in held], [r["id"] for r in held])
          for a in aggs}
    best = max(aggs, key=lambda a: wp[a] if wp[a] is not None else -1)
    pool_path = res / "verify" / "pools" / "medium.jsonl"
    rows = read_jsonl(pool_path)
    ex = scoring_examples(rows, rm.tokenizer)
    kept = [i for i, e in enumerate(ex) if e is not None]
    scored = dict(zip(kept, rm.step_scores([ex[i] for i in kept], bs)))
    tmp = model_dir.parent / "pool_scores.jsonl"
    tmp.write_text("".join(json.dumps({"id": r["id"], "sample_idx": r["sample_idx"], "step_scores": scored.get(i, [])})
                           + "\n" for i, r in enumerate(rows)))
    pools, _ = load_pool(pool_path, cfg["task"])
    attach_scores(pools, tmp, "rm", [best])
    vc = cfg["verify"]
    bon = {n: subset_accuracy(pools, draw_subsets(len(pools[0]["outcome"]), n, int(vc["n_subsets"]), len(pools),
                                                  int(cfg["seed"])), m_best_of_n(f"rm:{best}"))[0]
           for n in vc["n_values"]}
    return {"within_prompt_auroc": wp[best], "aggregation": best, "bon": bon}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--only", nargs="*", help="recipe names to run (default: all)")
    p.add_argument("--preset", help="the run's preset over config/tiny.yaml (e.g. config/countdown.yaml)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)  # beside other work on 2 cores
    cfg = load_preset(*([args.preset] if args.preset else []))
    lines = ["| recipe | within-prompt AUROC (held-out, best agg.) | best-of-" + " / ".join(map(str, cfg["verify"]["n_values"]))
             + " (medium pool) | train + score s |", "|---|---:|---|---:|"]
    for name in ("loglik_medium", "loglik_strong"):
        m = measure(args.results / "rm" / name / "model", args.results, cfg)
        lines.append(f"| {name} (untrained) | {m['within_prompt_auroc']:.3f} ({m['aggregation']}) | "
                     + " / ".join(f"{v:.3f}" for v in m["bon"].values()) + " | |")
        print(lines[-1], flush=True)
    for name, (kind, tier, labels, loss, label, use_ref, *more) in RECIPES.items():
        if args.only and name not in args.only:
            continue
        t0 = time.time()
        out = args.out / name.replace(" ", "_").replace(",", "").replace("@", "at").replace("(", "").replace(")", "")
        if not (out / "model" / "rm_meta.json").exists():
            train(args.results, out, cfg, kind, tier, labels, loss, label, use_ref, more[0] if more else {})
        m = measure(out / "model", args.results, cfg)
        lines.append(f"| {name} | {m['within_prompt_auroc']:.3f} ({m['aggregation']}) | "
                     + " / ".join(f"{v:.3f}" for v in m["bon"].values()) + f" | {time.time() - t0:.0f} |")
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
