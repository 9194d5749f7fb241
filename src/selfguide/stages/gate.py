"""Do no harm: after training, keep only as much of the finetuning as beats prompting on validation.

A model that teaches itself from its own labels can get worse. With `evaluate.gate=validation`
(or `auto`, the default, on every task whose validation split has room for it),
the trained weights W1 are blended with the base weights W0 as W0 + a (W1 - W0) for a in
{0, 0.5, 1} (for a LoRA run that is the merged adapter scaled by a; a = 0 is the base model), each
is scored with the few-shot prompt on the task's `validation` split, and the best scale is kept
(ties go to the smaller one). With `evaluate.gate_epochs`, the adapter of every earlier epoch
(kept by the train stage) is a candidate at each scale too: the checkpoint choice. The verdict is then measured on `evaluate.split`. A choice made on
the items that are reported would inflate the verdict, so when `evaluate.split` is `validation`
too (the development tasks, whose test splits must not steer anything) the gate chooses on the
validation items the reported evaluation leaves out, and needs at least MIN_ITEMS of them (per kind of task).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Optional

from selfguide.errors import ConfigError
from selfguide.stages.context import Context
from selfguide.task import Instance
from selfguide.store import atomic_write_json

log = logging.getLogger(__name__)
STAGE = "gate"
SCALES = (0.0, 0.5, 1.0)
GATE_SPLIT = "validation"
# Fewer validation items than this cannot tell three scales apart. Free text is scored on a graded ROUGE-L per item:
# the development tasks' gates, replayed on n of their items (docs/benchmarks/dev/gate-size.md), cut the losing
# models' losses as much at 10 items as at 20 (-2.7 to -1.0), for 1.4 points off the mean gain against 1.1.
# Exact match is 0 or 1 per item, and no evidence covers fewer than 20 there.
MIN_ITEMS = {"classification": 20, "generation": 10}
# At most this many validation items, evenly spaced, score each scale: a NIv2 validation split has up to ~650, and
# three scales over all of them took longer than the rest of a task's evaluations; 200 tell scales apart that differ
# by a few points, as the development tasks' 100 did (docs/benchmarks/dev/classification-screen.md).
MAX_ITEMS = 200


def _unreported_validation(ctx: Context) -> list[Instance]:
    """The validation items the reported evaluation does not use (all of them when it reports on another split)."""
    from selfguide.stages.evaluate import eval_items

    items = ctx.task.split_items(GATE_SPLIT)
    if ctx.cfg.evaluate.split != GATE_SPLIT:
        return items
    reported = {it.id for it in eval_items(ctx)}
    return [it for it in items if it.id not in reported]


def gate_items(ctx: Context) -> list[Instance]:
    """The validation items the gate scores on: evaluate.max_items of them (at most MAX_ITEMS), evenly
    spaced, and never one that the reported evaluation uses."""
    from selfguide.stages.evaluate import evenly_spaced

    return evenly_spaced(_unreported_validation(ctx), min(ctx.cfg.evaluate.max_items or MAX_ITEMS, MAX_ITEMS))


def _cannot_gate(ctx: Context) -> Optional[tuple[str, str]]:
    """(why, the fix evaluate.gate=validation needs) when this task's validation split cannot gate; None when it can."""
    if GATE_SPLIT not in ctx.task.splits:
        return (f"task {ctx.task.id} has no validation split ({ctx.task.source})",
                "the gate needs a validation split; set evaluate.gate=auto or off")
    total, left = len(ctx.task.split_items(GATE_SPLIT)), len(_unreported_validation(ctx))
    need = MIN_ITEMS[ctx.task.kind]
    if left >= need:
        return None
    reported = total - left
    if reported:
        return (f"task {ctx.task.id} has {total} validation items and the reported evaluation (evaluate.split=validation) "
                f"uses {reported}, which leaves {left} for the gate (it needs {need})",
                (f"set evaluate.max_items={total - need} or lower, or " if total > need else "")
                + "report on another split (evaluate.split=test)")
    return (f"task {ctx.task.id} has {total} validation items, and the gate needs {need} ({ctx.task.source})",
            "set evaluate.gate=auto or off")


def gate_mode(ctx: Context) -> tuple[bool, Optional[str]]:
    """(on, why not): auto gates wherever the task can, validation always (check_settings refused the rest)."""
    if ctx.cfg.evaluate.gate == "off":
        return False, None
    cannot = _cannot_gate(ctx)
    if cannot and ctx.cfg.evaluate.gate == "auto":
        return False, (f"no do-no-harm gate: {cannot[0]}; the finetuned model is handed over unchecked "
                       f"(add {MIN_ITEMS[ctx.task.kind]}+ `validation:` items to the task file to let selfguide check it)")
    return True, None


def check_settings(ctx: Context) -> None:
    if ctx.cfg.evaluate.gate != "validation":
        return  # off, or auto: it turns itself off where it cannot gate, and says so
    cannot = _cannot_gate(ctx)
    if cannot:
        raise ConfigError(f"evaluate.gate=validation: {cannot[0]}; {cannot[1]}")


def model_folder(out_dir: Path, tuned_dir: Path, write_weights: Any) -> Path:
    """Make a model folder once, atomically: `write_weights(tmp)` writes its safetensors, and the other files
    (config, tokenizer, card) come from the tuned model's folder where the writer made none; the tuned model's
    shard index describes its own weights and is never copied. A folder that exists is complete (renamed last)."""
    import shutil

    if out_dir.is_dir():
        return out_dir
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_weights(tmp)
    for f in tuned_dir.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".safetensors.index.json")) and not (tmp / f.name).exists():
            shutil.copy2(f, tmp / f.name)
    tmp.rename(out_dir)
    return out_dir


def interpolate(base_dir: Path, tuned_dir: Path, scale: float, out_dir: Path) -> Path:
    """W0 + scale (W1 - W0) for every weight, saved as a model folder (tokenizer from the tuned one)."""
    from safetensors.torch import load_file, save_file

    def write(tmp: Path) -> None:
        base: dict[str, Any] = {}
        for f in sorted(base_dir.glob("*.safetensors")):
            base.update(load_file(str(f)))
        tuned: dict[str, Any] = {}
        for f in sorted(tuned_dir.glob("*.safetensors")):
            tuned.update(load_file(str(f)))
        blended = {k: (base[k].float() + scale * (v.float() - base[k].float())).to(v.dtype) if k in base else v
                   for k, v in tuned.items()}
        save_file(blended, str(tmp / "model.safetensors"), metadata={"format": "pt"})  # one file

    return model_folder(out_dir, tuned_dir, write)


def blend_first(factory: Any, blend: Any) -> Any:
    """The backend factory of a blended model that makes the blend when the backend is first needed:
    a gate whose evaluations are all cached loads no weights (and its blend may have been deleted)."""
    def build() -> Any:
        blend()
        return factory()

    build.close = factory.close  # type: ignore[attr-defined]
    return build


Candidate = tuple[float, Optional[int]]  # (LoRA scale, earlier epoch or None for the finished training)


def choose(scores: dict[Candidate, float]) -> Candidate:
    """The best-scoring candidate; ties go to the smaller change: the base model first, then the smaller
    scale, then the earlier epoch (fewer steps), the finished training last."""
    return min(scores, key=lambda c: (-scores[c], c[0], c[1] if c[1] is not None else float("inf")))


def merge_epoch(base_dir: Path, train_manifest: dict[str, Any], epoch: int, tuned: Path, out_dir: Path) -> Path:
    """An earlier epoch's adapter merged into the base weights, as a model folder (tokenizer from the tuned one)."""
    from selfguide.stages.train import epoch_adapter, merge_lora

    return model_folder(out_dir, tuned, lambda tmp: merge_lora(base_dir, epoch_adapter(train_manifest, epoch), tmp))


def made_by(train_manifest: dict[str, Any]) -> str:
    from selfguide.identity import digest

    return digest([train_manifest["config"], train_manifest["inputs"], train_manifest["finished_at"]])[:16]


def drop_unchosen(gate_dir: Path, tag: str, chosen: str) -> None:
    """Delete this training's blends and merged epochs that the gate did not choose (517 MB each on the embedded
    model; with evaluate.gate_epochs a task makes three). Their scores are cached, and a blend is made again only
    if an evaluation of it has to run (blend_first)."""
    import shutil

    for folder in gate_dir.glob(f"model-*-{tag}"):
        if folder.is_dir() and str(folder) != chosen:
            shutil.rmtree(folder, ignore_errors=True)


def run_gate(ctx: Context, train_manifest: dict[str, Any]) -> Optional[dict[str, Any]]:
    """Choose the scale on validation; returns {scale, model_dir, scores, sentence} (None when off).
    Every evaluation is a cached stage; the blended model is keyed by the train stage that made it."""
    from selfguide.backends import hf_model
    from selfguide.models import resolve_model
    from selfguide.stages.evaluate import base_backend_factory, base_identity, model_factory, primary_metric, run_evaluate
    from selfguide.stages.evaluate import trained_identity

    on, why_not = gate_mode(ctx)
    if not on:
        if why_not:
            log.info("gate[%s]: %s", ctx.task.id, why_not)
        return None
    started = time.time()
    vctx = dataclasses.replace(ctx, cfg=dataclasses.replace(ctx.cfg, evaluate=dataclasses.replace(ctx.cfg.evaluate, split=GATE_SPLIT)))
    metric = primary_metric(ctx)
    tuned = Path(train_manifest["model_dir"])
    gate_dir = ctx.stage_dir(STAGE)
    tag = made_by(train_manifest)
    items = gate_items(ctx)
    part = "rest" if ctx.cfg.evaluate.split == GATE_SPLIT else None  # the items the report leaves out
    base = run_evaluate(vctx, "gate-scale-0", base_identity(vctx), base_backend_factory(vctx), shots="fewshot",
                        items=items, part=part)
    base_dir = lambda: hf_model.materialize(resolve_model(ctx.cfg.model.name))  # noqa: E731 (only when a blend is made)
    scores: dict[Candidate, float] = {(0.0, None): base["results"]["scores"][metric]}
    models: dict[Candidate, str] = {(0.0, None): ctx.cfg.model.name}
    epochs = range(1, train_manifest["counts"].get("earlier_epochs", 0) + 1) if ctx.cfg.evaluate.gate_epochs else range(0)
    if ctx.cfg.evaluate.gate_epochs and not epochs:
        log.info("gate[%s]: evaluate.gate_epochs: the train stage kept no earlier epoch (one epoch, full finetuning, or a "
                 "stage made before the setting existed): the finished training's scales only", ctx.task.id)
    for epoch in [None, *epochs]:  # None: the finished training's model
        merged = tuned if epoch is None else gate_dir / f"model-epoch-{epoch}-{tag}"
        which = "" if epoch is None else f"epoch-{epoch}-"
        for scale in SCALES[1:]:
            model_dir = merged if scale == 1.0 else gate_dir / f"model-{which}scale-{scale:g}-{tag}"
            system = f"gate-{which}scale-{scale:g}"
            factory = model_factory(vctx, str(model_dir))
            if scale != 1.0:
                factory = blend_first(factory, lambda s=scale, d=model_dir, m=merged: interpolate(base_dir(), m, s, d))  # type: ignore[misc]
            if epoch is not None:  # the outer wrapper runs first: the earlier epoch's adapter merged, then its blend
                factory = blend_first(factory, lambda e=epoch, m=merged: merge_epoch(base_dir(), train_manifest, e, tuned, m))
            try:
                ident = trained_identity(vctx, {**train_manifest, "gate_scale": scale, **({"gate_epoch": epoch} if epoch else {})}, system)
                manifest = run_evaluate(vctx, system, ident, factory, shots="fewshot", items=items, part=part)
            finally:
                factory.close()  # type: ignore[attr-defined]
            scores[(scale, epoch)] = manifest["results"]["scores"][metric]
            models[(scale, epoch)] = str(model_dir)
    best = choose(scores)
    final = {a: scores[(a, None)] for a in SCALES}
    if best == (0.0, None):
        sentence = (f"kept the base model: finetuning did not beat prompting on validation "
                    f"({metric} {final[0.0]:.1f} prompting, {final[0.5]:.1f} at half scale, {final[1.0]:.1f} finetuned"
                    + (f", at most {max(v for (a, e), v in scores.items() if e):.1f} at an earlier epoch" if epochs else "") + ")")
    else:
        at = f"scale {best[0]:g}" + (f" of epoch {best[1]} (of {len(epochs) + 1})" if best[1] else "")
        sentence = (f"kept the finetuning at {at}: {metric} on validation {final[0.0]:.1f} prompting, "
                    f"{final[0.5]:.1f} at half scale, {final[1.0]:.1f} at full scale"
                    + (f", {scores[best]:.1f} at epoch {best[1]}" if best[1] else ""))
    result = {"scale": best[0], "model_dir": models[best], "scores": {f"{a:g}": final[a] for a in SCALES}, "train": tag,
              "metric": metric, "split": GATE_SPLIT, "part": part or "all", "items": base["results"]["n"], "sentence": sentence,
              "seconds": round(time.time() - started, 1)}
    if epochs:  # the checkpoint choice: which epoch was kept (None: the last), and every earlier epoch's scores
        result["epoch"] = best[1]
        result["epoch_scores"] = {f"{e}": {f"{a:g}": scores[(a, e)] for a in SCALES[1:]} for e in epochs}
    gate_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(gate_dir / "gate.json", result)
    drop_unchosen(gate_dir, tag, models[best])
    (log.warning if best == 0.0 else log.info)("gate[%s]: %s", ctx.task.id, sentence)
    return result


def gated_train_manifest(train_manifest: dict[str, Any], gate: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The train manifest with the gate's model in place of the trained one (unchanged without a gate)."""
    if not gate:
        return train_manifest
    return {**train_manifest, "model_dir": gate["model_dir"], "gate_scale": gate["scale"],
            **({"gate_epoch": gate["epoch"]} if gate.get("epoch") else {})}


def handed_over(train_manifest: dict[str, Any], gate: Optional[dict[str, Any]]) -> str:
    """One line saying which model a run hands over: the gate's choice, or the finetuned model."""
    tuned = train_manifest["model_dir"]
    if not gate:
        return f"finetuned model: {tuned} (merged safetensors, tokenizer, model card)"
    if gate["scale"] == 0.0:
        return (f"model: the base model ({gate['model_dir']}), which the gate kept because finetuning did not beat prompting "
                f"on validation; the finetuned weights, not recommended: {tuned}")
    if gate.get("epoch"):
        return (f"model: {gate['model_dir']} (the finetuning after epoch {gate['epoch']} at scale {gate['scale']:g}, "
                "the gate's choice on validation)")
    if gate["scale"] == 1.0:
        return f"finetuned model: {tuned} (the gate kept it at full scale)"
    return f"model: {gate['model_dir']} (the finetuning at scale {gate['scale']:g}, the gate's choice on validation)"


def read_gate(ctx: Context, train_manifest: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The gate's choice for this train stage's model, if one was made."""
    import json

    path = ctx.stage_dir(STAGE) / "gate.json"
    if not path.exists():
        return None
    gate = json.loads(path.read_text(encoding="utf-8"))
    return gate if gate.get("train") == made_by(train_manifest) else None
