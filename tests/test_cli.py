"""The command line: help, doctor, task check, light imports, errors without tracebacks, stages."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from conftest import EXAMPLE, NIV2
from selfguide.cli import cli


def test_import_cli_does_not_load_heavy_libraries():
    code = ("import sys, selfguide, selfguide.cli, selfguide.pipeline, selfguide.metrics, selfguide.task, selfguide.filters;"
            "heavy=[m for m in ('torch','transformers','vllm','peft','datasets') if m in sys.modules];"
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_help_lists_commands():
    out = CliRunner().invoke(cli, ["--help"]).output
    for cmd in ("doctor", "task", "generate", "annotate", "train", "evaluate", "run", "export-data"):
        assert cmd in out


def test_doctor_finds_the_embedded_model():
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 0
    assert "embedded model: found" in result.output and "SmolLM2-135M-Instruct" in result.output


def test_task_check_prints_understanding():
    result = CliRunner().invoke(cli, ["task", "check", str(EXAMPLE)])
    assert result.exit_code == 0 and "classification" in result.output and "entails, neutral" in result.output
    result = CliRunner().invoke(cli, ["task", "check", str(NIV2 / "task1562.paper_prompt.json")])
    assert result.exit_code == 0 and "generation" in result.output


def test_bad_config_override_exits_2(tmp_path):
    result = CliRunner().invoke(cli, ["generate", str(EXAMPLE), "--backend", "fake", "--run-dir", str(tmp_path),
                                      "--set", "generate.temprature=2"])
    assert result.exit_code == 2 and "did you mean 'generate.temperature'" in result.output
    assert not any(tmp_path.iterdir())


def test_missing_model_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(cli, ["train", str(EXAMPLE), "--backend", "fake", "--run-dir", str(tmp_path),
                                      "--model", str(tmp_path / "nope"), "--set", "generate.target_inputs=10"])
    assert result.exit_code == 2 and "not found" in result.output and "never downloads" in result.output


def test_annotate_and_export_via_cli(tmp_path):
    args = [str(EXAMPLE), "--backend", "fake", "--run-dir", str(tmp_path), "--set", "generate.target_inputs=20"]
    result = CliRunner().invoke(cli, ["annotate", *args])
    assert result.exit_code == 0, result.output
    assert "label mix" in result.output and "before balancing" in result.output and "kept" in result.output
    result = CliRunner().invoke(cli, ["export-data", *args, "--out", str(tmp_path / "export")])
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in (tmp_path / "export" / "train.jsonl").read_text().splitlines()]
    assert rows and set(rows[0]) == {"id", "input", "output"}
    from datasets import load_from_disk

    assert len(load_from_disk(str(tmp_path / "export" / "hf_dataset"))) == len(rows)
    assert "Funnel" in (tmp_path / "export" / "README.md").read_text()


def test_run_and_evaluate_commands_on_tiny_model(tmp_path, tiny_model):
    common = [str(EXAMPLE), "--backend", "fake", "--run-dir", str(tmp_path), "--model", str(tiny_model),
              "--set", "generate.target_inputs=20", "--set", "evaluate.max_items=8", "--set", "train.epochs=1",
              "--set", "model.dtype=float32", "--set", "evaluate.bootstrap=100"]
    result = CliRunner().invoke(cli, ["run", *common])
    assert result.exit_code == 0, result.output
    assert "report:" in result.output and "points (95% CI" in result.output
    result = CliRunner().invoke(cli, ["evaluate", *common, "--finetuned"])
    assert result.exit_code == 0 and "selfguide" in result.output
    result = CliRunner().invoke(cli, ["evaluate", *common, "--shots", "zeroshot"])
    assert result.exit_code == 0 and "exact_match" in result.output


def test_bench_reuse_from_a_missing_run_exits_2(tmp_path):
    result = CliRunner().invoke(cli, ["bench", str(EXAMPLE), "--set", f"run_dir={tmp_path}", "--set", "model.backend=fake",
                                      "--reuse-from", "nope", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--reuse-from nope: no run folder" in result.output
    assert not (tmp_path / "out.json").exists()
