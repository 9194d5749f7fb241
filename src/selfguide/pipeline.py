"""The Python API: load a task and a config, run stages in order. The CLI is a thin layer on this."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml

from selfguide.backends import Backend
from selfguide.config import RunConfig, load_config, to_dict
from selfguide.progress import Progress
from selfguide.stages.context import Context
from selfguide.store import atomic_write_text
from selfguide.task import TaskSpec, load_task

log = logging.getLogger(__name__)


def make_context(
    task: str | Path | TaskSpec,
    *,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    extra: Optional[dict[str, Any]] = None,
    cfg: Optional[RunConfig] = None,
    force: bool = False,
    backend_factory: Optional[Callable[[], Backend]] = None,
    progress: Optional[Progress] = None,
) -> Context:
    """Validate everything before anything is written: task file, config, overrides."""
    spec = task if isinstance(task, TaskSpec) else load_task(task)
    run_cfg = cfg or load_config(config, overrides, extra)
    ctx = Context(run_cfg, spec, force=force, backend_factory=backend_factory, progress=progress or Progress())
    from selfguide.stages import annotate, gate

    annotate.check_settings(ctx)
    gate.check_settings(ctx)
    return ctx


def save_resolved_config(ctx: Context) -> Path:
    """runs/<name>/<task>/config.yaml: the fully resolved config of the latest invocation."""
    path = ctx.task_dir / "config.yaml"
    body = {"task": ctx.task.summary() | {"source": ctx.task.source}, **to_dict(ctx.cfg)}
    atomic_write_text(path, yaml.safe_dump(body, sort_keys=False, allow_unicode=True))
    return path


def synthesize(ctx: Context) -> dict[str, Any]:
    """generate -> annotate; returns both manifests."""
    from selfguide.stages.annotate import run_annotate
    from selfguide.stages.generate import run_generate

    save_resolved_config(ctx)
    gen = run_generate(ctx)
    ann = run_annotate(ctx)
    return {"generate": gen, "annotate": ann}


def synthesis_summary(manifests: dict[str, Any]) -> str:
    """One paragraph on what synthesis produced and what it threw away."""
    g, a = manifests["generate"], manifests["annotate"]
    gc, ac = g["counts"], a["counts"]
    top = sorted(gc["rejected"].items(), key=lambda kv: -kv[1])[:3]
    text = (f"generate wrote {gc['raw']} raw inputs in {g['seconds']:.0f} s and kept {gc['kept']}"
            + (f" (most rejected as {', '.join(f'{k} {v}' for k, v in top)})" if top else "") + ". "
            f"annotate drew {ac['samples']} samples for {ac['inputs']} inputs in {a['seconds']:.0f} s and kept {ac['pairs']} training pairs")
    if "label_mix_after" in ac:
        text += (f" (label source {ac['label_source']}; label mix {ac['label_mix_before']} before balancing, "
                 f"{ac['label_mix_after']} after; votes matched the generation target label on "
                 f"{ac['agreement_with_target'] if ac['agreement_with_target'] is not None else 'no'} of inputs)")
    rejected = ", ".join(f"{k} {v}" for k, v in ac["rejected"].items())
    return text + (f"; dropped: {rejected}." if rejected else ".")


@dataclass
class RunResult:
    """What `selfguide.run` returns: where everything is, and the verdict when known."""

    task_id: str
    run_dir: Path
    manifests: dict[str, Any] = field(default_factory=dict)
    verdict: Optional[dict[str, Any]] = None
    report: Optional[Path] = None


def run(
    task: str | Path | TaskSpec,
    *,
    model: Optional[str] = None,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    quick: bool = False,
    force: bool = False,
    backend_factory: Optional[Callable[[], Backend]] = None,
    progress: Optional[Progress] = None,
    ctx: Optional[Context] = None,
) -> RunResult:
    """All stages in order: generate -> annotate -> baselines -> train -> evaluate -> verdict -> report.

    A task without labelled items (the paper's own use case: an instruction and a few examples)
    still gets synthesis, training, the exported model and a report, with a verdict saying why
    none was possible.

    Every stage resumes or skips what is already done, so calling this again after a crash or
    Ctrl-C continues where it stopped.
    """
    import time

    from selfguide.config import QUICK_PRESET
    from selfguide.report import write_report
    from selfguide.stages.diagnose import diagnose
    from selfguide.stages.gate import gate_mode, gated_train_manifest, handed_over, run_gate
    from selfguide.stages.evaluate import evaluate_baselines, evaluate_trained, has_eval_items, no_items_line, no_verdict
    from selfguide.stages.evaluate import verdict as compute_verdict
    from selfguide.stages.train import run_train, write_model_card
    from selfguide.store import atomic_write_json

    if ctx is None:
        extra: dict[str, Any] = dict(QUICK_PRESET) if quick else {}
        if model:
            extra["model.name"] = model
        ctx = make_context(task, config=config, overrides=overrides, extra=extra, force=force,
                           backend_factory=backend_factory, progress=progress)
    timings: dict[str, float] = {}
    result = RunResult(ctx.task.id, ctx.task_dir)

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.time()
        value = fn()
        timings[name] = round(time.time() - t0, 1)
        return value

    labelled = has_eval_items(ctx)
    if not labelled:
        log.warning(no_items_line(ctx))  # before any work: the user learns it in the first lines
    # The base model's baselines come first: the diagnosis reads them before any synthesis.
    baselines = timed("evaluate-baselines", lambda: evaluate_baselines(ctx)) if labelled else {}
    diagnosis = timed("diagnose", lambda: diagnose(ctx)) if labelled else None
    if diagnosis:
        (log.warning if diagnosis["no_signal"] else log.info)(diagnosis["line"])
    manifests = timed("synthesize", lambda: synthesize(ctx))
    manifests["baselines"] = baselines
    ctx.close_backend()  # free the generation model before training needs the memory
    manifests["train"] = timed("train", lambda: run_train(ctx))
    if labelled:
        gate = timed("gate", lambda: run_gate(ctx, manifests["train"]))
        evaluated = gated_train_manifest(manifests["train"], gate)
        manifests["selfguide"] = timed("evaluate-finetuned", lambda: evaluate_trained(ctx, evaluated))
        v = compute_verdict(ctx)
        if gate:
            v["gate"] = gate
            v["sentence"] += f"; {gate['sentence']}"
        elif (why_not := gate_mode(ctx)[1]):
            v["gate_skipped"] = why_not
    else:
        gate = None
        v = no_verdict(ctx)
    v["handed_over"] = handed_over(manifests["train"], gate)
    v["model"] = manifests["generate"]["inputs"]["model"]
    v["diagnosis"] = diagnosis
    evaluations = [*manifests["baselines"].items(), *([("selfguide", manifests["selfguide"])] if labelled else [])]
    v["stage_seconds"] = {name: m.get("seconds") for name, m in
                          [("generate", manifests["generate"]), ("annotate", manifests["annotate"]), ("train", manifests["train"]),
                           *[(f"evaluate {k}", m) for k, m in evaluations]]}
    v["wall_seconds_this_call"] = timings
    atomic_write_json(ctx.task_dir / "verdict.json", v)
    write_model_card(ctx, Path(manifests["train"]["model_dir"]), manifests["train"]["counts"], v)
    result.manifests = manifests
    result.verdict = v
    result.report = write_report(ctx, manifests, v)
    return result
