"""The command line: help, doctor, task check, light imports, errors without tracebacks, stages."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
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
    assert result.output.rstrip().splitlines()[-1].startswith("next: ")
    result = CliRunner().invoke(cli, ["evaluate", *common, "--finetuned"])
    assert result.exit_code == 0 and "selfguide" in result.output
    result = CliRunner().invoke(cli, ["evaluate", *common, "--shots", "zeroshot"])
    assert result.exit_code == 0 and "exact_match" in result.output


def test_bench_reuse_from_a_missing_run_exits_2(tmp_path):
    result = CliRunner().invoke(cli, ["bench", str(EXAMPLE), "--set", f"run_dir={tmp_path}", "--set", "model.backend=fake",
                                      "--reuse-from", "nope", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--reuse-from nope: no run folder" in result.output
    assert not (tmp_path / "out.json").exists()


def test_bench_seeds_writes_one_table_per_seed_and_the_summary(tmp_path):
    common = ["bench", str(EXAMPLE), "--set", f"run_dir={tmp_path}", "--set", "model.backend=fake", "--set", "evaluate.max_items=8",
              "--methods", "prompt-fewshot", "--name", "b"]
    one = CliRunner().invoke(cli, [*common, "--seeds", "7", "--out", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    assert sorted(p.name for p in tmp_path.glob("one*.md")) == ["one.md"]  # one seed: its table is the result
    assert (tmp_path / "b-s7").is_dir()  # named per seed, so that a later summary over seeds finds the run
    two = CliRunner().invoke(cli, [*common, "--seeds", "7,8", "--out", str(tmp_path / "two")])
    assert two.exit_code == 0, two.output
    assert sorted(p.name for p in tmp_path.glob("two*.md")) == ["two-s7.md", "two-s8.md", "two.md"]


def test_run_without_labelled_items_trains_exports_and_says_why_no_verdict(tmp_path, tiny_model, caplog):
    """The paper's own use case: an instruction and a few examples, nothing labelled."""
    import logging

    import yaml

    caplog.set_level(logging.INFO)
    data = yaml.safe_load(EXAMPLE.read_text())
    data.pop("eval", None)
    task = tmp_path / "unlabelled.yaml"
    task.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(cli, ["run", str(task), "--backend", "fake", "--run-dir", str(tmp_path / "runs"),
                                      "--model", str(tiny_model), "--set", "generate.target_inputs=20", "--set", "train.epochs=1",
                                      "--set", "model.dtype=float32"])
    assert result.exit_code == 0, result.output
    out = result.output
    first = [r.getMessage() for r in caplog.records if r.name.startswith("selfguide")][0]
    assert "has no labelled items" in first and "selfguide evaluate TASK --finetuned" in first  # said before any work
    assert "no verdict:" in out and "finetuned model:" in out
    task_dir = tmp_path / "runs" / "default" / data["id"]
    assert (task_dir / "train" / "model" / "model.safetensors").exists()
    assert "no verdict" in (task_dir / "train" / "model" / "README.md").read_text()
    assert "Nothing was evaluated" in (task_dir / "report.md").read_text() and (task_dir / "report.html").exists()
    assert not (task_dir / "evaluate").exists()
    assert f"next: add 'eval:' items (input + output) to {task}" in out


def test_the_next_step_line_follows_the_verdict():
    from selfguide.cli import next_step

    gain = {"delta": {"value": 6.0, "ci_low": 2.0, "ci_high": 9.0}, "diagnosis": None}
    flat = {"delta": {"value": 0.5, "ci_low": -2.0, "ci_high": 3.0}, "diagnosis": {"no_signal": False}}
    blind = {"delta": {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}, "diagnosis": {"no_signal": True}}
    assert next_step(gain, "t.yaml", quick=True).startswith("next: `selfguide export t.yaml --gguf`")
    assert "without --quick" in next_step(gain, "t.yaml", quick=True) and "without --quick" not in next_step(gain, "t.yaml", quick=False)
    assert "--model PATH" in next_step(flat, "t.yaml", quick=False) and "export" not in next_step(flat, "t.yaml", quick=False)
    assert next_step(blind, "t.yaml", quick=True).startswith("next: a larger local model")
    assert next_step({"delta": None}, "t.yaml", quick=True).startswith("next: add 'eval:' items")


@pytest.mark.parametrize("generation", [False, True])
def test_task_new_writes_a_file_that_task_check_accepts(tmp_path, monkeypatch, generation):
    monkeypatch.chdir(tmp_path)
    args = ["task", "new", "my review task"] + (["--generation"] if generation else [])
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    path = tmp_path / "my review task.yaml"
    text = path.read_text()
    assert text.startswith("# A selfguide task file") and "id: my-review-task" in text
    check = CliRunner().invoke(cli, ["task", "check", str(path)])
    assert check.exit_code == 0 and ("generation" if generation else "classification") in check.output
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "already exists" in again.output and path.read_text() == text


def test_console_shows_selfguide_lines_and_the_run_log_keeps_the_rest(tmp_path, tiny_model):
    """A real `selfguide run` process: no third-party warnings or progress bars on the terminal;
    they are in the run's log file."""
    args = [sys.executable, "-m", "selfguide.cli", "run", str(EXAMPLE), "--backend", "fake", "--run-dir", str(tmp_path),
            "--model", str(tiny_model), "--set", "generate.target_inputs=20", "--set", "evaluate.max_items=8",
            "--set", "train.epochs=1", "--set", "model.dtype=float32"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for noise in ("Warning:", "FutureWarning", "Loading weights", "Writing model shards", "Using default tokenizer", "fontManager"):
        assert noise not in proc.stderr and noise not in proc.stdout, noise
    logged = (tmp_path / "default" / "scitail" / "selfguide.log").read_text()
    assert "selfguide.pipeline" in logged or "selfguide.stages" in logged
    assert "py.warnings" in logged  # transformers' deprecation warnings went to the file
