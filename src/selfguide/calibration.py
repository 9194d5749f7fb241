"""Label distributions from scores, label-prior calibration and the numbers that judge a labeller.

Pure functions on lists of floats (no torch). A label distribution is one probability per label,
in the task's label order.

Calibration divides out a prior the model has for some labels whatever the input (small models
answer one label for most items): q(y|x) ∝ p(y|x) / prior(y). It only shifts the decision
boundary; it cannot create signal, so it helps only where the scores already rank items
(class AUROC > 0.5). The priors:
- batch: the mean distribution over the inputs being labelled (Zhou et al., ICLR 2024);
- generative: the mean over inputs the model itself wrote (Jiang et al., 2023) -- in annotation
  the pool being labelled is exactly that, so there it equals batch;
- content-free: the distribution for placeholder inputs such as "N/A" (Zhao et al., 2021).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

CALIBRATIONS = ("none", "batch", "generative", "content-free")
# Inputs with no content (Zhao et al. 2021 use "N/A", "" and "[MASK]").
CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")


def softmax(values: Sequence[float]) -> list[float]:
    top = max(values)
    exp = [math.exp(v - top) for v in values]
    total = sum(exp)
    return [e / total for e in exp]


def mean_distribution(rows: Sequence[Sequence[float]]) -> list[float]:
    """The average of several distributions, renormalised (rounding)."""
    k = len(rows[0])
    mean = [sum(r[i] for r in rows) / len(rows) for i in range(k)]
    total = sum(mean)
    return [m / total for m in mean]


def calibrate(p: Sequence[float], prior: Optional[Sequence[float]]) -> list[float]:
    """q ∝ p / prior; no prior leaves p as it is. A prior of 0 is floored so nothing divides by 0."""
    if prior is None:
        return list(p)
    q = [pi / max(ri, 1e-12) for pi, ri in zip(p, prior)]
    total = sum(q)
    return [x / total for x in q]


def argmax(p: Sequence[float]) -> int:
    return max(range(len(p)), key=lambda i: (p[i], -i))


def margin(p: Sequence[float]) -> float:
    """Top probability minus the runner-up's: how sure the labeller is (1.0 with one label)."""
    top = sorted(p, reverse=True)
    return top[0] - (top[1] if len(top) > 1 else 0.0)


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> Optional[float]:
    """Area under the ROC curve (Mann-Whitney: ties count half); None without both classes."""
    pos = [s for s, y in zip(scores, positive) if y]
    neg = [s for s, y in zip(scores, positive) if not y]
    if not pos or not neg:
        return None
    pos_rank = sum(r for r, y in zip(average_ranks(scores), positive) if y)
    return (pos_rank - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, tied values sharing the mean of their ranks."""
    ranked = sorted((v, i) for i, v in enumerate(values))
    ranks = [0.0] * len(values)
    i = 0
    while i < len(ranked):
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[ranked[k][1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def class_auroc(dists: Sequence[Sequence[float]], gold: Sequence[int]) -> Optional[float]:
    """Whether the label scores separate the classes: one-vs-rest AUROC of each gold class's
    probability, averaged over the classes present (0.5 = no signal, whatever the calibration)."""
    values = [auroc([d[k] for d in dists], [g == k for g in gold]) for k in sorted(set(gold))]
    found = [v for v in values if v is not None]
    return sum(found) / len(found) if found else None


def gold_auroc(dists: Sequence[Sequence[float]], gold: Sequence[str], labels: Sequence[str]) -> Optional[float]:
    """class_auroc over the items whose gold answer is one of `labels` (others cannot be ranked)."""
    known = [(d, list(labels).index(g)) for d, g in zip(dists, gold) if g in labels]
    return class_auroc([d for d, _ in known], [g for _, g in known]) if known else None


def macro_f1(predicted: Sequence[Optional[str]], gold: Sequence[str], labels: Sequence[str]) -> float:
    """Mean F1 over the labels that occur in gold or predictions (an off-label answer is wrong)."""
    used = [lab for lab in labels if lab in gold or lab in predicted]
    scores = []
    for lab in used:
        tp = sum(p == lab and g == lab for p, g in zip(predicted, gold))
        fp = sum(p == lab and g != lab for p, g in zip(predicted, gold))
        fn = sum(p != lab and g == lab for p, g in zip(predicted, gold))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


def one_label_share(predicted: Sequence[Optional[str]]) -> float:
    """The share of answers that are the most common answer (1.0: the model says one thing)."""
    if not predicted:
        return 0.0
    counts: dict[Optional[str], int] = {}
    for p in predicted:
        counts[p] = counts.get(p, 0) + 1
    return max(counts.values()) / len(predicted)
