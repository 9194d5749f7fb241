"""The whole loop on a tiny real Llama: fake synthesis, real LoRA/full training and evaluation,
verdict, report, reload in a fresh process, and training resume after an interruption."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from transformers import TrainerCallback

from conftest import EXAMPLE
from selfguide.backends.fake import FakeBackend
from selfguide.pipeline import make_context, run
from selfguide.store import read_records

TINY_RUN = ["generate.target_inputs=30", "annotate.n=3", "evaluate.max_items=12", "evaluate.bootstrap=200",
            "model.dtype=float32", "train.bf16=false", "train.batch_size=8"]


def tiny_ctx(run_dir, tiny_model, extra=(), **kw):
    return make_context(EXAMPLE, overrides=[f"run_dir={run_dir}", f"model.name={tiny_model}", *TINY_RUN, *extra],
                        backend_factory=lambda: FakeBackend(), **kw)


def test_run_end_to_end_and_noop_rerun(run_dir, tiny_model):
    ctx = tiny_ctx(run_dir, tiny_model, ["train.epochs=1"])
    result = run(EXAMPLE, ctx=ctx)
    v = result.verdict
    assert v["metric"] == "exact_match" and v["n_items"] == 12 and v["delta"] is not None
    assert v["delta"]["ci_low"] <= v["delta"]["value"] <= v["delta"]["ci_high"]
    assert "points (95% CI" in v["sentence"]
    saved = json.loads((ctx.task_dir / "verdict.json").read_text())
    assert saved["task"] == "scitail" and saved["model"]["sha256"] and saved["seed"] == 42
    for system in ("prompt-fewshot", "prompt-zeroshot", "selfguide"):
        preds = read_records(ctx.task_dir / "evaluate" / system / "predictions.jsonl")
        assert len(preds) == 12 and {"id", "prompt", "prediction", "references", "scores"} <= set(preds[0])
    model_dir = ctx.task_dir / "train" / "model"
    assert (model_dir / "model.safetensors").exists() and (model_dir / "README.md").exists()
    assert (ctx.task_dir / "train" / "adapter" / "adapter_config.json").exists()
    assert "selfguide" in (model_dir / "README.md").read_text() and "Verdict" in (model_dir / "README.md").read_text()
    html = (ctx.task_dir / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html and v["sentence"].split(" (")[0] in html
    assert (ctx.task_dir / "report.md").exists()
    before = {p: p.stat().st_mtime for p in ctx.task_dir.rglob("predictions.jsonl")}
    again = run(EXAMPLE, ctx=tiny_ctx(run_dir, tiny_model, ["train.epochs=1"]))
    assert again.verdict["deltas"] == v["deltas"]
    assert {p: p.stat().st_mtime for p in ctx.task_dir.rglob("predictions.jsonl")} == before
    # --reuse-from adopts the train stage as well: its manifest names the model relative to the stage,
    # so the copy evaluates and hands over its own model folder, not the other run's
    moved = tiny_ctx(run_dir, tiny_model, ["train.epochs=1", "name=moved", "evaluate.max_items=10"])
    moved.reuse_from = ctx.cfg.name
    again = run(EXAMPLE, ctx=moved)
    original, copied = (json.loads((c.task_dir / "train" / "MANIFEST.json").read_text()) for c in (ctx, moved))
    assert copied["finished_at"] == original["finished_at"] and copied["model_dir"] == "model"
    assert again.verdict["n_items"] == 10 and str(moved.task_dir / "train" / "model") in again.verdict["handed_over"]


def test_finetuned_model_stops_at_eos_and_reloads(run_dir, tiny_model):
    """Full finetuning with a high lr teaches the tiny model the answer format, including the end token."""
    ctx = tiny_ctx(run_dir, tiny_model, ["train.method=full", "train.learning_rate=0.03", "train.epochs=10", "train.batch_size=4",
                                         "evaluate.max_new_tokens=24", "evaluate.baselines=[fewshot]"])
    result = run(EXAMPLE, ctx=ctx)
    preds = read_records(ctx.task_dir / "evaluate" / "selfguide" / "predictions.jsonl")
    # It stopped by itself: the whole output is one label, not 24 tokens of run-on text.
    assert all(p["prediction"] in ("entails", "neutral") for p in preds), [p["prediction"] for p in preds]
    model_dir = ctx.task_dir / "train" / "model"
    script = (
        "import json,sys,torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"d={str(model_dir)!r}\n"
        "tok=AutoTokenizer.from_pretrained(d); tok.padding_side='left'\n"
        "m=AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()\n"
        "out=[]\n"
        "for p in json.load(sys.stdin):\n"
        "    enc=tok(p, return_tensors='pt', add_special_tokens=False)\n"
        "    ids=m.generate(**enc, max_new_tokens=24, do_sample=False, eos_token_id=tok.eos_token_id)[0, enc['input_ids'].shape[1]:]\n"
        "    out.append(tok.decode(ids, skip_special_tokens=True).strip())\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], input=json.dumps([p["prompt"] for p in preds]),
                          capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [p["prediction"] for p in preds]
    assert result.verdict["n_items"] == 12


class StopAfterFirstSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        raise KeyboardInterrupt


def test_training_resumes_from_last_checkpoint(run_dir, tiny_model):
    from selfguide.pipeline import synthesize
    from selfguide.stages.train import run_train

    ctx = tiny_ctx(run_dir, tiny_model, ["train.epochs=2"])
    synthesize(ctx)
    ctx.train_callbacks.append(StopAfterFirstSave())
    with pytest.raises(KeyboardInterrupt):
        run_train(ctx)
    ckpts = sorted((ctx.task_dir / "train" / "checkpoints").glob("checkpoint-*"))
    assert len(ckpts) == 1 and not (ctx.task_dir / "train" / "MANIFEST.json").exists()
    first_epoch_steps = int(ckpts[0].name.split("-")[1])
    resumed = tiny_ctx(run_dir, tiny_model, ["train.epochs=2"])
    manifest = run_train(resumed)
    assert manifest["counts"]["steps"] == 2 * first_epoch_steps
    steps = [r["step"] for r in read_records(ctx.task_dir / "train" / "metrics.jsonl")]
    assert steps == list(range(1, 2 * first_epoch_steps + 1))  # no step logged twice, none missing
    assert not (ctx.task_dir / "train" / "checkpoints").exists()  # resume state only: a finished stage drops it


def test_neftune_noise_reaches_training_and_off_keeps_earlier_stages_valid(run_dir, tiny_model):
    """train.neftune_alpha trains on noised input embeddings (transformers' NEFTune hook): other weights from the
    same pairs and seed, a stage of its own; unset, the train stage's identity is what it was before the key."""
    from safetensors.torch import load_file

    from selfguide.pipeline import synthesize
    from selfguide.stages.train import run_train

    plain = tiny_ctx(run_dir, tiny_model, ["train.epochs=1"])
    synthesize(plain)
    off = run_train(plain)
    assert "neftune_alpha" not in off["config"]["train"]
    noisy = tiny_ctx(run_dir, tiny_model, ["train.epochs=1", "name=neft", "train.neftune_alpha=5"])
    noisy.reuse_from = plain.cfg.name  # the same inputs and labels
    synthesize(noisy)
    on = run_train(noisy)
    assert on["config"]["train"]["neftune_alpha"] == 5.0 and on["counts"]["pairs"] == off["counts"]["pairs"]
    assert on["counts"]["first_loss"] != off["counts"]["first_loss"]  # the first step already sees noised embeddings
    weights = [load_file(c.task_dir / "train" / "adapter" / "adapter_model.safetensors") for c in (plain, noisy)]
    assert any(not weights[0][k].equal(weights[1][k]) for k in weights[0])
    manifest = plain.task_dir / "train" / "MANIFEST.json"
    written = manifest.stat().st_mtime_ns
    again = run_train(tiny_ctx(run_dir, tiny_model, ["train.epochs=1"]))
    assert again["finished_at"] == off["finished_at"] and manifest.stat().st_mtime_ns == written  # reused, not retrained
