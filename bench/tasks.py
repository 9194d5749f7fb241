"""Run the full selfguide pipeline on a few tasks with the embedded model and document the results.

Run:  .venv/bin/python bench/tasks.py TASK_FILE [TASK_FILE ...] [--name NAME] [--quick] [--set k=v ...]
      [--out docs/benchmarks/runs-embedded.md]
For each task: the synthesis funnel, the label mix before/after balancing, 5 sampled synthetic
pairs, wall time per stage, and the verdict (prompting vs finetuned, both metric modes, 95% CI).
Everything resumes: re-running the same command reuses finished stages and rewrites the report.
Results are appended to the JSON next to --out, keyed by task and name, so tasks can be run in
several sessions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tasks", nargs="+")
    ap.add_argument("--name", default="bench-defaults")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--force", action="store_true", help="redo stages whose settings changed")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--run-dir", default=str(ROOT / "runs"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "runs-embedded.md"))
    args = ap.parse_args()

    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("transformers", "datasets", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import selfguide
    from selfguide.store import read_records

    out_json = Path(args.out).with_suffix(".json")
    results = json.loads(out_json.read_text()) if out_json.exists() else {}
    for task_file in args.tasks:
        t0 = time.time()
        res = selfguide.run(task_file, quick=args.quick, force=args.force,
                            overrides=[f"run_dir={args.run_dir}", f"name={args.name}", *args.overrides])
        m = res.manifests
        pairs = read_records(res.run_dir / "annotate" / "pairs.jsonl")
        rng = random.Random(0)
        sample = rng.sample(pairs, min(5, len(pairs)))
        results[f"{res.task_id}@{args.name}"] = {
            "task": res.task_id,
            "task_file": str(task_file),
            "name": args.name,
            "quick": args.quick,
            "overrides": args.overrides,
            "kind": "classification" if "label_mix_after" in m["annotate"]["counts"] else "generation",
            "generate": m["generate"]["counts"],
            "annotate": m["annotate"]["counts"],
            "train": m["train"]["counts"],
            "settings": {"generate": m["generate"]["config"]["resolved"], "annotate": m["annotate"]["config"],
                         "train": m["train"]["config"]},
            "stage_seconds": res.verdict["stage_seconds"],
            "verdict": {k: res.verdict[k] for k in ("metric", "n_items", "split", "deltas", "sentence", "seed", "model")},
            "samples": [{"input": p["input"], "output": p["output"]} for p in sample],
            "wall_seconds_this_call": round(time.time() - t0, 1),
        }
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(results, indent=1, ensure_ascii=False))
        write_markdown(results, Path(args.out))
        print(res.verdict["sentence"], flush=True)


def write_markdown(results: dict, path: Path) -> None:
    import torch
    import transformers

    lines = [
        "# selfguide runs on the embedded model (SmolLM2-135M-Instruct, CPU)",
        "",
        "Made by `bench/tasks.py` (command per row below). Scores in points (0-100); deltas = selfguide - few-shot",
        "prompting with a paired bootstrap 95% CI over items. Stage seconds are the time each stage took when it ran.",
        "",
        f"- machine: {os.cpu_count()} CPU cores, no GPU; Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        "",
    ]
    for key, r in results.items():
        v = r["verdict"]
        cmd = f"python bench/tasks.py {r['task_file']} --name {r['name']}" + (" --quick" if r["quick"] else "") + "".join(f" --set {o}" for o in r["overrides"])
        lines += [f"## {r['task']} ({r['kind']}, run `{r['name']}`)", "", f"Command: `{cmd}`", "",
                  f"Model {v['model']['name']} sha256 `{v['model']['sha256'][:16]}`, split `{v['split']}` ({v['n_items']} items), seed {v['seed']}.", "",
                  f"**{v['sentence']}**", "",
                  "| metric | prompt-fewshot | selfguide | delta | 95% CI |", "|---|---:|---:|---:|---|"]
        for metric, d in v["deltas"].items():
            lines.append(f"| {metric} | {d['prompting']:.1f} | {d['finetuned']:.1f} | {d['delta']:+.1f} | {d['ci_low']:+.1f} to {d['ci_high']:+.1f} |")
        g, a, t = r["generate"], r["annotate"], r["train"]
        lines += ["", f"Funnel: {g['raw']} raw inputs -> {g['kept']} kept (rejected: {g['rejected']}) -> "
                  f"{a['pairs']} training pairs (rejected: {a['rejected']}; samples rejected: {a['samples_rejected']})."]
        if "label_mix_before" in a:
            lines.append(f"Label mix before balancing {a['label_mix_before']}, after {a['label_mix_after']}; "
                         f"votes agree with the generation target label on {a['agreement_with_target']} of inputs.")
        lines += [f"Training: {t['trained_on']} pairs, {t['steps']} steps, loss {t['first_loss']:.3f} -> {t['final_loss']:.3f}." if t.get("first_loss") is not None else "",
                  "Stage seconds: " + ", ".join(f"{k} {s}" for k, s in r["stage_seconds"].items()) + f"; this call {r['wall_seconds_this_call']} s.",
                  "", "Five synthetic pairs (random, seed 0):", "", "| input | output |", "|---|---|"]
        lines += [f"| {s['input'][:220].replace('|', '/').replace(chr(10), ' ')} | {s['output'][:100].replace('|', '/').replace(chr(10), ' ')} |" for s in r["samples"]]
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
