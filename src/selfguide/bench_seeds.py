"""`selfguide bench --seeds 42,43,44`: one bench run per synthesis seed, then one table over them.

One seed can move a verdict by several points (docs/benchmarks/analysis.md), so defaults are
chosen on the mean over seeds. Per task and method: the mean over seeds and the spread (lowest
to highest seed); for selfguide - prompt-fewshot also the paired bootstrap 95% CI over items of
the per-item difference averaged over the seeds (items are the same for every seed), and on how
many seeds the gain was positive. Averages per kind are means of the per-task means.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from selfguide.bench import ci_cell, delta_counts, label_prior_average, label_prior_lines
from selfguide.metrics import paired_bootstrap
from selfguide.store import atomic_write_json, atomic_write_text, read_records


def seed_name(name: str, seed: int) -> str:
    return f"{name}-s{seed}"


def _item_scores(run: Path, task: str, system: str, metric: str) -> Optional[dict[str, float]]:
    path = run / task / "evaluate" / system / "predictions.jsonl"
    if not path.exists():
        return None
    return {r["id"]: r["scores"][metric] for r in read_records(path)}


def pooled_delta(runs: Sequence[Path], task: str, metric: str, resamples: int, seed: int,
                 system_name: str = "selfguide") -> Optional[dict[str, float]]:
    """`system_name` - prompt-fewshot per item, averaged over the seeds' runs, with a paired bootstrap CI."""
    base, system = [], []
    per_seed = [(_item_scores(r, task, "prompt-fewshot", metric), _item_scores(r, task, system_name, metric)) for r in runs]
    if any(b is None or s is None for b, s in per_seed):
        return None
    ids = sorted(set.intersection(*[set(b) & set(s) for b, s in per_seed]))  # type: ignore[arg-type]
    if not ids:
        return None
    for i in ids:
        base.append(sum(b[i] for b, _ in per_seed) / len(per_seed))  # type: ignore[index]
        system.append(sum(s[i] for _, s in per_seed) / len(per_seed))  # type: ignore[index]
    mean, lo, hi = paired_bootstrap(base, system, resamples, seed=seed)
    return {"value": round(100 * mean, 2), "ci_low": round(100 * lo, 2), "ci_high": round(100 * hi, 2), "items": len(ids)}


def summarize(per_seed: dict[int, dict[str, Any]], run_root: Path, name: str, resamples: int) -> dict[str, Any]:
    """Merge the per-seed bench results (seed -> run_bench data) into one summary."""
    seeds = sorted(per_seed)
    first = per_seed[seeds[0]]
    methods = first["methods"]
    tasks = [r["task"] for r in first["tasks"] if all(any(x["task"] == r["task"] for x in per_seed[s]["tasks"]) for s in seeds)]
    rows = []
    for task in tasks:
        by_seed = {s: next(x for x in per_seed[s]["tasks"] if x["task"] == task) for s in seeds}
        kind, metric = by_seed[seeds[0]]["kind"], by_seed[seeds[0]]["primary_metric"]
        scores: dict[str, Any] = {}
        for m in methods:
            values = [by_seed[s]["scores"][m][metric] for s in seeds if m in by_seed[s]["scores"]]
            if values:
                scores[m] = {"mean": round(sum(values) / len(values), 2), "low": min(values), "high": max(values), "per_seed": values}
        deltas = [by_seed[s]["delta"]["value"] for s in seeds if by_seed[s].get("delta")]
        row = {"task": task, "kind": kind, "primary_metric": metric, "scores": scores,
               "numerics": sorted({v for s in seeds for v in by_seed[s].get("numerics", [0])}),
               "delta_per_seed": deltas, "positive_seeds": sum(d > 0 for d in deltas),
               "delta": pooled_delta([run_root / seed_name(name, s) for s in seeds], task, metric, resamples, seeds[0])}
        if all(by_seed[s].get("balanced") for s in seeds):  # the items are the same for every seed, so is the gold mix
            row |= {"majority_share": by_seed[seeds[0]]["majority_share"], "gold_classes": by_seed[seeds[0]]["gold_classes"],
                    "diagnosis": by_seed[seeds[0]].get("diagnosis"),  # the base model on the same items: one per task
                    "balanced": {m: round(sum(v) / len(v), 2) for m in methods
                                 if (v := [by_seed[s]["balanced"][m] for s in seeds if by_seed[s]["balanced"].get(m) is not None])}}
        if "selfguide-gated" in methods:
            gated = [by_seed[s]["delta_gated"]["value"] for s in seeds if by_seed[s].get("delta_gated")]
            # None: auto found no room for the gate on this task (the ungated model is reported)
            row["gate_scales"] = [by_seed[s]["gate"].get("scale") for s in seeds if by_seed[s].get("gate")]
            # the earlier epoch each seed's gate kept (None: the finished training), with evaluate.gate_epochs
            row["gate_epochs"] = [by_seed[s]["gate"].get("epoch") for s in seeds if by_seed[s].get("gate")]
            row["delta_gated_per_seed"] = gated
            row["delta_gated"] = pooled_delta([run_root / seed_name(name, s) for s in seeds], task, metric, resamples,
                                              seeds[0], "selfguide-gated")
        rows.append(row)
    averages: dict[str, Any] = {}
    for kind in ("classification", "generation"):
        kr = [r for r in rows if r["kind"] == kind]
        if not kr:
            continue
        means = {m: [r["scores"][m]["mean"] for r in kr if m in r["scores"]] for m in methods}
        with_delta = [r["delta"]["value"] for r in kr if r["delta"]]
        averages[kind] = {
            "tasks": len(kr), "metric": kr[0]["primary_metric"],
            "scores": {m: round(sum(v) / len(v), 2) if v else None for m, v in means.items()},
            "delta": round(sum(with_delta) / len(with_delta), 2) if with_delta else None,
            **delta_counts(kr),
        }
        prior = label_prior_average(kr, methods, lambda r, m: r["scores"][m]["mean"] if m in r["scores"] else None)
        if prior:
            averages[kind]["label_prior"] = prior
    header = {k: first[k] for k in ("model", "split", "metric_mode", "cpu_flags", "machine", "versions", "changed_from_defaults")}
    header["preset"] = first.get("preset", "paper (made before presets existed)")
    return {**header, "seeds": seeds, "methods": methods, "tasks": rows, "averages": averages,
            "numerics_version": sorted({v for r in rows for v in r["numerics"]})}


def write(out: Path, data: dict[str, Any]) -> None:
    methods, seeds = data["methods"], data["seeds"]
    m = data["model"]
    lines = [
        f"# NIv2 benchmark over seeds {', '.join(map(str, seeds))}: {m['name']}", "",
        f"- model: {m['name']} (sha256 `{m['sha256'][:16]}`); split `{data['split']}`; metric mode {data['metric_mode']}",
        f"- CPU flags: {', '.join(data.get('cpu_flags') or ['none read'])}; numerics version {', '.join(map(str, data['numerics_version']))}",
        f"- preset: {data.get('preset', 'paper (made before presets existed)')}; changed from it: "
        + (", ".join(f"{k}={v}" for k, v in data.get("changed_from_defaults", {}).items() if k != "seed") or "nothing"),
        "- cells: mean over seeds [lowest, highest]; delta = selfguide - prompt-fewshot per item averaged over seeds, "
        "paired bootstrap 95% CI over items; `+seeds` = seeds on which the gain was positive", "",
        "| task | kind | " + " | ".join(methods) + " | delta [95% CI] | +seeds |",
        "|---|---|" + "---:|" * len(methods) + "---|---:|",
    ]
    for r in data["tasks"]:
        cells = []
        for mm in methods:
            s = r["scores"].get(mm)
            cells.append(f"{s['mean']:.1f} [{s['low']:.0f}, {s['high']:.0f}]" if s else "-")
        lines.append(f"| {r['task']} | {r['kind'][:5]} | " + " | ".join(cells) + f" | {ci_cell(r['delta'])} | {r['positive_seeds']}/{len(seeds)} |")
    lines += ["", "| kind | tasks | metric | " + " | ".join(methods) + " | mean delta | significant gains / losses |",
              "|---|---:|---|" + "---:|" * len(methods) + "---:|---|"]
    for kind, a in data["averages"].items():
        cells = [f"{a['scores'][mm]:.1f}" if a["scores"].get(mm) is not None else "-" for mm in methods]
        delta = f"{a['delta']:+.1f}" if a["delta"] is not None else "-"
        lines.append(f"| {kind} | {a['tasks']} | {a['metric']} | " + " | ".join(cells) + f" | {delta} | "
                     + (f"{a['significant_gains']} / {a['significant_losses']} |" if "significant_gains" in a else "- |"))
    gated_rows = [r for r in data["tasks"] if "delta_gated" in r]
    if gated_rows:
        lines += ["", "Do-no-harm gate (`selfguide-gated`): the LoRA scale in {0, 0.5, 1} that scored best on validation items "
                  "the reported evaluation does not use (0 keeps the base model).", "",
                  "| task | scale per seed | selfguide delta | gated delta [95% CI] | gated significant loss |",
                  "|---|---|---:|---|---|"]
        for r in gated_rows:
            d, g = r["delta"], r["delta_gated"]
            ungated = f"{d['value']:+.1f}" if d else "-"
            loss = ("yes" if g and g["ci_high"] < 0 else "no") if d else "-"
            chosen = ", ".join("no room" if x is None else f"{x:g}" + (f" (epoch {e})" if e else "")
                               for x, e in zip(r["gate_scales"], r.get("gate_epochs") or [None] * len(r["gate_scales"])))
            lines.append(f"| {r['task']} | {chosen} | {ungated} | {ci_cell(g)} | {loss} |")
        for kind, a in data["averages"].items():
            if "delta_gated" in a:
                lines.append(f"\n{kind}: mean gated delta {a['delta_gated']:+.1f} (ungated {a['delta']:+.1f}); "
                             f"significant losses {a['significant_losses_gated']} gated, {a['significant_losses']} ungated")
    lines += label_prior_lines(data)
    atomic_write_json(out.with_suffix(".json"), data)
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
