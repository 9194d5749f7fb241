"""Progress display: rich bars on a terminal, a log line every few steps elsewhere (CI, files)."""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from typing import Iterator, Optional

log = logging.getLogger("selfguide")


class Progress:
    def __init__(self, enabled: Optional[bool] = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    @contextmanager
    def bar(self, description: str, total: int, unit: str = "items") -> Iterator["Bar"]:
        bar = Bar(description, total, unit, self.enabled)
        try:
            yield bar
        finally:
            bar.close()


class Bar:
    def __init__(self, description: str, total: int, unit: str, rich_enabled: bool):
        self.description, self.total, self.unit = description, total, unit
        self.done = 0
        self.resumed_at = 0  # work kept from an earlier run: shown as done, not counted in the rate
        self.started = time.time()
        self._last_log = 0.0
        self._rich = None
        if rich_enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._rich = RichProgress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[note]}"),
                transient=False,
            )
            self._rich.start()
            self._task = self._rich.add_task(description, total=total, rate="", note="")

    def resume(self, done: int) -> None:
        """Start from work an earlier run finished."""
        self.done = self.resumed_at = done
        self.started = time.time()
        if self._rich is not None:
            self._rich.update(self._task, completed=done)
        elif done:
            log.info("%s: resumed at %d/%d %s", self.description, done, self.total, self.unit)

    def extend(self, total: int) -> None:
        """More work than planned (generation going on until enough inputs are kept)."""
        self.total = total
        if self._rich is not None:
            self._rich.update(self._task, total=total)

    def advance(self, k: int = 1, note: str = "") -> None:
        """`note`: what the work so far amounts to, in words ("31 inputs kept")."""
        self.done += k
        elapsed = max(time.time() - self.started, 1e-9)
        rate = f"{(self.done - self.resumed_at) / elapsed:.2f} {self.unit}/s"
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done, rate=rate, note=note)
        elif time.time() - self._last_log > 15 or self.done >= self.total:
            self._last_log = time.time()
            log.info("%s: %d/%d %s (%s)%s", self.description, self.done, self.total, self.unit, rate, f", {note}" if note else "")

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
