"""`selfguide export --gguf` on a real finetuned embedded model: llama.cpp's converter writes the
GGUF, transformers reads it back, and its greedy answers equal the HF model's (weights rounded to
f16) on prompts of the task. Slow (embedded model); needs the converter (`make install` fetches it)."""

from __future__ import annotations

import importlib.util
import json

import pytest
from click.testing import CliRunner

from conftest import EXAMPLE, USER_LLAMA_CPP
from selfguide import model_export
from selfguide.backends.fake import FakeBackend
from selfguide.cli import cli
from selfguide.pipeline import make_context, synthesize
from selfguide.stages.train import run_train

pytestmark = pytest.mark.slow


def test_export_without_a_trained_model_is_one_clear_error(tmp_path):
    result = CliRunner().invoke(cli, ["export", str(EXAMPLE), "--run-dir", str(tmp_path)])
    assert result.exit_code == 2 and "no finetuned model yet" in result.output


def test_converter_missing_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("SELFGUIDE_LLAMA_CPP", raising=False)
    with pytest.raises(model_export.ExportError, match="selfguide export --fetch-converter"):
        model_export.converter_dir()
    with pytest.raises(model_export.ExportError, match="no convert_hf_to_gguf.py there"):
        model_export.converter_dir(str(tmp_path))


@pytest.mark.skipif(USER_LLAMA_CPP is None or importlib.util.find_spec("sentencepiece") is None,
                    reason="llama.cpp's converter is not fetched (selfguide export --fetch-converter) or sentencepiece is missing")
def test_gguf_export_answers_like_the_hf_model(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFGUIDE_LLAMA_CPP", str(USER_LLAMA_CPP))
    monkeypatch.setattr(model_export, "CHECK_PROMPTS", 6)
    ctx = make_context(EXAMPLE, overrides=[f"run_dir={tmp_path}", "generate.target_inputs=4", "annotate.n=2", "train.epochs=1",
                                           "train.batch_size=2"],
                       backend_factory=lambda: FakeBackend())
    synthesize(ctx)
    run_train(ctx)  # the real train stage on the embedded model (a few pairs, one epoch)
    result = CliRunner().invoke(cli, ["export", str(EXAMPLE), "--run-dir", str(tmp_path), "--gguf"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "default" / "scitail" / "export"
    check = json.loads((out / "gguf-check.json").read_text())
    assert check["passed"] and check["prompts"] == 6 and check["transformers_reads_gguf"]["identical"] == 6
    written = check["transformers_reads_gguf"]["by_kind"]["new inputs"]
    assert written["prompts"] == 3 and written["distinct_completions"] > 1  # long, varied text: a comparison that can fail
    assert (out / "scitail-f16.gguf").stat().st_size > 100e6 and (out / "hf" / "model.safetensors").exists()
    card = (out / "README.md").read_text()
    assert "base_model: SmolLM2" in card and "## GGUF check" in card and "synthetic pairs" in card and "verdict:" in card
