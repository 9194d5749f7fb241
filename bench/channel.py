"""Does the base model have label signal when asked the other way round? Noisy-channel scoring, inference only.

The direct scorer (`annotate.labeller=score`) ranks labels by log p(label | input). Its class AUROC
is about 0.5 on every classification development task (labeller.md): the model's label scores do
not separate the classes. The noisy channel (Min et al., ACL 2022) scores log p(input | label)
instead: the demonstrations become "answer -> input" turns and each label's prompt scores the whole
input. It is reported to help small models most where labels are imbalanced or examples few, so it
is the last cheap place the signal could hide. On each classification development task's
`validation` items (evenly spaced, as labeller.md), with the task's few-shot examples:

  score+cf       the direct scorer over 6 demonstration orders with contextual calibration (the default
                 labeller, for reference)
  channel-1      log p(input | label) per token, the task's own demonstration order
  channel        the same with the per-label scores averaged over all 6 orders
  channel+batch  channel, each label's mean score over the evaluated items subtracted (a label whose
                 prompt makes every input likelier is not preferred)
  product        score+cf times channel (both views)

Reported: exact match / macro-F1 / class AUROC (one-vs-rest, 0.5 = no signal) and the confidence
AUROC, as labeller.md.

    python bench/channel.py [--tasks 190,199,...] [--items 100] [--out docs/benchmarks/dev/channel.md]

Resumable: finished tasks are kept in the JSON next to --out.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NIV2 = ROOT.parent / "shared" / "niv2"
DEV_CLASSIFICATION = ("190", "199", "200", "738", "937", "1385", "1386")
METHODS = ("score+cf", "channel-1", "channel", "channel+batch", "product")
CHANNEL_NOTE = "You are given the answer first; write a task input for which it is the correct answer."


def channel_scores(backend, task, inputs, order):
    """Per input, per label: log p(input + end of turn | channel prompt for that label), per token. The
    channel prompt is the task prompt turned around (the instruction, each demonstration as its answer
    then its input, then the label), as output-first synthesis uses it, with CHANNEL_NOTE."""
    from selfguide import prompts

    per_label = []
    for label in task.labels:
        rendered = backend.render(prompts.reverse_task_messages(task, label, order, CHANNEL_NOTE))
        per_label.append([s.mean for s in backend.score([rendered], inputs)[0]])
    return [[per_label[k][i] for k in range(len(task.labels))] for i in range(len(inputs))]


def run_task(tid, n_items, run_dir):
    from selfguide import label_scores, pipeline
    from selfguide.calibration import calibrate, mean_distribution, softmax
    from selfguide.stages.evaluate import eval_items

    from labeller import judge

    ctx = pipeline.make_context(NIV2 / f"task{tid}.paper_prompt.json", overrides=[
        f"run_dir={run_dir}", "name=dev-quick-s42", "seed=42", "evaluate.split=validation", f"evaluate.max_items={n_items}"])
    task = ctx.task
    items = eval_items(ctx)
    inputs, gold = [it.input for it in items], [it.outputs[0] for it in items]
    backend = ctx.backend()
    orders = label_scores.demo_orders(task.examples, 6, 42)
    t0 = time.time()
    direct = label_scores.label_distributions(backend, task, inputs, orders)
    cf = label_scores.content_free_prior(backend, task, orders)
    t_direct = time.time() - t0
    t0 = time.time()
    per_order = [channel_scores(backend, task, inputs, order) for order in orders]
    t_channel = time.time() - t0
    ctx.close_backend()
    k = len(task.labels)
    mean_scores = [[sum(o[i][j] for o in per_order) / len(per_order) for j in range(k)] for i in range(len(inputs))]
    label_means = [sum(row[j] for row in mean_scores) / len(mean_scores) for j in range(k)]
    direct_cf = [calibrate(d, cf) for d in direct]
    channel = [softmax(row) for row in mean_scores]
    dists = {
        "score+cf": direct_cf,
        "channel-1": [softmax(o) for o in per_order[0]],
        "channel": channel,
        "channel+batch": [softmax([s - m for s, m in zip(row, label_means)]) for row in mean_scores],
        "product": [calibrate(a, [1 / max(x, 1e-12) for x in b]) for a, b in zip(direct_cf, channel)],
    }
    return {
        "task": task.id, "engine": ctx.engine(), "labels": list(task.labels), "items": len(items),
        "gold_mix": dict(Counter(gold)), "methods": {m: judge(dists[m], gold, list(task.labels)) for m in METHODS},
        "seconds": {"direct_6_orders": round(t_direct, 1), "channel_6_orders": round(t_channel, 1)},
        "order_agreement": round(100 * sum(len({max(range(k), key=o[i].__getitem__) for o in per_order}) == 1
                                           for i in range(len(inputs))) / len(inputs), 1),
        "mean_distribution": {m: [round(x, 3) for x in mean_distribution(dists[m])] for m in METHODS},
    }


def write_md(path, data, header):
    lines = ["# Noisy-channel label scores against the direct scorer (inference only)\n", header, "",
             "Each cell: exact match / macro-F1 / class AUROC (one-vs-rest; 0.5 = the scores do not separate the classes).",
             "`orders agree`: share of items whose channel argmax is the same under all 6 demonstration orders.", "",
             "| task | labels | n | gold mix | " + " | ".join(METHODS) + " | orders agree |",
             "|---|---:|---:|---|" + "---|" * len(METHODS) + "---:|"]
    tasks = list(data["tasks"].values())
    for r in tasks:
        cells = [f"{r['methods'][m]['em']} / {r['methods'][m]['macro_f1']} / {r['methods'][m]['class_auroc']}" for m in METHODS]
        mix = ", ".join(f"{k} {v}" for k, v in sorted(r["gold_mix"].items()))
        lines.append(f"| {r['task']} | {len(r['labels'])} | {r['items']} | {mix} | " + " | ".join(cells) + f" | {r['order_agreement']} |")
    if tasks:
        def mean(m, key):
            vals = [r["methods"][m][key] for r in tasks if r["methods"][m][key] is not None]
            return round(sum(vals) / len(vals), 3 if key == "class_auroc" else 1)
        lines.append("| mean | | | | " + " | ".join(f"**{mean(m, 'em')} / {mean(m, 'macro_f1')} / {mean(m, 'class_auroc')}**" for m in METHODS) + " | |")
    lines += ["", "Confidence AUROC (the margin ranks right answers above wrong ones):", "",
              "| task | " + " | ".join(METHODS) + " |", "|---|" + "---:|" * len(METHODS)]
    for r in tasks:
        lines.append(f"| {r['task']} | " + " | ".join(str(r["methods"][m]["conf_auroc"]) for m in METHODS) + " |")
    lines += ["", "Predicted label mix per method:", "", "| task | " + " | ".join(METHODS) + " |", "|---|" + "---|" * len(METHODS)]
    for r in tasks:
        lines.append(f"| {r['task']} | " + " | ".join(", ".join(f"{k} {v}" for k, v in sorted(r["methods"][m]["mix"].items())) for m in METHODS) + " |")
    lines += ["", "Seconds per task (direct 6 orders / channel 6 orders): " + "; ".join(
        f"{r['task']} {r['seconds']['direct_6_orders']} / {r['seconds']['channel_6_orders']}" for r in tasks)]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default=",".join(DEV_CLASSIFICATION))
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--run-dir", default=str(ROOT / "runs" / "dev"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "dev" / "channel.md"))
    args = ap.parse_args()
    if not NIV2.is_dir():
        ap.exit(2, f"bench/channel.py needs the NIv2 task files in {NIV2} (the development checkout's ../shared/niv2)\n")
    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(ROOT / "bench"))
    from labeller import run_resumable
    from selfguide.identity import NUMERICS_VERSION

    settings = {"items": args.items, "numerics": NUMERICS_VERSION, "split": "validation", "orders": 6, "note": CHANNEL_NOTE}
    data, flags = run_resumable("channel", args.tasks.split(","), args.out, settings,
                                lambda tid: run_task(tid, args.items, args.run_dir),
                                lambda row: {m: (row["methods"][m]["em"], row["methods"][m]["class_auroc"]) for m in METHODS})
    engines = ", ".join(sorted({t["engine"] for t in data["tasks"].values()}))
    header = (f"Model: embedded SmolLM2-135M-Instruct, engine {engines}, split `validation` ({args.items} evenly spaced items or all),"
              f" numerics version {NUMERICS_VERSION}, demonstration orders: all 6. CPU vector flags: {' '.join(flags) or 'none'}.")
    write_md(args.out, data, header)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
