"""How well can the base model label a classification task by itself? Inference only, no training.

For each classification development task, on its `validation` split (evenly spaced items), the
embedded model labels every item five ways with the task's few-shot prompt:
  vote          n=10 samples at T=0.2, majority of the on-label ones (the paper's annotator)
  score-1       each label's length-normalised log-likelihood, the task's own demonstration order
  score         the same averaged over all 6 demonstration orders
  score+batch   score, divided by the mean distribution over the evaluated items (Zhou et al. 2024)
  score+gen     score, divided by the mean over the model's own synthetic inputs (the generate
                stage of a quick run, seed 42: Jiang et al. 2023's generative calibration)
  score+cf      score, divided by the distribution for "N/A", "" and "[MASK]" (Zhao et al. 2021)
and reports exact match, macro-F1, the share of the most common answer, the class AUROC (do the
label scores separate the classes at all: 0.5 = no signal, and calibration cannot change it for
two labels) and the confidence AUROC (does the margin rank right answers above wrong ones: what a
margin threshold needs). On the synthetic pool it also reports how often each labeller agrees
with the label the input was generated for.

    python bench/labeller.py [--tasks 190,199,...] [--items 100] [--out docs/benchmarks/dev/labeller.md]

Resumable: finished tasks are kept in the JSON next to --out (keyed by task and settings).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NIV2 = ROOT.parent / "shared" / "niv2"
DEV_CLASSIFICATION = ("190", "199", "200", "738", "937", "1385", "1386")
METHODS = ("vote", "score-1", "score", "score+batch", "score+gen", "score+cf")


def judge(dists, gold, labels):
    from selfguide.calibration import argmax, auroc, gold_auroc, macro_f1, margin, one_label_share

    pred = [None if d is None else labels[argmax(d)] for d in dists]
    ok = [p == g for p, g in zip(pred, gold)]
    have = [i for i, d in enumerate(dists) if d is not None]
    return {
        "em": round(100 * sum(ok) / len(ok), 1),
        "macro_f1": round(100 * macro_f1(pred, gold, labels), 1),
        "one_label": round(100 * one_label_share(pred), 1),
        "class_auroc": _r(gold_auroc([dists[i] for i in have], [gold[i] for i in have], labels)),
        "conf_auroc": _r(auroc([margin(dists[i]) for i in have], [ok[i] for i in have])),
        "mix": dict(Counter(p or "<none>" for p in pred)),
    }


def _r(x):
    return None if x is None else round(x, 3)


def vote_distributions(backend, task, inputs, seed):
    from selfguide import prompts
    from selfguide.labels import map_to_label

    rendered = [backend.render(prompts.task_messages(task, x)) for x in inputs]
    out = []
    for start in range(0, len(rendered), 16):
        samples = backend.generate(rendered[start : start + 16], n=10, temperature=0.2, top_k=10,
                                   max_new_tokens=prompts.answer_budget(task), seed=seed + start)
        for row in samples:
            labels = [map_to_label(s.text.strip(), task.labels) for s in row if not s.cut]
            counts = Counter(lab for lab in labels if lab)
            total = sum(counts.values())
            # the vote's distribution: shares of the on-label samples; no sample on a label = no answer
            if not total or max(counts.values()) / total < 0.3:
                out.append(None)
            else:
                out.append([counts.get(lab, 0) / total for lab in task.labels])
    return out


def run_task(tid, n_items, run_dir):
    from selfguide import label_scores, pipeline
    from selfguide.calibration import calibrate, mean_distribution
    from selfguide.stages.generate import run_generate
    from selfguide.store import read_records

    task_file = NIV2 / f"task{tid}.paper_prompt.json"
    ctx = pipeline.make_context(task_file, overrides=[
        f"run_dir={run_dir}", "name=dev-quick-s42", "seed=42", "generate.target_inputs=120", "annotate.n=5",
        "train.epochs=2", "evaluate.split=validation", f"evaluate.max_items={n_items}"])
    task = ctx.task
    from selfguide.stages.evaluate import eval_items

    items = eval_items(ctx)
    inputs, gold = [it.input for it in items], [it.outputs[0] for it in items]
    t0 = time.time()
    run_generate(ctx)
    t_gen = time.time() - t0
    pool = read_records(ctx.stage_dir("generate") / "inputs.jsonl")
    backend = ctx.backend()
    orders = label_scores.demo_orders(task.examples, 6, 42)
    t0 = time.time()
    votes = vote_distributions(backend, task, inputs, 42)
    t_vote = time.time() - t0
    t0 = time.time()
    per_order = label_scores.order_distributions(backend, task, inputs, orders)
    t_score = time.time() - t0
    score = [mean_distribution(rows) for rows in per_order]
    pool_scores = label_scores.label_distributions(backend, task, [p["input"] for p in pool], orders) if pool else []
    cf = label_scores.content_free_prior(backend, task, orders)
    priors = {"score+batch": mean_distribution(score), "score+cf": cf,
              "score+gen": mean_distribution(pool_scores) if pool_scores else None}
    dists = {"vote": votes, "score-1": [rows[0] for rows in per_order], "score": score}
    for name, prior in priors.items():
        dists[name] = [calibrate(d, prior) for d in score] if prior else [None] * len(score)
    result = {name: judge(d, gold, list(task.labels)) for name, d in dists.items()}
    # on the synthetic pool: agreement with the label each input was generated for
    targets = [p.get("target_label") for p in pool]
    pool_agree = {}
    if pool_scores and any(targets):
        from selfguide.calibration import argmax

        for name, prior in (("score", None), ("score+gen", priors["score+gen"])):
            hits = [task.labels[argmax(calibrate(d, prior))] == t for d, t in zip(pool_scores, targets) if t]
            pool_agree[name] = round(100 * sum(hits) / len(hits), 1)
    ctx.close_backend()
    return {
        "task": task.id, "engine": ctx.engine(), "labels": list(task.labels), "items": len(items), "gold_mix": dict(Counter(gold)),
        "pool": len(pool), "priors": {k: [round(x, 3) for x in v] if v else None for k, v in priors.items()},
        "pool_target_agreement": pool_agree, "methods": result,
        "seconds": {"generate": round(t_gen, 1), "vote": round(t_vote, 1), "score_6_orders": round(t_score, 1)},
    }


def write_md(path, data, header):
    lines = ["# Labelling without training: vote vs scored vs calibrated (inference only)\n", header, "",
             "Each cell: exact match / macro-F1 / class AUROC. `one` = share of the most common answer (vote, score+gen).",
             "A class AUROC near 0.5 means the model's label scores do not separate the classes: no labeller and no",
             "calibration can teach the task from its own labels (calibration only shifts the boundary).\n",
             "| task | labels | n | " + " | ".join(METHODS) + " | one (vote / gen) | pool agree (score / gen) |",
             "|---|---|---:|" + "---|" * len(METHODS) + "---|---|"]
    means = {m: [] for m in METHODS}
    for key in sorted(data["tasks"]):
        r = data["tasks"][key]
        cells = []
        for m in METHODS:
            x = r["methods"][m]
            means[m].append(x)
            cells.append(f"{x['em']} / {x['macro_f1']} / {x['class_auroc']}")
        one = f"{r['methods']['vote']['one_label']} / {r['methods']['score+gen']['one_label']}"
        agree = " / ".join(str(r["pool_target_agreement"].get(k, "-")) for k in ("score", "score+gen"))
        lines.append(f"| {r['task']} | {len(r['labels'])} | {r['items']} | " + " | ".join(cells) + f" | {one} | {agree} |")
    if data["tasks"]:
        cells = []
        for m in METHODS:
            xs = means[m]
            au = [x["class_auroc"] for x in xs if x["class_auroc"] is not None]
            cells.append(f"**{sum(x['em'] for x in xs) / len(xs):.1f} / {sum(x['macro_f1'] for x in xs) / len(xs):.1f} / "
                         f"{(sum(au) / len(au)) if au else float('nan'):.3f}**")
        lines.append("| mean | | | " + " | ".join(cells) + " | | |")
    lines += ["", "Confidence AUROC (margin ranks right answers above wrong ones) per method:", "",
              "| task | " + " | ".join(METHODS) + " |", "|---|" + "---:|" * len(METHODS)]
    for key in sorted(data["tasks"]):
        r = data["tasks"][key]
        lines.append(f"| {r['task']} | " + " | ".join(str(r["methods"][m]["conf_auroc"]) for m in METHODS) + " |")
    lines += ["", "Seconds per task (fp32 on this CPU; other work shared the 2 cores for part of the run, so these are not "
              "speed measurements): " + "; ".join(
        f"{r['task']} vote {r['seconds']['vote']} / score {r['seconds']['score_6_orders']}" for r in data["tasks"].values())]
    lines += ["", "What these numbers say, and the decisions taken on them: [labeller-reading.md](labeller-reading.md)."]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_resumable(name, tasks, out, settings, run_one, summary):
    """Run `run_one(task_id)` for each task not yet in the JSON next to `out` (kept while `settings` match),
    saving after each; returns the data and the CPU vector flags. Shared by the inference-only benches."""
    sys.path.insert(0, str(ROOT / "src"))
    from selfguide.console import setup_console
    from selfguide.store import cpu_vector_flags, versions

    setup_console(0)
    out_json = Path(out).with_suffix(".json")
    data = json.loads(out_json.read_text()) if out_json.exists() else {"tasks": {}}
    if data.get("settings") != settings:
        data = {"settings": settings, "tasks": {}}
    flags = cpu_vector_flags()
    data["machine"] = {"cpu": platform.processor() or platform.machine(), "flags": flags, "versions": versions()}
    for tid in tasks:
        key = f"task{tid}"
        if key in data["tasks"]:
            continue
        print(f"[{name}] task{tid} ...", flush=True)
        data["tasks"][key] = run_one(tid)
        print(json.dumps(summary(data["tasks"][key])), flush=True)
        out_json.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return data, flags


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default=",".join(DEV_CLASSIFICATION))
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--run-dir", default=str(ROOT / "runs" / "dev"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "dev" / "labeller.md"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from selfguide.identity import NUMERICS_VERSION

    settings = {"items": args.items, "numerics": NUMERICS_VERSION, "split": "validation", "orders": 6}
    data, flags = run_resumable("labeller", args.tasks.split(","), args.out, settings,
                                lambda tid: run_task(tid, args.items, args.run_dir),
                                lambda row: {m: row["methods"][m]["em"] for m in METHODS})
    engines = ", ".join(sorted({t.get("engine", "native") for t in data["tasks"].values()}))  # rows before v3: native
    header = (f"Model: embedded SmolLM2-135M-Instruct, engine {engines}, split `validation` ({args.items} evenly spaced items or all),"
              f" numerics version {NUMERICS_VERSION}, synthetic pool: quick generate stage (120 raw inputs, seed 42), vote seed 42."
              f" CPU vector flags: {' '.join(flags) or 'none'}.")
    write_md(args.out, data, header)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
