"""Hostile inputs: every malformed task file and config ends in one `error:` line naming the file,
exit code 2, in bounded time and memory, with nothing written to the run directory."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import EXAMPLE
from reliability.hostile import config_files, task_files
from selfguide.cli import cli

MAX_SECONDS = 5.0
MAX_PEAK_MB = 64


def _write(path: Path, content) -> None:
    if callable(content):
        content(str(path))
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_bytes(content.encode("utf-8", "surrogateescape"))


def _assert_one_line_error(result, name: str, seconds: float, peak_mb: float) -> None:
    lines = [ln for ln in result.output.strip().splitlines() if ln]
    assert result.exit_code == 2, (name, result.exit_code, result.output[-500:], repr(result.exception))
    assert len(lines) == 1 and lines[0].startswith("error: "), (name, result.output[-500:])
    assert name in lines[0], (name, lines[0])
    assert "Traceback" not in result.output
    assert seconds < MAX_SECONDS, (name, seconds)
    assert peak_mb < MAX_PEAK_MB, (name, peak_mb)


def _invoke(args: list[str]):
    tracemalloc.start()
    t0 = time.perf_counter()
    result = CliRunner().invoke(cli, args)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return result, seconds, peak


def test_corpus_size():
    assert len(task_files()) >= 50 and len(config_files()) >= 15


@pytest.mark.parametrize("name", sorted(task_files()))
def test_hostile_task_file(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "in" / name
    path.parent.mkdir()
    _write(path, task_files()[name])
    run_dir = tmp_path / "runs"
    for args in (["task", "check", str(path)], ["run", str(path), "--backend", "fake", "--run-dir", str(run_dir)]):
        result, seconds, peak = _invoke(args)
        _assert_one_line_error(result, name, seconds, peak)
    assert not run_dir.exists(), "a rejected task file must write nothing"
    assert not (tmp_path / "hacked").exists()


@pytest.mark.parametrize("name", sorted(config_files()))
def test_hostile_config(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / name
    _write(path, config_files()[name])
    run_dir = tmp_path / "runs"
    result, seconds, peak = _invoke(["run", str(EXAMPLE), "-c", str(path), "--backend", "fake", "--run-dir", str(run_dir)])
    _assert_one_line_error(result, name, seconds, peak)
    assert not run_dir.exists() and not (tmp_path / "hacked").exists()


# Property: whatever the bytes, the loader returns a TaskSpec or raises TaskError (never anything else).
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from selfguide.errors import TaskError  # noqa: E402
from selfguide.task import TaskSpec, load_task  # noqa: E402

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)
task_like = st.fixed_dictionaries(
    {}, optional={"instruction": json_values, "examples": st.lists(st.fixed_dictionaries({}, optional={"input": json_values, "output": json_values}), max_size=4),
                  "labels": json_values, "kind": json_values, "id": json_values, "eval": json_values, "Definition": json_values},
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(task_like, json_values), suffix=st.sampled_from([".json", ".yaml"]))
def test_loader_never_crashes(tmp_path, data, suffix):
    import json as _json

    import yaml

    path = tmp_path / f"t{suffix}"
    path.write_text(_json.dumps(data) if suffix == ".json" else yaml.safe_dump(data))
    try:
        assert isinstance(load_task(path), TaskSpec)
    except TaskError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=400))
def test_loader_on_random_bytes(tmp_path, blob):
    path = tmp_path / "t.yaml"
    path.write_bytes(blob)
    try:
        load_task(path)
    except TaskError as exc:
        assert "\n" not in str(exc)
