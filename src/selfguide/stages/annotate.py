"""Stage 2: the same model labels its inputs with the few-shot task prompt (method.md §5).

labeller=vote (the paper): n samples per input, per-sample filters (classification: mapped onto
the label set, off-label samples dropped; generation: empty/length/noise, and with `form_filter`
the form rules all examples keep; with `drop_input_copies`, an answer that repeats its input where no
example's does), then a majority vote
that needs `min_agreement` of the surviving samples.
labeller=mbr (generation): the same samples, but the answer is the one with the highest mean
ROUGE-L to the others (exact-string majorities are rare in free text), kept when that mean is at
least `min_agreement`.
labeller=score (classification; `auto`, the default, picks it for a label set): each label's likelihood as the answer, averaged over
demonstration orders (label_scores.py); at selection the label prior is divided out
(`calibration`, over the pool: the model's own inputs) and inputs whose calibrated margin is
below `min_margin` are dropped.
labeller=backtranslated (generate.direction=output, generation tasks): each input was written for
an output the model wrote first (stages/generate.py), and that output is its label; nothing is sampled.
Chunks of inputs are the unit of resume. Then the label source (annotate | conditioned | agree)
and class balancing give pairs.jsonl.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import Any, Optional

from selfguide import label_scores, prompts
from selfguide.backends.base import Completion
from selfguide.calibration import argmax, calibrate, margin, mean_distribution
from selfguide.config import to_dict
from selfguide.errors import ConfigError
from selfguide.filters import check_output, examples_change_their_inputs, length_window, output_form, repeats_input
from selfguide.identity import without_neutral_additions
from selfguide.labels import balance_classes, majority_vote, map_to_label, mbr_pick
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
SELECTION_KEYS = ("label_source", "agree_margin", "balance", "balance_cap", "balance_by", "calibration", "min_margin")


def labeller(ctx: Context) -> str:
    """The labeller this task uses: `auto` scores the labels of a classification task and votes on
    free text; `score` needs a label set and `mbr` free text; for the other kind of task (a bench
    over both kinds) the vote labels it. Output-first synthesis brings its own labels. `selfguide run`
    refuses the mismatch before any work (check_settings)."""
    if generate.writes_outputs(ctx):
        return "backtranslated"
    chosen = "score" if ctx.cfg.annotate.labeller == "auto" else ctx.cfg.annotate.labeller
    fits = {"vote": True, "score": bool(ctx.task.labels), "mbr": not ctx.task.labels}[chosen]
    return chosen if fits else "vote"


def scored(ctx: Context) -> bool:
    return labeller(ctx) == "score"


def check_settings(ctx: Context) -> None:
    """Settings that contradict the task, refused before any stage runs."""
    if ctx.cfg.annotate.labeller == "score" and not ctx.task.labels:
        raise ConfigError(f"annotate.labeller=score ranks a task's labels, but {ctx.task.id} is a generation task "
                          "(no label set); use annotate.labeller=vote or mbr for it")
    if ctx.cfg.annotate.labeller == "mbr" and generate.writes_outputs(ctx):
        raise ConfigError(f"generate.direction=output labels each input of {ctx.task.id} with the output it was written "
                          "for, so annotate.labeller=mbr would not be used; drop one of the two")
    if ctx.cfg.annotate.labeller == "mbr" and ctx.task.labels:
        raise ConfigError(f"annotate.labeller=mbr picks the consensus of free-text samples, but {ctx.task.id} is a "
                          "classification task (over labels it is the vote); use annotate.labeller=vote or score for it")


def sampling_key(stage: Stage) -> dict[str, Any]:
    config = dict(stage.config)
    config["annotate"] = {k: v for k, v in config["annotate"].items() if k not in SELECTION_KEYS}
    return {"config": config, "inputs": stage.inputs}


# Settings a task's annotation does not read are left out of its identity, so that `auto` and a
# preset's unused values do not make identical labels look like another stage's.
SCORE_ONLY_KEYS = ("orders", "calibration", "min_margin")
LABEL_SET_ONLY_KEYS = ("label_source", "agree_margin", "balance", "balance_cap", "balance_by")
FREE_TEXT_ONLY_KEYS = ("form_filter", "drop_input_copies")


def make_stage(ctx: Context) -> Stage:
    annotate = {**to_dict(ctx.cfg.annotate), "labeller": labeller(ctx)}
    unread = ((() if scored(ctx) else SCORE_ONLY_KEYS) + (() if ctx.task.labels else LABEL_SET_ONLY_KEYS)
              + (FREE_TEXT_ONLY_KEYS if ctx.task.labels else ()))
    annotate = without_neutral_additions({k: v for k, v in annotate.items() if k not in unread}, "annotate")
    settings = {
        "annotate": annotate,
        "resolved": {"max_new_tokens": resolved_max_new_tokens(ctx), "output_length_filter": output_filter_on(ctx)},
    }
    reads = {"generate": file_hash(ctx.stage_dir(generate.STAGE) / "inputs.jsonl")}
    return ctx.open_stage(STAGE, settings, ctx.model_identity(), reads)


def annotate_samples(ctx: Context, input_text: str, samples: list[Completion]) -> dict[str, Any]:
    """Filter and vote one input's samples; returns the vote fields of its record."""
    task, a = ctx.task, ctx.cfg.annotate
    window = length_window([len(e.output) for e in task.examples]) if output_filter_on(ctx) else None
    form = output_form([(e.input, e.output) for e in task.examples]) if a.form_filter else None
    no_copies = a.drop_input_copies and examples_change_their_inputs([(e.input, e.output) for e in task.examples])
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
            reason = (check_output(text, window, task.noise_terms) or (form.check(text, input_text) if form else None)
                      or ("repeats_input" if no_copies and repeats_input(text, input_text) else None))
            if reason is None:
                survivors.append(text)
        reasons.append(reason)
    vote = mbr_pick(survivors, a.min_agreement) if labeller(ctx) == "mbr" else majority_vote(survivors, a.min_agreement)
    return {
        "samples": [s.text for s in samples],
        "sample_reasons": reasons,
        "votes": vote.counts,
        "answer": vote.answer,
        "agreement": round(vote.agreement, 4),
        "surviving": len(survivors),
    }


def vote_chunk(ctx: Context, backend: Any, inputs: list[str], seed: int) -> list[dict[str, Any]]:
    """The vote's fields for a chunk of inputs: annotate.n samples each under the task prompt, filtered and voted."""
    a = ctx.cfg.annotate
    rendered = [backend.render(prompts.task_messages(ctx.task, text)) for text in inputs]
    outs = backend.generate(rendered, n=a.n, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                            max_new_tokens=resolved_max_new_tokens(ctx), stop=(), seed=seed)
    return [annotate_samples(ctx, text, samples) for text, samples in zip(inputs, outs)]


def score_chunk(ctx: Context, backend: Any, inputs: list[str], orders: list[Any]) -> list[dict[str, Any]]:
    """The scored labeller's fields for a chunk of inputs: the label distribution per order and
    their mean (uncalibrated: the prior is divided out at selection, over the whole pool)."""
    rows = label_scores.order_distributions(backend, ctx.task, inputs, orders)
    out = []
    for per_order in rows:
        mean = mean_distribution(per_order)
        out.append({"order_probs": [[round(p, 6) for p in d] for d in per_order], "label_probs": [round(p, 6) for p in mean],
                    "samples": [], "sample_reasons": [], "surviving": len(per_order)})
    return out


def calibrated_labels(ctx: Context, records: list[dict[str, Any]], content_free: Optional[list[float]]) -> Optional[list[float]]:
    """Set each scored record's answer, calibrated distribution and margin; returns the prior used.
    batch and generative are the same prior here: the pool being labelled is the model's own inputs."""
    a, labels = ctx.cfg.annotate, ctx.task.labels
    prior = None
    if a.calibration in ("batch", "generative") and records:
        prior = mean_distribution([r["label_probs"] for r in records])
    elif a.calibration == "content-free":
        prior = content_free
    for r in records:
        q = calibrate(r["label_probs"], prior)
        r["calibrated_probs"] = [round(p, 6) for p in q]
        r["votes"] = dict(zip(labels, r["calibrated_probs"]))
        r["agreement"] = round(margin(q), 4)  # the labeller's confidence, as the vote share is for vote
        r["answer"] = labels[argmax(q)] if margin(q) >= a.min_margin else None
    return prior


CONTENT_FREE_FILE = "content_free.json"


def content_free_prior(ctx: Context, stage: Stage, orders: list[Any]) -> list[float]:
    """The label distribution for content-free inputs, scored once and kept with the drawn scores
    (dropped with them when the sampling settings change), so re-selecting pairs scores nothing again."""
    path = stage.dir / CONTENT_FREE_FILE
    if path.exists():
        return json.loads(path.read_text())
    prior = label_scores.content_free_prior(ctx.backend(), ctx.task, orders)
    atomic_write_json(path, prior)
    return prior


def run_annotate(ctx: Context) -> dict[str, Any]:
    stage = make_stage(ctx)
    if stage.begin(ctx.force, keep=("annotations.jsonl", "sampling.json", CONTENT_FREE_FILE)) == "done":
        return stage.skip(ctx.task.id)
    started = time.time()
    task, a = ctx.task, ctx.cfg.annotate
    inputs = read_records(ctx.stage_dir(generate.STAGE) / "inputs.jsonl")
    ann_path = stage.dir / "annotations.jsonl"
    key_path = stage.dir / "sampling.json"
    key = sampling_key(stage)
    if key_path.exists() and json.loads(key_path.read_text()) != key:
        ann_path.unlink(missing_ok=True)  # drawn with other sampling settings: draw again
        (stage.dir / CONTENT_FREE_FILE).unlink(missing_ok=True)
    elif key_path.exists() and ann_path.exists():
        log.info("annotate[%s]: reusing drawn samples, re-selecting pairs", task.id)
    atomic_write_json(key_path, key)
    chunks = [inputs[i : i + a.chunk_size] for i in range(0, len(inputs), a.chunk_size)]
    units = stage.units(ann_path.name, [[x["id"] for x in c] for c in chunks], key="input_id")

    orders = label_scores.demo_orders(task.examples, a.orders, derive_seed(ctx.cfg.seed, task.id, "orders")) if scored(ctx) else []

    with ctx.progress.bar(f"annotate {task.id}", len(inputs), "inputs") as bar:
        bar.resume(units.done_count)
        for ci in units:
            chunk = chunks[ci]
            texts = [x["input"] for x in chunk]
            if scored(ctx):
                labelled = score_chunk(ctx, ctx.backend(), texts, orders)
            elif labeller(ctx) == "backtranslated":
                labelled = [{"answer": x["output"], "agreement": 1.0, "votes": {}, "samples": [], "sample_reasons": [],
                             "surviving": 1} for x in chunk]
            else:
                labelled = vote_chunk(ctx, ctx.backend(), texts, derive_seed(ctx.cfg.seed, task.id, STAGE, ci))
            batch = [{"id": x["id"].replace(":g:", ":a:", 1), "input_id": x["id"], "input": x["input"],
                      "target_label": x.get("target_label"), **fields} for x, fields in zip(chunk, labelled)]
            units.land(ci, batch)
            # scored answers are decided at selection (calibration needs the whole pool)
            answered = sum(r["answer"] is not None for r in units.records) if not scored(ctx) else 0
            bar.advance(len(chunk), note="labels scored" if scored(ctx) else f"{answered} with an accepted answer")

    records = units.records
    order = {x["id"]: i for i, x in enumerate(inputs)}
    records.sort(key=lambda r: order[r["input_id"]])
    prior = content_free_prior(ctx, stage, orders) if scored(ctx) and a.calibration == "content-free" else None
    pairs, rejected, stats = select_pairs(ctx, records, prior)
    write_records(stage.dir / "pairs.jsonl", pairs)
    write_records(stage.dir / "rejected.jsonl", rejected)
    manifest = stage.finish(stats, started, funnel=funnel_rows(stats))
    log.info("annotate[%s]: %d inputs -> %d pairs", task.id, len(records), len(pairs))
    return manifest


def select_pairs(ctx: Context, records: list[dict[str, Any]],
                 content_free: Optional[list[float]] = None) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """Apply the calibration (scored labeller), the label source and class balancing; every drop
    keeps its reason."""
    task, a = ctx.task, ctx.cfg.annotate
    source = a.label_source if task.labels else "annotate"
    is_scored = scored(ctx)
    prior = calibrated_labels(ctx, records, content_free) if is_scored else None
    candidates: list[dict] = []
    rejected: list[dict] = []
    for r in records:
        pair = {"id": r["id"], "input_id": r["input_id"], "input": r["input"], "agreement": r["agreement"]}
        if source == "annotate" or r.get("target_label") is None:
            if r["answer"] is None:
                reason = ("low_margin" if is_scored else "no_valid_sample" if r["surviving"] == 0
                          else "low_consensus" if labeller(ctx) == "mbr" else "no_majority")
                rejected.append({**r, "reason": reason})
                continue
            candidates.append({**pair, "output": r["answer"], "label_source": labeller(ctx)})
            continue
        target = r["target_label"]
        if source == "agree":
            total = 1.0 if is_scored else r["surviving"]  # scored: votes are calibrated probabilities
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
        "labeller": labeller(ctx),
        "rejected": dict(Counter(r["reason"] for r in rejected)),
        "labelled": len(candidates),
    }
    if prior is not None:
        stats["calibration_prior"] = dict(zip(task.labels, [round(p, 4) for p in prior]))
    if task.labels:
        both = [r for r in records if r.get("target_label") is not None and r["answer"] is not None]
        stats["agreement_with_target"] = round(sum(r["answer"] == r["target_label"] for r in both) / len(both), 4) if both else None
        stats["label_mix_before"] = dict(Counter(p["output"] for p in candidates))
        kept, dropped = balance_classes(candidates, "output", a.balance, a.balance_cap, derive_seed(ctx.cfg.seed, task.id, "balance"),
                                        rank_key="agreement" if a.balance_by == "confidence" else None)
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
