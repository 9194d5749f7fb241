"""Where does Self-Guide's effect get lost: in the inputs the model writes, or in the labels it gives them?

For each generation development task whose validation split has items the reported evaluation does
not use, and each seed of a finished dev run (`selfguide bench ... --split validation --name RUN`),
two more models are trained with exactly that run's training settings (replay included) on as many
pairs as selfguide trained on, and evaluated on the same reported validation items:
  real-self   real task inputs (unreported validation items, a seeded sample) labelled by the model
              itself, with the run's annotation settings (the vote over n samples and its filters)
  real-gold   the same inputs with their gold outputs (the first reference)
so, per task and seed:
  selfguide - prompt-fewshot   what Self-Guide gains (synthetic inputs, self labels)
  real-self - selfguide        what real inputs would add over the model's own (input quality)
  real-gold - real-self        what correct labels would add (label quality)
  real-gold - prompt-fewshot   the ceiling of finetuning at this data size and these settings
No choice is made from it (it is a diagnosis, and only validation items are read); it says whether a
goal is within what finetuning on this many pairs can give at all.

    python bench/ceiling.py --run dev-v3-gen-default60 --seeds 42,43,44 [--tasks 1195,039]
        [--set k=v ...] --out docs/benchmarks/dev/ceiling

The `--set` overrides must be the run's own (the quick sizes), so that its stages are found and
reused. Resumable: every stage is a selfguide stage in the run's task folders.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NIV2 = ROOT.parent / "shared" / "niv2"
SYSTEMS = ("prompt-fewshot", "selfguide", "real-self", "real-gold")


def real_inputs(ctx, seed: int):
    """Unreported validation items in a seeded order (the gate's pool, never a reported item)."""
    from selfguide.stages.gate import _unreported_validation

    items = list(_unreported_validation(ctx))
    random.Random(seed).shuffle(items)
    return items


def self_labels(ctx, items, want: int):
    """Label items with the run's vote until `want` pairs are accepted; returns (pairs with the gold
    output beside the model's, items labelled)."""
    from selfguide.stages.annotate import vote_chunk
    from selfguide.stages.context import derive_seed

    backend = ctx.backend()
    chunk_size = ctx.cfg.annotate.chunk_size
    pairs, seen = [], 0
    for start in range(0, len(items), chunk_size):
        chunk = items[start : start + chunk_size]
        votes = vote_chunk(ctx, backend, [it.input for it in chunk], derive_seed(ctx.cfg.seed, ctx.task.id, "ceiling", start))
        for it, vote in zip(chunk, votes):
            seen += 1
            if vote["answer"] is not None:
                pairs.append({"id": f"{ctx.task.id}:r:{it.id}", "input": it.input, "output": vote["answer"],
                              "gold": it.outputs[0], "agreement": vote["agreement"]})
            if len(pairs) == want:
                return pairs, seen
    return pairs, seen


def run_task(tid: str, cfg, seed: int) -> dict:
    import dataclasses

    from selfguide.stages.context import Context
    from selfguide.stages.evaluate import evaluate_trained, verdict
    from selfguide.stages.train import run_train
    from selfguide.store import atomic_write_json, read_records, write_records
    from selfguide.task import load_task

    cfg = dataclasses.replace(cfg, seed=seed)
    ctx = Context(cfg, load_task(NIV2 / f"task{tid}.paper_prompt.json"))
    ann = json.loads((ctx.stage_dir("annotate") / "MANIFEST.json").read_text())
    want = ann["counts"]["pairs"]
    folder = ctx.task_dir / "ceiling"
    folder.mkdir(exist_ok=True)
    self_path, gold_path = folder / "real-self-pairs.jsonl", folder / "real-gold-pairs.jsonl"
    if not gold_path.exists():  # the gold pairs are written last: their file marks the labelling done
        pairs, seen = self_labels(ctx, real_inputs(ctx, seed), want)
        write_records(self_path, [{k: p[k] for k in ("id", "input", "output")} for p in pairs])
        atomic_write_json(folder / "labelled.json", {"labelled": seen, "accepted": len(pairs)})
        write_records(gold_path, [{"id": p["id"], "input": p["input"], "output": p["gold"]} for p in pairs])
    ctx.close_backend()
    labelled = json.loads((folder / "labelled.json").read_text())
    row = {"task": ctx.task.id, "seed": seed, "selfguide_pairs": want, "real_pairs": labelled["accepted"],
           "real_labelled": labelled["labelled"], "scores": {}}
    for system, path in (("real-self", self_path), ("real-gold", gold_path)):
        manifest = run_train(ctx, path, f"train-{system}")
        evaluate_trained(ctx, manifest, system)
    for system in SYSTEMS:
        row["scores"][system] = verdict(ctx, system=system)["finetuned_score"] if system != "prompt-fewshot" else \
            verdict(ctx)["prompting_score"]
    gold = read_records(gold_path)
    selfp = read_records(self_path)
    from selfguide.metrics import rouge_l

    row["self_vs_gold_rougeL"] = round(100 * sum(rouge_l(s["output"], [g["output"]]) for s, g in zip(selfp, gold)) / max(1, len(gold)), 1)
    return row


def write_md(path: Path, rows: list[dict], header: dict) -> None:
    from statistics import mean

    from selfguide.store import atomic_write_text

    lines = ["# Where the generation effect is lost: synthetic inputs or self labels (validation, diagnosis only)", "",
             f"- run: `{header['run']}` (its settings: {header['settings']}); seeds {', '.join(map(str, header['seeds']))}",
             f"- machine: {header['cpu']}; numerics version {header['numerics']}; code {header['code']}",
             "- each trained model uses the run's training settings (replay included) on as many pairs as selfguide "
             "trained on; real inputs are validation items the reported 100 do not use; ROUGE-L on the reported items", "",
             "| task | seed | pairs | prompt-fewshot | selfguide | real inputs, self labels | real inputs, gold labels | "
             "self labels vs gold (ROUGE-L) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        s = r["scores"]
        lines.append(f"| {r['task']} | {r['seed']} | {r['real_pairs']} | {s['prompt-fewshot']:.1f} | {s['selfguide']:.1f} | "
                     f"{s['real-self']:.1f} | {s['real-gold']:.1f} | {r['self_vs_gold_rougeL']:.1f} |")
    lines += ["", "Means over seeds, as gains over few-shot prompting:", "",
              "| task | selfguide | real inputs, self labels | real inputs, gold labels |", "|---|---:|---:|---:|"]
    for task in dict.fromkeys(r["task"] for r in rows):
        tr = [r for r in rows if r["task"] == task]
        g = {m: mean(r["scores"][m] - r["scores"]["prompt-fewshot"] for r in tr) for m in SYSTEMS[1:]}
        lines.append(f"| {task} | {g['selfguide']:+.1f} | {g['real-self']:+.1f} | {g['real-gold']:+.1f} |")
    atomic_write_text(path, "\n".join(lines) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="the dev bench run's --name (its -sNN folders under run_dir)")
    p.add_argument("--seeds", default="42,43,44")
    p.add_argument("--tasks", default="1195,039", help="generation dev tasks with unreported validation items")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="the run's own --set overrides")
    p.add_argument("--out", default="docs/benchmarks/dev/ceiling")
    args = p.parse_args()

    import dataclasses
    import subprocess

    from selfguide.bench_seeds import seed_name
    from selfguide.config import load_config
    from selfguide.console import setup_console
    from selfguide.identity import NUMERICS_VERSION
    from selfguide.store import atomic_write_json, cpu_vector_flags

    setup_console(0)
    base = load_config(None, ["evaluate.split=validation", *args.overrides])
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    rows = []
    for seed in seeds:
        cfg = dataclasses.replace(base, name=seed_name(args.run, seed))
        for tid in args.tasks.split(","):
            t0 = time.time()
            rows.append(run_task(tid, cfg, seed))
            print(f"ceiling: task{tid} seed {seed}: {rows[-1]['scores']} ({time.time() - t0:.0f} s)", flush=True)
    code = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    header = {"run": args.run, "settings": ", ".join(args.overrides) or "defaults", "seeds": seeds, "numerics": NUMERICS_VERSION,
              "cpu": "2 CPU cores (" + ", ".join(cpu_vector_flags()) + ")", "code": code}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out.with_suffix(".json"), {**header, "rows": rows})
    write_md(out.with_suffix(".md"), rows, header)
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
