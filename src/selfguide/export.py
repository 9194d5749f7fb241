"""Export the synthetic training set: JSONL, a Hugging Face `datasets` folder and a dataset card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

from selfguide.stages.context import Context
from selfguide.store import atomic_write_text, read_records, write_records


def export_dataset(ctx: Context, out_dir: Optional[Path] = None) -> Path:
    from datasets import Dataset

    ann_dir = ctx.stage_dir("annotate")
    manifest = json.loads((ann_dir / "MANIFEST.json").read_text())
    pairs = read_records(ann_dir / "pairs.jsonl")
    out = out_dir or (ann_dir / "export")
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"id": p["id"], "input": p["input"], "output": p["output"]} for p in pairs]
    write_records(out / "train.jsonl", rows)
    hf_dir = out / "hf_dataset"
    tmp = out / ".hf_dataset.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    Dataset.from_list(rows or [], features=None).save_to_disk(str(tmp))
    shutil.rmtree(hf_dir, ignore_errors=True)
    tmp.rename(hf_dir)
    gen = json.loads((ctx.stage_dir("generate") / "MANIFEST.json").read_text())
    task = ctx.task
    lines = [
        f"# Synthetic training data for {task.id}",
        "",
        "Made by selfguide (Self-Guide, Zhao et al. 2024): the model below wrote these inputs and labelled them itself.",
        "",
        f"- task: {task.id} ({task.kind}; {len(task.examples)} examples given)",
        f"- model: {gen['inputs']['model'].get('name')} (sha256 {str(gen['inputs']['model'].get('sha256'))[:16]})",
        f"- seed: {ctx.cfg.seed}",
        f"- pairs: {len(rows)}",
        f"- label source: {manifest['counts'].get('label_source')}",
        "",
        "## Funnel",
        "",
        "| step | count |",
        "|---|---:|",
        *[f"| {a} | {b} |" for a, b in gen["funnel"] + manifest["funnel"]],
    ]
    if task.labels:
        lines += ["", f"Label mix after balancing: {manifest['counts'].get('label_mix_after')}"]
    lines += ["", "Files: `train.jsonl` (id, input, output) and `hf_dataset/` (`datasets.load_from_disk`)."]
    atomic_write_text(out / "README.md", "\n".join(lines) + "\n")
    return out
