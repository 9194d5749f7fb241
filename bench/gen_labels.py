"""How good are the model's own labels for a free-text task, by label source? (inference only, validation)

The dev ceiling (docs/benchmarks/dev/ceiling-lr1e3.md) found the labels to be where task1195 loses its
effect: gold labels on real inputs give +8.0 ROUGE-L, the model's own +2.2. Every training arm since
lands within a point. This measures, without training, which way of labelling gets closer to the gold
outputs, on real inputs whose gold is known: each generation development task's validation items (the
evaluation's evenly spaced subset), labelled by the base model with the embedded task prompt:

  greedy          one greedy answer under the task's example order (what prompt-fewshot answers)
  vote            the pipeline's vote: annotate.n samples at annotate.temperature, filtered, exact majority
  mbr-t0.7        the MBR labeller of the `gen-v3-mbr` arm: 8 samples at T=0.7, the one closest to the others
  orders          one greedy answer under each demonstration order (all 6 for 3 examples), the MBR pick
  orders+vote     the MBR pick over the 6 order answers and the vote's samples together
  rerank-own      the candidates of orders+vote, the one the model finds likeliest under the task's own prompt
                  (mean log-probability per token)
  rerank-orders   the same candidates, the likeliest on average over the 6 order prompts (per token)
  rerank-orders-sum  the same, by the whole answer's log-probability (favours short answers)

For each: the share of inputs given a label (the filters and the agreement threshold drop the rest),
the ROUGE-L of the labels against gold, over the labelled items and over the items every source
labelled (a paired comparison), and, for the MBR sources, how well the agreement ranks label quality
(Spearman) and the quality of the most-agreed half. `orders` also gives each single order's greedy
score and the best-of-6 oracle (what a perfect chooser could reach).

    python bench/gen_labels.py --tasks 1195,039,036,121 --seed 42 [--set k=v ...] --out docs/benchmarks/dev/gen-labels

No choice is made from a test split (only validation is read).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]
NIV2 = ROOT.parent / "shared" / "niv2"
SOURCES = ("greedy", "vote", "mbr-t0.7", "orders", "orders+vote", "rerank-own", "rerank-orders", "rerank-orders-sum")


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Rank correlation (average ranks for ties); None with fewer than 3 points or no spread."""
    from selfguide.calibration import average_ranks

    if len(xs) < 3:
        return None
    a, b = average_ranks(xs), average_ranks(ys)
    ma, mb = mean(a), mean(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va, vb = sum((x - ma) ** 2 for x in a), sum((y - mb) ** 2 for y in b)
    return cov / (va * vb) ** 0.5 if va and vb else None


def label_task(tid: str, cfg, seed: int) -> dict:
    """Every source's label (or None) and agreement for each evaluation item of one task."""
    from selfguide import prompts
    from selfguide.filters import check_output, length_window
    from selfguide.label_scores import demo_orders
    from selfguide.labels import mbr_pick
    from selfguide.stages.annotate import output_filter_on, resolved_max_new_tokens, vote_chunk
    from selfguide.stages.context import Context, derive_seed
    from selfguide.stages.evaluate import eval_items
    from selfguide.task import load_task

    ctx = Context(dataclasses.replace(cfg, seed=seed), load_task(NIV2 / f"task{tid}.paper_prompt.json"))
    task, a = ctx.task, ctx.cfg.annotate
    items = eval_items(ctx)
    backend = ctx.backend()
    budget = resolved_max_new_tokens(ctx)
    window = length_window([len(e.output) for e in task.examples]) if output_filter_on(ctx) else None
    texts = [it.input for it in items]
    labels: dict[str, list] = {s: [] for s in SOURCES}
    agreement: dict[str, list] = {s: [] for s in SOURCES}
    per_order: list[list[str]] = []
    mbr_ctx = Context(dataclasses.replace(ctx.cfg, annotate=dataclasses.replace(a, labeller="mbr", n=8, temperature=0.7)), task)
    orders = demo_orders(task.examples, a.orders, derive_seed(seed, task.id, "orders"))
    step = a.chunk_size
    for start in range(0, len(texts), step):
        chunk = texts[start : start + step]
        votes = vote_chunk(ctx, backend, chunk, derive_seed(seed, task.id, "gen-labels-vote", start))
        mbrs = vote_chunk(mbr_ctx, backend, chunk, derive_seed(seed, task.id, "gen-labels-mbr", start))
        by_order = []
        for order in orders:
            rendered = [backend.render(prompts.task_messages(task, x, order)) for x in chunk]
            outs = backend.generate(rendered, n=1, temperature=0.0, max_new_tokens=budget, seed=0)
            by_order.append([o[0] for o in outs])
        for i in range(len(chunk)):
            answers = [by_order[k][i] for k in range(len(orders))]
            per_order.append([c.text.strip() for c in answers])
            labels["greedy"].append(answers[0].text.strip())
            agreement["greedy"].append(None)
            labels["vote"].append(votes[i]["answer"])
            agreement["vote"].append(votes[i]["agreement"])
            labels["mbr-t0.7"].append(mbrs[i]["answer"])
            agreement["mbr-t0.7"].append(mbrs[i]["agreement"])
            # the order answers pass the same output filters as the vote's samples
            ok = [c.text.strip() for c in answers if not c.cut and c.text.strip()
                  and check_output(c.text.strip(), window, task.noise_terms) is None]
            pick = mbr_pick(ok, a.min_agreement)
            labels["orders"].append(pick.answer)
            agreement["orders"].append(round(pick.agreement, 4))
            vote_ok = [s.strip() for s, r in zip(votes[i]["samples"], votes[i]["sample_reasons"]) if r is None]
            both = mbr_pick(ok + vote_ok, a.min_agreement)
            labels["orders+vote"].append(both.answer)
            agreement["orders+vote"].append(round(both.agreement, 4))
            for source, (pick_label, score) in rerank(backend, task, chunk[i], orders, list(dict.fromkeys(ok + vote_ok))).items():
                labels[source].append(pick_label)
                agreement[source].append(score)
        print(f"gen-labels: task{tid} {min(start + step, len(texts))}/{len(texts)} items", flush=True)
    ctx.close_backend()
    return {"task": task.id, "seed": seed, "items": [{"id": it.id, "references": list(it.outputs)} for it in items],
            "labels": labels, "agreement": agreement, "per_order": per_order}


def rerank(backend, task, text: str, orders, candidates: list[str]) -> dict[str, tuple]:
    """The candidate the model itself scores highest: under the task's own prompt, and on average over
    the demonstration orders (per token and whole answer). (label, its score) per source; (None, None)
    without candidates."""
    from selfguide import prompts

    if not candidates:
        return {s: (None, None) for s in ("rerank-own", "rerank-orders", "rerank-orders-sum")}
    per_order = []
    for order in orders:
        rendered = backend.render(prompts.task_messages(task, text, order))
        per_order.append(backend.score([rendered], candidates)[0])
    own = [sc.mean for sc in per_order[0]]
    ens = [mean(row[j].mean for row in per_order) for j in range(len(candidates))]
    ens_sum = [mean(row[j].logprob for row in per_order) for j in range(len(candidates))]

    def best(values: list[float]) -> tuple:
        j = max(range(len(candidates)), key=lambda k: (values[k], -len(candidates[k])))
        return candidates[j], round(values[j], 4)

    return {"rerank-own": best(own), "rerank-orders": best(ens), "rerank-orders-sum": best(ens_sum)}


def summarize(raw: dict) -> dict:
    from selfguide.metrics import rouge_l

    refs = [it["references"] for it in raw["items"]]
    quality = {s: [None if lab is None else 100 * rouge_l(lab, r) for lab, r in zip(raw["labels"][s], refs)] for s in SOURCES}
    common = [i for i in range(len(refs)) if all(quality[s][i] is not None for s in SOURCES)]
    out = {"task": raw["task"], "seed": raw["seed"], "items": len(refs), "common": len(common), "sources": {}}
    for s in SOURCES:
        q = quality[s]
        have = [i for i, v in enumerate(q) if v is not None]
        row = {"labelled": len(have), "rougeL": mean(q[i] for i in have) if have else None,
               "rougeL_common": mean(q[i] for i in common) if common else None}
        ag = raw["agreement"][s]
        if have and ag[have[0]] is not None:
            xs, ys = [ag[i] for i in have], [q[i] for i in have]
            row["spearman"] = spearman(xs, ys)
            top = sorted(have, key=lambda i: -ag[i])[: max(1, len(have) // 2)]
            row["rougeL_top_half"] = mean(q[i] for i in top)
        out["sources"][s] = row
    by_order = list(zip(*[[100 * rouge_l(t, r) for t in ts] for ts, r in zip(raw["per_order"], refs)]))
    out["per_order"] = [mean(col) for col in by_order]
    out["oracle"] = mean(max(100 * rouge_l(t, r) for t in ts) for ts, r in zip(raw["per_order"], refs))
    return out


def fmt(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def signed(v) -> str:
    return "-" if v is None else f"{v:+.2f}"


def write_md(path: Path, rows: list[dict], header: dict) -> None:
    from selfguide.store import atomic_write_text

    lines = ["# The model's own labels for free-text tasks, by label source (inference only, validation)", "",
             f"- model: the embedded SmolLM2-135M-Instruct; split `validation`, {header['items']}; seed(s) {header['seeds']}",
             f"- settings: {header['settings']}; numerics version {header['numerics']}; code {header['code']}",
             f"- machine: {header['cpu']}; {header['minutes']:.0f} minutes", "",
             "ROUGE-L (NIv2-official) of each source's labels against the gold outputs: over the items the source labelled "
             "(`labelled`), and over the items every source labelled (`common`, paired). `greedy` is what prompt-fewshot "
             "answers. Spearman: how the source's agreement (vote share or mean ROUGE-L to the other candidates) ranks "
             "its label's quality; top half: the quality of the most-agreed half of its labels.", "",
             "| task | seed | source | labelled | ROUGE-L | ROUGE-L, common | Spearman | top half |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        for s in SOURCES:
            x = r["sources"][s]
            lines.append(f"| {r['task']} | {r['seed']} | {s} | {x['labelled']}/{r['items']} | {fmt(x['rougeL'])} | "
                         f"{fmt(x['rougeL_common'])} ({r['common']}) | "
                         f"{signed(x.get('spearman'))} | {fmt(x.get('rougeL_top_half'))} |")
    lines += ["", "Greedy answers under each demonstration order (the task's own order first) and the best of them per "
              "item (an oracle no labeller can reach without the gold):", "",
              "| task | seed | " + " | ".join(f"order {i + 1}" for i in range(len(rows[0]["per_order"]))) + " | best of all |",
              "|---|---:|" + "---:|" * (len(rows[0]["per_order"]) + 1)]
    for r in rows:
        lines.append(f"| {r['task']} | {r['seed']} | " + " | ".join(f"{v:.1f}" for v in r["per_order"]) + f" | {r['oracle']:.1f} |")
    atomic_write_text(path, "\n".join(lines) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default="1195,039,036,121", help="generation development tasks")
    p.add_argument("--seeds", default="42")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config overrides (the dev quick sizes)")
    p.add_argument("--out", default="docs/benchmarks/dev/gen-labels")
    args = p.parse_args()
    if not NIV2.is_dir():
        p.exit(2, f"bench/gen_labels.py needs the NIv2 task files in {NIV2} (the development checkout's ../shared/niv2)\n")

    from selfguide.config import load_config
    from selfguide.console import setup_console
    from selfguide.identity import NUMERICS_VERSION
    from selfguide.store import atomic_write_json, cpu_vector_flags

    setup_console(0)
    sets = ["evaluate.split=validation", "evaluate.max_items=100", "annotate.n=5", *args.overrides]
    cfg = load_config(None, sets)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    rows, raws = [], []
    for seed in (int(s) for s in args.seeds.split(",")):
        for tid in args.tasks.split(","):
            t0 = time.time()
            raw = label_task(tid, cfg, seed)
            raws.append(raw)
            rows.append(summarize(raw))
            print(f"gen-labels: task{tid} seed {seed}: " + json.dumps({s: fmt(v["rougeL_common"]) for s, v in rows[-1]["sources"].items()})
                  + f" ({time.time() - t0:.0f} s)", flush=True)
    code = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    header = {"settings": ", ".join(sets), "seeds": args.seeds, "numerics": NUMERICS_VERSION, "code": code,
              "items": "the evaluation's 100 evenly spaced items (all when fewer)",
              "cpu": "2 CPU cores (" + ", ".join(cpu_vector_flags()) + ")", "minutes": (time.time() - started) / 60}
    atomic_write_json(out.with_suffix(".json"), {**header, "rows": rows, "raw": raws})
    write_md(out.with_suffix(".md"), rows, header)
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
