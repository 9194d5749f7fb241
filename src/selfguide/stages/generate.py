"""Stage 1: the model writes new task inputs, in rounds, filtered per round (method.md §4).

Each round builds `prompts_per_round` prompts from the pool accepted so far, samples them in one
backend call, parses and filters the completions, and appends every candidate (kept or rejected,
with its reason and raw text) to candidates.jsonl in one write. A round is the unit of resume:
its seed depends only on (seed, task, round), so a resumed run writes the same records.
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
from selfguide.filters import DedupIndex, InputForm, LengthWindow, check_input, has_placeholder, input_form, length_window
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
    )


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
    return d


def make_stage(ctx: Context) -> Stage:
    generate = without_neutral_additions(to_dict(ctx.cfg.generate), "generate")
    del generate["min_kept"]  # the resolved value is the identity: unset, 0 and an explicit 60 can mean the same
    settings = {"generate": generate, "resolved": _settings_dict(resolve_settings(ctx))}
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
    for ex in task.examples:
        dedup.add(ex.input)
    pool: list[str] = []
    for r in records:
        if r["status"] == "kept":
            pool.append(r["input"])
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
            rng = random.Random(derive_seed(ctx.cfg.seed, task.id, STAGE, rnd))
            drafts = [
                prompts.sample_generation_prompt(task, pool, rng, s.max_pool_examples, s.label_conditioned,
                                                 s.system, s.topic_seeds)
                for _ in range(s.prompts_per_round)
            ]
            backend = ctx.backend()
            rendered = [backend.render(messages, prompts.INPUT_PREFILL) for messages, _ in drafts]
            outs = backend.generate(
                rendered, n=1, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                max_new_tokens=s.max_new_tokens, stop=prompts.INPUT_STOP,
                seed=derive_seed(ctx.cfg.seed, task.id, STAGE, rnd, "sample"),
            )
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
            pool.extend(r["input"] for r in batch if r["status"] == "kept")
            units.land(rnd, batch)
            bar.advance(note=f"{len(pool)} inputs kept")

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


def funnel_rows(counts: dict[str, Any]) -> list[list[Any]]:
    rows: list[list[Any]] = [["raw inputs", counts["raw"]]]
    for reason, n in counts["rejected"].items():
        rows.append([f"- {reason}", -n])
    rows.append(["kept inputs", counts["kept"]])
    return rows
