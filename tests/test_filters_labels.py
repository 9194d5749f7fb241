"""Filters, label mapping, voting and balancing, on hand-made cases (method.md §4.4, §5.3, §5.4)."""

from __future__ import annotations

from collections import Counter

from selfguide.filters import DedupIndex, LengthWindow, check_input, check_output, has_placeholder, length_window, noise_check
from selfguide.labels import balance_classes, majority_vote, map_to_label
from selfguide.prompts import parse_generated_input


def test_length_window_two_sigma_and_floor():
    w = length_window([100, 110, 120])  # mu 110, sigma 8.16 -> 2 sigma 16.3 < 0.25 mu -> half = 55
    assert (w.low, w.high) == (55, 165)
    wide = length_window([50, 150, 250, 350])  # sigma 111.8, 2 sigma 223.6
    assert (wide.low, wide.high) == (1, 424)
    same = length_window([40, 40])  # sigma 0 with 2 examples: half = 20
    assert (same.low, same.high) == (20, 60)
    assert LengthWindow(5, 10).check("abc") == "too_short"
    assert LengthWindow(5, 10).check("a" * 11) == "too_long"
    assert LengthWindow(5, 10).check("a" * 10) is None


def test_noise_terms():
    assert noise_check("Sure, I'd be happy to help! Here it is") == "noise:Sure, I'd be happy to help!"
    assert noise_check("of course! fine") == "noise:Of course!"
    assert noise_check("text [output]= x") == "noise:[output]"
    assert noise_check("B\\_\\_A") == "noise:\\_\\_"
    assert noise_check("a plain sentence about input devices") is None
    assert noise_check("contains foo", ["foo"]) == "noise:foo"


def test_dedup_exact_and_near():
    d = DedupIndex(0.85)
    d.add("The cat sat on the mat.")
    assert d.check("the  CAT sat on the mat.") == "duplicate"
    assert d.check("The cat sat on the mat!") == "near_duplicate"
    assert d.check("A completely different sentence.") is None
    off = DedupIndex(None)
    off.add("The cat sat on the mat.")
    assert off.check("The cat sat on the mat!") is None


def test_check_input_order():
    d = DedupIndex(None)
    w = LengthWindow(3, 50)
    assert check_input("   ", w, (), d) == "empty"
    assert check_input("ab", w, (), d) == "too_short"
    assert check_input("Absolutely! yes", w, (), d) == "noise:Absolutely!"
    d.add("hello world")
    assert check_input("Hello World", w, (), d) == "duplicate"
    assert check_input("fresh text", None, (), d) is None
    assert check_output("", None, ()) == "empty"


def test_parse_generated_input():
    assert parse_generated_input('Premise: a. Hypothesis: b."\n') == "Premise: a. Hypothesis: b."
    assert parse_generated_input('[input]="Some text"') == "Some text"
    assert parse_generated_input('first input"\n[input]="second"') == "first input"
    assert parse_generated_input("one\n\ntwo") == "one"
    assert parse_generated_input('He said "hi"') == 'He said "hi"'
    assert parse_generated_input("text [output]=label") == "text"
    assert parse_generated_input("   ") == ""


def test_map_to_label():
    labels = ["entails", "neutral"]
    assert map_to_label("Neutral.", labels) == "neutral"
    assert map_to_label("**entails**", labels) == "entails"
    assert map_to_label("The answer is neutral because ...", labels) == "neutral"
    assert map_to_label("entails or neutral", labels) is None  # ambiguous
    assert map_to_label("contradiction", labels) is None
    assert map_to_label("B\\_entails\\_A", ["B_entails_A", "B_neutral_A"]) == "B_entails_A"
    assert map_to_label("a good answer", ["A", "B", "Neither"]) is None  # the article is not label A
    assert map_to_label("Answer: B", ["A", "B", "Neither"]) == "B"
    assert map_to_label("1", ["1", "2", "3"]) == "1"


def test_majority_vote_threshold_and_ties():
    v = majority_vote(["a", "a", "a", "b", "c", "d", "e", "f", "g", "h"], 0.3)
    assert v.answer == "a" and v.count == 3 and v.agreement == 0.3  # exactly at the threshold passes
    v = majority_vote(["a", "a", "b", "c", "d", "e", "f", "g", "h", "i"], 0.3)
    assert v.answer is None and v.count == 2
    v = majority_vote(["long answer", "short", "long answer", "short"], 0.3)
    assert v.answer == "short"  # tie -> shortest
    v = majority_vote(["bb", "aa", "aa", "bb"], 0.3)
    assert v.answer == "bb"  # same length -> first seen
    assert majority_vote([], 0.3).answer is None
    v = majority_vote(["x", "x", "y"], 0.3)  # denominator = surviving samples only
    assert v.agreement == 2 / 3


def test_balance_classes():
    items = [{"output": "a"}] * 6 + [{"output": "b"}] * 2 + [{"output": "c"}] * 3
    items = [dict(x, i=i) for i, x in enumerate(items)]
    kept, dropped = balance_classes(items, "output", "downsample", 2.0, seed=1)
    assert Counter(x["output"] for x in kept) == {"a": 2, "b": 2, "c": 2} and len(dropped) == 5
    assert [x["i"] for x in kept] == sorted(x["i"] for x in kept)  # order preserved
    kept, _ = balance_classes(items, "output", "cap", 2.0, seed=1)
    assert Counter(x["output"] for x in kept) == {"a": 4, "b": 2, "c": 3}
    kept, dropped = balance_classes(items, "output", "off", 2.0, seed=1)
    assert len(kept) == 11 and not dropped
    single = [{"output": "a"}] * 3
    assert balance_classes(single, "output", "downsample", 2.0, 0) == (single, [])
    assert balance_classes(items, "output", "downsample", 2.0, seed=1) == balance_classes(items, "output", "downsample", 2.0, seed=1)


def test_placeholder_filter_is_opt_in_and_runs_after_noise():
    d = DedupIndex(None)
    assert has_placeholder("Does this [n]ger breed live long?") and has_placeholder("fell[insert_text] at noon")
    assert not has_placeholder("a [ b") and not has_placeholder("[" + "x" * 30 + "]")
    assert check_input("Does this [n]ger breed live long?", None, (), d) is None  # off by default
    assert check_input("Does this [n]ger breed live long?", None, (), d, placeholder_filter=True) == "placeholder"
    assert check_input("[input] again", None, (), d, placeholder_filter=True) == "noise:[input]"
    assert check_input("Does this dog breed live long?", None, (), d, placeholder_filter=True) is None


def test_input_form_rule_holds_only_when_every_example_input_keeps_it():
    from selfguide.filters import input_form

    d = DedupIndex(None)
    asks = input_form(["Who won?", "When was it built? ", "Why?"])
    assert asks.question is True
    assert check_input("What do cells produce?", None, (), d, form=asks) is None
    assert check_input("Cells produce energy.", None, (), d, form=asks) == "form:question"
    assert check_input("[input] again", None, (), d, form=asks) == "noise:[input]"  # the authors' filters come first
    tells = input_form(["Pesticides cause pollution.", "sunlight"])
    assert tells.question is False and tells.check("Is it sunny?") == "form:question" and tells.check("rain") is None
    mixed = input_form(["Who won?", "It rained."])
    assert mixed.question is None and mixed.check("anything") is None and mixed.check("or this?") is None


def test_output_form_rules_come_from_what_every_example_keeps():
    from selfguide.filters import OutputForm, output_form

    combine = [("What college did this president attend? Where did this president meet his wife?",
                "Did this president meet his wife in college?"),
               ("What trees are in this national park? Which spots are popular in it?",
                "What are the names of famous trees in this national park?")]
    form = output_form(combine)
    assert form == OutputForm(question_mirrors_input=True, not_an_input_span=True, no_placeholder=True)
    q = "Does this dog breed weigh 25 pounds? How does this dog breed act around strangers?"
    assert form.check("Does this dog breed weigh 25 pounds?", q) == "form:copies_input"  # the first question copied back
    assert form.check("This dog breed is friendly.", q) == "form:question"
    assert form.check("Is this [animal] a friendly dog?", q) == "form:placeholder"
    assert form.check("Is this dog breed a friendly dog who weighs more than 25 lbs?", q) is None
    # a task whose answers are runs of the input (disfluent -> fluent) keeps copies; statements mirror statements
    fluent = output_form([("How did no Who masterminded many terror attacks?", "Who masterminded many terror attacks?"),
                          ("The cat no the dog sat.", "The dog sat.")])
    assert not fluent.not_an_input_span and fluent.question_mirrors_input
    assert fluent.check("The dog barked.", "The cat uh the dog barked.") is None
    assert fluent.check("The dog barked?", "The cat uh the dog barked.") == "form:question"
    # one example breaks a rule: the rule is off
    mixed = output_form([("Is it red?", "yes [1]"), ("Fact: rain falls.", "rain.")])
    assert mixed == OutputForm(question_mirrors_input=False, not_an_input_span=False, no_placeholder=False)
    assert mixed.check("anything [x]?", "Fact: x.") is None
