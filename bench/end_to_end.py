"""One full `selfguide run` per backend on the same task, timed end to end, stage by stage.

Run:  .venv/bin/python bench/end_to_end.py TASK_FILE [--backends openvino,hf] [--quick] [--set k=v ...]
      .venv/bin/python bench/end_to_end.py TASK_FILE --render   (re-write the .md from the .json)
Writes docs/benchmarks/end-to-end.{md,json}. Each backend gets a fresh run name
(e2e-<backend>[-quick]) so nothing is reused between them, runs in its own process (peak RSS),
and nothing else may run meanwhile (2 cores). Stage seconds come from the stages' manifests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("generate", "annotate", "evaluate/prompt-fewshot", "evaluate/prompt-zeroshot", "train", "evaluate/selfguide")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("task")
    ap.add_argument("--backends", default="openvino,hf")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--run-dir", default=str(ROOT / "runs"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "end-to-end"))
    ap.add_argument("--label", default=None, help="row name (default: the backend); rows of earlier runs in --out are kept")
    ap.add_argument("--render", action="store_true", help="re-write the .md from the saved .json (no runs)")
    args = ap.parse_args()
    selfguide = str(Path(sys.executable).with_name("selfguide"))
    saved = Path(args.out).with_suffix(".json")
    rows = json.loads(saved.read_text())["runs"] if saved.exists() else {}
    if args.render:
        return write(args, rows, json.loads(saved.read_text())["meta"])
    for backend in args.backends.split(","):
        label = args.label or backend
        name = f"e2e-{label}" + ("-quick" if args.quick else "")
        shutil.rmtree(Path(args.run_dir) / name, ignore_errors=True)
        cmd = [selfguide, "run", args.task, "--backend", backend, "--name", name, "--run-dir", args.run_dir]
        cmd += ["--quick"] if args.quick else []
        for o in args.overrides:
            cmd += ["--set", o]
        print("$", " ".join(cmd), flush=True)
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env={**os.environ, "CI": "1"})
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"{backend}: selfguide run failed (exit {proc.returncode})")
        task_dir = next((Path(args.run_dir) / name).iterdir())
        stages = {}
        for stage in STAGES:
            m = task_dir / stage / "MANIFEST.json"
            if m.exists():
                stages[stage] = round(json.loads(m.read_text())["seconds"], 1)
        verdict = json.loads((task_dir / "verdict.json").read_text())
        rows[label] = {"wall_s": round(wall, 1), "stages": stages, "verdict": verdict.get("sentence", ""), "backend": backend,
                       "overrides": args.overrides, "started": started,
                       "command": "python bench/end_to_end.py " + " ".join(sys.argv[1:]), "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6, 2)}
        print(label, rows[label], flush=True)
    for label, row in rows.items():  # rows written before this field existed
        row.setdefault("train_pairs", trained_on(Path(args.run_dir) / (f"e2e-{label}" + ("-quick" if args.quick else ""))))
    write(args, rows)


def trained_on(run: Path) -> int | None:
    """Pairs the run's train stage trained on: its length depends on them, not on the backend."""
    manifest = next(run.glob("*/train/MANIFEST.json"), None)
    return json.loads(manifest.read_text())["counts"]["trained_on"] if manifest else None


def write(args: argparse.Namespace, rows: dict, meta: dict | None = None) -> None:
    out = Path(args.out)
    if meta is None:
        import torch
        import transformers

        from selfguide.store import cpu_vector_flags

        meta = {"task": Path(args.task).name,
                "machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), vector flags: "
                           f"{' '.join(cpu_vector_flags()) or 'none'}, no GPU",
                "versions": f"torch {torch.__version__}, transformers {transformers.__version__}"}
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=1))
    names = list(rows)
    lines = ["# End to end: one `selfguide run` per backend", "",
             f"- task: {meta['task']}; settings: {'the --quick preset' if args.quick else 'the paper settings (defaults)'}"
             "; a run's own overrides are in its line below",
             f"- machine: {meta['machine']}; {meta['versions']}",
             "- every stage runs from scratch for each backend (fresh run name); stage seconds from the manifests", "",
             "Columns: seconds per stage; in brackets, that run's time / the first run's time.", "",
             "| stage | " + " | ".join(f"{b} s" for b in names) + " |",
             "|---|" + "---:|" * len(names)]
    for stage in STAGES:
        vals = [rows[b]["stages"].get(stage) for b in names]
        cells = [("-" if v is None else f"{v}" + (f" ({v / vals[0]:.2f}x)" if i and vals[0] else "")) for i, v in enumerate(vals)]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    walls = [rows[b]["wall_s"] for b in names]
    cells = [f"**{w}**" + (f" **({w / walls[0]:.2f}x)**" if i else "") for i, w in enumerate(walls)]
    lines.append("| **whole run (wall clock, incl. model loading)** | " + " | ".join(cells) + " |")
    rest = [round(rows[b]["wall_s"] - rows[b]["stages"].get("train", 0), 1) for b in names]
    cells = [f"{w}" + (f" ({w / rest[0]:.2f}x)" if i else "") for i, w in enumerate(rest)]
    lines.append("| whole run without the train stage | " + " | ".join(cells) + " |")
    lines.append("| pairs trained on (sets the train stage's length) | "
                 + " | ".join(str(rows[b].get("train_pairs", "-")) for b in names) + " |")
    lines += ["", "Runs, in the order they were made (compare runs made back to back: this machine's speed drifts):", ""]
    for b in sorted(names, key=lambda b: rows[b].get("started", "")):
        r = rows[b]
        lines.append(f"- {b}: started {r.get('started', '?')}, `{r.get('command', '?')}` -> `selfguide run --backend {r.get('backend', b)}"
                     + "".join(f" --set {o}" for o in r.get("overrides", [])) + f"`; {r['verdict']}")
    lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines))
    print(f"wrote {out}.md")


if __name__ == "__main__":
    sys.exit(main())
