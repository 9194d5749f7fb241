"""Compare settings ("arms") of `selfguide bench` over tasks and seeds, to decide a default.

Each arm is one or more bench JSON files made with the same settings: one per seed, or several
for one seed when its tasks were run as separate benches (their rows are merged). The table
has, per arm and kind, the mean selfguide - few-shot delta over the tasks all files share; the
spread of that mean over seeds; and how many tasks gained. A second table gives the per-task
deltas (mean over seeds). A default changes only when the development tasks agree
(docs/benchmarks/analysis.md).

    python bench/compare_arms.py \
        --arm paper=docs/benchmarks/dev/paper-s42.json,docs/benchmarks/dev/paper-s43.json \
        --arm placeholder=docs/benchmarks/dev/placeholder-s42.json,docs/benchmarks/dev/placeholder-s43.json \
        --out docs/benchmarks/dev-comparison.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

# The development tasks; every other NIv2 task is held out.
DEV_TASKS = {"task190", "task199", "task200", "task738", "task937", "task1385", "task1386",
             "task036", "task039", "task121", "task1195"}


def load_arm(spec: str) -> tuple[str, list[dict]]:
    """One merged run per seed."""
    name, _, files = spec.partition("=")
    if not files:
        sys.exit(f"--arm {spec!r}: expected NAME=FILE[,FILE...]")
    by_seed: dict[int, dict] = {}
    for f in files.split(","):
        path = Path(f)
        if not path.exists():
            sys.exit(f"--arm {name}: {path}: no such file (run `selfguide bench ... --out {path.with_suffix('')}` first)")
        run = json.loads(path.read_text(encoding="utf-8"))
        if run["seed"] not in by_seed:
            by_seed[run["seed"]] = run
            continue
        merged = by_seed[run["seed"]]
        if run.get("changed_from_defaults") != merged.get("changed_from_defaults"):
            sys.exit(f"--arm {name}: {path} has other settings than the arm's first file of seed {run['seed']}")
        clash = {r["task"] for r in run["tasks"]} & {r["task"] for r in merged["tasks"]}
        if clash:
            sys.exit(f"--arm {name}: {path} repeats task(s) {', '.join(sorted(clash))} for seed {run['seed']}")
        merged["tasks"] = merged["tasks"] + run["tasks"]
    return name, list(by_seed.values())


def deltas(run: dict) -> dict[str, tuple[str, float, int]]:
    """task -> (kind, delta, pairs) for the rows that have a delta."""
    return {r["task"]: (r["kind"], r["delta"]["value"], r.get("pairs", 0)) for r in run["tasks"] if r.get("delta")}


def compare(arms: list[tuple[str, list[dict]]], only_dev: bool, allow_mixed: bool = False) -> str:
    from selfguide.bench import check_one_version, numerics_versions
    from selfguide.errors import UserInputError

    rows = [r for _, runs in arms for run in runs for r in run["tasks"]]
    try:
        check_one_version(rows, "compare_arms", allow_mixed)
    except UserInputError as exc:
        sys.exit(str(exc))
    per_run = [[deltas(run) for run in runs] for _, runs in arms]
    common = set.intersection(*(set(d) for runs in per_run for d in runs))
    if only_dev:
        common &= DEV_TASKS
    if not common:
        sys.exit("no task has a delta in every file; nothing to compare")
    kinds = sorted({runs[0][t][0] for runs in per_run for t in common})
    lines = ["| arm | preset; changed from it | seeds | kind | tasks | mean delta | spread over seeds (min..max) | tasks with a gain | mean pairs |",
             "|---|---|---:|---|---:|---:|---|---:|---:|"]
    for (name, runs), ds in zip(arms, per_run):
        changed = {k: v for k, v in runs[0].get("changed_from_defaults", {}).items() if k != "seed"}
        seeds = sorted({run["seed"] for run in runs})
        for kind in kinds:
            tasks = sorted(t for t in common if ds[0][t][0] == kind)
            if not tasks:
                continue
            seed_means = [statistics.fmean(d[t][1] for t in tasks) for d in ds]
            task_means = [statistics.fmean(d[t][1] for d in ds) for t in tasks]
            pairs = statistics.fmean(d[t][2] for d in ds for t in tasks)
            lines.append(
                f"| {name} | {runs[0].get('preset', 'paper (before presets)')}; {', '.join(f'{k}={v}' for k, v in changed.items()) or '-'} | {','.join(map(str, seeds))} | {kind} "
                f"| {len(tasks)} | {statistics.fmean(seed_means):+.2f} | {min(seed_means):+.2f}..{max(seed_means):+.2f} "
                f"| {sum(m > 0 for m in task_means)} | {pairs:.0f} |"
            )
    flags = sorted({", ".join(run.get("cpu_flags") or ["not recorded"]) for _, runs in arms for run in runs})
    lines += ["", "CPU vector flags of the runs: " + "; ".join(flags),
              "", "Numerics version(s) of the rows: " + ", ".join(map(str, numerics_versions(rows)))
              + (" (MIXED: rows made by code with other numerics, tabulated with --allow-mixed-versions)"
                 if len(numerics_versions(rows)) > 1 else "")]
    names = [name for name, _ in arms]
    lines += ["", "Per task (delta, mean over seeds):", "", "| task | kind | dev | " + " | ".join(names) + " |",
              "|---|---|---|" + "---:|" * len(names)]
    for t in sorted(common, key=lambda t: (per_run[0][0][t][0], t)):
        cells = [f"{statistics.fmean(d[t][1] for d in ds):+.1f}" for ds in per_run]
        lines.append(f"| {t} | {per_run[0][0][t][0]} | {'yes' if t in DEV_TASKS else 'no'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arm", action="append", required=True, metavar="NAME=FILE[,FILE...]")
    ap.add_argument("--dev-only", action="store_true", help="only the development tasks (never tune on held-out ones)")
    ap.add_argument("--out", type=Path, help="also write the tables here")
    ap.add_argument("--allow-mixed-versions", action="store_true",
                    help="tabulate rows made with different numerics versions (the table says so)")
    args = ap.parse_args()
    text = compare([load_arm(a) for a in args.arm], args.dev_only, args.allow_mixed_versions)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
