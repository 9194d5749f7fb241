"""What the terminal shows: selfguide's own messages; third-party warnings and INFO lines that a
user cannot act on (transformers deprecations, rouge-score's tokenizer note, matplotlib's font
cache, weight-loading progress bars) go only to the run's log file, `<run>/<task>/selfguide.log`."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(message)s"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class ConsoleFilter(logging.Filter):
    """selfguide's records at the chosen level; anything else only when it is an error."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "selfguide" or record.name.startswith("selfguide."):
            return record.levelno >= self.level
        return record.levelno >= logging.ERROR and record.name != "py.warnings"


class RunLogHandler(logging.FileHandler):
    """Appends every record (third-party ones too) to the run's log; opens the file on first use."""

    def __init__(self, path: Path):
        self.target = path
        super().__init__(path, encoding="utf-8", delay=True)

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None:
            self.target.parent.mkdir(parents=True, exist_ok=True)
        super().emit(record)


def setup_console(verbose: int) -> None:
    """-v: selfguide's debug lines too; -vv: every library's lines on the terminal as well."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # "Loading weights" bars; set before transformers loads
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for h in list(root.handlers):
        if getattr(h, "_selfguide_console", False):
            root.removeHandler(h)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    if verbose < 2:
        console.addFilter(ConsoleFilter(logging.DEBUG if verbose else logging.INFO))
    console._selfguide_console = True  # type: ignore[attr-defined]
    root.addHandler(console)
    logging.captureWarnings(True)  # warnings.warn(...) -> the "py.warnings" logger: the log file, not the terminal
    for chatty in ("httpx", "urllib3", "filelock"):
        logging.getLogger(chatty).setLevel(logging.WARNING)


def attach_run_log(path: Path) -> None:
    """Send every record from now on to `path` as well (once per path)."""
    root = logging.getLogger()
    if any(isinstance(h, RunLogHandler) and h.target == path for h in root.handlers):
        return
    for h in [h for h in root.handlers if isinstance(h, RunLogHandler)]:
        root.removeHandler(h)
        h.close()
    handler = RunLogHandler(path)
    handler.setFormatter(logging.Formatter(FILE_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    handler.setLevel(logging.NOTSET)  # whatever the root lets through (INFO, DEBUG with -v)
    root.addHandler(handler)
