"""Stage 4: greedy decoding on held-out labelled items, for the finetuned model and the baselines.

Systems (one name each, in the run folder, the verdict and the bench table): `selfguide`
(finetuned model, few-shot prompt), `prompt-fewshot` (base model, same prompt: the paper's
baseline), `prompt-zeroshot` (base model, no examples), and the bench's `finetune-fewshot` and
`icl-synthetic`. Every system gets the same decode budget, sized from the task's labels or
example outputs, never from test references. Predictions are appended per batch (resume loses at
most one batch) and scores are recomputed from them. The identity of an evaluation hashes the
items' contents, so edited eval items are scored again.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any, Callable, Optional, Sequence

from selfguide import prompts
from selfguide.backends import Backend, model_backend
from selfguide.identity import digest, model_identity
from selfguide.labels import map_to_label
from selfguide.metrics import confusion, normalize_answer, score_item
from selfguide.stages.context import Context
from selfguide.store import atomic_write_json, read_records, write_records
from selfguide.task import Example, Instance

log = logging.getLogger(__name__)
STAGE = "evaluate"
EVAL_BATCH = 32  # items per backend call and per append: the unit of resume
BASELINE_SYSTEMS = {"fewshot": "prompt-fewshot", "zeroshot": "prompt-zeroshot"}


def eval_items(ctx: Context) -> list[Instance]:
    """The split's items (without those that repeat a demonstration, see TaskSpec.split_items);
    with evaluate.max_items, an evenly spaced subset in split order (split files are often
    grouped by label, so the first N items would be one class)."""
    return evenly_spaced(ctx.task.split_items(ctx.cfg.evaluate.split), ctx.cfg.evaluate.max_items)


def evenly_spaced(items: list[Instance], k: Optional[int]) -> list[Instance]:
    """k items spread over the list in its order (all of them without k or when there are fewer)."""
    if k and k < len(items):
        return [items[(i * len(items)) // k] for i in range(k)]
    return items


def eval_budget(ctx: Context) -> int:
    return ctx.cfg.evaluate.max_new_tokens or prompts.answer_budget(ctx.task)


def primary_metric(ctx: Context) -> str:
    base = ctx.task.metric
    return f"paper_{base}" if ctx.cfg.evaluate.metrics == "paper" else base


def run_evaluate(
    ctx: Context, system: str, model: dict[str, Any], backend_factory: Callable[[], Backend],
    shots: str | Sequence[Example] = "fewshot", items: Optional[list[Instance]] = None, part: Optional[str] = None,
) -> dict[str, Any]:
    """Evaluate one system; returns its manifest (with `results`).

    `shots`: "fewshot" (the task's examples), "zeroshot", or an explicit list of demonstrations.
    `items` replaces the split's items (the gate's); `part` then names which part of the split they are.
    """
    if items is None:
        items = eval_items(ctx)
    if not items:
        raise_no_items(ctx)
    e = ctx.cfg.evaluate
    if isinstance(shots, str):
        shot_list: Sequence[Example] | None = None if shots == "fewshot" else ()
        shots_id: Any = shots
    else:
        shot_list = list(shots)
        shots_id = [len(shot_list), digest([[x.input, x.output] for x in shot_list])]
    budget = eval_budget(ctx)
    settings = {"split": e.split, "max_items": e.max_items, "max_new_tokens": budget, "shots": shots_id,
                **({"part": part} if part else {})}
    reads = {"items": {"n": len(items), "sha256": digest([[it.id, it.input, list(it.outputs)] for it in items])}}
    stage = ctx.open_stage(f"{STAGE}:{system}", settings, model, reads, folder=f"{STAGE}/{system}")
    if stage.begin(ctx.force) == "done":
        return stage.skip(ctx.task.id)
    started = time.time()
    task = ctx.task
    batches = [items[i : i + EVAL_BATCH] for i in range(0, len(items), EVAL_BATCH)]
    units = stage.units("predictions.jsonl", [[it.id for it in b] for b in batches])
    gold_labels = sorted({it.outputs[0] for it in items}) if task.labels else []
    with ctx.progress.bar(f"evaluate {task.id} {system}", len(items), "items") as bar:
        bar.resume(units.done_count)
        for bi in units:
            batch = batches[bi]
            backend = backend_factory()
            rendered = [backend.render(prompts.task_messages(task, it.input, shot_list)) for it in batch]
            outs = backend.generate(rendered, n=1, temperature=0.0, max_new_tokens=budget, seed=ctx.cfg.seed)
            recs = []
            for it, prompt, out in zip(batch, rendered, outs):
                pred = out[0].text.strip()
                rec = {"id": it.id, "prompt": prompt, "prediction": pred, "references": list(it.outputs),
                       "cut_at_max_tokens": out[0].cut, "scores": score_item(pred, it.outputs, task.kind, gold_labels)}
                if task.labels:
                    rec["predicted_label"] = map_to_label(pred, task.labels)
                recs.append(rec)
            units.land(bi, recs)
            bar.advance(len(batch))
    by_id = {r["id"]: r for r in units.records}
    ordered = [by_id[it.id] for it in items]
    write_records(stage.dir / "predictions.jsonl", ordered)
    results = summarize(ctx, ordered)
    atomic_write_json(stage.dir / "results.json", results)
    return stage.finish({"items": len(ordered)}, started, results=results, model=model)


def has_eval_items(ctx: Context) -> bool:
    return bool(eval_items(ctx))


def no_items_line(ctx: Context) -> str:
    """What a run without labelled items can and cannot do, in one line."""
    return (f"task {ctx.task.id} has no labelled items in split '{ctx.cfg.evaluate.split}': selfguide will synthesise data, "
            "finetune the model and export it, but cannot measure whether it beats prompting. For a verdict, add an "
            "'eval:' list of labelled items to the task file, then run `selfguide evaluate TASK --finetuned` "
            "(synthesis and training are reused, not redone).")


def no_verdict(ctx: Context) -> dict[str, Any]:
    """The verdict record of a run that had nothing to evaluate on."""
    return {"task": ctx.task.id, "metric": primary_metric(ctx), "n_items": 0, "split": ctx.cfg.evaluate.split,
            "baseline": None, "deltas": {}, "seed": ctx.cfg.seed, "prompting_score": None, "finetuned_score": None,
            "delta": None, "sentence": f"no verdict: {ctx.task.id} has no labelled items in split "
            f"'{ctx.cfg.evaluate.split}' (add an 'eval:' list to the task file, then `selfguide evaluate TASK --finetuned`)"}


def raise_no_items(ctx: Context) -> None:
    from selfguide.errors import TaskError

    raise TaskError(
        f"{ctx.task.source}: task {ctx.task.id} has no labelled items in split '{ctx.cfg.evaluate.split}'; "
        "add an 'eval:' list to the task file to measure prompting vs finetuned"
    )


def summarize(ctx: Context, preds: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean scores in points (0-100) and, for classification, per-label accuracy and confusion."""
    task = ctx.task
    metrics = sorted({m for p in preds for m in p["scores"]})
    out: dict[str, Any] = {
        "n": len(preds),
        "split": ctx.cfg.evaluate.split,
        "excluded_items": len(task.excluded_items(ctx.cfg.evaluate.split)),
        "primary_metric": primary_metric(ctx),
        "scores": {m: round(100 * sum(p["scores"][m] for p in preds) / len(preds), 2) for m in metrics},
        "cut_at_max_tokens": sum(bool(p.get("cut_at_max_tokens")) for p in preds),
    }
    if task.labels:
        norm_labels = {normalize_answer(lab) for lab in task.labels}
        out["valid_label_share"] = round(100 * sum(normalize_answer(p["prediction"]) in norm_labels for p in preds) / len(preds), 2)
        gold = [p["references"][0] for p in preds]
        predicted = [p.get("predicted_label") for p in preds]
        per_label: dict[str, Any] = {}
        for lab in task.labels:
            idx = [i for i, g in enumerate(gold) if g == lab]
            if idx:
                per_label[lab] = {"n": len(idx), "accuracy": round(100 * sum(preds[i]["scores"]["exact_match"] for i in idx) / len(idx), 2)}
        out["per_label"] = per_label
        out["confusion"] = confusion(predicted, gold, list(task.labels))
        out["predicted_mix"] = dict(Counter(p or "<other>" for p in predicted))
    return out


# ------------------------------------------------------------------ systems


def model_factory(ctx: Context, model: str) -> Callable[[], Backend]:
    """Lazily build (once) a backend for `model` (base or finetuned) on the evaluation engine;
    `factory.close()` frees it."""
    holder: dict[str, Backend] = {}

    def factory() -> Backend:
        if "b" not in holder:
            holder["b"] = model_backend(ctx.eval_model_config(), model, ctx.eval_engine())
        return holder["b"]

    def close() -> None:
        if holder:
            holder.pop("b").close()

    factory.close = close  # type: ignore[attr-defined]
    return factory


def base_identity(ctx: Context) -> dict[str, Any]:
    return ctx.base_model_identity(ctx.eval_engine())


def base_backend_factory(ctx: Context) -> Callable[[], Backend]:
    """The base model: the synthesis backend itself when it is the real model, else loaded once."""
    if ctx.engine() == ctx.eval_engine() and ctx.backend_factory is None:
        return ctx.backend
    return model_factory(ctx, ctx.cfg.model.name)


def evaluate_prompting(ctx: Context, shots: str) -> dict[str, Any]:
    """The base model prompted with (`fewshot`) or without (`zeroshot`) the task's examples."""
    return run_evaluate(ctx, BASELINE_SYSTEMS[shots], base_identity(ctx), base_backend_factory(ctx), shots=shots)


def evaluate_calibrated(ctx: Context) -> dict[str, Any]:
    """`prompt-calibrated`: the base model as a classifier without any training. Every label is
    scored as the answer to the few-shot prompt over `annotate.orders` demonstration orders
    (label_scores.py) and the prior of `evaluate.calibration` is divided out: batch = the
    evaluated items' own mean (transductive, no labels read), generative = the mean over the
    synthetic pool (the generate stage's inputs), content-free = "N/A"-like inputs. It shows
    whether finetuning adds anything over using the calibrated scores directly."""
    from selfguide import label_scores
    from selfguide.calibration import argmax, calibrate, gold_auroc, mean_distribution
    from selfguide.stages.context import derive_seed
    from selfguide.store import file_hash

    task, e = ctx.task, ctx.cfg.evaluate
    items = eval_items(ctx)
    if not items:
        raise_no_items(ctx)
    if not task.labels:
        from selfguide.errors import TaskError

        raise TaskError(f"{task.source}: prompt-calibrated scores labels, but {task.id} is a generation task (no label set)")
    pool_path = ctx.stage_dir("generate") / "inputs.jsonl"
    settings = {"split": e.split, "max_items": e.max_items, "orders": ctx.cfg.annotate.orders, "calibration": e.calibration}
    reads: dict[str, Any] = {"items": {"n": len(items), "sha256": digest([[it.id, it.input, list(it.outputs)] for it in items])}}
    if e.calibration == "generative":
        reads["pool"] = file_hash(pool_path)
    stage = ctx.open_stage(f"{STAGE}:prompt-calibrated", settings, base_identity(ctx), reads, folder=f"{STAGE}/prompt-calibrated")
    if stage.begin(ctx.force) == "done":
        return stage.skip(task.id)
    started = time.time()
    factory = base_backend_factory(ctx)
    orders = label_scores.demo_orders(task.examples, ctx.cfg.annotate.orders, derive_seed(ctx.cfg.seed, task.id, "orders"))
    batches = [items[i : i + EVAL_BATCH] for i in range(0, len(items), EVAL_BATCH)]
    units = stage.units("label_scores.jsonl", [[it.id for it in b] for b in batches])
    with ctx.progress.bar(f"evaluate {task.id} prompt-calibrated", len(items), "items") as bar:
        bar.resume(units.done_count)
        for bi in units:
            dists = label_scores.label_distributions(factory(), task, [it.input for it in batches[bi]], orders)
            units.land(bi, [{"id": it.id, "label_probs": d} for it, d in zip(batches[bi], dists)])
            bar.advance(len(batches[bi]))
    by_id = {r["id"]: r["label_probs"] for r in units.records}
    dists = [by_id[it.id] for it in items]
    prior = None
    if e.calibration == "batch":
        prior = mean_distribution(dists)
    elif e.calibration == "generative":
        pool = [r["input"] for r in read_records(pool_path)]
        prior = mean_distribution(label_scores.label_distributions(factory(), task, pool, orders)) if pool else None
    elif e.calibration == "content-free":
        prior = label_scores.content_free_prior(factory(), task, orders)
    if hasattr(factory, "close"):  # a model loaded for this alone (not the run's shared backend)
        factory.close()
    gold_labels = sorted({it.outputs[0] for it in items})
    preds = []
    for it, d in zip(items, dists):
        q = calibrate(d, prior)
        label = task.labels[argmax(q)]
        preds.append({"id": it.id, "prediction": label, "predicted_label": label, "references": list(it.outputs),
                      "label_probs": [round(x, 6) for x in d], "calibrated_probs": [round(x, 6) for x in q],
                      "scores": score_item(label, it.outputs, task.kind, gold_labels)})
    write_records(stage.dir / "predictions.jsonl", preds)
    results = summarize(ctx, preds)
    auroc = gold_auroc([p["calibrated_probs"] for p in preds], [it.outputs[0] for it in items], task.labels)
    results["class_auroc"] = round(auroc, 4) if auroc is not None else None
    results["calibration"] = {"kind": e.calibration, "prior": dict(zip(task.labels, [round(x, 4) for x in prior])) if prior else None}
    atomic_write_json(stage.dir / "results.json", results)
    return stage.finish({"items": len(preds)}, started, results=results, model=base_identity(ctx))


def evaluate_baselines(ctx: Context) -> dict[str, Any]:
    """Prompting baselines on the base model: few-shot (the paper's) and zero-shot."""
    return {BASELINE_SYSTEMS[shots]: evaluate_prompting(ctx, shots) for shots in ctx.cfg.evaluate.baselines}


def trained_identity(ctx: Context, train_manifest: dict[str, Any], system: str) -> dict[str, Any]:
    """A finetuned model is identified by the train stage that made it (settings, inputs, time)."""
    made_by = digest([train_manifest["config"], train_manifest["inputs"], train_manifest["finished_at"],
                      *([train_manifest["gate_scale"]] if "gate_scale" in train_manifest else []),
                      *([train_manifest["gate_epoch"]] if train_manifest.get("gate_epoch") else [])])
    return model_identity(ctx.cfg.model, ctx.eval_engine(), f"{system}:{ctx.task.id}", trained=made_by)


def evaluate_trained(ctx: Context, train_manifest: dict[str, Any], system: str = "selfguide") -> dict[str, Any]:
    """Evaluate a model written by a train stage, with the few-shot prompt it was trained on."""
    factory = model_factory(ctx, train_manifest["model_dir"])
    try:
        return run_evaluate(ctx, system, trained_identity(ctx, train_manifest, system), factory, shots="fewshot")
    finally:
        factory.close()  # type: ignore[attr-defined]


def evaluate_model(ctx: Context, shots: str) -> tuple[str, dict[str, Any]]:
    """`selfguide evaluate`: the configured model prompted as `shots`; returns (system, manifest)."""
    from selfguide.models import resolve_model

    ident = resolve_model(ctx.cfg.model.name).identity()
    system = f"model-{ident['sha256'][:8]}-{shots}"
    factory = model_factory(ctx, ctx.cfg.model.name)
    try:
        return system, run_evaluate(ctx, system, base_identity(ctx), factory, shots=shots)
    finally:
        factory.close()  # type: ignore[attr-defined]


def verdict(ctx: Context, baseline: str = "prompt-fewshot", system: str = "selfguide") -> dict[str, Any]:
    """finetuned - prompting per metric, with paired bootstrap 95% CIs, and a plain sentence."""
    from selfguide.metrics import paired_bootstrap

    root = ctx.stage_dir(STAGE)
    base_preds = read_records(root / baseline / "predictions.jsonl")
    sys_preds = {r["id"]: r for r in read_records(root / system / "predictions.jsonl")}
    pairs = [(b, sys_preds[b["id"]]) for b in base_preds if b["id"] in sys_preds]
    metrics = sorted(pairs[0][0]["scores"]) if pairs else []
    deltas = {}
    for m in metrics:
        a = [b["scores"][m] for b, _ in pairs]
        s = [x["scores"][m] for _, x in pairs]
        mean, lo, hi = paired_bootstrap(a, s, ctx.cfg.evaluate.bootstrap, seed=ctx.cfg.seed)
        deltas[m] = {
            "prompting": round(100 * sum(a) / len(a), 2), "finetuned": round(100 * sum(s) / len(s), 2),
            "delta": round(100 * mean, 2), "ci_low": round(100 * lo, 2), "ci_high": round(100 * hi, 2),
        }
    primary = primary_metric(ctx)
    d = deltas.get(primary)
    names = {"exact_match": "exact match", "rougeL": "ROUGE-L", "paper_exact_match": "paper-compatible exact match",
             "paper_rougeL": "paper-compatible ROUGE-L (char LCS)"}
    if d is None:
        sentence = "no verdict: nothing was evaluated"
    else:
        significant = d["ci_low"] > 0 or d["ci_high"] < 0
        verb = "improved" if d["delta"] > 0 else "lowered" if d["delta"] < 0 else "left unchanged"
        sentence = (
            f"selfguide {verb} {names.get(primary, primary)}" + (" " if d["delta"] == 0 else " by ") + f"{d['delta']:+.1f} points "
            f"(95% CI {d['ci_low']:+.1f} to {d['ci_high']:+.1f}) on {len(pairs)} {ctx.cfg.evaluate.split} items "
            f"({d['prompting']:.1f} -> {d['finetuned']:.1f})" + ("" if significant else "; the interval includes 0, so not significant")
        )
    return {"task": ctx.task.id, "metric": primary, "n_items": len(pairs), "split": ctx.cfg.evaluate.split,
            "baseline": baseline, "deltas": deltas, "sentence": sentence, "seed": ctx.cfg.seed,
            "prompting_score": d["prompting"] if d else None, "finetuned_score": d["finetuned"] if d else None,
            "delta": {"value": d["delta"], "ci_low": d["ci_low"], "ci_high": d["ci_high"]} if d else None}
