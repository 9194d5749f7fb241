"""Rule filters for generated inputs and annotated outputs (pure functions).

Each check returns a rejection reason (`empty`, `too_short`, `too_long`, `noise:<term>`,
`placeholder`, `duplicate`, `near_duplicate`, `form:<rule>`) or None. Reasons are data: the stages
keep every rejected item.
"""

from __future__ import annotations

import math
import re
import statistics
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

# The authors' 14 assistant-style phrases (method.md §4.4), matched case-insensitively here.
BOILERPLATE_PHRASES = (
    "Sure, I'd be happy to help!",
    "Of course!",
    "Let me check on that.",
    "I'm here to help.",
    "Great question!",
    "Let me see.",
    "That's a good question.",
    "Thanks for asking.",
    "Let me help you with that.",
    "No problem, here's the answer.",
    "I'm glad you asked.",
    "Alright, let me explain.",
    "Absolutely!",
    "I understand your question.",
    # more of the same kind, seen from small chat models
    "As an AI",
    "I'm sorry, but",
    "I cannot",
    "Here is a new",
    "Here's a new",
)
# Echoed field markers and chat-template tokens. The authors used the bare words "input"/"output"
# and a blank line as noise terms, which also drops legitimate texts; we cut completions at
# markers when parsing instead and only reject what is still left.
MARKER_TERMS = ("[input]", "[output]", "[instruction]", "InputGenerator", "<|im_start|>", "<|im_end|>", "\\_\\_")
# A bracketed slot such as `[n]`, `[car]` or `[insert_text]`. The input-generation prompt marks its
# fields as `[input]`, `[instruction]`; small models copy the style into the inputs they write, and
# once such an input is accepted it is shown to later rounds and spreads (docs/benchmarks/analysis.md §6).
PLACEHOLDER = re.compile(r"\[[^\[\]\n]{1,24}\]")


def has_placeholder(text: str) -> bool:
    return PLACEHOLDER.search(text) is not None


@dataclass(frozen=True)
class LengthWindow:
    """Allowed character lengths [low, high], inclusive."""

    low: int
    high: int

    def check(self, text: str) -> Optional[str]:
        n = len(text)
        if n < self.low:
            return "too_short"
        if n > self.high:
            return "too_long"
        return None


def length_window(lengths: Sequence[int]) -> LengthWindow:
    """mu +/- 2 sigma of the examples' lengths (population sigma, as the authors' numpy.std).

    With fewer than 3 examples, or when the examples are nearly the same length, 2 sigma says
    little about the task, so the half-width is at least half the mean (and at least 8 chars).
    """
    mu = statistics.fmean(lengths)
    sigma = statistics.pstdev(lengths)
    half = 2 * sigma
    if len(lengths) < 3 or half < 0.25 * mu:
        half = max(half, 0.5 * mu)
    half = max(half, 8.0)
    return LengthWindow(max(1, math.floor(mu - half)), math.ceil(mu + half))


def noise_check(text: str, extra_terms: Iterable[str] = ()) -> Optional[str]:
    lowered = text.lower()
    for term in BOILERPLATE_PHRASES:
        if term.lower() in lowered:
            return f"noise:{term}"
    for term in (*MARKER_TERMS, *extra_terms):
        if term and term in text:
            return f"noise:{term}"
    return None


def normalize_for_dedup(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return re.sub(r"\s+", " ", text).strip()


def shingles(text: str, k: int = 5) -> frozenset[str]:
    t = normalize_for_dedup(text)
    if len(t) <= k:
        return frozenset([t])
    return frozenset(t[i : i + k] for i in range(len(t) - k + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def words(text: str) -> list[str]:
    return re.findall(r"\w+", normalize_for_dedup(text))


def lcs_length(a: list[str], b: list[str]) -> int:
    """Longest common subsequence of two token lists (one row of the DP table at a time)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_f(a: list[str], b: list[str]) -> float:
    """ROUGE-L F1 over words: 2 LCS / (|a| + |b|) (rouge-score's F-measure with beta 1)."""
    if not a or not b:
        return 0.0
    return 2 * lcs_length(a, b) / (len(a) + len(b))


class DedupIndex:
    """Exact (normalised), near-duplicate (char 5-gram Jaccard) and, optionally, Self-Instruct's
    ROUGE-L rule (a candidate too similar to any accepted text is rejected) over accepted texts."""

    def __init__(self, near_threshold: Optional[float], rouge_threshold: Optional[float] = None):
        self.near_threshold = near_threshold
        self.rouge_threshold = rouge_threshold
        self._exact: set[str] = set()
        self._shingles: list[frozenset[str]] = []
        self._words: list[list[str]] = []

    def add(self, text: str) -> None:
        self._exact.add(normalize_for_dedup(text))
        if self.near_threshold is not None:
            self._shingles.append(shingles(text))
        if self.rouge_threshold is not None:
            self._words.append(words(text))

    def check(self, text: str) -> Optional[str]:
        if normalize_for_dedup(text) in self._exact:
            return "duplicate"
        if self.near_threshold is not None:
            sh = shingles(text)
            for other in self._shingles:
                if jaccard(sh, other) >= self.near_threshold:
                    return "near_duplicate"
        if self.rouge_threshold is not None:
            w, t = words(text), self.rouge_threshold
            for other in self._words:
                # 2 LCS / (|a| + |b|) cannot reach t when the shorter text is too short: skip the DP
                if 2 * min(len(w), len(other)) >= t * (len(w) + len(other)) and rouge_l_f(w, other) >= t:
                    return "rouge_similar"
        return None


def check_output(text: str, window: Optional[LengthWindow], extra_noise: Iterable[str]) -> Optional[str]:
    """Per-sample output filters before the vote: empty, length (generation), noise."""
    if not text.strip():
        return "empty"
    if window is not None:
        reason = window.check(text)
        if reason:
            return reason
    return noise_check(text, extra_noise)


def is_question(text: str) -> bool:
    return text.rstrip().endswith("?")


def is_word_span(part: str, whole: str) -> bool:
    """`part`'s words appear in `whole` as one contiguous run (case, spacing and punctuation aside)."""
    p, w = words(part), words(whole)
    return bool(p) and f" {' '.join(p)} " in f" {' '.join(w)} "


def repeats_input(output: str, input_text: str) -> bool:
    """The answer is its input again, case, spacing and punctuation aside (a fluent sentence handed back by a
    task whose examples always change theirs)."""
    said = words(output)
    return bool(said) and said == words(input_text)


def examples_change_their_inputs(examples: Sequence[tuple[str, str]]) -> bool:
    """No example's output repeats its input: a task of transformations, where an answer that repeats its input
    teaches the model that doing nothing is the task."""
    return not any(repeats_input(o, i) for i, o in examples)


@dataclass(frozen=True)
class OutputForm:
    """What every example's output shares, in form, with its input: rules a free-text answer must
    keep. A small model's answers to its own inputs are often not answers at all (the first of two
    questions copied back, a statement where a question was asked, a `[slot]`), and self-consistency
    does not catch them, since the samples agree on the copy (docs/benchmarks/dev/generation-screen.md).
    A rule holds only when every example obeys it, so it never rejects the task's own kind of answer."""

    question_mirrors_input: bool  # every example's output is a question exactly when its input is
    not_an_input_span: bool  # no example's output is a word-for-word run of its input
    no_placeholder: bool  # no example's output has a bracketed slot

    def check(self, output: str, input_text: str) -> Optional[str]:
        if self.no_placeholder and has_placeholder(output):
            return "form:placeholder"
        if self.question_mirrors_input and is_question(output) != is_question(input_text):
            return "form:question"
        if self.not_an_input_span and is_word_span(output, input_text):
            return "form:copies_input"
        return None


def output_form(examples: Sequence[tuple[str, str]]) -> OutputForm:
    """The form rules that every (input, output) example obeys."""
    return OutputForm(
        question_mirrors_input=all(is_question(o) == is_question(i) for i, o in examples),
        not_an_input_span=not any(is_word_span(o, i) for i, o in examples),
        no_placeholder=not any(has_placeholder(o) for _, o in examples),
    )


@dataclass(frozen=True)
class InputForm:
    """What every example input shares in form: a rule a new input must keep. When all of a task's
    example inputs are questions, a written input that is a statement (or a list of slots, or half
    a sentence) is another task's input, and the model's answer to it teaches the wrong answer form
    (task1562 on the held-out table: docs/benchmarks/analysis.md)."""

    question: Optional[bool]  # True: every example input is a question; False: none is; None: mixed, no rule

    def check(self, text: str) -> Optional[str]:
        if self.question is not None and is_question(text) != self.question:
            return "form:question"
        return None


def input_form(inputs: Sequence[str]) -> InputForm:
    """The form rule that every example input obeys."""
    kinds = {is_question(i) for i in inputs}
    return InputForm(question=kinds.pop() if len(kinds) == 1 else None)


def check_input(
    text: str,
    window: Optional[LengthWindow],
    extra_noise: Iterable[str],
    dedup: DedupIndex,
    placeholder_filter: bool = False,
    form: Optional[InputForm] = None,
) -> Optional[str]:
    """The input filters in the authors' order: empty, length, noise, then duplicate.

    With `placeholder_filter`, a bracketed slot (`[n]`) after the noise check is rejected as
    `placeholder`; callers turn it off for tasks whose own example inputs contain brackets. With
    `form`, an input that breaks the examples' form rule is rejected next (`form:question`).
    """
    reason = check_output(text, window, extra_noise)
    if reason is None and placeholder_filter and has_placeholder(text):
        reason = "placeholder"
    if reason is None and form is not None:
        reason = form.check(text)
    return reason or dedup.check(text)
