"""Label mapping, self-consistency voting and class balancing (pure functions)."""

from __future__ import annotations

import random
import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Optional, Sequence

_PUNCT = re.escape(string.punctuation)


def _norm_label(text: str) -> str:
    text = text.replace("\\_", "_")  # small chat models escape underscores as in markdown
    text = text.strip().strip("*`'\"").strip()
    text = re.sub(rf"^[{_PUNCT}\s]+|[{_PUNCT}\s]+$", "", text)
    return re.sub(r"\s+", " ", text).lower()


def map_to_label(text: str, labels: Sequence[str]) -> Optional[str]:
    """Map a model answer onto the label set.

    1. exact match after normalisation (case, surrounding punctuation/quotes, markdown escapes);
    2. else the unique label that occurs in the text as a whole word (single-letter labels
       case-sensitively, so the article "a" is not label "A");
    3. else None (off-label). This is the mapping the authors' code meant to do (method.md §5.4).
    """
    norm = _norm_label(text)
    by_norm = {_norm_label(lab): lab for lab in labels}
    if norm in by_norm:
        return by_norm[norm]
    cleaned = text.replace("\\_", "_")
    found = []
    for lab in labels:
        flags = 0 if len(lab) == 1 else re.IGNORECASE
        if re.search(rf"(?<![A-Za-z0-9_]){re.escape(lab)}(?![A-Za-z0-9_])", cleaned, flags):
            found.append(lab)
    return found[0] if len(found) == 1 else None


@dataclass(frozen=True)
class Vote:
    answer: Optional[str]  # None when the vote fails
    count: int
    total: int
    counts: dict[str, int]

    @property
    def agreement(self) -> float:
        return self.count / self.total if self.total else 0.0


def majority_vote(samples: Sequence[str], min_agreement: float) -> Vote:
    """Most frequent answer among the surviving samples; ties go to the shortest, then first seen.

    Accepted only if its share of the surviving samples (not of all samples) is >= min_agreement.
    """
    counts = Counter(samples)
    if not counts:
        return Vote(None, 0, 0, {})
    first_seen = {s: i for i, s in reversed(list(enumerate(samples)))}
    best = min(counts, key=lambda s: (-counts[s], len(s), first_seen[s]))
    total = len(samples)
    ok = counts[best] / total >= min_agreement
    return Vote(best if ok else None, counts[best], total, dict(counts))


def mbr_pick(samples: Sequence[str], min_agreement: float) -> Vote:
    """Minimum Bayes risk selection for free text: the sample with the highest mean word ROUGE-L F
    to the other samples (ties to the shortest, then first seen), accepted when that mean is at
    least `min_agreement`. Exact-string voting almost never finds a majority among free-text
    samples; their consensus is what MBR picks (Finkelstein et al. 2023). `count` is unused (0)
    and `total` the number of samples; the agreement is the mean ROUGE-L."""
    from selfguide.filters import rouge_l_f, words

    if not samples:
        return Vote(None, 0, 0, {})
    if len(samples) == 1:  # nothing to agree with: kept only without a threshold
        return MBRVote(samples[0] if min_agreement <= 0 else None, 0, 1, {samples[0]: 1}, 0.0)
    toks = [words(s) for s in samples]
    means = []
    for i, a in enumerate(toks):
        means.append(sum(rouge_l_f(a, b) for j, b in enumerate(toks) if j != i) / (len(toks) - 1))
    best = min(range(len(samples)), key=lambda i: (-means[i], len(samples[i]), i))
    return MBRVote(samples[best] if means[best] >= min_agreement else None, 0, len(samples), dict(Counter(samples)), means[best])


@dataclass(frozen=True)
class MBRVote(Vote):
    mean_rouge: float = 0.0

    @property
    def agreement(self) -> float:
        return self.mean_rouge


def balance_classes(
    items: Sequence[dict], label_key: str, mode: str, cap: float, seed: int, rank_key: Optional[str] = None
) -> tuple[list[dict], list[dict]]:
    """Down-sample classes. Returns (kept, dropped), kept in the input's relative order.

    mode "downsample": every class to the rarest class's count (the paper);
    mode "cap": no class above `cap` x the rarest; mode "off": keep all.
    Which items of a class stay: a seeded random sample, or with `rank_key` the items with the
    highest value of that field (the labeller's confidence; ties by position).
    With fewer than two classes there is nothing to balance against, so all items are kept.
    """
    by_label: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_label.setdefault(item[label_key], []).append(i)
    if mode == "off" or len(by_label) < 2:
        return list(items), []
    rarest = min(len(v) for v in by_label.values())
    limit = rarest if mode == "downsample" else max(rarest, int(cap * rarest))
    rng = random.Random(seed)
    keep: set[int] = set()
    for label in sorted(by_label):
        idx = by_label[label]
        if len(idx) <= limit:
            keep.update(idx)
        elif rank_key:
            keep.update(sorted(idx, key=lambda i: (-items[i][rank_key], i))[:limit])
        else:
            keep.update(rng.sample(idx, limit))
    kept = [it for i, it in enumerate(items) if i in keep]
    dropped = [it for i, it in enumerate(items) if i not in keep]
    return kept, dropped
