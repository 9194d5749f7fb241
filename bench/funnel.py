"""Where the synthetic data of a benchmark run was lost: one funnel row per task.

Reads the stage manifests of a `selfguide bench` run folder (generate, annotate) and the bench
JSON (kind, delta), and writes a markdown table: raw inputs, what the input filters rejected,
annotation samples and what their filters rejected, inputs left without a label, training pairs,
and for classification the label mix before and after balancing against the labels of the task.
A label the model never assigns cannot be learnt: the table marks such tasks.

    python bench/funnel.py runs/bench docs/benchmarks/niv2-smollm2-135m-instruct.json \
        --out docs/benchmarks/funnel.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def top(counts: dict[str, int], k: int = 3) -> str:
    items = sorted(counts.items(), key=lambda kv: -kv[1])[:k]
    return ", ".join(f"{name} {n}" for name, n in items) or "-"


def mix(counts: dict[str, int] | None) -> str:
    return " / ".join(f"{label} {n}" for label, n in sorted(counts.items())) if counts else "-"


def gold_labels(task_run: Path) -> list[str]:
    """The labels the test items expect, from the few-shot evaluation's references."""
    found: set[str] = set()
    with open(task_run / "evaluate" / "prompt-fewshot" / "predictions.jsonl", encoding="utf-8") as fh:
        for line in fh:
            found.update(json.loads(line)["references"])
    return sorted(found)


def funnel_row(run: Path, row: dict) -> str | None:
    try:
        gen = json.loads((run / row["task"] / "generate" / "MANIFEST.json").read_text(encoding="utf-8"))["counts"]
        ann = json.loads((run / row["task"] / "annotate" / "MANIFEST.json").read_text(encoding="utf-8"))["counts"]
    except (OSError, KeyError, ValueError):
        return None
    labels = gold_labels(run / row["task"]) if row["kind"] == "classification" else []
    before = ann.get("label_mix_before") or {}
    missing = [lab for lab in labels if not before.get(lab)]
    return (f"| {row['task']} | {row['kind'][:3]} | {gen['raw']} | {gen['kept']} | {top(gen.get('rejected', {}))} "
            f"| {ann.get('samples', 0)} | {top(ann.get('samples_rejected', {}), 2)} "
            f"| {ann.get('inputs', 0) - ann.get('labelled', 0)} | {ann.get('pairs', 0)} "
            f"| {mix(before) if labels else '-'} | {mix(ann.get('label_mix_after')) if labels else '-'} "
            f"| {', '.join(missing) or '-' if labels else '-'} | {row['delta']['value']:+.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="the bench run folder (runs/bench)")
    ap.add_argument("bench_json", type=Path, help="the bench results JSON")
    ap.add_argument("--out", type=Path, help="write the table here too")
    args = ap.parse_args()
    if not args.bench_json.exists() or not args.run.is_dir():
        sys.exit(f"need an existing run folder and bench JSON: {args.run}, {args.bench_json}")
    bench = json.loads(args.bench_json.read_text(encoding="utf-8"))
    rows = [r for r in (funnel_row(args.run, row) for row in bench["tasks"] if "delta" in row) if r]
    text = "\n".join([
        f"# Synthesis funnel per task ({args.bench_json.name})",
        "",
        f"Command: `python bench/funnel.py {args.run} {args.bench_json}`. Counts from the generate and "
        "annotate manifests; delta = selfguide - prompt-fewshot on the primary metric (points).",
        "",
        "| task | kind | raw inputs | kept | top input rejections | samples | top sample rejections "
        "| inputs with no label | pairs | labels before balancing | after | gold labels never assigned | delta |",
        "|---|---|---:|---:|---|---:|---|---:|---:|---|---|---|---:|",
        *rows,
        "",
    ])
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
