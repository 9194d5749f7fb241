"""Write a selfguide task file (examples/*.yaml) from one of the paper's NIv2 tasks.

The instruction and examples are the paper's prompt; `eval:` holds N evenly spaced items of one
split (default `test_small`, so an example never shows the validation items a demo was chosen on).

    python bench/niv2_example.py ../shared/niv2/task1195.paper_prompt.json --id disfluent \
        --items 60 --out examples/disfluent.yaml --note "chosen for the demo: docs/first-run.md"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("task")
    ap.add_argument("--id", required=True)
    ap.add_argument("--split", default="test_small")
    ap.add_argument("--items", type=int, default=60)
    ap.add_argument("--out", required=True)
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from selfguide.task import load_task

    task = load_task(args.task)
    items = task.split_items(args.split)
    picked = [items[(i * len(items)) // args.items] for i in range(min(args.items, len(items)))]
    body = {"id": args.id, "instruction": task.instruction}
    if task.labels:
        body["labels"] = list(task.labels)
    body["examples"] = [{"input": e.input, "output": e.output} for e in task.examples]
    body["eval"] = [{"id": it.id, "input": it.input, "output": list(it.outputs) if len(it.outputs) > 1 else it.outputs[0]}
                    for it in picked]
    head = (f"# A selfguide task file made from NIv2 {task.id} (Super-NaturalInstructions, Apache-2.0) by bench/niv2_example.py:\n"
            f"# the instruction and examples the Self-Guide paper used; eval = {len(picked)} evenly spaced items of its "
            f"{args.split} split.\n" + "".join(f"# {line}\n" for line in args.note.splitlines() if line))
    Path(args.out).write_text(head + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=100), encoding="utf-8")
    print(f"wrote {args.out}: {len(task.examples)} examples, {len(picked)} eval items")


if __name__ == "__main__":
    main()
