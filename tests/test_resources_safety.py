"""Resources and safety: disk full and out-of-memory give a message naming the knob and leave the
run resumable; pickled checkpoints are refused; garbage predictions are scored, not fatal."""

from __future__ import annotations

import errno
import json

import pytest
from click.testing import CliRunner

from conftest import EXAMPLE
from selfguide import store
from selfguide.backends import get_backend
from selfguide.backends.fake import FakeBackend
from selfguide.cli import cli
from selfguide.errors import BackendError, ModelNotFound
from selfguide.models import resolve_model
from selfguide.pipeline import make_context, synthesize
from selfguide.store import read_records
from selfguide.stages.evaluate import run_evaluate


def test_disk_full_is_one_line_and_resumable(tmp_path, monkeypatch):
    def args_for(run_dir):
        return ["annotate", str(EXAMPLE), "--backend", "fake", "--run-dir", str(run_dir), "--set", "generate.target_inputs=40"]

    args = args_for(tmp_path / "runs")
    real = store.append_records
    calls = {"n": 0}

    def full_disk(path, records):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, records)

    monkeypatch.setattr("selfguide.store.append_records", full_disk)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "disk full" in result.output and "resume" in result.output
    assert "Traceback" not in result.output
    monkeypatch.setattr("selfguide.store.append_records", real)
    assert CliRunner().invoke(cli, args).exit_code == 0
    fresh = tmp_path / "fresh"
    assert CliRunner().invoke(cli, args_for(fresh)).exit_code == 0
    for f in ("generate/candidates.jsonl", "annotate/pairs.jsonl"):
        assert (tmp_path / "runs/default/scitail" / f).read_bytes() == (fresh / "default/scitail" / f).read_bytes()


def test_disk_full_reported_in_words_by_native_code_is_one_line_too(tmp_path, monkeypatch):
    """safetensors' writer reports a full disk as its own exception with the OS message inside (seen when a
    training run filled the disk); the CLI must read that as disk full, and anything else stays a failure."""
    class NativeWriterError(Exception):
        pass

    def full_disk(path, records):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:  # wrapped, as a library re-raising it would
            raise RuntimeError("save failed") from exc

    args = ["annotate", str(EXAMPLE), "--backend", "fake", "--run-dir", str(tmp_path), "--set", "generate.target_inputs=40"]
    monkeypatch.setattr("selfguide.store.append_records", full_disk)
    wrapped = CliRunner().invoke(cli, args)
    assert wrapped.exit_code == 1 and "disk full while writing the run directory" in wrapped.output

    def native(path, records):
        raise NativeWriterError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("selfguide.store.append_records", native)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "disk full" in result.output and "resume" in result.output

    def other(path, records):
        raise NativeWriterError("Error while serializing: invalid header")

    monkeypatch.setattr("selfguide.store.append_records", other)
    result = CliRunner().invoke(cli, args)
    assert isinstance(result.exception, NativeWriterError) and "disk full" not in result.output


def test_out_of_memory_names_the_knob(tiny_model, monkeypatch):
    backend = get_backend("hf", model=str(tiny_model), dtype="float32", batch_size=4)

    def oom(*a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(backend.model, "generate", oom)
    with pytest.raises(BackendError, match="lower model.batch_size"):
        backend.generate(["hello"], max_new_tokens=4)


def test_pickled_checkpoints_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04 not loaded")
    with pytest.raises(ModelNotFound, match="only safetensors or GGUF"):
        resolve_model(str(tmp_path))


GARBAGE = ["", "   ", "entails " * 3000, "\x00\x07", "\ufffd\ufffd", "ENTAILS!!", "neutral."]


def test_garbage_predictions_are_scored(tmp_path):
    """Each of the 7 garbage answers is given to 4 of the 28 items (greedy evaluation passes one
    seed for every item, so the answer is chosen by the prompt's order, not by the seed)."""
    ctx = make_context(EXAMPLE, overrides=[f"run_dir={tmp_path}", "evaluate.max_items=28"], backend_factory=lambda: FakeBackend())
    order: dict[str, int] = {}
    fb = FakeBackend(script=lambda prompt, i, seed: GARBAGE[order.setdefault(prompt, len(order)) % len(GARBAGE)])
    m = run_evaluate(ctx, "garbage", {"name": "fake"}, lambda: fb)
    res = m["results"]
    assert res["n"] == 28 and 0 <= res["scores"]["exact_match"] <= 100 and 0 <= res["valid_label_share"] <= 100
    assert sum(res["predicted_mix"].values()) == 28
    preds = read_records(ctx.stage_dir("evaluate") / "garbage" / "predictions.jsonl")
    assert len(order) == 28
    assert {p["prediction"] for p in preds} == {g.strip() for g in GARBAGE[:2]} | {g.strip() for g in GARBAGE[3:]} | \
        {" ".join(GARBAGE[2].split(" ")[: m["config"]["max_new_tokens"]]).strip()}  # the run-on answer is cut
    assert res["cut_at_max_tokens"] == 4 and res["predicted_mix"]["neutral"] == 4


def test_task_file_cannot_choose_paths(tmp_path):
    """The run folder comes from the task id, which is validated; nothing in a task file is a path."""
    bad = tmp_path / "t.yaml"
    bad.write_text("id: ../../escape\ninstruction: x\nexamples:\n- {input: a, output: b}\n- {input: c, output: d}\n")
    result = CliRunner().invoke(cli, ["generate", str(bad), "--backend", "fake", "--run-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and not (tmp_path / "escape").exists() and not (tmp_path / "runs").exists()
    ctx = make_context(EXAMPLE, overrides=[f"run_dir={tmp_path / 'runs'}", "generate.target_inputs=10"], backend_factory=lambda: FakeBackend())
    synthesize(ctx)
    assert all(p.resolve().is_relative_to((tmp_path / "runs").resolve()) for p in (tmp_path / "runs").rglob("*"))
