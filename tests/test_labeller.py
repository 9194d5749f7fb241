"""The scored labeller: calibration math, demonstration orders, teacher-forced label scores on a real
tiny model (checked against a plain full forward), the annotate stage with labeller=score,
the Self-Instruct ROUGE-L filter, training replay, the diagnosis and the multi-seed bench table."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from conftest import EXAMPLE, NIV2
from selfguide import calibration as cal
from selfguide import label_scores
from selfguide.backends.fake import FakeBackend
from selfguide.errors import ConfigError
from selfguide.filters import DedupIndex, rouge_l_f, words
from selfguide.pipeline import make_context, synthesize
from selfguide.prompts import INPUT_WRITER_SYSTEM
from selfguide.stages.gate import choose
from selfguide.store import read_records
from selfguide.task import Example, load_task


# ------------------------------------------------------------------ pure parts


def test_calibration_divides_out_the_prior():
    p = [0.8, 0.2]
    q = cal.calibrate(p, [0.9, 0.1])  # the model says label 0 for nearly everything
    assert q[1] > q[0] and math.isclose(sum(q), 1.0)
    assert cal.calibrate(p, None) == p
    assert cal.argmax([0.2, 0.5, 0.3]) == 1 and math.isclose(cal.margin([0.2, 0.5, 0.3]), 0.2)
    assert cal.mean_distribution([[1.0, 0.0], [0.0, 1.0]]) == [0.5, 0.5]


def test_auroc_and_macro_f1_by_hand():
    assert cal.auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
    assert cal.auroc([0.5, 0.5], [True, False]) == 0.5  # ties count half
    assert cal.auroc([0.1, 0.2], [True, True]) is None
    # class AUROC: one-vs-rest of each gold class's probability
    dists = [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]
    assert cal.class_auroc(dists, [0, 0, 1, 1]) == 1.0
    # shifting by a prior cannot change a two-label AUROC: calibration creates no signal
    shifted = [cal.calibrate(d, [0.7, 0.3]) for d in dists]
    assert cal.class_auroc(shifted, [0, 0, 1, 1]) == cal.class_auroc(dists, [0, 0, 1, 1])
    f1 = cal.macro_f1(["a", "a", "b", None], ["a", "b", "b", "a"], ["a", "b"])
    assert math.isclose(f1, (0.5 + 2 / 3) / 2)
    assert cal.one_label_share(["a", "a", "b", "a"]) == 0.75


def test_demo_orders():
    ex = [Example(f"in{i}", f"out{i}") for i in range(5)]
    three = label_scores.demo_orders(ex[:3], 6, seed=0)
    assert len(three) == 6 and len({tuple(e.input for e in o) for o in three}) == 6 and three[0] == tuple(ex[:3])
    five = label_scores.demo_orders(ex, 6, seed=1)
    assert len({tuple(e.input for e in o) for o in five}) == 6 and five[0] == tuple(ex)
    assert five == label_scores.demo_orders(ex, 6, seed=1)  # seeded
    assert label_scores.demo_orders(ex[:3], 1, seed=0) == [tuple(ex[:3])]


def test_rouge_filter_matches_rouge_score_and_rejects_near_copies():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    pairs = [("The cat sat on the mat today", "the cat was sitting on a mat"),
             ("Premise: water boils at 100 C. Hypothesis: water is hot.", "Premise: ice melts. Hypothesis: ice is cold."),
             ("one two three", "four five")]
    for a, b in pairs:
        assert math.isclose(rouge_l_f(words(a), words(b)), scorer.score(a, b)["rougeL"].fmeasure)
    index = DedupIndex(None, rouge_threshold=0.7)
    index.add("Premise: the liver has a right lobe and a left lobe. Hypothesis: the liver has lobes.")
    assert index.check("Premise: the liver has a right lobe and a left lobe. Hypothesis: the liver has two lobes.") == "rouge_similar"
    assert index.check("Premise: bees make honey from nectar. Hypothesis: honey comes from bees.") is None
    assert DedupIndex(None).check("Premise: the liver has a right lobe and a left lobe. Hypothesis: the liver has two lobes.") is None


def test_input_writer_system_turn_and_topic_seeds():
    """generate.system_prompt=writer replaces the template's default persona with a system turn;
    topic_seeds asks for a topic and is drawn last, so every other draw matches the paper's prompt."""
    import random

    from selfguide import prompts

    task = load_task(EXAMPLE)
    pool = ["Premise: a. Hypothesis: b.", "Premise: c. Hypothesis: d.", "Premise: e. Hypothesis: f."]
    plain, label = prompts.sample_generation_prompt(task, pool, random.Random(3), 10, True)
    seeded, label2 = prompts.sample_generation_prompt(task, pool, random.Random(3), 10, True,
                                                      prompts.INPUT_WRITER_SYSTEM, topic_seeds=True)
    assert [m["role"] for m in plain] == ["user"] and [m["role"] for m in seeded] == ["system", "user"]
    assert seeded[0]["content"] == prompts.INPUT_WRITER_SYSTEM and label2 == label
    topic = seeded[1]["content"].split("Write it about ")[1].split(".")[0]
    assert topic in prompts.TOPIC_SEEDS
    assert seeded[1]["content"].replace(f" Write it about {topic}.", "") == plain[0]["content"]


def test_generate_stage_sends_the_writer_system_turn(run_dir, tiny_model):
    """Through the real chat template of a real tokenizer: the rendered generation prompts carry the
    writer system turn, and the setting is part of the stage's identity."""
    from selfguide.backends import get_backend
    from selfguide.stages.generate import run_generate

    seen: list[str] = []

    class Recording(FakeBackend):
        hf = get_backend("hf", model=str(tiny_model), dtype="float32")

        def render(self, messages, prefill=""):
            text = self.hf.render(messages, prefill)
            seen.append(text)
            return text

    over = ["generate.target_inputs=10", "generate.system_prompt=writer", "generate.topic_seeds=true"]
    ctx = ctx_for(run_dir, overrides=over, backend=Recording())
    m = run_generate(ctx)
    assert m["config"]["generate"]["system_prompt"] == "writer" and m["config"]["resolved"]["topic_seeds"] is True
    assert len(seen) == 10 and all(t.startswith("<|im_start|>system\n" + INPUT_WRITER_SYSTEM) for t in seen)
    assert all("Write it about " in t for t in seen)
    with pytest.raises(ConfigError, match="generate.system_prompt"):
        ctx_for(run_dir, overrides=["generate.system_prompt=chatty"])


# ------------------------------------------------------------------ real model: teacher-forced scores


def test_scores_equal_a_plain_full_forward(lively_model):
    """log p(label + end of turn | prompt) from the engine's prefix-shared batched scoring equals the
    sum of token log-probabilities from one unbatched forward over the whole text."""
    import torch

    from selfguide import prompts
    from selfguide.backends import get_backend

    task = load_task(EXAMPLE)
    backend = get_backend("hf", model=str(lively_model), dtype="float32", batch_size=3)
    rendered = [backend.render(prompts.task_messages(task, it.input)) for it in task.split_items("test_small")[:4]]
    labels = ["entails", "neutral", "neutral entails"]  # a multi-token continuation too
    got = backend.score(rendered, labels)
    tok, model = backend.tokenizer, backend.model
    for prompt, row in zip(rendered, got):
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        for label, s in zip(labels, row):
            c_ids = tok(label + backend.end_text, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([p_ids + c_ids])).logits[0].float(), -1)
            want = sum(float(logp[len(p_ids) - 1 + k, t]) for k, t in enumerate(c_ids))
            assert s.tokens == len(c_ids)
            assert math.isclose(s.logprob, want, rel_tol=1e-4, abs_tol=1e-3), (label, s.logprob, want)
    # the scores must discriminate: not every label equally likely
    assert len({round(s.logprob, 3) for row in got for s in row}) > 3
    backend.close()


# ------------------------------------------------------------------ annotate with labeller=score


def ctx_for(run_dir, overrides=(), backend=None, task=EXAMPLE):
    base = [f"run_dir={run_dir}", "generate.target_inputs=24", "annotate.chunk_size=8", "annotate.labeller=score"]
    return make_context(task, overrides=[*base, *overrides], backend_factory=lambda: backend or FakeBackend())


def test_scored_annotation_and_reselection_without_rescoring(run_dir):
    ctx = ctx_for(run_dir)
    a = synthesize(ctx)["annotate"]["counts"]
    assert a["labeller"] == "score" and a["inputs"] == a["pairs"] + sum(a["rejected"].values())
    records = read_records(ctx.task_dir / "annotate" / "annotations.jsonl")
    assert all(len(r["order_probs"]) == 6 and math.isclose(sum(r["label_probs"]), 1.0, abs_tol=1e-4) for r in records)
    pairs = read_records(ctx.task_dir / "annotate" / "pairs.jsonl")
    assert pairs and {p["label_source"] for p in pairs} == {"score"}
    # the fake model's greedy answer gets the highest score: uncalibrated labels are that answer
    fake = FakeBackend()
    for p in pairs:
        prompt = fake.render(__import__("selfguide").prompts.task_messages(ctx.task, p["input"]))
        assert p["output"] == fake.generate([prompt])[0][0].text

    # a threshold on the calibrated margin: re-selected from the stored scores, nothing scored again
    spy = FakeBackend()
    ctx2 = make_context(EXAMPLE, overrides=[f"run_dir={run_dir}", "generate.target_inputs=24", "annotate.chunk_size=8",
                                            "annotate.labeller=score", "annotate.calibration=batch", "annotate.min_margin=0.9"],
                        force=True, backend_factory=lambda: spy)
    b = synthesize(ctx2)["annotate"]["counts"]
    assert not [c for c in spy.calls if "score" in c]
    assert b["rejected"].get("low_margin", 0) > 0 and "calibration_prior" in b


def test_score_settings_are_checked_before_any_work(run_dir):
    with pytest.raises(ConfigError, match="generation task"):
        ctx_for(run_dir, task=NIV2 / "task1562.paper_prompt.json")
    with pytest.raises(ConfigError, match="annotate.labeller=vote does not use"):
        make_context(EXAMPLE, overrides=[f"run_dir={run_dir}", "annotate.labeller=vote", "annotate.calibration=batch"])
    with pytest.raises(ConfigError, match="annotate.labeller=mbr does not use"):
        make_context(EXAMPLE, overrides=[f"run_dir={run_dir}", "preset=paper", "annotate.labeller=mbr",
                                         "annotate.min_margin=0.2"])
    assert not run_dir.exists()
    # the preset's own calibration is not an error for the vote: it is just not used
    assert make_context(EXAMPLE, overrides=[f"run_dir={run_dir}", "annotate.labeller=vote"]).cfg.annotate.calibration == "content-free"


def test_balance_by_confidence_keeps_the_surest():
    from selfguide.labels import balance_classes

    items = [{"y": "a", "c": 0.1}, {"y": "a", "c": 0.9}, {"y": "a", "c": 0.5}, {"y": "b", "c": 0.3}]
    kept, dropped = balance_classes(items, "y", "downsample", 2.0, seed=0, rank_key="c")
    assert kept == [items[1], items[3]] and len(dropped) == 2


def test_replay_share(run_dir):
    from selfguide.stages.train import with_replay

    ctx = make_context(EXAMPLE, overrides=[f"run_dir={run_dir}"])  # the default share, 0.2
    pairs = [{"id": str(i), "input": f"x{i}", "output": "entails"} for i in range(40)]
    out, replayed = with_replay(ctx, pairs)
    # 0.2 of the set: 10 rows for 40 pairs -> ceil(10 / 4 examples) = 3 copies of each of the 4
    assert replayed == 12 and len(out) == 52 and sum(p.get("label_source") == "example" for p in out) == 12
    assert with_replay(ctx, [])[1] == 4  # no synthetic pairs: the examples alone, once each
    off = make_context(EXAMPLE, overrides=[f"run_dir={run_dir}", "preset=paper"])
    assert with_replay(off, pairs) == (pairs, 0)


# ------------------------------------------------------------------ diagnosis and prompt-calibrated


def test_diagnosis_lines():
    from selfguide.stages.diagnose import diagnosis_line

    none = {"items": 60, "fewshot_top_answer": "neutral", "fewshot_top_count": 60, "class_auroc": 0.51, "no_signal": True}
    assert diagnosis_line(none) == ("diagnosis: the model answers `neutral` on 60 of 60 items and its label scores do not "
                                    "separate the classes (AUROC 0.51): its own labels cannot teach it this task; a larger "
                                    "model is needed (--model PATH)")
    assert "rank the classes the wrong way round (AUROC 0.20)" in diagnosis_line(dict(none, class_auroc=0.2))
    some = dict(none, class_auroc=0.71, no_signal=False)
    assert "separate the classes (AUROC 0.71)" in diagnosis_line(some)


def test_run_diagnoses_before_synthesis_and_reports_it(run_dir, tiny_model):
    import selfguide

    res = selfguide.run(EXAMPLE, overrides=[f"run_dir={run_dir}", f"model.name={tiny_model}", "generate.target_inputs=8",
                                            "annotate.n=2", "evaluate.max_items=8", "train.epochs=1", "model.dtype=float32",
                                            "evaluate.bootstrap=50", "annotate.orders=2"],
                        backend_factory=lambda: FakeBackend())
    d = res.verdict["diagnosis"]
    assert d["items"] == 8 and 0 <= d["class_auroc"] <= 1 and d["line"].startswith("diagnosis: the model answers")
    manifest = json.loads((res.run_dir / "diagnose" / "MANIFEST.json").read_text())
    generated = json.loads((res.run_dir / "generate" / "MANIFEST.json").read_text())
    assert manifest["finished_at"] <= generated["finished_at"]
    assert d["line"] in (res.run_dir / "report.md").read_text()


def test_bench_seeds_table(tmp_path):
    from selfguide import bench_seeds

    def preds(run, task, system, scores):
        path = run / task / "evaluate" / system / "predictions.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"id": f"i{k}", "scores": {"exact_match": v}}) + "\n" for k, v in enumerate(scores)))

    per_seed = {}
    for seed, sg in ((42, [1, 1, 0, 0]), (43, [1, 1, 1, 0])):
        run = tmp_path / bench_seeds.seed_name("b", seed)
        preds(run, "t", "prompt-fewshot", [1, 0, 0, 0])
        preds(run, "t", "selfguide", sg)
        per_seed[seed] = {"methods": ["prompt-fewshot", "selfguide"], "model": {"name": "m", "sha256": "0" * 64},
                          "split": "validation", "metric_mode": "official", "cpu_flags": [], "machine": {}, "versions": {},
                          "changed_from_defaults": {},
                          "tasks": [{"task": "t", "kind": "classification", "primary_metric": "exact_match", "numerics": [1],
                                     "scores": {"prompt-fewshot": {"exact_match": 25.0},
                                                "selfguide": {"exact_match": 100 * sum(sg) / 4}},
                                     "delta": {"value": 100 * sum(sg) / 4 - 25.0},
                                     "majority_share": 75.0, "gold_classes": 2,
                                     "diagnosis": {"class_auroc": 0.5, "no_signal": True},
                                     "balanced": {"prompt-fewshot": 50.0, "selfguide": 50.0 + seed - 42}}]}
    data = bench_seeds.summarize(per_seed, tmp_path, "b", resamples=200)
    row = data["tasks"][0]
    assert row["scores"]["selfguide"] == {"mean": 62.5, "low": 50.0, "high": 75.0, "per_seed": [50.0, 75.0]}
    assert row["delta"]["value"] == 37.5 and row["positive_seeds"] == 2  # per item: (0, .5, .5... ) averaged
    assert data["averages"]["classification"]["delta"] == 37.5
    bench_seeds.write(tmp_path / "out", data)
    md = (tmp_path / "out.md").read_text()
    assert "| t | class | 25.0 [25, 25] | 62.5 [50, 75] | +37.5" in md
    # beside the label prior: the class-balanced exact match, averaged over seeds
    assert row["balanced"] == {"prompt-fewshot": 50.0, "selfguide": 50.5} and row["majority_share"] == 75.0
    prior = data["averages"]["classification"]["label_prior"]
    assert prior["chance"] == 50.0 and prior["exact_match"] == {"prompt-fewshot": 25.0, "selfguide": 62.5}
    assert "| t | 2 | 50.0 | 75.0 | 0.50 none | 50.0 | 50.5 |" in md and "| mean balanced (1 tasks) | | 50.0 | | | 50.0 | 50.5 |" in md


def test_mbr_picks_the_consensus_of_free_text():
    from selfguide.labels import mbr_pick

    samples = ["the cat sat on the mat", "a cat sat on the mat", "dogs bark loudly at night", "the cat sat on a mat"]
    v = mbr_pick(samples, 0.3)
    assert v.answer in ("the cat sat on the mat", "the cat sat on a mat") and v.agreement > 0.5
    assert mbr_pick(["one two", "three four", "five six"], 0.3).answer is None  # no consensus: dropped
    assert mbr_pick(["alone"], 0.3).answer is None and mbr_pick(["alone"], 0.0).answer == "alone"


def test_mbr_annotation_on_a_generation_task(run_dir):
    def script(prompt, i, seed):  # three samples agree in substance, one is off
        if "InputGenerator" in prompt:
            import random

            rng = random.Random(seed)
            return " ".join(rng.choice(["river", "stone", "quiet", "market", "yellow", "garden", "window", "signal",
                                        "cotton", "bridge", "forest", "planet", "harbor", "winter"]) for _ in range(12)) + '"'
        return ["rivers flow to the sea", "rivers flow into the sea", "the moon is bright", "rivers flow to a sea"][i % 4]

    task = NIV2 / "task1562.paper_prompt.json"
    vote = make_context(task, overrides=[f"run_dir={run_dir}", "name=vote", "generate.target_inputs=10", "annotate.n=4",
                                         "annotate.output_length_filter=false"], backend_factory=lambda: FakeBackend(script=script))
    mbr = make_context(task, overrides=[f"run_dir={run_dir}", "name=mbr", "generate.target_inputs=10", "annotate.n=4",
                                        "annotate.output_length_filter=false", "annotate.labeller=mbr"],
                       backend_factory=lambda: FakeBackend(script=script))
    v, m = synthesize(vote)["annotate"]["counts"], synthesize(mbr)["annotate"]["counts"]
    # each string is 1 of 4 samples (25% < the 30% threshold): the vote finds no majority, MBR the consensus
    assert v["inputs"] == m["inputs"] > 0 and v["pairs"] == 0 and v["rejected"] == {"no_majority": v["inputs"]}
    assert m["pairs"] == m["inputs"]
    pairs = read_records(mbr.task_dir / "annotate" / "pairs.jsonl")
    assert {p["output"] for p in pairs} <= {"rivers flow to the sea", "rivers flow to a sea"} and {p["label_source"] for p in pairs} == {"mbr"}
    with pytest.raises(ConfigError, match="classification task"):
        make_context(EXAMPLE, overrides=[f"run_dir={run_dir}", "annotate.labeller=mbr"])


def test_drop_input_copies_rejects_an_answer_that_hands_its_input_back(run_dir):
    from selfguide.backends.base import STOP, Completion
    from selfguide.filters import examples_change_their_inputs, repeats_input
    from selfguide.stages.annotate import annotate_samples, make_stage

    assert repeats_input("Does this dog breed shed?", "does this dog  breed shed") and not repeats_input("Does it shed?", "Does this dog breed shed?")
    assert not repeats_input("", "") and not repeats_input("?", "!")
    assert examples_change_their_inputs([("a b", "b")]) and not examples_change_their_inputs([("a b", "A b."), ("c", "d")])
    task = NIV2 / "task1562.paper_prompt.json"  # paraphrases: no example's output repeats its input
    question = "Does this dog breed shed a lot?"
    samples = [Completion(t, STOP) for t in (question, question, "does this dog breed shed a lot", "Does this dog breed lose much hair?")]
    base = [f"run_dir={run_dir}", "annotate.output_length_filter=false"]
    on, off = (make_context(task, overrides=base + extra) for extra in (["annotate.drop_input_copies=true"], []))
    voted_on, voted_off = annotate_samples(on, question, samples), annotate_samples(off, question, samples)
    assert voted_off["sample_reasons"] == [None] * 4 and voted_off["answer"] == question  # 2 of 4: the copy wins the vote
    assert voted_on["sample_reasons"] == ["repeats_input"] * 3 + [None] and voted_on["answer"] == "Does this dog breed lose much hair?"
    # off, the annotate stage's identity is what it was before the setting existed; a classification task never reads it
    for ctx in (on, off):
        (ctx.stage_dir("generate")).mkdir(parents=True, exist_ok=True)
        (ctx.stage_dir("generate") / "inputs.jsonl").write_text("")
    assert "drop_input_copies" not in make_stage(off).config["annotate"] and make_stage(on).config["annotate"]["drop_input_copies"]
    cls = make_context(EXAMPLE, overrides=[f"run_dir={run_dir}", "name=cls", "annotate.drop_input_copies=true"])
    cls.stage_dir("generate").mkdir(parents=True, exist_ok=True)
    (cls.stage_dir("generate") / "inputs.jsonl").write_text("")
    assert "drop_input_copies" not in make_stage(cls).config["annotate"]


# ------------------------------------------------------------------ do-no-harm gate


def test_interpolation_blends_weights(tmp_path, tiny_model):
    import torch
    from safetensors.torch import load_file, save_file

    from selfguide.stages.gate import interpolate

    base = load_file(str(tiny_model / "model.safetensors"))
    tuned_dir = tmp_path / "tuned"
    tuned_dir.mkdir()
    tuned = {k: v + 1.0 for k, v in base.items()}
    save_file(tuned, str(tuned_dir / "model.safetensors"), metadata={"format": "pt"})
    (tuned_dir / "config.json").write_text((tiny_model / "config.json").read_text())
    half = load_file(str(interpolate(tiny_model, tuned_dir, 0.5, tmp_path / "half") / "model.safetensors"))
    assert all(torch.allclose(half[k], base[k] + 0.5) for k in base)
    assert (tmp_path / "half" / "config.json").exists() and not (tmp_path / "half.tmp").exists()


def scales(scores):
    return {(float(k), None): v for k, v in scores.items()}


def test_choose_the_best_candidate_and_the_smaller_change_on_a_tie():
    assert choose(scales({0.0: 50.0, 0.5: 55.0, 1.0: 60.0})) == (1.0, None)
    assert choose(scales({0.0: 50.0, 0.5: 55.0, 1.0: 55.0})) == (0.5, None)  # a tie: the smaller change
    assert choose(scales({0.0: 50.0, 0.5: 40.0, 1.0: 50.0})) == (0.0, None)
    # with earlier epochs: a tie goes to the smaller scale, then to the earlier epoch, the finished training last
    epochs = {(0.0, None): 50.0, (0.5, None): 58.0, (1.0, None): 60.0, (0.5, 1): 61.0, (1.0, 1): 61.0, (1.0, 2): 60.0}
    assert choose(epochs) == (0.5, 1)
    assert choose({**epochs, (0.5, 1): 55.0, (1.0, 1): 55.0}) == (1.0, 2)


def test_gate_settings_are_checked(run_dir):
    task = NIV2 / "task1529.paper_prompt.json"
    # reporting on validation too: the gate needs MIN_ITEMS validation items the report leaves out (task1529 has 20)
    with pytest.raises(ConfigError, match="uses 20, which leaves 0 for the gate .* another split"):
        make_context(task, overrides=[f"run_dir={run_dir}", "evaluate.gate=validation", "evaluate.split=validation"])
    with pytest.raises(ConfigError, match="leaves 14 for the gate"):
        make_context(task, overrides=[f"run_dir={run_dir}", "evaluate.gate=validation", "evaluate.split=validation",
                                      "evaluate.max_items=6"])
    with pytest.raises(ConfigError, match="needs a validation split"):
        make_context(EXAMPLE, overrides=[f"run_dir={run_dir}", "evaluate.gate=validation"])


def test_gate_scores_at_most_max_items_evenly_spaced_and_never_a_reported_one(run_dir, monkeypatch):
    from selfguide.stages import gate

    task = NIV2 / "task1529.paper_prompt.json"  # 20 validation items
    monkeypatch.setattr(gate, "MAX_ITEMS", 5)
    everything = make_context(task, overrides=[f"run_dir={run_dir}"]).task.split_items("validation")
    chosen = gate.gate_items(make_context(task, overrides=[f"run_dir={run_dir}"]))  # evaluate.max_items unset
    assert [it.id for it in chosen] == [everything[i].id for i in (0, 4, 8, 12, 16)]
    assert len(gate.gate_items(make_context(task, overrides=[f"run_dir={run_dir}", "evaluate.max_items=3"]))) == 3
    monkeypatch.setitem(gate.MIN_ITEMS, "classification", 5)
    reported_too = make_context(task, overrides=[f"run_dir={run_dir}", "evaluate.split=validation", "evaluate.max_items=10"])
    reported = {it.id for it in reported_too.task.split_items("validation")[::2]}
    left = gate.gate_items(reported_too)
    assert len(left) == 5 and not {it.id for it in left} & reported


def test_gate_auto_gates_where_it_can_and_says_why_where_it_cannot(run_dir, caplog):
    from selfguide.stages.gate import gate_mode

    task = NIV2 / "task1529.paper_prompt.json"  # 20 validation items
    assert gate_mode(make_context(task, overrides=[f"run_dir={run_dir}"])) == (True, None)  # auto, the default
    # reported on validation too, nothing is left for the gate: auto turns itself off (no error) and says why
    on, why = gate_mode(make_context(task, overrides=[f"run_dir={run_dir}", "evaluate.split=validation"]))
    assert not on and "leaves 0 for the gate" in why and "unchecked" in why
    on, why = gate_mode(make_context(EXAMPLE, overrides=[f"run_dir={run_dir}"]))
    assert not on and "has no validation split" in why
    assert gate_mode(make_context(task, overrides=[f"run_dir={run_dir}", "preset=paper"])) == (False, None)
    # free text needs 10 items (graded scores per item; docs/benchmarks/dev/gate-size.md): task1562's 14 are enough
    # when the report is on another split, and 8 left over by a report on validation are not
    free = NIV2 / "task1562.paper_prompt.json"
    assert gate_mode(make_context(free, overrides=[f"run_dir={run_dir}"])) == (True, None)
    on, why = gate_mode(make_context(free, overrides=[f"run_dir={run_dir}", "evaluate.split=validation", "evaluate.max_items=6"]))
    assert not on and "leaves 8 for the gate (it needs 10)" in why and "add 10+ `validation:` items" in why


def test_gate_keeps_the_scale_that_wins_on_validation(run_dir, tiny_model):
    import selfguide

    task = NIV2 / "task1529.paper_prompt.json"  # a random tiny model: every scale scores 0, so the tie keeps the base
    res = selfguide.run(task, overrides=[f"run_dir={run_dir}", f"model.name={tiny_model}", "generate.target_inputs=8",
                                         "annotate.n=2", "evaluate.max_items=6", "train.epochs=1", "model.dtype=float32",
                                         "evaluate.bootstrap=50", "annotate.orders=1", "evaluate.gate=validation",
                                         "annotate.label_source=conditioned", "train.learning_rate=0.05"],
                        backend_factory=lambda: FakeBackend())
    gate = json.loads((res.run_dir / "gate" / "gate.json").read_text())
    scores = {float(k): v for k, v in gate["scores"].items()}
    assert set(scores) == {0.0, 0.5, 1.0} and gate["scale"] == choose(scales(gate["scores"]))[0] and "epoch" not in gate
    assert gate["split"] == "validation" and res.verdict["sentence"].endswith(gate["sentence"])
    for scale in ("0", "0.5", "1"):
        assert (res.run_dir / "evaluate" / f"gate-scale-{scale}" / "predictions.jsonl").exists()
    # the reported model is the gate's choice: at scale 0 the finetuned answers are the base model's
    preds = {s: [r["prediction"] for r in read_records(res.run_dir / "evaluate" / s / "predictions.jsonl")]
             for s in ("prompt-fewshot", "selfguide")}
    assert gate["scale"] == 0.0 and preds["selfguide"] == preds["prompt-fewshot"]
    # and the model the run hands over is the base model, not the finetuned one (the report says the same)
    assert res.verdict["handed_over"].startswith(f"model: the base model ({tiny_model})") and "not recommended" in res.verdict["handed_over"]
    assert res.verdict["handed_over"] in res.report.read_text()
    # the half-scale blend is made only when its evaluation has to run: with every evaluation cached, a
    # deleted blend (the gate drops the ones it did not choose) is not made again, and the gate decides the same
    blends = list((res.run_dir / "gate").glob("model-scale-0.5-*"))
    assert not blends  # not chosen: deleted once the gate chose
    blends = [res.run_dir / "gate" / f"model-scale-0.5-{gate['train']}"]
    again = selfguide.run(task, overrides=[f"run_dir={run_dir}", f"model.name={tiny_model}", "generate.target_inputs=8",
                                           "annotate.n=2", "evaluate.max_items=6", "train.epochs=1", "model.dtype=float32",
                                           "evaluate.bootstrap=50", "annotate.orders=1", "evaluate.gate=validation",
                                           "annotate.label_source=conditioned", "train.learning_rate=0.05"],
                          backend_factory=lambda: FakeBackend())
    assert not blends[0].exists() and again.verdict["gate"]["scores"] == gate["scores"]


def test_gate_epochs_weighs_every_earlier_epoch_and_hands_over_the_one_it_chose(run_dir, tiny_model, monkeypatch):
    import torch
    from safetensors.torch import load_file

    import selfguide
    from selfguide.stages import gate as gate_stage

    task = NIV2 / "task1529.paper_prompt.json"
    over = [f"run_dir={run_dir}", f"model.name={tiny_model}", "generate.target_inputs=8", "annotate.n=2", "evaluate.max_items=6",
            "train.epochs=2", "model.dtype=float32", "evaluate.bootstrap=50", "annotate.orders=1", "evaluate.gate=validation",
            "evaluate.gate_epochs=true", "annotate.label_source=conditioned", "train.learning_rate=0.05"]
    # a random tiny model scores 0 everywhere (the tie would keep the base): let the gate prefer epoch 1 at full scale
    monkeypatch.setattr(gate_stage, "choose", lambda scores: (1.0, 1))
    res = selfguide.run(task, overrides=over, backend_factory=lambda: FakeBackend())
    train_dir = res.run_dir / "train"
    # the finished stage kept epoch 1's adapter (epoch 2 is adapter/) and dropped the checkpoints
    assert sorted(p.name for p in (train_dir / "epochs" / "epoch-1").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert not (train_dir / "checkpoints").exists() and not (train_dir / "epochs" / "epoch-2").exists()
    g = json.loads((res.run_dir / "gate" / "gate.json").read_text())
    assert g["epoch"] == 1 and g["scale"] == 1.0 and g["epoch_scores"].keys() == {"1"} and g["epoch_scores"]["1"].keys() == {"0.5", "1"}
    for system in ("gate-scale-0", "gate-scale-0.5", "gate-scale-1", "gate-epoch-1-scale-0.5", "gate-epoch-1-scale-1"):
        assert (res.run_dir / "evaluate" / system / "predictions.jsonl").exists()
    # epoch 1 merged: trained weights, but not the finished training's
    epoch1 = load_file(str(Path(g["model_dir"]) / "model.safetensors"))
    final = load_file(str(train_dir / "model" / "model.safetensors"))
    base: dict = {}
    for f in Path(tiny_model).glob("*.safetensors"):
        base.update(load_file(str(f)))
    trained = [k for k in final if k in base and not torch.equal(final[k], base[k])]
    assert trained and any(not torch.allclose(epoch1[k], base[k]) for k in trained)
    assert any(not torch.allclose(epoch1[k], final[k]) for k in trained)
    # what the run reports and hands over is epoch 1's model; the blends it did not choose are gone
    assert "of epoch 1 (of 2)" in g["sentence"] and "after epoch 1" in res.verdict["handed_over"]
    assert [p.name for p in (res.run_dir / "gate").glob("model-*")] == [Path(g["model_dir"]).name]
    assert res.verdict["gate"]["model_dir"] == g["model_dir"]


def test_the_gate_of_a_run_reported_on_validation_chooses_on_the_other_validation_items(run_dir, tiny_model, monkeypatch):
    from selfguide import bench, bench_seeds
    from selfguide.config import load_config
    from selfguide.stages import gate

    monkeypatch.setitem(gate.MIN_ITEMS, "classification", 5)  # task1529 has 20 validation items: 8 reported, 8 of the other 12 gate
    cfg = load_config(None, [f"run_dir={run_dir}", f"model.name={tiny_model}", "generate.target_inputs=8", "annotate.n=2",
                             "evaluate.split=validation", "evaluate.max_items=8", "train.epochs=1", "model.dtype=float32",
                             "evaluate.bootstrap=50", "annotate.orders=1", "annotate.label_source=conditioned", "name=g-s42"])
    data = bench.run_bench([str(NIV2 / "task1529.paper_prompt.json")], cfg, ["prompt-fewshot", "selfguide-gated"],
                           run_dir / "out", backend_factory=lambda: FakeBackend())
    row = data["tasks"][0]
    ids = {s: [r["id"] for r in read_records(run_dir / "g-s42" / "task1529" / "evaluate" / s / "predictions.jsonl")]
           for s in ("prompt-fewshot", "gate-scale-0", "gate-scale-1", "selfguide-gated")}
    assert len(ids["gate-scale-0"]) == 8 and not set(ids["gate-scale-0"]) & set(ids["prompt-fewshot"])
    assert ids["gate-scale-1"] == ids["gate-scale-0"] and ids["selfguide-gated"] == ids["prompt-fewshot"]
    assert row["gate"]["part"] == "rest" and row["gate"]["scale"] == choose(scales(row["gate"]["scores"]))[0]
    assert set(row["scores"]) == {"prompt-fewshot", "selfguide", "selfguide-gated"} and {"value", "ci_low"} <= set(row["delta_gated"])
    # the per-seed table shows the gated model's delta beside selfguide's, and counts its significant losses
    d, g = row["delta"], row["delta_gated"]
    assert (f"| {d['value']:+.1f} [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}] | {g['value']:+.1f} [{g['ci_low']:+.1f}, "
            f"{g['ci_high']:+.1f}] |") in (run_dir / "out.md").read_text()
    averages = data["averages"]["classification"]
    assert averages["delta_gated"] == g["value"] and averages["significant_losses_gated"] == int(g["ci_high"] < 0)
    summary = bench_seeds.summarize({42: data}, run_dir, "g", resamples=50)
    assert summary["tasks"][0]["gate_scales"] == [row["gate"]["scale"]] and "delta_gated" in summary["averages"]["classification"]
    bench_seeds.write(run_dir / "seeds", summary)
    assert "| task1529 | " + f"{row['gate']['scale']:g} |" in (run_dir / "seeds.md").read_text()
    # with evaluate.gate_epochs, a seed whose gate kept an earlier epoch says which
    row["gate"]["epoch"] = 1
    bench_seeds.write(run_dir / "seeds", bench_seeds.summarize({42: data}, run_dir, "g", resamples=50))
    assert "| task1529 | " + f"{row['gate']['scale']:g} (epoch 1) |" in (run_dir / "seeds.md").read_text()
    # where the gate has no room: with evaluate.gate=validation a bench says so before any work...
    monkeypatch.setitem(gate.MIN_ITEMS, "classification", 20)
    strict = dataclasses.replace(cfg, evaluate=dataclasses.replace(cfg.evaluate, gate="validation"))
    with pytest.raises(ConfigError, match="leaves 12 for the gate"):
        bench.run_bench([str(NIV2 / "task1529.paper_prompt.json")], strict, ["selfguide-gated"], run_dir / "out2")
    # ...and with auto, the default, the row reports the ungated model and says why
    data = bench.run_bench([str(NIV2 / "task1529.paper_prompt.json")], dataclasses.replace(cfg, name="h-s42"),
                           ["prompt-fewshot", "selfguide-gated"], run_dir / "out3", backend_factory=lambda: FakeBackend())
    row = data["tasks"][0]
    assert "leaves 12 for the gate" in row["gate"]["skipped"] and row["scores"]["selfguide-gated"] == row["scores"]["selfguide"]
    summary = bench_seeds.summarize({42: data}, run_dir, "h", resamples=50)
    assert summary["tasks"][0]["gate_scales"] == [None]
    bench_seeds.write(run_dir / "seeds", summary)
    assert "| task1529 | no room |" in (run_dir / "seeds.md").read_text()


def test_a_bench_over_both_kinds_labels_each_with_what_fits(run_dir):
    """`selfguide run` refuses a labeller that does not fit the task; a bench applies it where it fits."""
    from selfguide.config import load_config
    from selfguide.stages.context import Context

    cfg = load_config(None, [f"run_dir={run_dir}", "generate.target_inputs=8", "annotate.n=2", "annotate.labeller=score"])
    gen = Context(cfg, load_task(NIV2 / "task1562.paper_prompt.json"), backend_factory=lambda: FakeBackend())
    cls = Context(cfg, load_task(EXAMPLE), backend_factory=lambda: FakeBackend())
    assert synthesize(gen)["annotate"]["counts"]["labeller"] == "vote"
    assert synthesize(cls)["annotate"]["counts"]["labeller"] == "score"


def test_auto_labeller_scores_labels_and_votes_on_free_text(run_dir):
    """The default labeller: scored on a label set, the vote on free text; its identity is the resolved
    labeller's, so an explicit choice of the same labeller reuses the stage and the other does not."""
    from selfguide.stages import annotate

    def stage_of(task, *overrides):
        name = f"r{len(list(run_dir.glob('r*')))}" if run_dir.exists() else "r0"
        ctx = make_context(task, overrides=[f"run_dir={run_dir}", f"name={name}", "generate.target_inputs=8",
                                            "annotate.n=2", *overrides],
                           backend_factory=lambda: FakeBackend())
        synthesize(ctx)
        return ctx, annotate.make_stage(ctx)

    gen_task = NIV2 / "task1562.paper_prompt.json"
    cls, cls_stage = stage_of(EXAMPLE)
    assert annotate.labeller(cls) == "score" and cls_stage.config["annotate"]["labeller"] == "score"
    _, explicit = stage_of(EXAMPLE, "annotate.labeller=score")
    assert explicit.config == cls_stage.config
    gen, gen_stage = stage_of(gen_task)
    assert annotate.labeller(gen) == "vote"
    # the vote reads no calibration: the default preset's content-free and the paper's none label alike
    _, paper_gen = stage_of(gen_task, "preset=paper")
    assert "calibration" not in gen_stage.config["annotate"] and paper_gen.config == gen_stage.config
    _, paper_cls = stage_of(EXAMPLE, "preset=paper")
    assert paper_cls.config["annotate"]["labeller"] == "vote" and paper_cls.config != cls_stage.config
