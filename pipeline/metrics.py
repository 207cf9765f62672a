"""Evaluation metrics shared by stages (MC-label agreement, reward-model AUROC, step
verification): small pure functions, tested by hand in tests/test_metrics.py."""
from __future__ import annotations


def auroc(scores, labels) -> float:
    """Area under the ROC curve as the Mann-Whitney U statistic: the probability that a random
    positive scores above a random negative, ties counted 1/2."""
    scores = [float(s) for s in scores]
    labels = [int(l) for l in labels]
    if any(l not in (0, 1) for l in labels):
        raise ValueError("AUROC labels must be 0 or 1")
    pos = [s for s, l in zip(scores, labels) if l == 1]
    neg = [s for s, l in zip(scores, labels) if l == 0]
    if not pos or not neg:
        raise ValueError("AUROC needs both positive and negative labels")
    # rank-based U: average ranks handle ties exactly
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, l in zip(ranks, labels) if l == 1)
    u = rank_sum - len(pos) * (len(pos) + 1) / 2
    return u / (len(pos) * len(neg))


def within_group_auroc(scores, labels, groups) -> float | None:
    """Mean AUROC over groups (prompts) that hold both labels: how well scores rank the samples
    of one prompt, which is what best-of-N selection needs. A pooled AUROC also rewards telling
    easy prompts from hard ones. None when no group is mixed."""
    by: dict = {}
    for s, l, g in zip(scores, labels, groups):
        by.setdefault(g, ([], []))
        by[g][0].append(s)
        by[g][1].append(l)
    vals = [auroc(s, l) for s, l in by.values() if 0 < sum(l) < len(l)]
    return sum(vals) / len(vals) if vals else None
