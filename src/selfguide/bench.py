"""`selfguide bench`: the paper's comparison over many tasks, one task at a time, resumable.

Methods (each a system in the task's evaluate/ folder, reusing every finished stage):
  prompt-zeroshot   base model, instruction only
  prompt-fewshot    base model, instruction + the task's examples (the paper's baseline)
  prompt-calibrated base model as a classifier: label scores over demonstration orders, prior divided out (classification)
  finetune-fewshot  finetuned on the few real examples only (the paper's second baseline)
  icl-synthetic     base model prompted with the examples + synthetic pairs, as many as fit ICL_PROMPT_TOKENS
  selfguide         the full method
Writes <out>.md, <out>.json and <out>.png (per-task deltas); averages per kind as the paper reports.
A classification row also carries what its exact match means beside the label prior: the commonest gold
label's share, each method's class-balanced exact match and the base model's label-signal diagnosis.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from selfguide.config import RunConfig
from selfguide.errors import UserInputError
from selfguide.identity import NUMERICS_VERSION
from selfguide.metrics import balanced_exact_match, majority_share
from selfguide.stages.context import Context
from selfguide.stages.diagnose import NO_SIGNAL_AUROC, diagnose
from selfguide.store import atomic_write_json, atomic_write_text, cpu_vector_flags, read_records, versions, write_records
from selfguide.task import Example, load_task

log = logging.getLogger(__name__)
METHODS = ("prompt-zeroshot", "prompt-fewshot", "prompt-calibrated", "finetune-fewshot", "icl-synthetic", "selfguide",
           "selfguide-gated")
# Prompt budget of icl-synthetic on CPU: SmolLM2 reads 8k tokens, but prefill cost grows with it.
ICL_PROMPT_TOKENS = 2048


def find_tasks(spec: Sequence[str]) -> list[Path]:
    """A folder (its *.paper_prompt.json files, else its task JSON/YAML files) or a list of files."""
    out: list[Path] = []
    for item in spec:
        p = Path(item)
        if p.is_dir():
            found = sorted(p.glob("*.paper_prompt.json")) or sorted(
                f for f in p.iterdir() if f.suffix in (".json", ".yaml", ".yml") and not f.name.endswith(".split.json") and f.name != "index.json"
            )
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise UserInputError(f"{item}: no such task file or folder")
    if not out:
        raise UserInputError(f"{', '.join(spec)}: no task files found")
    return out


def _manifest_seconds(path: Path) -> float:
    import json

    try:
        return float(json.loads(path.read_text(encoding="utf-8")).get("seconds", 0.0))
    except (OSError, ValueError):
        return 0.0


def _fewshot_pairs(ctx: Context) -> Path:
    path = ctx.task_dir / "fewshot-pairs.jsonl"
    rows = [{"id": f"{ctx.task.id}:x:{i:03d}", "input": e.input, "output": e.output} for i, e in enumerate(ctx.task.examples)]
    if not path.exists() or read_records(path) != rows:
        write_records(path, rows)
    return path


def _icl_shots(ctx: Context, backend: Any, items: list[Any]) -> list[Example]:
    from selfguide import prompts

    pairs = read_records(ctx.stage_dir("annotate") / "pairs.jsonl")
    longest = max(items, key=lambda it: len(it.input)).input
    shots = list(ctx.task.examples)
    for p in pairs:
        candidate = [*shots, Example(p["input"], p["output"])]
        if backend.count_tokens(backend.render(prompts.task_messages(ctx.task, longest, candidate))) > ICL_PROMPT_TOKENS:
            break
        shots = candidate
    return shots


def run_task(ctx: Context, methods: Sequence[str]) -> dict[str, Any]:
    """Every requested method for one task; returns its result row."""
    from selfguide import pipeline
    from selfguide.stages.evaluate import (base_backend_factory, base_identity, eval_items, evaluate_calibrated, evaluate_prompting,
                                           evaluate_trained, primary_metric, run_evaluate, verdict)
    from selfguide.stages.gate import gated_train_manifest
    from selfguide.stages.generate import run_generate
    from selfguide.stages.train import run_train

    t0 = time.time()
    diagnosis = None
    task = ctx.task
    results: dict[str, dict[str, Any]] = {}
    manifests: dict[str, Any] = {}
    evaluations: list[dict[str, Any]] = []

    def evaluated(manifest: dict[str, Any]) -> dict[str, Any]:
        evaluations.append(manifest)
        return manifest["results"]

    selfguided = "selfguide" in methods or "selfguide-gated" in methods  # both train on the synthetic pairs
    if "prompt-zeroshot" in methods:
        results["prompt-zeroshot"] = evaluated(evaluate_prompting(ctx, "zeroshot"))
    if "prompt-fewshot" in methods or selfguided:
        results["prompt-fewshot"] = evaluated(evaluate_prompting(ctx, "fewshot"))
        diagnosis = diagnose(ctx)  # classification only: does the base model separate the classes at all?
    if selfguided or "icl-synthetic" in methods:
        manifests.update(pipeline.synthesize(ctx))
    if "icl-synthetic" in methods:
        base_factory = base_backend_factory(ctx)
        shots = _icl_shots(ctx, base_factory(), eval_items(ctx))
        results["icl-synthetic"] = evaluated(run_evaluate(ctx, "icl-synthetic", base_identity(ctx), base_factory, shots))
        results["icl-synthetic"]["shots"] = len(shots)
    if "prompt-calibrated" in methods and task.labels:
        if ctx.cfg.evaluate.calibration == "generative" and "generate" not in manifests:
            manifests["generate"] = run_generate(ctx)  # its prior is the synthetic pool's
        results["prompt-calibrated"] = evaluated(evaluate_calibrated(ctx))
    ctx.close_backend()
    if "finetune-fewshot" in methods:
        few_ctx = dataclasses.replace(ctx, cfg=dataclasses.replace(ctx.cfg, train=dataclasses.replace(ctx.cfg.train, batch_size=1, replay_share=0.0)))
        m = run_train(few_ctx, _fewshot_pairs(ctx), "train-fewshot")
        results["finetune-fewshot"] = evaluated(evaluate_trained(ctx, m, "finetune-fewshot"))
    if selfguided:
        manifests["train"] = run_train(ctx)
        results["selfguide"] = evaluated(evaluate_trained(ctx, manifests["train"], "selfguide"))
    if "selfguide-gated" in methods:
        gate = _gated(ctx, manifests["train"])
        results["selfguide-gated"] = evaluated(evaluate_trained(ctx, gated_train_manifest(manifests["train"], gate), "selfguide-gated"))
    row: dict[str, Any] = {
        "task": task.id, "kind": task.kind, "primary_metric": primary_metric(ctx),
        # the numerics version of the code that made every stage this row rests on (identity.py)
        "numerics": sorted({m["config"]["numerics"] for m in [*evaluations, *manifests.values()]}),
        "scores": {m: r["scores"] for m, r in results.items()},
        "n_items": next(iter(results.values()))["n"] if results else 0,
        # compute time of every stage this task's row rests on, reused ones included (from their manifests)
        "wall_seconds": round(sum(_manifest_seconds(m) for m in ctx.task_dir.rglob("MANIFEST.json")), 1),
        "seconds_this_invocation": round(time.time() - t0, 1),
    }
    label_mixes = {m: r["per_label"] for m, r in results.items() if r.get("per_label")}
    if label_mixes:  # exact match read beside the label prior: the commonest gold label's share, and the class mean
        gold_mix = next(iter(label_mixes.values()))  # every method scores the same items
        row["majority_share"] = majority_share(gold_mix)
        row["gold_classes"] = len(gold_mix)
        row["balanced"] = {m: balanced_exact_match(mix) for m, mix in label_mixes.items()}
    if diagnosis:
        row["diagnosis"] = {k: diagnosis[k] for k in ("class_auroc", "no_signal", "fewshot_top_answer", "fewshot_top_count", "items")}
    if "selfguide" in results and "prompt-fewshot" in results:
        v = verdict(ctx)
        row["delta"] = v["delta"]
        row["pairs"] = manifests["annotate"]["counts"]["pairs"]
        g = manifests["generate"]["counts"]
        row["inputs"] = {"raw": g["raw"], "kept": g["kept"], "rejected": g["rejected"]}
        row["label_mix"] = manifests["annotate"]["counts"].get("label_mix_after")
        row["labeller"] = manifests["annotate"]["counts"].get("labeller", "vote")
    if "selfguide-gated" in results:
        row["delta_gated"] = verdict(ctx, system="selfguide-gated")["delta"]
        row["gate"] = ({k: gate[k] for k in ("scale", "scores", "items", "part", "epoch", "epoch_scores") if k in gate} if gate
                       else {"skipped": _gate_mode(ctx)[1]})
    if "icl-synthetic" in results:
        row["icl_shots"] = results["icl-synthetic"]["shots"]
    return row


def _gate_on(cfg: RunConfig) -> RunConfig:
    """The settings of `selfguide-gated`: the gate as the run sets it when that is auto (tasks without room for it
    report the ungated model), else evaluate.gate=validation, whatever the run says (every task must have room)."""
    return dataclasses.replace(cfg, evaluate=dataclasses.replace(cfg.evaluate, gate="auto" if cfg.evaluate.gate == "auto" else "validation"))


def _gate_mode(ctx: Context) -> tuple[bool, Optional[str]]:
    from selfguide.stages.gate import gate_mode

    return gate_mode(dataclasses.replace(ctx, cfg=_gate_on(ctx.cfg)))


def _gate_skip(cfg: RunConfig, spec: Any) -> Optional[str]:
    """Why the gate would not run on this task (None where it would, or where the task has no items to run)."""
    try:
        return _gate_mode(Context(cfg, spec))[1]
    except UserInputError:
        return None


def _gated(ctx: Context, train_manifest: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The do-no-harm gate's choice for this task, None where auto found no room (settings checked by run_bench before any work)."""
    from selfguide.stages.gate import run_gate

    return run_gate(dataclasses.replace(ctx, cfg=_gate_on(ctx.cfg)), train_manifest)


def row_identity(cfg: RunConfig, spec: Any, model: dict[str, Any], methods: Sequence[str]) -> str:
    """What a table row depends on besides the run folder: the numerics version of the code, every
    setting (run name and folder aside; a setting added later is left out at its neutral value, as in the
    stages' identities), the synthesis engine `auto` resolves to, the task (what synthesis reads and the
    items evaluated), the model file and the methods."""
    from selfguide.backends import resolve_backend
    from selfguide.config import flatten
    from selfguide.identity import digest, without_neutral_additions

    settings = without_neutral_additions({k: v for k, v in flatten(cfg).items() if k not in ("name", "run_dir")})
    try:
        items = [[it.id, it.input, list(it.outputs)] for it in spec.split_items(cfg.evaluate.split)]
    except UserInputError:
        items = []
    return digest([NUMERICS_VERSION, settings, resolve_backend(cfg.model.backend, cfg.model.device), spec.fingerprint(),
                   digest(items), model.get("sha256"), sorted(methods)])


def kept_rows(out: Path, identities: dict[str, str], gate_skips: Optional[dict[str, Optional[str]]] = None) -> dict[str, dict[str, Any]]:
    """The rows of an earlier table at `out` whose identity is this run's for their task: a table can
    then be finished on another machine, or after its run folder is gone, without redoing them.

    The gate's rules are code, not settings: with `gate_skips` (per task, why the current code would not gate it,
    None where it would), a row whose gate was skipped or run otherwise (e.g. made when the gate needed more
    validation items) is not kept."""
    import json

    path = out.with_suffix(".json")
    if not path.exists():
        return {}
    try:
        rows = json.loads(path.read_text(encoding="utf-8")).get("tasks", [])
    except ValueError:
        raise UserInputError(f"{path}: not a readable bench table (--resume-table reads its rows); move it away or "
                             "run without --resume-table") from None
    kept = {r["task"]: r for r in rows if r.get("identity") and r["identity"] == identities.get(r["task"])}
    if gate_skips is None:
        return kept
    stale = [t for t, r in kept.items() if t in gate_skips and (r.get("gate") or {}).get("skipped") != gate_skips[t]]
    if stale:
        log.info("bench: running %s again: the gate's rules have changed since their rows were made", ", ".join(stale))
    return {t: r for t, r in kept.items() if t not in stale}


def run_bench(
    task_specs: Sequence[str], cfg: RunConfig, methods: Sequence[str], out: Path, backend_factory: Any = None,
    reuse_from: Optional[str] = None, resume_table: bool = False,
) -> dict[str, Any]:
    """Run tasks one at a time (bounded memory); the table is rewritten after each task.

    `reuse_from` names another run whose finished stages are copied where this run's settings
    leave them unchanged (an annotation ablation then reuses the generated inputs).
    `resume_table` keeps the rows of the table already at `out` that were made with this run's
    identity (row_identity) instead of running their tasks again; each row names the CPU it ran on."""
    from selfguide.models import resolve_model

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserInputError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if reuse_from and not (Path(cfg.run_dir) / reuse_from).is_dir():
        raise UserInputError(f"--reuse-from {reuse_from}: no run folder {Path(cfg.run_dir) / reuse_from}; name a finished run")
    files = find_tasks(task_specs)
    specs = [load_task(f) for f in files]  # validate every file before any work
    if "selfguide-gated" in methods:  # every task's gate settings, before any work
        from selfguide.stages.gate import check_settings

        for spec in specs:
            check_settings(Context(_gate_on(cfg), spec, backend_factory=backend_factory))
    model = resolve_model(cfg.model.name).identity()
    identities = {spec.id: row_identity(cfg, spec, model, methods) for spec in specs}
    kept: dict[str, dict[str, Any]] = {}
    if resume_table:
        gate_skips = {spec.id: _gate_skip(cfg, spec) for spec in specs} if "selfguide-gated" in methods else None
        kept = kept_rows(out, identities, gate_skips)
    if kept:
        log.info("bench: keeping the rows of %s made with these settings and this code: %s", out.with_suffix(".json"),
                 ", ".join(kept))
    rows: list[dict[str, Any]] = []
    pending: list[dict[str, str]] = []
    from selfguide.progress import Progress

    progress = Progress()
    with progress.bar("bench tasks", len(specs), "tasks") as bar:
        for spec in specs:
            try:
                has_items = bool(spec.split_items(cfg.evaluate.split))
            except UserInputError:
                has_items = False
            if not has_items:
                pending.append({"task": spec.id, "reason": f"no labelled instances in split '{cfg.evaluate.split}'"})
                bar.advance()
                continue
            if spec.id in kept:
                rows.append(kept[spec.id])
                bar.advance()
                continue
            ctx = Context(cfg, spec, backend_factory=backend_factory, progress=progress, reuse_from=reuse_from)
            log.info("bench: %s (%s)", spec.id, spec.kind)
            rows.append(run_task(ctx, methods) | {"identity": identities[spec.id], "cpu_flags": cpu_vector_flags()})
            later = [{"task": s.id, "reason": "not run yet (re-run the same command to continue)"} for s in specs[len(rows) + len(pending):]]
            write_results(out, rows, pending + later, cfg, model, methods)
            bar.advance()
    return write_results(out, rows, pending, cfg, model, methods)


def changed_settings(cfg: RunConfig) -> dict[str, Any]:
    """Every setting that differs from its preset's (run name and folder aside): an arm of a comparison says what it changed."""
    from selfguide.config import flatten, preset_defaults

    default = preset_defaults(cfg.preset)
    return {k: v for k, v in flatten(cfg).items() if k not in ("name", "run_dir", "preset") and v != default[k]}


def _mean(values: list[float]) -> Optional[float]:
    """Mean to 3 decimals (the tables round once more, to 1); None for no values."""
    return round(sum(values) / len(values), 3) if values else None


def numerics_versions(rows: list[dict[str, Any]]) -> list[Any]:
    """The numerics versions of the rows (a row older than the field counts as version 0)."""
    return sorted({v for r in rows for v in r.get("numerics", [0])})


def check_one_version(rows: list[dict[str, Any]], where: str, allow_mixed: bool = False) -> None:
    """Refuse to put rows made by code of different numerics versions into one table."""
    found = numerics_versions(rows)
    if len(found) > 1 and not allow_mixed:
        by = {v: [r["task"] for r in rows if v in r.get("numerics", [0])] for v in found}
        detail = "; ".join(f"version {v}: {', '.join(ts[:4])}{' ...' if len(ts) > 4 else ''}" for v, ts in by.items())
        raise UserInputError(f"{where}: rows made with different numerics versions ({detail}); re-run the older rows "
                             "with the current code, or pass --allow-mixed-versions to tabulate them anyway (labelled)")


def write_results(out: Path, rows: list[dict[str, Any]], pending: list[dict[str, str]], cfg: RunConfig,
                  model: dict[str, Any], methods: Sequence[str]) -> dict[str, Any]:
    check_one_version(rows, str(out))
    averages: dict[str, Any] = {}
    for kind in ("classification", "generation"):
        kind_rows = [r for r in rows if r["kind"] == kind]
        if not kind_rows:
            continue
        metric = kind_rows[0]["primary_metric"]
        averages[kind] = {
            "metric": metric, "tasks": len(kind_rows),
            "scores": {m: _mean([r["scores"][m][metric] for r in kind_rows if m in r["scores"]]) for m in methods},
            "delta": _mean([r["delta"]["value"] for r in kind_rows if r.get("delta")]),
            "positive_deltas": sum(1 for r in kind_rows if r.get("delta") and r["delta"]["value"] > 0),
            **delta_counts(kind_rows),
            # every stored metric, the paper-compatible ones too: {metric: {method: mean}}
            "by_metric": {
                name: {m: _mean([r["scores"][m][name] for r in kind_rows if name in r["scores"].get(m, {})]) for m in methods}
                for name in sorted({k for r in kind_rows for s in r["scores"].values() for k in s})
            },
        }
        prior = label_prior_average(kind_rows, methods, lambda r, m: r["scores"][m][metric] if m in r["scores"] else None)
        if prior:
            averages[kind]["label_prior"] = prior
    header = {
        "model": model, "split": cfg.evaluate.split, "metric_mode": cfg.evaluate.metrics, "seed": cfg.seed,
        "numerics_version": numerics_versions(rows) or [NUMERICS_VERSION], "cpu_flags": cpu_vector_flags(),
        "machine": {"cpu_cores": os.cpu_count(), "gpu": _gpu_name(), "platform": platform.platform()},
        "versions": versions(), "methods": list(methods), "settings": {"generate.target_inputs": cfg.generate.target_inputs,
        "annotate.n": cfg.annotate.n, "annotate.label_source": cfg.annotate.label_source, "train.method": cfg.train.method,
        "train.epochs": cfg.train.epochs, "evaluate.max_items": cfg.evaluate.max_items, "model.backend": cfg.model.backend,
        "model.dtype": cfg.model.dtype},
        "preset": cfg.preset, "changed_from_defaults": changed_settings(cfg),
    }
    data = {**header, "tasks": rows, "pending": pending, "averages": averages}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out.with_suffix(".json"), data)
    _plot(out.with_suffix(".png"), rows)
    atomic_write_text(out.with_suffix(".md"), _markdown(data, out.with_suffix(".png").name))
    return data


def delta_counts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How many tasks gained or lost significantly (95% CI wholly above or below 0), for selfguide and, where it ran,
    for the gated model `run` hands over, with the gated mean: a mean can hide one task's significant loss."""
    counts: dict[str, Any] = {}
    for key, suffix in (("delta", ""), ("delta_gated", "_gated")):
        deltas = [r[key] for r in rows if r.get(key)]
        if not deltas:
            continue
        if suffix:
            counts["delta_gated"] = _mean([d["value"] for d in deltas])
        counts["significant_gains" + suffix] = sum(1 for d in deltas if d["ci_low"] > 0)
        counts["significant_losses" + suffix] = sum(1 for d in deltas if d["ci_high"] < 0)
    return counts


def ci_cell(d: Optional[dict[str, Any]]) -> str:
    """A delta with its 95% CI as a table cell, `-` where there is none."""
    return f"{d['value']:+.1f} [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}]" if d else "-"


def _gpu_name() -> Optional[str]:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        return None


def _plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_delta = [r for r in rows if r.get("delta")]
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(with_delta) + 2), 3.6))
    if with_delta:
        xs = range(len(with_delta))
        vals = [r["delta"]["value"] for r in with_delta]
        errs = [[v - r["delta"]["ci_low"] for v, r in zip(vals, with_delta)], [r["delta"]["ci_high"] - v for v, r in zip(vals, with_delta)]]
        colors = ["#4f81bd" if r["kind"] == "classification" else "#9bbb59" for r in with_delta]
        gated = [r.get("delta_gated") for r in with_delta]
        has_gated = any(gated)
        width = 0.4 if has_gated else 0.8
        ax.bar([x - width / 2 * has_gated for x in xs], vals, width, yerr=errs, color=colors, capsize=2)
        if has_gated:  # hatched: the gated model `run` hands over
            gx = [x + width / 2 for x, g in zip(xs, gated) if g]
            gv = [g["value"] for g in gated if g]
            gerr = [[g["value"] - g["ci_low"] for g in gated if g], [g["ci_high"] - g["value"] for g in gated if g]]
            ax.bar(gx, gv, width, yerr=gerr, color="white", edgecolor=[c for c, g in zip(colors, gated) if g], hatch="//",
                   capsize=2)
        from matplotlib.patches import Patch

        key = [Patch(color="#4f81bd", label="classification"), Patch(color="#9bbb59", label="generation")]
        if has_gated:
            key += [Patch(facecolor="grey", label="selfguide"),
                    Patch(facecolor="white", edgecolor="grey", hatch="//", label="selfguide-gated")]
        ax.legend(handles=key, fontsize=8, ncol=2)
        ax.set_xticks(list(xs), [r["task"] for r in with_delta], rotation=60, ha="right", fontsize=8)
    ax.axhline(0, color="black", lw=0.8)
    ax.set(ylabel="selfguide - prompt-fewshot (points)", title="Per-task gain over few-shot prompting (95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _other_machines(data: dict[str, Any]) -> list[str]:
    """A line naming the rows (kept by --resume-table) that another CPU made; none when every row is this machine's."""
    here = data.get("cpu_flags") or []
    other: dict[str, list[str]] = {}
    for r in data["tasks"]:
        if "cpu_flags" in r and r["cpu_flags"] != here:
            other.setdefault(", ".join(r["cpu_flags"]) or "no vector flags read", []).append(r["task"])
    return [f"- rows made on a CPU with other flags ({flags}): {', '.join(tasks)}; compare a row's systems with each other, "
            "not across machines" for flags, tasks in other.items()]


def _markdown(data: dict[str, Any], png: str) -> str:
    methods = data["methods"]
    gated = any(r.get("delta_gated") for r in data["tasks"])
    m = data["model"]
    lines = [
        f"# NIv2 benchmark: {m['name']}", "",
        f"- model: {m['name']} (sha256 `{m['sha256'][:16]}`)",
        f"- split: `{data['split']}`; primary metric mode: {data['metric_mode']} (NIv2-official unless 'paper'); "
        f"paper-compatible scores are in the JSON; seed {data['seed']}",
        f"- machine: {data['machine']['cpu_cores']} CPU cores ({', '.join(data.get('cpu_flags') or ['no vector flags read'])}), "
        f"GPU: {data['machine']['gpu'] or 'none'}",
        *_other_machines(data),
        "- numerics version: " + ", ".join(map(str, data.get("numerics_version", [0]))) + " (selfguide.identity.NUMERICS_VERSION of "
        "the code that made every row)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items()),
        "- settings: " + ", ".join(f"{k}={v}" for k, v in data["settings"].items()),
        f"- preset: {data.get('preset', 'paper (made before presets existed)')}; changed from it: "
        + (", ".join(f"{k}={v}" for k, v in data.get("changed_from_defaults", {}).items()) or "nothing"),
        "- deviations from the paper (Vicuna-7B, full finetuning, GPU): a 135M model on CPU; LoRA r=16 instead of full "
        "finetuning; the model's chat template instead of a Vicuna text prompt; decoding stops at the end-of-turn token; "
        "NIv2-official metrics lead (the paper's last-label EM / char-LCS are in the JSON); everything else at the paper's "
        "settings (400/200 raw inputs, 10 votes at T=0.2, 3 epochs, seed 42) unless the preset or the line above changes it; "
        "see README 'Configuration'",
        "- minutes = compute time of every stage a task's row rests on, summed from the stage manifests (reused stages count)",
        "", "Scores in points (0-100) on each task's primary metric (exact match for classification, ROUGE-L for generation).",
        "Delta = selfguide - prompt-fewshot with a paired bootstrap 95% CI over items"
        + ("; gated delta = the same for `selfguide-gated`, the model `run` hands over (the LoRA scale in {0, 0.5, 1} "
           "that scored best on validation items the table does not use; 0 keeps the base model)." if gated else "."), "",
        "| task | kind | " + " | ".join(methods) + " | delta [95% CI] |" + (" gated delta [95% CI] |" if gated else "")
        + " inputs kept/raw | pairs | minutes |",
        "|---|---|" + "---:|" * len(methods) + "---|" + ("---|" if gated else "") + "---:|---:|---:|",
    ]
    for r in data["tasks"]:
        metric = r["primary_metric"]
        cells = [f"{r['scores'][mm][metric]:.1f}" if mm in r["scores"] else "-" for mm in methods]
        inputs = f"{r['inputs']['kept']}/{r['inputs']['raw']}" if r.get("inputs") else "-"
        lines.append(f"| {r['task']} | {r['kind']} | " + " | ".join(cells) + f" | {ci_cell(r.get('delta'))} |"
                     + (f" {ci_cell(r.get('delta_gated'))} |" if gated else "") + f" {inputs} | {r.get('pairs', '-')} "
                     f"| {r['wall_seconds'] / 60:.1f} |")
    for p in data["pending"]:
        lines.append(f"| {p['task']} | pending | " + " | ".join("-" for _ in methods) + f" | {p['reason']} |"
                     + (" - |" if gated else "") + " - | - | - |")
    lines += ["", "## Averages per kind", "", "| kind | tasks | metric | " + " | ".join(methods) + " | mean delta | tasks with a gain "
              "| significant gains / losses |" + (" gated mean delta | gated significant gains / losses |" if gated else ""),
              "|---|---:|---|" + "---:|" * len(methods) + "---:|---:|---:|" + ("---:|---:|" if gated else "")]
    for kind, a in data["averages"].items():
        cells = [f"{a['scores'][mm]:.1f}" if a["scores"].get(mm) is not None else "-" for mm in methods]
        delta = f"{a['delta']:+.1f}" if a["delta"] is not None else "-"
        significant = f"{a['significant_gains']} / {a['significant_losses']}" if "significant_gains" in a else "-"
        line = f"| {kind} | {a['tasks']} | {a['metric']} | " + " | ".join(cells) + f" | {delta} | {a['positive_deltas']} | {significant} |"
        if gated:
            line += (f" {a['delta_gated']:+.1f} | {a['significant_gains_gated']} / {a['significant_losses_gated']} |"
                     if "delta_gated" in a else " - | - |")
        lines.append(line)
    lines += ["", "Every metric the evaluation stores (`paper_*`: the paper-compatible definitions, README 'Results, metrics and "
              "honesty'); delta = difference of the means:", "",
              "| kind | metric | " + " | ".join(methods) + " | selfguide - prompt-fewshot |", "|---|---|" + "---:|" * (len(methods) + 1)]
    for kind, a in data["averages"].items():
        for name, means in a.get("by_metric", {}).items():
            cells = [f"{means[mm]:.1f}" if means.get(mm) is not None else "-" for mm in methods]
            gap = (f"{means['selfguide'] - means['prompt-fewshot']:+.1f}"
                   if means.get("selfguide") is not None and means.get("prompt-fewshot") is not None else "-")
            lines.append(f"| {kind} | {name} | " + " | ".join(cells) + f" | {gap} |")
    lines += label_prior_lines(data)
    lines += ["", "The paper (Vicuna-7B, full finetuning) reports +14.5 exact match (classification) and +17.9 ROUGE-L (generation) "
              "over few-shot prompting, on its held-out tasks with its own metrics.", "", f"![per-task deltas]({png})", ""]
    return "\n".join(lines)


def label_prior_average(rows: list[dict[str, Any]], methods: Sequence[str],
                        exact_match: Callable[[dict[str, Any], str], Optional[float]]) -> Optional[dict[str, Any]]:
    """Means over the rows that carry the label-prior fields (rows made before they existed lack them)."""
    rows = [r for r in rows if r.get("balanced")]
    if not rows:
        return None

    def mean(values: list[Optional[float]]) -> Optional[float]:
        return _mean([v for v in values if v is not None])

    return {"tasks": len(rows), "majority_share": mean([r["majority_share"] for r in rows]),
            "chance": mean([100 / r["gold_classes"] for r in rows]),
            "exact_match": {m: mean([exact_match(r, m) for r in rows]) for m in methods},
            "balanced": {m: mean([r["balanced"].get(m) for r in rows]) for m in methods}}


def label_prior_lines(data: dict[str, Any]) -> list[str]:
    """Classification read beside the label prior: exact match rewards answering the commonest gold label, so each
    task shows that label's share and the class-balanced exact match (chance = 100 / classes whatever the mix)."""
    rows = [r for r in data["tasks"] if r.get("balanced")]
    if not rows:
        return []
    methods = [m for m in data["methods"] if any(m in r["balanced"] for r in rows)]
    lines = ["", "## Classification beside the label prior", "",
             "Exact match rewards leaning toward the commonest gold label; the class-balanced exact match (the mean over "
             "the gold classes of each one's exact match) does not: answering one label always scores 100 / classes "
             "(chance). Cells: balanced exact match; a gain there is a gain in telling the classes apart. Signal: the "
             "base model's diagnosis on the same items (one-vs-rest AUROC of its calibrated label scores, 0.5 = none; "
             f"`none` at or below {NO_SIGNAL_AUROC}: its own labels cannot teach it the task).", "",
             "| task | classes | chance | majority-label share | signal (AUROC) | " + " | ".join(methods) + " |",
             "|---|---:|---:|---:|---|" + "---:|" * len(methods)]
    for r in rows:
        cells = [f"{r['balanced'][m]:.1f}" if r["balanced"].get(m) is not None else "-" for m in methods]
        lines.append(f"| {r['task']} | {r['gold_classes']} | {100 / r['gold_classes']:.1f} | {r['majority_share']:.1f} | "
                     f"{_signal(r.get('diagnosis'))} | " + " | ".join(cells) + " |")
    prior = data["averages"].get("classification", {}).get("label_prior")
    if prior:
        em = [f"{prior['exact_match'][m]:.1f}" if prior["exact_match"].get(m) is not None else "-" for m in methods]
        bal = [f"{prior['balanced'][m]:.1f}" if prior["balanced"].get(m) is not None else "-" for m in methods]
        lines += [f"| mean exact match ({prior['tasks']} tasks) | | | {prior['majority_share']:.1f} | | " + " | ".join(em) + " |",
                  f"| mean balanced ({prior['tasks']} tasks) | | {prior['chance']:.1f} | | | " + " | ".join(bal) + " |"]
    return lines


def _signal(diagnosis: Optional[dict[str, Any]]) -> str:
    if not diagnosis:
        return "-"
    if diagnosis["class_auroc"] is None:
        return "one class"
    return f"{diagnosis['class_auroc']:.2f}" + (" none" if diagnosis["no_signal"] else "")
