"""Generation backends behind one small interface (see base.py), loaded lazily by name."""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from selfguide.backends.base import Backend
from selfguide.errors import BackendUnavailable

# name -> ("module:Class", install hint). Heavy libraries are imported only when a backend is built.
BACKENDS: dict[str, tuple[str, str]] = {
    "hf": ("selfguide.backends.hf:HFBackend", "pip install torch==2.13.0 transformers gguf"),
    "native": ("selfguide.backends.native:NativeBackend", "pip install torch==2.13.0 transformers gguf"),
    "fake": ("selfguide.backends.fake:FakeBackend", ""),
}


def get_backend(name: str, **kwargs: Any) -> Backend:
    if name not in BACKENDS:
        close = difflib.get_close_matches(name, BACKENDS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise BackendUnavailable(f"unknown backend '{name}'; {hint}available: {', '.join(BACKENDS)}")
    target, install = BACKENDS[name]
    module_name, cls_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailable(f"backend '{name}' needs {exc.name}: {install}") from None
    return getattr(module, cls_name)(**kwargs)


__all__ = ["Backend", "BACKENDS", "get_backend"]
