"""selfguide: Self-Guide (Zhao et al., COLM 2024) as a library and CLI.

    import selfguide
    result = selfguide.run("examples/disfluent.yaml", quick=True)
    print(result.verdict["sentence"], result.report)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["run", "load_task", "load_config", "RunResult"]


def __getattr__(name: str) -> Any:
    # Lazy: `import selfguide` stays light (no torch, no transformers) until something is used.
    if name in ("run", "RunResult"):
        from selfguide import pipeline

        return getattr(pipeline, name)
    if name == "load_task":
        from selfguide.task import load_task

        return load_task
    if name == "load_config":
        from selfguide.config import load_config

        return load_config
    raise AttributeError(name)
