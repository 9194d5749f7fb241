"""Stage 2: the same model labels its inputs by few-shot prompting + self-consistency (method.md §5).

Per input: n samples with the task prompt, per-sample filters (classification: mapped onto the
label set, off-label samples dropped; generation: empty/length/noise), then a majority vote that
needs `min_agreement` of the surviving samples. Chunks of inputs are the unit of resume.
Then the label source (annotate | conditioned | agree) and class balancing give pairs.jsonl.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import Any, Optional

from selfguide import prompts
from selfguide.backends.base import Completion
from selfguide.config import to_dict
from selfguide.filters import check_output, length_window
from selfguide.labels import balance_classes, majority_vote, map_to_label
from selfguide.stages import generate
from selfguide.stages.context import Context, derive_seed
from selfguide.store import Stage, atomic_write_json, file_hash, read_records, write_records

log = logging.getLogger(__name__)
STAGE = "annotate"


def resolved_max_new_tokens(ctx: Context) -> int:
    """The annotation budget (prompts.answer_budget unless set): samples it cuts are rejected as
    `cut_at_max_tokens`. Evaluation uses the same budget."""
    a, task = ctx.cfg.annotate, ctx.task
    return a.max_new_tokens or prompts.answer_budget(task)


def output_filter_on(ctx: Context) -> bool:
    a = ctx.cfg.annotate
    return a.output_length_filter if a.output_length_filter is not None else ctx.task.kind == "generation"


# Settings that only choose among already-drawn votes: changing them (with --force) re-selects the
# pairs without drawing the samples again.
SELECTION_KEYS = ("label_source", "agree_margin", "balance", "balance_cap")


def sampling_key(stage: Stage) -> dict[str, Any]:
    config = dict(stage.config)
    config["annotate"] = {k: v for k, v in config["annotate"].items() if k not in SELECTION_KEYS}
    return {"config": config, "inputs": stage.inputs}


def make_stage(ctx: Context) -> Stage:
    settings = {
        "annotate": to_dict(ctx.cfg.annotate),
        "resolved": {"max_new_tokens": resolved_max_new_tokens(ctx), "output_length_filter": output_filter_on(ctx)},
    }
    reads = {"generate": file_hash(ctx.stage_dir(generate.STAGE) / "inputs.jsonl")}
    return ctx.open_stage(STAGE, settings, ctx.model_identity(), reads)


def annotate_samples(ctx: Context, samples: list[Completion]) -> dict[str, Any]:
    """Filter and vote one input's samples; returns the vote fields of its record."""
    task, a = ctx.task, ctx.cfg.annotate
    window = length_window([len(e.output) for e in task.examples]) if output_filter_on(ctx) else None
    survivors: list[str] = []
    reasons: list[Optional[str]] = []
    for sample in samples:
        text = sample.text.strip()
        if sample.cut:
            reason: Optional[str] = "cut_at_max_tokens"  # unfinished: its label or text may be a fragment
        elif task.labels:
            label = map_to_label(text, task.labels) if text else None
            reason = "empty" if not text else "off_label" if label is None else None
            if label is not None:
                survivors.append(label)
        else:
            reason = check_output(text, window, task.noise_terms)
            if reason is None:
                survivors.append(text)
        reasons.append(reason)
    vote = majority_vote(survivors, a.min_agreement)
    return {
        "samples": [s.text for s in samples],
        "sample_reasons": reasons,
        "votes": vote.counts,
        "answer": vote.answer,
        "agreement": round(vote.agreement, 4),
        "surviving": len(survivors),
    }


def run_annotate(ctx: Context) -> dict[str, Any]:
    stage = make_stage(ctx)
    if stage.begin(ctx.force, keep=("annotations.jsonl", "sampling.json")) == "done":
        return stage.skip(ctx.task.id)
    started = time.time()
    task, a = ctx.task, ctx.cfg.annotate
    inputs = read_records(ctx.stage_dir(generate.STAGE) / "inputs.jsonl")
    ann_path = stage.dir / "annotations.jsonl"
    key_path = stage.dir / "sampling.json"
    key = sampling_key(stage)
    if key_path.exists() and json.loads(key_path.read_text()) != key:
        ann_path.unlink(missing_ok=True)  # drawn with other sampling settings: draw again
    elif key_path.exists() and ann_path.exists():
        log.info("annotate[%s]: reusing drawn samples, re-selecting pairs", task.id)
    atomic_write_json(key_path, key)
    chunks = [inputs[i : i + a.chunk_size] for i in range(0, len(inputs), a.chunk_size)]
    units = stage.units(ann_path.name, [[x["id"] for x in c] for c in chunks], key="input_id")
    max_new = resolved_max_new_tokens(ctx)

    with ctx.progress.bar(f"annotate {task.id}", len(inputs), "inputs") as bar:
        bar.resume(units.done_count)
        for ci in units:
            chunk = chunks[ci]
            backend = ctx.backend()
            rendered = [backend.render(prompts.task_messages(task, x["input"])) for x in chunk]
            outs = backend.generate(
                rendered, n=a.n, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                max_new_tokens=max_new, stop=(), seed=derive_seed(ctx.cfg.seed, task.id, STAGE, ci),
            )
            batch = []
            for x, samples in zip(chunk, outs):
                rec = {
                    "id": x["id"].replace(":g:", ":a:", 1), "input_id": x["id"], "input": x["input"],
                    "target_label": x.get("target_label"), **annotate_samples(ctx, samples),
                }
                batch.append(rec)
            units.land(ci, batch)
            bar.advance(len(chunk))

    records = units.records
    order = {x["id"]: i for i, x in enumerate(inputs)}
    records.sort(key=lambda r: order[r["input_id"]])
    pairs, rejected, stats = select_pairs(ctx, records)
    write_records(stage.dir / "pairs.jsonl", pairs)
    write_records(stage.dir / "rejected.jsonl", rejected)
    manifest = stage.finish(stats, started, funnel=funnel_rows(stats))
    log.info("annotate[%s]: %d inputs -> %d pairs", task.id, len(records), len(pairs))
    return manifest


def select_pairs(ctx: Context, records: list[dict[str, Any]]) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """Apply the label source and class balancing; every drop keeps its reason."""
    task, a = ctx.task, ctx.cfg.annotate
    source = a.label_source if task.labels else "annotate"
    candidates: list[dict] = []
    rejected: list[dict] = []
    for r in records:
        pair = {"id": r["id"], "input_id": r["input_id"], "input": r["input"], "agreement": r["agreement"]}
        if source == "annotate" or r.get("target_label") is None:
            if r["answer"] is None:
                reason = "no_valid_sample" if r["surviving"] == 0 else "no_majority"
                rejected.append({**r, "reason": reason})
                continue
            candidates.append({**pair, "output": r["answer"], "label_source": "vote"})
            continue
        target = r["target_label"]
        if source == "agree":
            total = r["surviving"]
            against = max((c for lab, c in r["votes"].items() if lab != target), default=0)
            if total and against / total >= a.agree_margin:
                rejected.append({**r, "reason": "disagree"})
                continue
        candidates.append({**pair, "output": target, "label_source": "conditioned"})

    sample_reasons = Counter(reason for r in records for reason in r["sample_reasons"] if reason)
    stats: dict[str, Any] = {
        "inputs": len(records),
        "samples": sum(len(r["samples"]) for r in records),
        "samples_rejected": dict(sorted(sample_reasons.items())),
        "label_source": source,
        "rejected": dict(Counter(r["reason"] for r in rejected)),
        "labelled": len(candidates),
    }
    if task.labels:
        both = [r for r in records if r.get("target_label") is not None and r["answer"] is not None]
        stats["agreement_with_target"] = round(sum(r["answer"] == r["target_label"] for r in both) / len(both), 4) if both else None
        stats["label_mix_before"] = dict(Counter(p["output"] for p in candidates))
        kept, dropped = balance_classes(candidates, "output", a.balance, a.balance_cap, derive_seed(ctx.cfg.seed, task.id, "balance"))
        rejected.extend({**d, "reason": "balanced_out"} for d in dropped)
        if dropped:
            stats["rejected"]["balanced_out"] = len(dropped)
        stats["label_mix_after"] = dict(Counter(p["output"] for p in kept))
        if len(stats["label_mix_after"]) < 2 and kept:
            log.warning("annotate[%s]: the training set has only one label (%s); the finetuned model will learn to "
                        "always answer it. Try annotate.label_source=conditioned or agree.", task.id, list(stats["label_mix_after"]))
        candidates = kept
    stats["pairs"] = len(candidates)
    return candidates, rejected, stats


def funnel_rows(stats: dict[str, Any]) -> list[list[Any]]:
    rows: list[list[Any]] = [["inputs", stats["inputs"]]]
    for reason, n in stats["rejected"].items():
        rows.append([f"- {reason}", -n])
    rows.append(["training pairs", stats["pairs"]])
    return rows
