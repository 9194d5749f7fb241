"""Kill-anywhere: SIGKILL and SIGINT at random moments across generate, annotate, train and
evaluate; after restarts the run must equal an uninterrupted one (tests/reliability/harness.py).
About 14 kills here (a few minutes on 2 cores); `python -m tests.reliability.harness --long` does 100+."""

from __future__ import annotations

import os

import pytest

from reliability import harness


def test_kill_anywhere(tmp_path):
    kills = int(os.environ.get("SELFGUIDE_KILLS", "14"))
    summary = harness.main(["--kills", str(kills), "--workdir", str(tmp_path), "--seed", "1"])
    assert summary["kills_total"] == kills
    assert summary["kills"]["SIGKILL"] > 0 and summary["kills"]["SIGINT"] > 0
    assert not summary["problems"], summary["problems"]
    assert not summary["files_mismatched"], summary["files_mismatched"]
    assert summary["verdict_identical"]


@pytest.mark.parametrize("engine", ["openvino", "hf"])
def test_kill_anywhere_real_synthesis(tmp_path, engine):
    """Synthesis on a real engine (fp32) resumes to the same bytes: openvino, the CPU default,
    and hf, the fallback."""
    from selfguide.backends import openvino_ready

    if engine == "openvino" and not openvino_ready():
        pytest.skip("openvino: openvino-genai and `selfguide engines setup-openvino` needed")
    kills = int(os.environ.get("SELFGUIDE_SYNTHESIS_KILLS", "4"))
    summary = harness.main(["--kills", str(kills), "--workdir", str(tmp_path), "--seed", "2", "--synthesis", engine])
    assert summary["kills_total"] == kills
    assert not summary["problems"], summary["problems"]
    assert not summary["files_mismatched"], summary["files_mismatched"]
