"""Measure the reliability figures and write docs/reliability.md.

Run:  .venv/bin/python bench/reliability.py [--kills 100] [--seed 0]
Runs the kill-anywhere harness (tests/reliability/harness.py) and the hostile-input and garbage
suites (pytest), then writes the numbers. Nothing else should run meanwhile (kill moments are
drawn from the uninterrupted run's duration).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "docs" / "reliability.md"))
    args = ap.parse_args()

    from reliability import harness
    from reliability.hostile import config_files, task_files

    t0 = time.time()
    kill = harness.main(["--kills", str(args.kills), "--seed", str(args.seed)])
    kill_minutes = (time.time() - t0) / 60
    t1 = time.time()
    suites = ["tests/test_hostile.py", "tests/test_synthesis.py", "tests/test_resources_safety.py", "tests/test_store.py"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:logging", *suites], cwd=ROOT, capture_output=True, text=True)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    passed = re.search(r"(\d+) passed", tail)
    failed = re.search(r"(\d+) failed", tail)
    from test_synthesis import GARBAGE as SYNTH_GARBAGE
    from test_resources_safety import GARBAGE as EVAL_GARBAGE

    lines = [
        "# Reliability figures",
        "",
        f"Measured with `.venv/bin/python bench/reliability.py --kills {args.kills} --seed {args.seed}` on "
        f"{platform.platform()}, Python {platform.python_version()}. CI runs the same suites in quick mode "
        "(`tests/test_kill_anywhere.py`: 20 kills).",
        "",
        "## Kill anywhere",
        "",
        "A real run (fake synthesis backend with a delay per prompt, a tiny real Llama for training and evaluation) is",
        "started in a subprocess, killed at a random moment, restarted, and so on until it finishes; then again, until",
        "the number of kills is reached. After every kill the run directory is checked (every JSONL file reads back, no",
        "duplicate ids, a manifest only where the stage's outputs are complete); at the end of each episode the records of",
        "every stage are compared byte for byte with an uninterrupted run of the same seed. (Real synthesis on the",
        "openvino and hf engines, fp32, is checked the same way by `--synthesis openvino|hf`.)",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| kills (SIGKILL / SIGINT) | {kill['kills']['SIGKILL']} / {kill['kills']['SIGINT']} |",
        f"| restarts | {kill['restarts']} |",
        f"| episodes (runs taken to completion) | {kill['episodes']} |",
        f"| kills per stage | {', '.join(f'{k} {v}' for k, v in sorted(kill['stages_hit'].items()))} |",
        f"| files compared per episode | {kill['files_compared']} |",
        f"| files that differed from the uninterrupted run | {len(kill['files_mismatched'])} |",
        f"| verdicts identical | {'yes' if kill['verdict_identical'] else 'NO'} |",
        f"| problems found after kills (unreadable file, duplicate id, premature manifest) | {len(kill['problems'])} |",
        f"| uninterrupted run | {kill['reference_run_seconds']} s; harness total {kill_minutes:.1f} min |",
        "",
        "## Hostile inputs",
        "",
        f"- {len(task_files())} malformed or adversarial task files (truncated JSON/YAML, wrong types, huge fields, a sparse",
        "  100 MB file, non-UTF-8 and UTF-16 bytes, NUL bytes, YAML python tags and alias bombs, path-like ids, one-example",
        "  and one-label specs, duplicate examples, labels missing from examples, broken NIv2 files), each through",
        "  `selfguide task check` and `selfguide run`;",
        f"- {len(config_files())} bad configs (unknown keys and sections, wrong types, out-of-range values, YAML tags and aliases).",
        "",
        "Every one ends with exactly one line `error: <file>: <field>: <fix>`, exit code 2, under 5 s and 64 MB of Python",
        "allocations, and nothing is written to the run directory. Hypothesis property tests feed the task loader 350",
        "random documents and byte strings (it returns a task or raises the one-line error, nothing else) and cut JSONL",
        "files at every byte (the reader returns a prefix of the records, never a partial one).",
        "",
        "## Garbage model output",
        "",
        f"- synthesis: {len(SYNTH_GARBAGE)} adversarial outputs plus the prompt echoed back (empty, whitespace, 5,000 repeated",
        "  tokens, control characters, U+FFFD replacement characters, labels in other cases or padded with punctuation,",
        "  assistant boilerplate, echoed markers): every stage completes, every rejected item keeps its reason and raw",
        "  text, and the funnel adds up (raw = kept + rejected by reason) in generate and annotate;",
        f"- evaluation: {len(EVAL_GARBAGE)} adversarial predictions are scored (valid-label share, confusion) without error.",
        "",
        "## Resources and safety",
        "",
        "- disk full (ENOSPC) mid-stage: one line naming the fix, exit 1; the same command resumes and the records equal an",
        "  uninterrupted run's. Out of memory in generation: a message naming `model.batch_size` / `max_new_tokens`.",
        "- YAML is loaded with a safe loader that also refuses aliases; weights load only from safetensors or GGUF (a folder",
        "  with pickled `.bin` weights is refused); task ids are validated, so nothing in a task file becomes a path; the",
        "  test suite runs with `HF_HUB_OFFLINE=1` and a socket guard that fails any network connection.",
        "",
        f"Suites above: {passed.group(1) if passed else '?'} passed, {failed.group(1) if failed else 0} failed "
        f"({time.time() - t1:.0f} s).",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(json.dumps(kill, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
