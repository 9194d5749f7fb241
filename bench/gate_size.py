"""How many validation items does the do-no-harm gate need? A resampling study over finished gates.

Every gate of a development run (`runs/dev/*/TASK/evaluate/gate-scale-{0,0.5,1}`) scored the same validation items
(never reported ones) at the three LoRA scales. Here the gate is replayed on a small random subset of those items
(n of them, as a task with only n validation items would have), and its choice is judged on the items it did not see:
the gain over prompting (scale 0) of the chosen scale against that of the ungated model (scale 1). Over many subsets
and every trained model this estimates what a gate on n items buys: the mean gain, how often it hands over something
worse than the ungated model, and how often its choice loses to prompting where the ungated model did not.
Diagnosis only: reads finished stages, trains and scores nothing. No test split is read (gate items are validation).

    python bench/gate_size.py --runs runs/dev --sizes 6,8,10,12,14,16,20,30 --out docs/benchmarks/dev/gate-size
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path
from typing import Optional

from selfguide.store import cpu_vector_flags

SCALES = ("0", "0.5", "1")


def scores(folder: Path, metric: str) -> dict[str, float]:
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines() if line.strip()]
    return {r["id"]: 100 * r["scores"][metric] for r in rows}


def gates(runs: Path, metric: str) -> list[dict]:
    """Every finished gate under `runs` that scored `metric` (the kind of task it studies): its run, task and the
    per-item scores at each scale."""
    found = []
    for gate_json in sorted(runs.glob("*/*/gate/gate.json")):
        gate = json.loads(gate_json.read_text())
        if gate["metric"] != metric:
            continue
        evaluate = gate_json.parent.parent / "evaluate"
        folders = [evaluate / f"gate-scale-{s}" for s in SCALES]
        if not all((f / "predictions.jsonl").exists() for f in folders):
            continue
        per_scale = [scores(f, gate["metric"]) for f in folders]
        ids = sorted(set.intersection(*(set(p) for p in per_scale)))
        found.append({"run": gate_json.parent.parent.parent.name, "task": gate_json.parent.parent.name,
                      "metric": gate["metric"], "items": ids, "scores": [[p[i] for i in ids] for p in per_scale]})
    return found


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def choose(per_scale: list[list[float]], seen: list[int], margin: Optional[float]) -> int:
    """The scale index a gate picks on the items `seen`. margin None: selfguide's gate (the best mean, ties to the
    smaller scale). A number k: a rule that leaves the full finetuning only for a smaller scale that beats it by k
    standard errors of their paired per-item difference (the alternative weighed in gate-size.md)."""
    on_seen = [mean([s[i] for i in seen]) for s in per_scale]
    if margin is None:
        best = max(on_seen)
        return next(j for j, v in enumerate(on_seen) if v == best)
    choice = 2
    for j in (0, 1):
        diffs = [per_scale[j][i] - per_scale[2][i] for i in seen]
        if on_seen[j] - on_seen[2] > margin * statistics.stdev(diffs) / len(diffs) ** 0.5 and on_seen[j] >= on_seen[choice]:
            choice = j
    return choice


def replay(gate: dict, n: int, draws: int, rng: random.Random, margin: Optional[float] = None) -> dict[str, float]:
    """The gate on n random items, judged on the rest, averaged over `draws` subsets."""
    k = len(gate["items"])
    s0, s5, s1 = gate["scores"]
    gated, ungated, worse, new_losses, kept_base = [], [], 0, 0, 0
    for _ in range(draws):
        order = list(range(k))
        rng.shuffle(order)
        seen, rest = order[:n], order[n:]
        choice = choose(gate["scores"], seen, margin)
        on_rest = [mean([s[i] for i in rest]) for s in (s0, s5, s1)]
        g, u = on_rest[choice] - on_rest[0], on_rest[2] - on_rest[0]
        gated.append(g)
        ungated.append(u)
        worse += g < u
        new_losses += g < 0 <= u
        kept_base += choice == 0
    return {"gated": mean(gated), "ungated": mean(ungated), "worse_share": worse / draws,
            "new_loss_share": new_losses / draws, "base_share": kept_base / draws}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs/dev")
    ap.add_argument("--metric", default="rougeL", help="the gates studied: rougeL (free text) or exact_match (labels)")
    ap.add_argument("--sizes", default="6,8,10,12,14,16,20,30")
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--margins", default="0.5,1,1.5", help="margin rules to weigh against the gate's (standard errors)")
    ap.add_argument("--margin-sizes", default="12,20,50", help="the n items at which the margin rules are weighed")
    ap.add_argument("--out", required=True, help="path without suffix: writes .md and .json")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    found = gates(Path(args.runs), args.metric)
    if not found:
        raise SystemExit(f"no finished gates scored by {args.metric} under {args.runs}")
    rng = random.Random(args.seed)
    rows = []
    for g in found:
        for n in sizes:
            rows.append({"run": g["run"], "task": g["task"], "items": len(g["items"]), "n": n,
                         "full": mean(g["scores"][2]) - mean(g["scores"][0]), **replay(g, n, args.draws, rng)})
    summary = []
    for n in sizes:
        at = [r for r in rows if r["n"] == n]
        summary.append({"n": n, "gates": len(at), "ungated": mean([r["ungated"] for r in at]),
                        "gated": mean([r["gated"] for r in at]),
                        "gated_minus_ungated_sd": statistics.pstdev([r["gated"] - r["ungated"] for r in at]),
                        "worse_share": mean([r["worse_share"] for r in at]),
                        "new_loss_share": mean([r["new_loss_share"] for r in at]),
                        "base_share": mean([r["base_share"] for r in at]),
                        "losing_models": sum(r["full"] < 0 for r in at),
                        "gated_on_losing": mean([r["gated"] for r in at if r["full"] < 0] or [float("nan")]),
                        "ungated_on_losing": mean([r["ungated"] for r in at if r["full"] < 0] or [float("nan")])})
    rules = []
    for n in [int(x) for x in args.margin_sizes.split(",")]:
        for margin in [None] + [float(x) for x in args.margins.split(",")]:
            at = [(g, replay(g, n, args.draws, rng, margin)) for g in found]
            losing = [r for g, r in at if mean(g["scores"][2]) < mean(g["scores"][0])]
            rules.append({"n": n, "margin": margin, "gated": mean([r["gated"] for _, r in at]),
                          "ungated": mean([r["ungated"] for _, r in at]),
                          "gated_on_losing": mean([r["gated"] for r in losing]),
                          "ungated_on_losing": mean([r["ungated"] for r in losing]),
                          "base_share": mean([r["base_share"] for _, r in at])})
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"runs": args.runs, "draws": args.draws, "seed": args.seed,
                                                    "summary": summary, "rules": rules, "rows": rows}, indent=1))
    lines = [
        "# How many validation items the gate needs (resampled from finished gates; diagnosis only)",
        "",
        f"- gates: {len(found)} trained models, not independent (the arms of one task and seed share its inputs) "
        f"({', '.join(sorted({g['task'] for g in found}))}; runs "
        f"{', '.join(sorted({g['run'] for g in found}))}), each scored at the scales 0, 0.5, 1 on "
        f"{min(len(g['items']) for g in found)}-{max(len(g['items']) for g in found)} validation items the reported "
        f"evaluation does not use, scored by {args.metric}",
        f"- each gate replayed on n random items of those, judged on the others; {args.draws} draws per model and n, seed {args.seed}",
        f"- CPU vector flags of this machine (no model runs here): {', '.join(cpu_vector_flags()) or 'unreadable'}",
        f"- command: `python bench/gate_size.py --runs {args.runs} --metric {args.metric} --sizes {args.sizes} --draws {args.draws} "
        f"--margins {args.margins} --margin-sizes {args.margin_sizes} --out {args.out}`",
        "",
        "Gains in points over prompting (scale 0) on the items the gate did not see, mean over models and draws. "
        "worse: share of draws where the gate hands over something that scores below the ungated model; new loss: the "
        "gate's choice loses to prompting where the ungated model did not; kept base: the gate chose scale 0. "
        "Losing models: those whose ungated model loses to prompting on all the gate's items.",
        "",
        "| n items | ungated gain | gated gain | gated - ungated | worse | new loss | kept base | losing models | gated gain on them | ungated gain on them |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        lines.append(f"| {s['n']} | {s['ungated']:+.2f} | {s['gated']:+.2f} | {s['gated'] - s['ungated']:+.2f} | "
                     f"{100 * s['worse_share']:.0f}% | {100 * s['new_loss_share']:.0f}% | {100 * s['base_share']:.0f}% | "
                     f"{s['losing_models']} | {s['gated_on_losing']:+.2f} | {s['ungated_on_losing']:+.2f} |")
    lines += ["", "Another rule for the same choice: leave the full finetuning only for a smaller scale that beats it by "
              "k standard errors of their paired per-item difference (more of the winners' gain kept, less protection). "
              "Gains over prompting on the unseen items, as many draws per model and n as above.", "",
              "| n items | rule | gated gain | ungated gain | losing models, gated | losing models, ungated | kept base |",
              "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rules:
        name = "selfguide's gate (best mean, ties to the smaller scale)" if r["margin"] is None else f"margin {r['margin']:g} SE"
        lines.append(f"| {r['n']} | {name} | {r['gated']:+.2f} | {r['ungated']:+.2f} | {r['gated_on_losing']:+.2f} | "
                     f"{r['ungated_on_losing']:+.2f} | {100 * r['base_share']:.0f}% |")
    lines += ["", "Per model (full: the ungated gain on all the gate's items):", "",
              "| run | task | items | full | " + " | ".join(f"gated - ungated, n={n}" for n in sizes) + " |",
              "|---|---|---:|---:|" + "---:|" * len(sizes)]
    for g in found:
        at = {r["n"]: r for r in rows if r["run"] == g["run"] and r["task"] == g["task"]}
        first = at[sizes[0]]
        lines.append(f"| {g['run']} | {g['task']} | {first['items']} | {first['full']:+.1f} | "
                     + " | ".join(f"{at[n]['gated'] - at[n]['ungated']:+.2f}" for n in sizes) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:14 + len(sizes)]))


if __name__ == "__main__":
    main()
