"""Before synthesis: does the base model have any signal on this task that its own labels could teach?

Self-training can only amplify what the model already knows: calibration shifts a decision
boundary but cannot rotate it (small-models.md §1). So when a classification task has labelled
items, the base model is measured on them first: the share of its few-shot answers that are one
label, and whether its label scores separate the classes at all (one-vs-rest AUROC of the
calibrated label distribution; 0.5 = none). Below NO_SIGNAL_AUROC the run says, in one plain
line in the console and the report, that its own labels cannot teach it this task.
Gold labels are read only to measure this signal; nothing in synthesis or training uses them.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any, Optional

from selfguide import label_scores
from selfguide.calibration import calibrate, gold_auroc, mean_distribution
from selfguide.identity import digest
from selfguide.stages.context import Context, derive_seed
from selfguide.store import read_records

log = logging.getLogger(__name__)
STAGE = "diagnose"
# Tasks whose label scores separate the classes no better than this are "no signal"
# (small-models.md ranked change 1: AUROC <= 0.55 should be expected to gain nothing).
NO_SIGNAL_AUROC = 0.55
# The task's own demonstration order only: separation is a property of the scores, and one order
# costs a sixth of six (docs/benchmarks/dev/labeller.md compares the AUROC of 1 and 6 orders).
DIAGNOSIS_ORDERS = 1


def diagnose(ctx: Context) -> Optional[dict[str, Any]]:
    """The label-signal diagnosis of a classification task with labelled items (None otherwise).
    Needs the prompt-fewshot evaluation (its answers); scores the labels on the same items."""
    from selfguide.stages.evaluate import base_backend_factory, base_identity, eval_items

    task = ctx.task
    items = eval_items(ctx)
    fewshot = ctx.stage_dir("evaluate") / "prompt-fewshot" / "predictions.jsonl"
    if not task.labels or not items or not fewshot.exists():
        return None
    orders_n = min(ctx.cfg.annotate.orders, DIAGNOSIS_ORDERS)
    settings = {"split": ctx.cfg.evaluate.split, "max_items": ctx.cfg.evaluate.max_items, "orders": orders_n}
    reads = {"items": digest([[it.id, it.input, list(it.outputs)] for it in items])}
    stage = ctx.open_stage(STAGE, settings, base_identity(ctx), reads)
    if stage.begin(ctx.force) == "done":
        return stage.skip(task.id)["counts"]
    started = time.time()
    orders = label_scores.demo_orders(task.examples, orders_n, derive_seed(ctx.cfg.seed, task.id, "orders"))
    factory = base_backend_factory(ctx)
    dists: list[list[float]] = []
    with ctx.progress.bar(f"diagnose {task.id}: label scores", len(items), "items") as bar:
        for start in range(0, len(items), 32):
            chunk = items[start : start + 32]
            dists.extend(label_scores.label_distributions(factory(), task, [it.input for it in chunk], orders))
            bar.advance(len(chunk))
    if hasattr(factory, "close"):  # a model loaded for this alone (not the run's shared backend)
        factory.close()
    calibrated = [calibrate(d, mean_distribution(dists)) for d in dists]
    auroc = gold_auroc(calibrated, [it.outputs[0] for it in items], task.labels)
    answers = Counter(r.get("predicted_label") or "<other>" for r in read_records(fewshot))
    top, count = answers.most_common(1)[0]
    counts = {"items": len(items), "fewshot_top_answer": top, "fewshot_top_count": count,
              "fewshot_answers": dict(answers), "class_auroc": None if auroc is None else round(auroc, 3),
              "no_signal": auroc is not None and auroc <= NO_SIGNAL_AUROC}
    counts["line"] = diagnosis_line(counts)
    stage.finish(counts, started)
    return counts


def diagnosis_line(d: dict[str, Any]) -> str:
    """One plain sentence on the model's signal for the task."""
    answers = f"the model answers `{d['fewshot_top_answer']}` on {d['fewshot_top_count']} of {d['items']} items"
    auroc = d["class_auroc"]
    if auroc is None:
        return f"diagnosis: {answers}; the items have one class only, so the label scores' separation cannot be measured"
    if d["no_signal"]:
        how = ("rank the classes the wrong way round" if auroc < 1 - NO_SIGNAL_AUROC else "do not separate the classes")
        return (f"diagnosis: {answers} and its label scores {how} (AUROC {auroc:.2f}): its own labels "
                "cannot teach it this task; a larger model is needed (--model PATH)")
    return (f"diagnosis: {answers}; its label scores separate the classes (AUROC {auroc:.2f}), so labels it gives "
            "itself carry some signal")
