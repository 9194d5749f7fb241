"""Stage 4: greedy decoding on held-out labelled items, for the finetuned model and the baselines.

Systems: `selfguide` (finetuned model, few-shot prompt), `prompt-fewshot` (base model, same
prompt: the paper's baseline) and `prompt-zeroshot` (base model, no examples). Predictions are
appended per batch (resume loses at most one batch) and scores are recomputed from them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import Counter
from typing import Any, Callable, Sequence

from selfguide import prompts
from selfguide.backends import Backend
from selfguide.labels import map_to_label
from selfguide.metrics import confusion, normalize_answer, score_item
from selfguide.stages.context import Context
from selfguide.store import Stage, append_records, atomic_write_json, read_records, write_records
from selfguide.task import Example, Instance

log = logging.getLogger(__name__)
STAGE = "evaluate"
EVAL_BATCH = 32  # items per backend call and per append: the unit of resume


def eval_items(ctx: Context) -> list[Instance]:
    """The split's items; with evaluate.max_items, an evenly spaced subset in split order
    (split files are often grouped by label, so the first N items would be one class)."""
    items = ctx.task.split_items(ctx.cfg.evaluate.split)
    k = ctx.cfg.evaluate.max_items
    if k and k < len(items):
        items = [items[(i * len(items)) // k] for i in range(k)]
    return items


def max_new_tokens(ctx: Context, items: list[Instance]) -> int:
    if ctx.cfg.evaluate.max_new_tokens:
        return ctx.cfg.evaluate.max_new_tokens
    task = ctx.task
    if task.labels:
        return max(8, math.ceil(max(len(x) for x in task.labels) / 2) + 4)
    longest = max([len(r) for it in items for r in it.outputs] + [len(e.output) for e in task.examples])
    return min(512, max(32, math.ceil(1.5 * longest / 3.5) + 16))


def primary_metric(ctx: Context) -> str:
    base = ctx.task.metric
    return f"paper_{base}" if ctx.cfg.evaluate.metrics == "paper" else base


def run_evaluate(
    ctx: Context, system: str, model_identity: dict[str, Any], backend_factory: Callable[[], Backend],
    shots: str | Sequence[Example] = "fewshot",
) -> dict[str, Any]:
    """Evaluate one system; returns its manifest (with `results`).

    `shots`: "fewshot" (the task's examples), "zeroshot", or an explicit list of demonstrations.
    """
    items = eval_items(ctx)
    if not items:
        raise_no_items(ctx)
    e = ctx.cfg.evaluate
    if isinstance(shots, str):
        shot_list: Sequence[Example] | None = None if shots == "fewshot" else ()
        shots_id: Any = shots
    else:
        shot_list = list(shots)
        shots_id = [len(shot_list), hashlib.sha256(json.dumps([[x.input, x.output] for x in shot_list]).encode()).hexdigest()[:16]]
    config = {"split": e.split, "max_items": e.max_items, "max_new_tokens": max_new_tokens(ctx, items), "shots": shots_id}
    inputs = {"task": ctx.task.fingerprint(), "items": [it.id for it in items][:3] + [len(items)], "model": model_identity}
    reuse = ctx.reuse_dir(STAGE)
    stage = Stage(ctx.stage_dir(STAGE) / system, f"{STAGE}:{system}", config, inputs, reuse / system if reuse else None)
    state = stage.begin(ctx.force)
    if state == "done":
        log.info("evaluate[%s/%s]: up to date, skipping", ctx.task.id, system)
        return stage.manifest()  # type: ignore[return-value]
    started = time.time()
    task = ctx.task
    pred_path = stage.dir / "predictions.jsonl"
    wanted = {it.id for it in items}
    done = {r["id"]: r for r in read_records(pred_path, repair=True) if r["id"] in wanted}
    todo = [it for it in items if it.id not in done]
    gold_labels = sorted({it.outputs[0] for it in items}) if task.labels else []
    with ctx.progress.bar(f"evaluate {task.id} {system}", len(items), "items") as bar:
        bar.resume(len(done))
        for start in range(0, len(todo), EVAL_BATCH):
            batch = todo[start : start + EVAL_BATCH]
            backend = backend_factory()
            rendered = [backend.render(prompts.task_messages(task, it.input, shot_list)) for it in batch]
            outs = backend.generate(rendered, n=1, temperature=0.0, max_new_tokens=config["max_new_tokens"], seed=ctx.cfg.seed)
            recs = []
            for it, prompt, out in zip(batch, rendered, outs):
                pred = out[0].strip()
                rec = {"id": it.id, "prompt": prompt, "prediction": pred, "references": list(it.outputs),
                       "scores": score_item(pred, it.outputs, task.kind, gold_labels)}
                if task.labels:
                    rec["predicted_label"] = map_to_label(pred, task.labels)
                recs.append(rec)
            append_records(pred_path, recs)
            stage.landed()
            done.update((r["id"], r) for r in recs)
            bar.advance(len(batch))
    ordered = [done[it.id] for it in items]
    write_records(pred_path, ordered)
    results = summarize(ctx, ordered)
    atomic_write_json(stage.dir / "results.json", results)
    return stage.finish({"items": len(ordered)}, started, results=results, model=model_identity)


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
        "primary_metric": primary_metric(ctx),
        "scores": {m: round(100 * sum(p["scores"][m] for p in preds) / len(preds), 2) for m in metrics},
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
