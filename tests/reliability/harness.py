"""Kill-anywhere harness: run a real pipeline in a subprocess, kill it (SIGKILL or SIGINT) at random
moments, restart it, repeat until it finishes; then compare with an uninterrupted run.

    python -m tests.reliability.harness --kills 20 [--long] [--signal both|kill|int] [--seed 0] [--synthesis fake|hf|openvino]

--synthesis fake (default): whole runs, scripted synthesis, tiny real model for training and
evaluation. --synthesis hf|openvino: generate + annotate only, with that engine on a tiny real
model, fp32 (child.py).

Checks after every kill: every JSONL file reads back (a cut last line is tolerated, a corrupt one
is not), no duplicate ids, and a MANIFEST.json exists only for stages whose outputs are complete.
At the end: the records of every stage are byte-identical to the uninterrupted run's.
Prints a JSON summary (and writes it to --out when given).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TASK = ROOT / "examples" / "scitail.yaml"
# Files whose bytes must equal those of the uninterrupted run.
COMPARED = ["generate/candidates.jsonl", "generate/inputs.jsonl", "generate/rejected.jsonl",
            "annotate/annotations.jsonl", "annotate/pairs.jsonl", "annotate/rejected.jsonl",
            "evaluate/prompt-fewshot/predictions.jsonl", "evaluate/prompt-zeroshot/predictions.jsonl",
            "evaluate/selfguide/predictions.jsonl", "train/metrics.jsonl"]
SYNTHESIS_FILES = COMPARED[:6]


def start(run_dir: Path, model: Path, mode: str = "fake") -> subprocess.Popen:
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))  # keeps the tests' network guard
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=path)
    return subprocess.Popen([sys.executable, str(HERE / "child.py"), str(TASK), str(run_dir), str(model), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)


def check_invariants(task_dir: Path) -> list[str]:
    """Problems visible on disk right after a kill."""
    sys.path.insert(0, str(ROOT / "src"))
    from selfguide.store import read_records

    problems = []
    for path in task_dir.rglob("*.jsonl"):
        try:
            records = read_records(path)
        except Exception as exc:  # noqa: BLE001 - any failure to read is a finding
            problems.append(f"{path}: unreadable after kill: {exc}")
            continue
        ids = [r.get("id") for r in records if "id" in r]
        if len(ids) != len(set(ids)) and path.name != "metrics.jsonl":
            problems.append(f"{path}: duplicate ids")
    for manifest in task_dir.rglob("MANIFEST.json"):
        stage = manifest.parent
        data = json.loads(manifest.read_text())
        counts = data.get("counts", {})
        if stage.name == "generate" and len(read_records(stage / "inputs.jsonl")) != counts.get("kept"):
            problems.append(f"{manifest}: generate manifest disagrees with inputs.jsonl")
        if stage.name == "annotate" and len(read_records(stage / "pairs.jsonl")) != counts.get("pairs"):
            problems.append(f"{manifest}: annotate manifest disagrees with pairs.jsonl")
        if stage.name == "train" and not (stage / "model" / "model.safetensors").exists():
            problems.append(f"{manifest}: train manifest without a model")
        if stage.parent.name == "evaluate" and len(read_records(stage / "predictions.jsonl")) != counts.get("items"):
            problems.append(f"{manifest}: evaluate manifest disagrees with predictions.jsonl")
    return problems


def build_model(work: Path, mode: str) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import build_lively_model, build_tiny_model

    tiny = build_tiny_model(work / "tiny")
    return build_lively_model(tiny, work / "lively") if mode != "fake" else tiny


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--long", action="store_true", help="100 kills")
    ap.add_argument("--signal", choices=["both", "kill", "int"], default="both")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--synthesis", choices=["fake", "hf", "openvino"], default="fake")
    args = ap.parse_args(argv)
    compared = SYNTHESIS_FILES if args.synthesis != "fake" else COMPARED
    kills_wanted = 100 if args.long else args.kills
    rng = random.Random(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="selfguide-kill-"))
    tiny = build_model(work, args.synthesis)

    t0 = time.time()
    ref = start(work / "ref", tiny, args.synthesis)
    out, _ = ref.communicate(timeout=900)
    assert ref.returncode == 0 and "CHILD-DONE" in out, out[-3000:]
    reference_seconds = time.time() - t0

    kills = {"SIGKILL": 0, "SIGINT": 0}
    stages_hit: dict[str, int] = {}
    problems: list[str] = []
    mismatched: list[str] = []
    verdict_same = True
    attempts = episodes = 0
    ref_dir = work / "ref" / "default" / "scitail"
    # Kill moments are drawn within the duration of a whole uninterrupted run. The reference run pays the cold
    # costs (an engine's model export and compile: 39 s against 6 s warm for openvino), so the window shrinks to
    # the first whole run that finishes before its kill; with the reference's length most draws came after the
    # run had ended, and 4 kills took 40+ episodes.
    window = reference_seconds
    # An episode is one run killed and restarted until it finishes; episodes repeat until enough kills.
    while sum(kills.values()) < kills_wanted and not problems:
        episodes += 1
        run_dir = work / f"episode-{episodes:03d}"
        task_dir = run_dir / "default" / "scitail"
        whole = True  # this attempt starts the episode's run from nothing
        while True:
            attempts += 1
            started = time.time()
            proc = start(run_dir, tiny, args.synthesis)
            out = None
            if sum(kills.values()) < kills_wanted:
                try:  # returns as soon as the run ends, reading its output meanwhile
                    out, _ = proc.communicate(timeout=rng.uniform(0.5, window))
                    if whole:
                        window = min(window, time.time() - started)
                except subprocess.TimeoutExpired:
                    sig = {"kill": signal.SIGKILL, "int": signal.SIGINT}.get(args.signal) or rng.choice([signal.SIGKILL, signal.SIGINT])
                    stage = latest_stage(task_dir)
                    proc.send_signal(sig)
                    try:
                        proc.communicate(timeout=60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.communicate()
                        problems.append("a SIGINT did not stop the run within 60 s")
                    kills["SIGKILL" if sig == signal.SIGKILL else "SIGINT"] += 1
                    stages_hit[stage] = stages_hit.get(stage, 0) + 1
                    problems += check_invariants(task_dir)
                    whole = False
                    continue
            if out is None:
                out, _ = proc.communicate(timeout=900)
            if proc.returncode != 0 or "CHILD-DONE" not in out:
                problems.append(f"a restart failed with exit {proc.returncode}: {out[-1500:]}")
            break
        if problems:
            break
        mismatched += [f"episode {episodes}: {f}" for f in compared if (ref_dir / f).read_bytes() != (task_dir / f).read_bytes()]
        if args.synthesis != "fake":
            continue  # synthesis only: no verdict
        verdict_same = verdict_same and json.loads((ref_dir / "verdict.json").read_text())["deltas"] == json.loads((task_dir / "verdict.json").read_text())["deltas"]

    summary = {
        "kills": kills, "kills_total": sum(kills.values()), "restarts": attempts, "episodes": episodes, "stages_hit": stages_hit,
        "synthesis": args.synthesis, "reference_run_seconds": round(reference_seconds, 1),
        "kill_window_seconds": round(window, 1), "files_compared": len(compared),
        "files_mismatched": mismatched, "verdict_identical": verdict_same, "problems": problems,
        "ok": not mismatched and not problems and verdict_same, "workdir": str(work),
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    return summary


def latest_stage(task_dir: Path) -> str:
    """Which stage the run was in when killed (the newest stage folder without a manifest)."""
    order = ["generate", "annotate", "evaluate/prompt-fewshot", "evaluate/prompt-zeroshot", "train", "evaluate/selfguide"]
    current = "startup"
    for stage in order:
        d = task_dir / stage
        if d.exists():
            current = stage if not (d / "MANIFEST.json").exists() else current
            if not (d / "MANIFEST.json").exists():
                return stage
    return "report" if (task_dir / "evaluate" / "selfguide" / "MANIFEST.json").exists() else current


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
