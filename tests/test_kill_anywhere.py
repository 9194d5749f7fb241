"""Kill-anywhere: SIGKILL and SIGINT at random moments across generate, annotate, train and
evaluate; after restarts the run must equal an uninterrupted one (tests/reliability/harness.py).
About 14 kills here (a few minutes on 2 cores); `python -m tests.reliability.harness --long` does 100+."""

from __future__ import annotations

import os

from reliability import harness


def test_kill_anywhere(tmp_path):
    kills = int(os.environ.get("SELFGUIDE_KILLS", "14"))
    summary = harness.main(["--kills", str(kills), "--workdir", str(tmp_path), "--seed", "1"])
    assert summary["kills_total"] == kills
    assert summary["kills"]["SIGKILL"] > 0 and summary["kills"]["SIGINT"] > 0
    assert not summary["problems"], summary["problems"]
    assert not summary["files_mismatched"], summary["files_mismatched"]
    assert summary["verdict_identical"]


def test_kill_anywhere_native_synthesis(tmp_path):
    """The native engine's synthesis (fp32, no cross-call KV store) resumes to the same bytes."""
    kills = int(os.environ.get("SELFGUIDE_NATIVE_KILLS", "4"))
    summary = harness.main(["--kills", str(kills), "--workdir", str(tmp_path), "--seed", "2", "--synthesis", "native"])
    assert summary["kills_total"] == kills
    assert not summary["problems"], summary["problems"]
    assert not summary["files_mismatched"], summary["files_mismatched"]
