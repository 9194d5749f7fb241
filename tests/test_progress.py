"""Progress lines: a resumed stage shows the kept work as done but rates only this run's work."""

from __future__ import annotations

import logging

from selfguide import progress


def test_rate_after_resume_counts_only_new_work(monkeypatch, caplog):
    now = [1000.0]
    monkeypatch.setattr(progress.time, "time", lambda: now[0])
    caplog.set_level(logging.INFO, logger="selfguide")
    with progress.Progress(enabled=False).bar("generate t", 40, "rounds") as bar:
        now[0] += 300  # loading the model before the first round
        bar.resume(33)
        now[0] += 10
        bar.advance()
        now[0] += 30
        bar.advance()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["generate t: resumed at 33/40 rounds", "generate t: 34/40 rounds (0.10 rounds/s)",
                     "generate t: 35/40 rounds (0.05 rounds/s)"]
