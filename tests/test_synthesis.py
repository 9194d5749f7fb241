"""generate + annotate: funnel accounting, label sources, resume after interruption, refusal of
changed configs, determinism and garbage model output. Fake backend for control flow, plus one
run through the real hf backend on the tiny model."""

from __future__ import annotations

import json
import random

import pytest
import yaml

from conftest import EXAMPLE, NIV2
from selfguide.backends.fake import FakeBackend
from selfguide.errors import StageStateError
from selfguide.pipeline import make_context, synthesize
from selfguide.store import read_records


def ctx_for(run_dir, backend=None, task=EXAMPLE, overrides=(), force=False):
    base = [f"run_dir={run_dir}", "generate.target_inputs=30", "annotate.n=4", "annotate.chunk_size=8"]
    factory = (lambda: backend) if backend is not None else (lambda: FakeBackend())
    return make_context(task, overrides=[*base, *overrides], force=force, backend_factory=factory)


def stage_bytes(ctx):
    files = ["generate/candidates.jsonl", "generate/inputs.jsonl", "annotate/annotations.jsonl", "annotate/pairs.jsonl", "annotate/rejected.jsonl"]
    return {f: (ctx.task_dir / f).read_bytes() for f in files}


def test_funnel_adds_up_and_files_exist(run_dir):
    ctx = ctx_for(run_dir)
    m = synthesize(ctx)
    g = m["generate"]["counts"]
    assert g["raw"] == 30 and g["raw"] == g["kept"] + sum(g["rejected"].values())
    a = m["annotate"]["counts"]
    assert a["inputs"] == g["kept"]
    assert a["pairs"] + sum(a["rejected"].values()) == a["inputs"]
    pairs = read_records(ctx.task_dir / "annotate" / "pairs.jsonl")
    assert len(pairs) == a["pairs"] and all(p["output"] in ("entails", "neutral") for p in pairs)
    ids = [r["id"] for r in read_records(ctx.task_dir / "generate" / "candidates.jsonl")]
    assert len(ids) == len(set(ids)) == 30
    assert (ctx.task_dir / "config.yaml").exists() and (ctx.task_dir / "generate" / "MANIFEST.json").exists()
    # label-conditioned generation draws target labels for classification
    assert set(r["target_label"] for r in read_records(ctx.task_dir / "generate" / "inputs.jsonl")) <= {"entails", "neutral"}


def test_second_run_is_a_noop(run_dir):
    ctx = ctx_for(run_dir)
    synthesize(ctx)
    before = stage_bytes(ctx)
    fb = FakeBackend()
    ctx2 = ctx_for(run_dir, backend=fb)
    synthesize(ctx2)
    assert fb.calls == [] and stage_bytes(ctx2) == before


def test_deterministic_across_run_dirs(tmp_path):
    a = ctx_for(tmp_path / "a")
    b = ctx_for(tmp_path / "b")
    synthesize(a)
    synthesize(b)
    assert stage_bytes(a) == stage_bytes(b)


class Interrupting(FakeBackend):
    def __init__(self, after_calls):
        super().__init__()
        self.after = after_calls

    def generate(self, prompts, **kw):
        if len(self.calls) >= self.after:
            raise KeyboardInterrupt
        return super().generate(prompts, **kw)

    def score(self, prompts, continuations):
        if len(self.calls) >= self.after:
            raise KeyboardInterrupt
        return super().score(prompts, continuations)


# generation takes calls 0-2 (3 rounds); the vote samples chunks of inputs from call 3, the scored
# labeller scores each chunk once per demonstration order (6 calls a chunk)
@pytest.mark.parametrize("labeller,after_calls", [("vote", n) for n in (0, 1, 2, 3, 5, 6)] + [("score", n) for n in (3, 8, 10)])
def test_resume_after_interrupt_gives_identical_records(tmp_path, labeller, after_calls):
    chosen = [f"annotate.labeller={labeller}"]
    ref = ctx_for(tmp_path / "ref", overrides=chosen)
    synthesize(ref)
    ctx = ctx_for(tmp_path / "int", backend=Interrupting(after_calls), overrides=chosen)
    with pytest.raises(KeyboardInterrupt):
        synthesize(ctx)
    assert not (ctx.task_dir / "annotate" / "MANIFEST.json").exists()
    resumed = ctx_for(tmp_path / "int", overrides=chosen)
    synthesize(resumed)
    assert stage_bytes(resumed) == stage_bytes(ref)


def test_min_kept_goes_on_with_rounds_until_enough_inputs_are_kept(tmp_path):
    plain_ctx = ctx_for(tmp_path / "plain")
    plain = synthesize(plain_ctx)["generate"]
    assert "min_kept" not in json.dumps(plain["config"])  # off: stages made before the setting existed are still reused
    want = plain["counts"]["kept"] + 3
    more = ctx_for(tmp_path / "more", overrides=[f"generate.min_kept={want}"])
    g = synthesize(more)["generate"]["counts"]
    assert 30 < g["raw"] < 60 and g["raw"] % 10 == 0 and g["kept"] >= want
    # the extra rounds come after the planned ones: those are the plain run's records
    first = read_records(more.task_dir / "generate" / "candidates.jsonl")[:30]
    assert first == read_records(plain_ctx.task_dir / "generate" / "candidates.jsonl")
    # a run killed in an extra round resumes to the same records and stops at the same round
    cut = ctx_for(tmp_path / "cut", backend=Interrupting(4), overrides=[f"generate.min_kept={want}"])
    with pytest.raises(KeyboardInterrupt):
        synthesize(cut)
    resumed = ctx_for(tmp_path / "cut", overrides=[f"generate.min_kept={want}"])
    synthesize(resumed)
    assert stage_bytes(resumed) == stage_bytes(more)
    # never more than twice the planned raw inputs
    capped = synthesize(ctx_for(tmp_path / "cap", overrides=["generate.min_kept=1000"]))["generate"]["counts"]
    assert capped["raw"] == 60


def test_min_kept_defaults_to_60_on_generation_tasks_only(tmp_path):
    task = NIV2 / "task1562.paper_prompt.json"
    unset = synthesize(ctx_for(tmp_path / "unset", task=task, overrides=["generate.length_filter=false"]))["generate"]
    assert unset["config"]["resolved"]["min_kept"] == 60
    assert unset["counts"]["raw"] > 30 and (unset["counts"]["kept"] >= 60 or unset["counts"]["raw"] == 60)
    # an explicit 60 is the same stage: the identity is the resolved value, not how it was spelled
    same = ctx_for(tmp_path / "unset", task=task, overrides=["generate.length_filter=false", "generate.min_kept=60"])
    assert synthesize(same)["generate"] == unset
    for spelled_off in (["generate.min_kept=0"], ["preset=paper"]):
        off = synthesize(ctx_for(tmp_path / spelled_off[0], task=task, overrides=["generate.length_filter=false", *spelled_off]))
        assert off["generate"]["counts"]["raw"] == 30 and "min_kept" not in json.dumps(off["generate"]["config"])


def test_truncated_write_is_recovered(tmp_path):
    ref = ctx_for(tmp_path / "ref")
    synthesize(ref)
    ctx = ctx_for(tmp_path / "cut", backend=Interrupting(2))
    with pytest.raises(KeyboardInterrupt):
        synthesize(ctx)
    cand = ctx.task_dir / "generate" / "candidates.jsonl"
    data = cand.read_bytes()
    cand.write_bytes(data[: len(data) - 37])  # a power cut in the middle of the last round's write
    synthesize(ctx_for(tmp_path / "cut"))
    assert stage_bytes(ctx_for(tmp_path / "cut")) == stage_bytes(ref)


def test_changed_config_is_refused_then_forced(run_dir):
    synthesize(ctx_for(run_dir))
    with pytest.raises(StageStateError, match="temperature"):
        synthesize(ctx_for(run_dir, overrides=["generate.temperature=0.9"]))
    m = synthesize(ctx_for(run_dir, overrides=["generate.temperature=0.9"], force=True))
    assert m["generate"]["config"]["resolved"]["temperature"] == 0.9
    # only the annotate settings change: generate is kept, annotate is redone
    gen_bytes = (run_dir / "default/scitail/generate/candidates.jsonl").read_bytes()
    fb = FakeBackend()
    m = synthesize(ctx_for(run_dir, backend=fb, overrides=["generate.temperature=0.9", "annotate.label_source=conditioned"], force=True))
    assert m["annotate"]["counts"]["label_source"] == "conditioned"
    assert (run_dir / "default/scitail/generate/candidates.jsonl").read_bytes() == gen_bytes
    assert fb.calls == []  # samples reused: only the selection of pairs changed


@pytest.mark.parametrize("source", ["annotate", "conditioned", "agree"])
def test_label_sources(run_dir, source):
    m = synthesize(ctx_for(run_dir, overrides=[f"annotate.label_source={source}", "annotate.balance=off"]))
    counts = m["annotate"]["counts"]
    pairs = read_records(run_dir / "default" / "scitail" / "annotate" / "pairs.jsonl")
    assert counts["label_source"] == source
    assert 0 <= counts["agreement_with_target"] <= 1
    if source == "conditioned":
        inputs = {r["id"]: r for r in read_records(run_dir / "default" / "scitail" / "generate" / "inputs.jsonl")}
        assert len(pairs) == len(inputs)
        assert all(p["output"] == inputs[p["input_id"]]["target_label"] for p in pairs)
    if source == "agree":
        assert counts["pairs"] + counts["rejected"].get("disagree", 0) == counts["inputs"]


GARBAGE = ["", "   \n\t ", "ha " * 5000, "\x00\x01\x02 control", "caf\ufffd\ufffd broken utf8",
           "NEUTRAL!!!", "  Entails.  ", "**neutral**", "Sure, I'd be happy to help!", "[output]= entails"]


def garbage_script(prompt, i, seed):
    r = random.Random(seed)
    if "InputGenerator" in prompt and r.random() < 0.2:
        return prompt[-300:]  # the prompt echoed back
    return GARBAGE[r.randrange(len(GARBAGE))]


def test_garbage_output_is_counted_not_fatal(run_dir):
    ctx = ctx_for(run_dir, backend=FakeBackend(script=garbage_script), overrides=["generate.target_inputs=60", "annotate.n=6"])
    m = synthesize(ctx)
    g, a = m["generate"]["counts"], m["annotate"]["counts"]
    assert g["raw"] == 60 == g["kept"] + sum(g["rejected"].values())
    assert set(g["rejected"]) <= {"empty", "too_short", "too_long", "duplicate", "near_duplicate"} | {k for k in g["rejected"] if k.startswith("noise:")}
    assert a["inputs"] == a["pairs"] + sum(a["rejected"].values())
    for r in read_records(ctx.task_dir / "generate" / "rejected.jsonl"):
        assert r["reason"] and "raw" in r
    lines = (ctx.task_dir / "generate" / "candidates.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # control chars and replacement chars stored safely


def test_generation_task_output_filters(run_dir):
    m = synthesize(ctx_for(run_dir, task=NIV2 / "task1562.paper_prompt.json"))
    a = m["annotate"]["counts"]
    assert "label_mix_after" not in a and a["inputs"] == a["pairs"] + sum(a["rejected"].values())
    assert m["annotate"]["config"]["resolved"]["output_length_filter"] is True


def combine_script(prompt, i, seed):
    """Inputs of two questions; answers: 3 samples copy the first question back, one is a statement, one combines."""
    r = random.Random(seed)
    if "InputGenerator" in prompt:
        a, b = r.sample(["river", "storm", "lamp", "song", "tree", "boat", "engine", "garden"], 2)
        return f"Does this dog breed like the {a} {r.randrange(10**6)}? How does this dog breed act near a {b}?"
    question = prompt.rsplit("<|user|>\n", 1)[1].split("\n<|assistant|>", 1)[0]
    first = question.split("?")[0] + "?"
    return [first, first, first, "This dog breed is calm.", "Is this dog breed calm near water?"][i % 5]


def test_form_filter_rejects_answers_no_example_would_give(tmp_path):
    task = NIV2 / "task1562.paper_prompt.json"  # paraphrase a question: examples answer a question with a new question
    over = ["generate.length_filter=false", "annotate.output_length_filter=false", "annotate.n=5", "annotate.labeller=vote"]
    plain = synthesize(ctx_for(tmp_path / "off", backend=FakeBackend(script=combine_script), task=task, overrides=over))
    on_ctx = ctx_for(tmp_path / "on", backend=FakeBackend(script=combine_script), task=task, overrides=[*over, "annotate.form_filter=true"])
    on = synthesize(on_ctx)
    off_pairs, on_pairs = read_records(tmp_path / "off" / "default" / "task1562" / "annotate" / "pairs.jsonl"), \
        read_records(on_ctx.task_dir / "annotate" / "pairs.jsonl")
    assert off_pairs and all(p["output"] == p["input"].split("?")[0] + "?" for p in off_pairs)  # the vote agrees on the copy
    assert len(on_pairs) == len(off_pairs) and all(p["output"] == "Is this dog breed calm near water?" for p in on_pairs)
    n = on["annotate"]["counts"]["inputs"]
    assert on["annotate"]["counts"]["samples_rejected"] == {"form:copies_input": 3 * n, "form:question": n}
    assert "form:copies_input" not in plain["annotate"]["counts"]["samples_rejected"]
    assert on["annotate"]["config"]["annotate"]["form_filter"] is True
    # a classification task's annotation does not read the key, so it is not in its identity
    assert "form_filter" not in synthesize(ctx_for(tmp_path / "cls"))["annotate"]["config"]["annotate"]


def test_real_hf_backend_on_tiny_model(run_dir, tiny_model):
    ctx = make_context(EXAMPLE, overrides=[f"run_dir={run_dir}", f"model.name={tiny_model}", "model.dtype=float32", "model.backend=hf",
                                           "generate.target_inputs=6", "generate.prompts_per_round=3", "annotate.n=2",
                                           "generate.max_new_tokens=24", "annotate.max_new_tokens=4"])
    m = synthesize(ctx)
    assert m["generate"]["counts"]["raw"] == 6
    assert m["generate"]["inputs"]["model"]["sha256"] and m["generate"]["inputs"]["model"]["engine"] == "hf"
    a = m["annotate"]["counts"]
    assert a["inputs"] == m["generate"]["counts"]["kept"] == a["pairs"] + sum(a["rejected"].values())


def test_hf_backend_synthesis_is_byte_identical_for_the_same_seed(tmp_path, tiny_model):
    def synth(run_dir, seed):
        ctx = make_context(EXAMPLE, overrides=[f"run_dir={run_dir}", f"model.name={tiny_model}", "model.dtype=float32", f"seed={seed}",
                                               "model.backend=hf",
                                               "generate.target_inputs=6", "generate.prompts_per_round=3", "annotate.n=3",
                                               "generate.max_new_tokens=16", "annotate.max_new_tokens=4", "generate.length_filter=false"])
        assert synthesize(ctx)["generate"]["inputs"]["model"]["engine"] == "hf"
        return {f: (ctx.task_dir / f).read_bytes() for f in ("generate/candidates.jsonl", "annotate/annotations.jsonl")}

    assert synth(tmp_path / "a", 1) == synth(tmp_path / "b", 1)
    assert synth(tmp_path / "c", 2)["generate/candidates.jsonl"] != synth(tmp_path / "a", 1)["generate/candidates.jsonl"]


def test_changed_sampling_setting_redraws_samples(run_dir, tmp_path):
    synthesize(ctx_for(run_dir, overrides=["annotate.labeller=vote"]))
    fb = FakeBackend()
    synthesize(ctx_for(run_dir, backend=fb, overrides=["annotate.labeller=vote", "annotate.n=5"], force=True))
    assert fb.calls and all(call["n"] == 5 for call in fb.calls)
    # the scored labeller's sampling setting is its demonstration orders: 3 instead of 6 scores everything again
    synthesize(ctx_for(tmp_path))
    fb = FakeBackend()
    m = synthesize(ctx_for(tmp_path, backend=fb, overrides=["annotate.orders=3"], force=True))
    assert m["annotate"]["counts"]["labeller"] == "score"
    assert fb.calls and all("score" in call for call in fb.calls)
    assert len(fb.calls) == 3 * (-(-m["annotate"]["counts"]["inputs"] // 8) + 1)  # 3 orders x (chunks + content-free)


def bracket_script(prompt, i, seed):
    r = random.Random(seed)
    if "InputGenerator" in prompt:
        word = r.choice(["cat", "dog", "river", "storm", "lamp", "song", "tree", "boat"])
        return f'The {word} [n]was {r.randrange(10**6)} here."' if r.random() < 0.5 else f'The {word} was {r.randrange(10**6)} here."'
    return "entails"


def test_placeholder_filter(run_dir, tmp_path, caplog):
    plain = synthesize(ctx_for(run_dir, backend=FakeBackend(script=bracket_script), overrides=["generate.length_filter=false"]))
    assert "placeholder" not in plain["generate"]["counts"]["rejected"]
    assert plain["generate"]["config"]["resolved"]["placeholder_filter"] is False
    on = ctx_for(tmp_path / "on", backend=FakeBackend(script=bracket_script), overrides=["generate.placeholder_filter=true", "generate.length_filter=false"])
    g = synthesize(on)["generate"]
    assert g["counts"]["rejected"]["placeholder"] > 0 and g["config"]["resolved"]["placeholder_filter"] is True
    kept = [r["input"] for r in read_records(on.task_dir / "generate" / "inputs.jsonl")]
    assert kept and not any("[n]" in k for k in kept)
    # a task whose own examples have bracketed slots keeps them
    task = yaml.safe_load(EXAMPLE.read_text())
    task["examples"][0]["input"] = "The [n] marks a new line. " + task["examples"][0]["input"]
    bracketed = tmp_path / "bracketed.json"
    bracketed.write_text(json.dumps(task))
    caplog.clear()
    g2 = synthesize(ctx_for(tmp_path / "b", backend=FakeBackend(script=bracket_script), task=bracketed,
                            overrides=["generate.placeholder_filter=true", "generate.length_filter=false"]))["generate"]
    assert "placeholder" not in g2["counts"]["rejected"]
    # switched off for this task, and said so: in the log and in the stage's saved settings
    assert g2["config"]["generate"]["placeholder_filter"] is True and g2["config"]["resolved"]["placeholder_filter"] is False
    assert g2["config"]["resolved"]["placeholder_filter_off"] == "an example input has a bracketed slot"
    assert any("placeholder_filter is off for this task" in r.getMessage() for r in caplog.records)


def statement_script(prompt, i, seed):
    r = random.Random(seed)
    if "InputGenerator" in prompt:
        words = f"the {r.choice(['cat', 'dog', 'river', 'storm'])} was {r.randrange(10**6)} here"
        return f"Why was {words}?" if r.random() < 0.5 else f"{words.capitalize()}."
    return "Why was it here?"


def test_input_form_filter(run_dir, tmp_path):
    disfluent = EXAMPLE.parent / "disfluent.yaml"  # every example input is a question
    plain = synthesize(ctx_for(run_dir, backend=FakeBackend(script=statement_script), task=disfluent,
                               overrides=["generate.length_filter=false"]))["generate"]
    # off: neither the setting nor its resolved rule is in the identity, so stages made before it existed are reused
    assert "form_filter" not in plain["config"]["generate"] and "form" not in plain["config"]["resolved"]
    assert not any(k.startswith("form:") for k in plain["counts"]["rejected"])
    on = ctx_for(tmp_path / "on", backend=FakeBackend(script=statement_script), task=disfluent,
                 overrides=["generate.form_filter=true", "generate.length_filter=false"])
    g = synthesize(on)["generate"]
    assert g["config"]["resolved"]["form"] == {"question": True} and g["counts"]["rejected"]["form:question"] > 0
    kept = [r["input"] for r in read_records(on.task_dir / "generate" / "inputs.jsonl")]
    assert kept and all(k.endswith("?") for k in kept)
    rejected = read_records(on.task_dir / "generate" / "rejected.jsonl")
    assert all(not r["input"].endswith("?") for r in rejected if r["reason"] == "form:question")


def test_reuse_from_copies_generation_for_an_annotation_ablation(tmp_path):
    synthesize(ctx_for(tmp_path))  # run "default"
    fb = FakeBackend()
    ablation = make_context(EXAMPLE, overrides=[f"run_dir={tmp_path}", "name=ablation", "generate.target_inputs=30", "annotate.n=4",
                                                "annotate.chunk_size=8", "annotate.label_source=conditioned"],
                            backend_factory=lambda: fb)
    ablation.reuse_from = "default"
    m = synthesize(ablation)
    assert fb.calls and all("score" in c for c in fb.calls)  # only annotation scored: the inputs were copied, not drawn
    assert (tmp_path / "ablation" / "scitail" / "generate" / "inputs.jsonl").read_bytes() == \
        (tmp_path / "default" / "scitail" / "generate" / "inputs.jsonl").read_bytes()
    assert m["annotate"]["config"]["annotate"]["label_source"] == "conditioned"


def test_output_first_synthesis_labels_each_input_with_the_output_it_was_written_for(tmp_path):
    task = NIV2 / "task1562.paper_prompt.json"  # paraphrase a question: a generation task
    over = ["generate.length_filter=false", "annotate.output_length_filter=false", "generate.min_kept=0"]
    fb = FakeBackend()
    ctx = ctx_for(tmp_path, backend=fb, task=task, overrides=[*over, "generate.direction=output"])
    m = synthesize(ctx)
    g, a = m["generate"]["counts"], m["annotate"]["counts"]
    assert g["raw"] == 30 and g["raw"] == g["kept"] + sum(g["rejected"].values()) and g["kept"] > 0
    assert m["generate"]["config"]["generate"]["direction"] == "output"
    assert m["generate"]["config"]["resolved"]["direction"] == "output"
    records = read_records(ctx.task_dir / "generate" / "candidates.jsonl")
    kept = [r for r in records if r["status"] == "kept"]
    # the fake answers a task prompt with its words reversed: the reverse prompt's input is the output reversed
    assert all(r["input"].split() == list(reversed(r["output"].split())) for r in kept)
    assert all(r["reason"].startswith("output_") for r in records if r["status"] != "kept" and not r["input"])
    # the label is the output the input was written for; nothing is sampled to label it
    pairs = read_records(ctx.task_dir / "annotate" / "pairs.jsonl")
    assert [(p["input"], p["output"]) for p in pairs] == [(r["input"], r["output"]) for r in kept]
    assert a["labeller"] == "backtranslated" and a["samples"] == 0 and {p["label_source"] for p in pairs} == {"backtranslated"}
    assert all(c["temperature"] == 0.0 for c in fb.calls[1::2])  # writer (sampled), then its reverse (greedy), per round
    assert sum(c["n"] for c in fb.calls) == len(fb.calls)  # one completion per prompt: no annotation samples
    # a classification task writes inputs whatever the key says: the same stages as without it
    cls_default = synthesize(ctx_for(tmp_path / "cls"))
    cls_output = synthesize(ctx_for(tmp_path / "cls-out", overrides=["generate.direction=output"]))
    assert cls_output["generate"]["config"] == cls_default["generate"]["config"]
    assert cls_output["annotate"]["counts"] == cls_default["annotate"]["counts"]


def copy_back_script(prompt, i, seed):
    """Writes outputs; the reverse prompt hands the output back unchanged on every second call."""
    r = random.Random(seed)
    if "OutputGenerator" in prompt:
        return f"Is this dog breed good with {r.choice(['cats', 'children', 'water', 'snow'])} {r.randrange(10**6)}?\"\n"
    asked = prompt.rsplit("<|user|>\n", 1)[1].split("\n<|assistant|>", 1)[0]
    return asked if int(asked.split()[-1].rstrip("?")) % 2 else "Does this dog breed like " + asked.split("with ", 1)[1]


def test_output_first_rejects_inputs_that_copy_their_output(tmp_path):
    task = NIV2 / "task1562.paper_prompt.json"  # no example's output repeats its input
    over = ["generate.length_filter=false", "generate.min_kept=0", "generate.direction=output"]
    m = synthesize(ctx_for(tmp_path, backend=FakeBackend(script=copy_back_script), task=task, overrides=over))
    records = read_records(tmp_path / "default" / "task1562" / "generate" / "candidates.jsonl")
    copies = [r for r in records if r["reason"] == "copies_output"]
    assert copies and all(r["input"] == r["output"] and int(r["output"].split()[-1].rstrip("?")) % 2 for r in copies)
    assert m["generate"]["counts"]["rejected"]["copies_output"] == len(copies)
    assert all(int(r["output"].split()[-1].rstrip("?")) % 2 == 0 for r in records if r["status"] == "kept")


@pytest.mark.parametrize("after_calls", [1, 2, 3, 5])
def test_output_first_resumes_to_identical_records(tmp_path, after_calls):
    task = NIV2 / "task1562.paper_prompt.json"
    over = ["generate.length_filter=false", "generate.min_kept=0", "generate.direction=output"]
    ref = ctx_for(tmp_path / "ref", task=task, overrides=over)
    synthesize(ref)
    cut = ctx_for(tmp_path / "int", backend=Interrupting(after_calls), task=task, overrides=over)
    with pytest.raises(KeyboardInterrupt):
        synthesize(cut)
    resumed = ctx_for(tmp_path / "int", task=task, overrides=over)
    synthesize(resumed)
    assert stage_bytes(resumed) == stage_bytes(ref)


def test_output_first_refuses_a_labeller_it_would_not_use(tmp_path):
    from selfguide.errors import ConfigError
    from selfguide.stages.annotate import check_settings

    task = NIV2 / "task1562.paper_prompt.json"
    with pytest.raises(ConfigError, match="generate.direction=output"):
        ctx_for(tmp_path, task=task, overrides=["generate.direction=output", "annotate.labeller=mbr"])
    check_settings(ctx_for(tmp_path, task=task, overrides=["annotate.labeller=mbr"]))


def test_output_first_on_the_real_hf_backend(tmp_path, tiny_model):
    ctx = make_context(NIV2 / "task1562.paper_prompt.json", overrides=[
        f"run_dir={tmp_path}", f"model.name={tiny_model}", "model.dtype=float32", "model.backend=hf", "generate.direction=output",
        "generate.target_inputs=6", "generate.prompts_per_round=3", "generate.min_kept=0", "generate.length_filter=false",
        "generate.max_new_tokens=16", "annotate.output_length_filter=false"])
    m = synthesize(ctx)
    g, a = m["generate"]["counts"], m["annotate"]["counts"]
    assert g["raw"] == 6 and m["generate"]["inputs"]["model"]["engine"] == "hf"
    assert a["inputs"] == g["kept"] == a["pairs"] + sum(a["rejected"].values())
    assert all(r["raw"] or r["reason"] for r in read_records(ctx.task_dir / "generate" / "candidates.jsonl"))


def few_outputs_script(prompt, i, seed):
    """Six outputs, drawn again and again; the reverse prompt copies back the odd ones (rejected as copies)."""
    if "OutputGenerator" in prompt:
        return SIX_OUTPUTS[random.Random(seed).randrange(6)] + '"\n'
    asked = prompt.rsplit("<|user|>\n", 1)[1].split("\n<|assistant|>", 1)[0]
    return asked if SIX_OUTPUTS.index(asked) % 2 else f"Which of these is true: {asked}"


SIX_OUTPUTS = ("Is this dog breed calm near water?", "Can this president play the violin?", "Does this national park have bears?",
               "Did this president grow up on a farm?", "Are the trails of this park open in winter?", "How long does this breed live?")


@pytest.mark.parametrize("after_calls", [2, 3, 4])
def test_output_first_resume_remembers_outputs_whose_input_was_rejected(tmp_path, after_calls):
    task = NIV2 / "task1562.paper_prompt.json"
    over = ["generate.length_filter=false", "generate.min_kept=0", "generate.direction=output"]
    ref = ctx_for(tmp_path / "ref", backend=FakeBackend(script=few_outputs_script), task=task, overrides=over)
    counts = synthesize(ref)["generate"]["counts"]["rejected"]
    assert counts["copies_output"] and counts["output_duplicate"]  # a copied output, written again, is a duplicate
    cut = Interrupting(after_calls)
    cut.script = few_outputs_script
    with pytest.raises(KeyboardInterrupt):
        synthesize(ctx_for(tmp_path / "int", backend=cut, task=task, overrides=over))
    resumed = ctx_for(tmp_path / "int", backend=FakeBackend(script=few_outputs_script), task=task, overrides=over)
    synthesize(resumed)
    assert stage_bytes(resumed) == stage_bytes(ref)
