"""Evaluation metrics (pure; no torch).

NIv2-official (default), as in allenai/natural-instructions eval/automatic/evaluation.py:
  exact match after normalize_answer (lower-case, drop punctuation, squeeze spaces; articles are
  kept: "adapted from Squad v1.1 evaluation, without removing the articles"),
  ROUGE-L = rouge_score's token-level rougeL F-measure with stemming; both best over all references.
Paper-compatible (labelled as such), as the Self-Guide authors' code (method.md §7):
  classification: the LAST gold label found in the output (case-sensitive substring), then
  normalised exact match against the first reference; generation: character-level LCS F1
  against the first reference.
Scores are fractions 0..1 here; reports show points (x100).
"""

from __future__ import annotations

import random
import re
import string
from functools import lru_cache
from typing import Any, Mapping, Optional, Sequence

_PUNCT = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """NIv2's normalize_answer: lower-case, remove ASCII punctuation, squeeze whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    return " ".join(s.split())


def exact_match(prediction: str, references: Sequence[str]) -> float:
    return max(float(normalize_answer(prediction) == normalize_answer(ref)) for ref in references)


@lru_cache(maxsize=1)
def _scorer():  # type: ignore[no-untyped-def]
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    scorer = _scorer()
    return max(scorer.score(ref, prediction)["rougeL"].fmeasure for ref in references)


def last_label(prediction: str, labels: Sequence[str]) -> Optional[str]:
    """The last non-overlapping occurrence of any label (case-sensitive, no word boundaries)."""
    if not labels:
        return None
    alternation = "|".join(re.escape(lab) for lab in sorted(labels, key=len, reverse=True))
    found = re.findall(alternation, prediction.strip())
    return found[-1] if found else None


def paper_exact_match(prediction: str, reference: str, labels: Sequence[str]) -> float:
    extracted = last_label(prediction, labels)
    if extracted is None:
        return 0.0
    return float(normalize_answer(extracted) == normalize_answer(reference))


def char_lcs_f1(prediction: str, reference: str) -> float:
    """Character-level LCS F1 (the authors' 'ROUGE-L')."""
    if not prediction or not reference:
        return 0.0
    prev = [0] * (len(reference) + 1)
    for a in prediction:
        cur = [0]
        for j, b in enumerate(reference, 1):
            cur.append(prev[j - 1] + 1 if a == b else max(prev[j], cur[j - 1]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(prediction), lcs / len(reference)
    return 2 * p * r / (p + r)


def score_item(prediction: str, references: Sequence[str], kind: str, labels: Sequence[str]) -> dict[str, float]:
    """Every metric for one item. `labels` for paper EM = the gold label set of the split (as the authors)."""
    out = {"exact_match": exact_match(prediction, references), "rougeL": rouge_l(prediction, references)}
    if kind == "classification":
        out["paper_exact_match"] = paper_exact_match(prediction, references[0], labels)
    else:
        out["paper_rougeL"] = char_lcs_f1(prediction.strip(), references[0])
    return out


def paired_bootstrap(a: Sequence[float], b: Sequence[float], resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of (b - a) and its 95% percentile CI over items resampled with replacement."""
    if len(a) != len(b):
        raise ValueError("paired bootstrap needs scores of the same items")
    n = len(a)
    if n == 0:
        return 0.0, 0.0, 0.0
    diffs = [y - x for x, y in zip(a, b)]
    mean = sum(diffs) / n
    if resamples <= 0:
        return mean, mean, mean
    rng = random.Random(seed)
    stats = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    lo = stats[int(0.025 * (resamples - 1))]
    hi = stats[int(round(0.975 * (resamples - 1)))]
    return mean, lo, hi


def confusion(predicted: Sequence[Optional[str]], gold: Sequence[str], labels: Sequence[str]) -> dict[str, dict[str, int]]:
    """gold label -> predicted label (or '<other>') -> count."""
    table: dict[str, dict[str, int]] = {g: {p: 0 for p in [*labels, "<other>"]} for g in labels}
    for p, g in zip(predicted, gold):
        row = table.setdefault(g, {q: 0 for q in [*labels, "<other>"]})
        key = p if p in row else "<other>"
        row[key] = row.get(key, 0) + 1
    return table


def balanced_exact_match(per_label: Mapping[str, Mapping[str, Any]]) -> Optional[float]:
    """Exact match averaged over the gold classes present (points; None without classes). Always answering one
    label scores 100/k here whatever the label mix, so a gain in it is a gain in telling the classes apart,
    not a shift toward the commonest one."""
    accuracies = [v["accuracy"] for v in per_label.values() if v.get("n")]
    return round(sum(accuracies) / len(accuracies), 2) if accuracies else None


def majority_share(per_label: Mapping[str, Mapping[str, Any]]) -> Optional[float]:
    """The exact match of always answering the commonest gold label (points; None without items)."""
    counts = [v["n"] for v in per_label.values() if v.get("n")]
    return round(100 * max(counts) / sum(counts), 2) if counts else None
