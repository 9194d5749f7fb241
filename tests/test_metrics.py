"""Metrics against hand-computed cases: NIv2-official and paper-compatible."""

from __future__ import annotations

import pytest

from selfguide.metrics import balanced_exact_match, char_lcs_f1, confusion, exact_match, last_label, majority_share, normalize_answer, paired_bootstrap, paper_exact_match, rouge_l, score_item


def test_normalize_answer_is_niv2s():
    assert normalize_answer("  The Answer, is: YES!  ") == "the answer is yes"  # articles kept (NIv2)


def test_exact_match_best_over_references():
    assert exact_match("Yes.", ["no", "yes"]) == 1.0
    assert exact_match("yes it is", ["yes"]) == 0.0


def test_rouge_l_token_level_with_stemming():
    assert rouge_l("the cats are running", ["the cat is running"]) == pytest.approx(0.75)  # LCS the,cat,run = 3/4
    assert rouge_l("completely different", ["nothing shared"]) == 0.0
    # best over references
    assert rouge_l("a b c", ["x y z", "a b c"]) == 1.0


def test_paper_exact_match_last_label():
    labels = ["entails", "neutral"]
    assert last_label("neutral... actually entails", labels) == "entails"
    assert paper_exact_match("I think neutral. Final: entails", "entails", labels) == 1.0
    assert paper_exact_match("no label here", "entails", labels) == 0.0
    # case-sensitive, no word boundary: 'C' is found inside 'Contradiction'
    assert last_label("Contradiction", ["C", "N"]) == "C"


def test_char_lcs_f1():
    assert char_lcs_f1("abc", "abc") == 1.0
    assert char_lcs_f1("abcd", "abxd") == pytest.approx(0.75)  # lcs 3, p=r=3/4
    assert char_lcs_f1("", "abc") == 0.0


def test_score_item_kinds():
    cls = score_item("entails", ["entails"], "classification", ["entails", "neutral"])
    assert cls == {"exact_match": 1.0, "rougeL": 1.0, "paper_exact_match": 1.0}
    gen = score_item("a b", ["a b", "c"], "generation", [])
    assert gen["exact_match"] == 1.0 and gen["paper_rougeL"] == 1.0


def test_paired_bootstrap():
    mean, lo, hi = paired_bootstrap([0, 0, 0, 0], [1, 1, 1, 1], 200, seed=0)
    assert (mean, lo, hi) == (1.0, 1.0, 1.0)
    mean, lo, hi = paired_bootstrap([0, 1] * 50, [1, 1] * 50, 500, seed=0)
    assert mean == 0.5 and lo < 0.5 < hi and lo > 0.3
    assert paired_bootstrap([0, 1], [1, 0], 100, seed=3) == paired_bootstrap([0, 1], [1, 0], 100, seed=3)


def test_confusion():
    table = confusion(["a", None, "b"], ["a", "a", "b"], ["a", "b"])
    assert table["a"] == {"a": 1, "b": 0, "<other>": 1} and table["b"]["b"] == 1


def test_balanced_exact_match_scores_a_one_label_answerer_at_chance_whatever_the_label_mix():
    always_yes = {"yes": {"n": 6, "accuracy": 100.0}, "no": {"n": 2, "accuracy": 0.0}, "maybe": {"n": 0, "accuracy": 0.0}}
    assert majority_share(always_yes) == 75.0  # its exact match
    assert balanced_exact_match(always_yes) == 50.0  # chance for the two classes present
    mixed = {"yes": {"n": 6, "accuracy": 50.0}, "no": {"n": 2, "accuracy": 100.0}}
    assert balanced_exact_match(mixed) == 75.0 and majority_share(mixed) == 75.0
    assert balanced_exact_match({}) is None and majority_share({}) is None
