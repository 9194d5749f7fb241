"""Stage 1: the model writes new task inputs, in rounds, filtered per round (method.md §4).

Each round builds `prompts_per_round` prompts from the pool accepted so far, samples them in one
backend call, parses and filters the completions, and appends every candidate (kept or rejected,
with its reason and raw text) to candidates.jsonl in one write. A round is the unit of resume:
its seed depends only on (seed, task, round), so a resumed run writes the same records.

With generate.direction=output (generation tasks) a round writes new *outputs* from the example
outputs instead, and then, greedily, the input each one was made from under the task prompt turned
around (instruction backtranslation, prompts.reverse_task_messages). A kept record carries both;
the annotate stage takes its output as the label: the training target is text the model wrote as
an output, never its answer to an input it may not understand.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

from selfguide import prompts
from selfguide.config import to_dict
from selfguide.filters import (DedupIndex, InputForm, LengthWindow, check_input, examples_change_their_inputs, has_placeholder,
                               input_form, length_window, repeats_input)
from selfguide.identity import without_neutral_additions
from selfguide.stages.context import Context, derive_seed
from selfguide.store import Stage, write_records

log = logging.getLogger(__name__)
STAGE = "generate"


@dataclass(frozen=True)
class GenerateSettings:
    """The generate config with the task-dependent defaults filled in."""

    target_inputs: int
    rounds: int
    prompts_per_round: int
    temperature: float
    top_k: int
    top_p: float
    max_new_tokens: int
    max_pool_examples: int
    label_conditioned: bool
    window: Optional[LengthWindow]
    near_duplicate_threshold: Optional[float]
    rouge_threshold: Optional[float]
    noise_terms: tuple[str, ...]
    placeholder_filter: bool
    form: Optional[InputForm]
    system: Optional[str]
    topic_seeds: bool
    min_kept: Optional[int]
    direction: str = "input"
    output_window: Optional[LengthWindow] = None
    output_max_new_tokens: int = 0

    @property
    def max_rounds(self) -> int:
        """Rounds planned: `rounds`, or up to twice as many while fewer than min_kept are kept."""
        return 2 * self.rounds if self.min_kept else self.rounds


# Kept inputs to go on generating for when generate.min_kept is unset, on generation tasks only: on the development
# tasks it raised ROUGE-L on every seed, while on classification it left exact match where it was (-0.2 EM, the
# seeds split) for 45% more time (docs/benchmarks/dev/generation-screen.md, classification-screen.md).
GENERATION_MIN_KEPT = 60


def resolve_settings(ctx: Context) -> GenerateSettings:
    g, task = ctx.cfg.generate, ctx.task
    cls = task.kind == "classification"
    target = g.target_inputs or (400 if cls else 200)
    window = length_window([len(e.input) for e in task.examples]) if g.length_filter else None
    upper_chars = window.high if window else max(len(e.input) for e in task.examples) * 2
    return GenerateSettings(
        target_inputs=target,
        rounds=math.ceil(target / g.prompts_per_round),
        prompts_per_round=g.prompts_per_round,
        temperature=g.temperature if g.temperature is not None else (0.6 if cls else 1.0),
        top_k=g.top_k,
        top_p=g.top_p,
        max_new_tokens=g.max_new_tokens or prompts.decode_budget(upper_chars),
        max_pool_examples=g.max_pool_examples,
        label_conditioned=g.label_conditioned and cls,
        window=window,
        near_duplicate_threshold=g.near_duplicate_threshold,
        rouge_threshold=g.rouge_threshold,
        noise_terms=tuple(task.noise_terms) + tuple(g.noise_terms),
        placeholder_filter=g.placeholder_filter and not placeholder_in_examples(task),
        form=input_form([e.input for e in task.examples]) if g.form_filter else None,
        system=prompts.INPUT_WRITER_SYSTEM if g.system_prompt == "writer" else None,
        topic_seeds=g.topic_seeds,
        min_kept=(None if cls else GENERATION_MIN_KEPT) if g.min_kept is None else (g.min_kept or None),
        **output_first_settings(ctx),
    )


def writes_outputs(ctx: Context) -> bool:
    """generate.direction=output on a generation task. A classification task keeps writing inputs
    (its outputs are labels)."""
    return ctx.cfg.generate.direction == "output" and ctx.task.kind != "classification"


def output_first_settings(ctx: Context) -> dict[str, Any]:
    """Output-first synthesis: the writer's length window and token budget come from the example outputs."""
    g, task = ctx.cfg.generate, ctx.task
    if not writes_outputs(ctx):
        return {}
    window = length_window([len(e.output) for e in task.examples]) if g.length_filter else None
    upper_chars = window.high if window else max(len(e.output) for e in task.examples) * 2
    return {"direction": "output", "output_window": window, "output_max_new_tokens": prompts.decode_budget(upper_chars)}


def placeholder_in_examples(task: Any) -> bool:
    """An example input with a bracketed slot: the filter would reject the task's own format."""
    return any(has_placeholder(e.input) for e in task.examples)


def _settings_dict(s: GenerateSettings) -> dict[str, Any]:
    d = {k: getattr(s, k) for k in s.__dataclass_fields__}
    d["window"] = [s.window.low, s.window.high] if s.window else None
    d["noise_terms"] = list(s.noise_terms)
    # settings that are off leave the identity that of the stages made before they existed
    if s.min_kept is None:
        del d["min_kept"]
    if s.form is None:
        del d["form"]
    else:
        d["form"] = {"question": s.form.question}
    if s.direction == "input":
        for key in ("direction", "output_window", "output_max_new_tokens"):
            del d[key]
    elif s.output_window:
        d["output_window"] = [s.output_window.low, s.output_window.high]
    return d


def make_stage(ctx: Context) -> Stage:
    generate = without_neutral_additions(to_dict(ctx.cfg.generate), "generate")
    del generate["min_kept"]  # the resolved value is the identity: unset, 0 and an explicit 60 can mean the same
    resolved = resolve_settings(ctx)
    if resolved.direction == "input":
        generate.pop("direction", None)  # a classification task writes inputs whatever the key says
    settings = {"generate": generate, "resolved": _settings_dict(resolved)}
    if ctx.cfg.generate.placeholder_filter and placeholder_in_examples(ctx.task):
        settings["resolved"]["placeholder_filter_off"] = "an example input has a bracketed slot"
    return ctx.open_stage(STAGE, settings, ctx.model_identity())


def record_id(task_id: str, rnd: int, i: int) -> str:
    return f"{task_id}:g:r{rnd:04d}:{i:03d}"


def run_generate(ctx: Context) -> dict[str, Any]:
    """Run (or resume, or skip) input generation for one task; returns the manifest."""
    stage = make_stage(ctx)
    if stage.begin(ctx.force) == "done":
        return stage.skip(ctx.task.id)
    started = time.time()
    s = resolve_settings(ctx)
    task = ctx.task
    if ctx.cfg.generate.placeholder_filter and not s.placeholder_filter:
        log.warning("generate[%s]: generate.placeholder_filter is off for this task: an example input has a bracketed "
                    "slot like [n], which the filter would reject (recorded in the stage's settings)", task.id)
    units = stage.units("candidates.jsonl", [[record_id(task.id, r, i) for i in range(s.prompts_per_round)]
                                             for r in range(s.max_rounds)])
    records = units.records
    done_rounds = units.done_count // s.prompts_per_round
    if done_rounds:
        log.info("generate[%s]: resuming after round %d of %d", task.id, done_rounds, s.rounds)

    dedup = DedupIndex(s.near_duplicate_threshold, s.rouge_threshold)
    output_dedup = DedupIndex(s.near_duplicate_threshold, s.rouge_threshold)
    for ex in task.examples:
        dedup.add(ex.input)
        output_dedup.add(ex.output)
    written = "output" if s.direction == "output" else "input"  # what the writer writes, and is shown as earlier work
    pool: list[str] = []
    for r in records:
        if written == "output" and not (r["reason"] or "").startswith("output_"):
            output_dedup.add(r["output"])  # an output that passed its filters, whatever became of its input
        if r["status"] == "kept":
            pool.append(r[written])
            dedup.add(r["input"])

    with ctx.progress.bar(f"generate {task.id}", s.rounds if done_rounds <= s.rounds else s.max_rounds, "rounds") as bar:
        bar.resume(done_rounds)
        for rnd in units:
            if rnd >= s.rounds and len(pool) >= (s.min_kept or 0):
                break  # rounds are done in order, so a resumed run stops at the same round
            if rnd == s.rounds:
                bar.extend(s.max_rounds)
                log.info("generate[%s]: %d inputs kept after %d rounds; going on until %d are kept (at most %d rounds)",
                         task.id, len(pool), rnd, s.min_kept, s.max_rounds)
            batch = (output_first_round(ctx, s, rnd, pool, dedup, output_dedup) if written == "output"
                     else input_round(ctx, s, rnd, pool, dedup))
            pool.extend(r[written] for r in batch if r["status"] == "kept")
            units.land(rnd, batch)
            bar.advance(note=f"{len(pool)} {'pairs' if written == 'output' else 'inputs'} kept")

    kept = [r for r in records if r["status"] == "kept"]
    rejected = [r for r in records if r["status"] != "kept"]
    write_records(stage.dir / "inputs.jsonl", kept)
    write_records(stage.dir / "rejected.jsonl", rejected)
    reasons = Counter(r["reason"] for r in rejected)
    counts = {
        "raw": len(records),
        "kept": len(kept),
        "rejected": dict(sorted(reasons.items())),
        "target_labels": dict(Counter(r["target_label"] for r in kept if r["target_label"] is not None)),
    }
    manifest = stage.finish(counts, started, funnel=funnel_rows(counts))
    log.info("generate[%s]: %d raw -> %d kept (%s)", task.id, counts["raw"], counts["kept"],
             ", ".join(f"{k} {v}" for k, v in reasons.most_common()) or "nothing rejected")
    return manifest


def write_round_drafts(ctx: Context, s: GenerateSettings, rnd: int, pool: list[str],
                       field: str) -> tuple[list[tuple[list[prompts.Message], Optional[str]]], list[list[Any]]]:
    """A round's writer prompts (their random parts drawn from the round's seed) and one sampled
    completion each: new inputs, or new outputs for output-first synthesis."""
    task = ctx.task
    rng = random.Random(derive_seed(ctx.cfg.seed, task.id, STAGE, rnd))
    conditioned = s.label_conditioned and field == "input"
    drafts = [
        prompts.sample_generation_prompt(task, pool, rng, s.max_pool_examples, conditioned, s.system, s.topic_seeds, field)
        for _ in range(s.prompts_per_round)
    ]
    backend = ctx.backend()
    prefill, stop, budget = ((prompts.INPUT_PREFILL, prompts.INPUT_STOP, s.max_new_tokens) if field == "input"
                             else (prompts.OUTPUT_PREFILL, prompts.OUTPUT_STOP, s.output_max_new_tokens))
    outs = backend.generate(
        [backend.render(messages, prefill) for messages, _ in drafts], n=1, temperature=s.temperature, top_k=s.top_k,
        top_p=s.top_p, max_new_tokens=budget, stop=stop, seed=derive_seed(ctx.cfg.seed, task.id, STAGE, rnd, "sample"),
    )
    return drafts, outs


def input_round(ctx: Context, s: GenerateSettings, rnd: int, pool: list[str], dedup: DedupIndex) -> list[dict[str, Any]]:
    """One round of the paper's synthesis: `prompts_per_round` new inputs, each filtered."""
    task = ctx.task
    drafts, outs = write_round_drafts(ctx, s, rnd, pool, "input")
    batch = []
    for i, ((_, label), samples) in enumerate(zip(drafts, outs)):
        raw = samples[0].text
        text = prompts.parse_generated_input(raw)
        reason = check_input(text, s.window, s.noise_terms, dedup, s.placeholder_filter, s.form)
        rec = {
            "id": record_id(task.id, rnd, i), "round": rnd, "index": i, "input": text, "raw": raw,
            "target_label": label, "status": "rejected" if reason else "kept", "reason": reason,
        }
        if not reason:
            dedup.add(text)
        batch.append(rec)
    return batch


def output_first_round(ctx: Context, s: GenerateSettings, rnd: int, pool: list[str], dedup: DedupIndex,
                       output_dedup: DedupIndex) -> list[dict[str, Any]]:
    """One round of output-first synthesis: new outputs (the output filters: empty, length, noise,
    duplicate, each reason prefixed `output_`), then greedily the input of each surviving output,
    through the input filters, and rejected when it only repeats its output (`copies_output`, on
    tasks whose examples all change their inputs: such a pair teaches that doing nothing is the task)."""
    task = ctx.task
    _, outs = write_round_drafts(ctx, s, rnd, pool, "output")
    backend = ctx.backend()
    batch = []
    for i, samples in enumerate(outs):
        raw = samples[0].text
        output = prompts.parse_generated_input(raw, field="output")
        reason = check_input(output, s.output_window, s.noise_terms, output_dedup)
        if not reason:
            output_dedup.add(output)
        batch.append({"id": record_id(task.id, rnd, i), "round": rnd, "index": i, "input": "", "output": output, "raw": raw,
                      "target_label": None, "status": "rejected" if reason else "kept",
                      "reason": f"output_{reason}" if reason else None})
    written = [r for r in batch if r["status"] == "kept"]
    no_copies = examples_change_their_inputs([(e.input, e.output) for e in task.examples])
    if written:
        reverse = [backend.render(prompts.reverse_task_messages(task, r["output"])) for r in written]
        inputs = backend.generate(reverse, n=1, temperature=0.0, max_new_tokens=s.max_new_tokens,
                                  seed=derive_seed(ctx.cfg.seed, task.id, STAGE, rnd, "reverse"))
        for rec, samples in zip(written, inputs):
            rec["raw_input"] = samples[0].text
            text = samples[0].text.strip()
            reason = ("cut_at_max_tokens" if samples[0].cut else None) or (
                "copies_output" if no_copies and repeats_input(text, rec["output"]) else None) or check_input(
                text, s.window, s.noise_terms, dedup, s.placeholder_filter, s.form)
            rec["input"] = text
            if reason:
                rec.update(status="rejected", reason=reason)
            else:
                dedup.add(text)
    return batch


def funnel_rows(counts: dict[str, Any]) -> list[list[Any]]:
    rows: list[list[Any]] = [["raw inputs", counts["raw"]]]
    for reason, n in counts["rejected"].items():
        rows.append([f"- {reason}", -n])
    rows.append(["kept inputs", counts["kept"]])
    return rows
