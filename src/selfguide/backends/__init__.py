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
    "vllm": ("selfguide.backends.vllm:VLLMBackend", "pip install 'selfguide[vllm]'"),
    "openvino": ("selfguide.backends.openvino:OpenVINOBackend", "pip install openvino-genai"),
    "fake": ("selfguide.backends.fake:FakeBackend", ""),
}


def resolve_backend(name: str, device: str = "auto") -> str:
    """`auto` -> openvino on CPU when OpenVINO GenAI and its exporter are installed (faster than
    every other engine on each stage call, docs/benchmarks/generation.md), else hf; hf on CUDA
    (vllm is chosen by name). Other names are returned as given."""
    if name != "auto":
        return name
    if device == "cuda" or (device == "auto" and _has_cuda()):
        return "hf"
    return "openvino" if openvino_ready() else "hf"


def openvino_ready() -> bool:
    """OpenVINO GenAI importable and its model exporter built (`selfguide engines setup-openvino`)."""
    import importlib.util

    if importlib.util.find_spec("openvino_genai") is None:
        return False
    from selfguide.backends.openvino import find_exporter

    return find_exporter() is not None


def _has_cuda() -> bool:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def model_backend(m: Any, model: str, engine: str) -> Backend:
    """A backend for `model` with the run's model settings (`m`: config.ModelConfig)."""
    from selfguide.identity import check_engine_options, engine_options

    check_engine_options(m, engine)
    return get_backend(engine, model=model, **engine_options(m, engine))


def get_backend(name: str, **kwargs: Any) -> Backend:
    if name not in BACKENDS and name != "auto":
        close = difflib.get_close_matches(name, BACKENDS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise BackendUnavailable(f"unknown backend '{name}'; {hint}available: {', '.join(BACKENDS)}")
    if name == "auto":
        name = resolve_backend(name, kwargs.get("device", "auto"))
    target, install = BACKENDS[name]
    module_name, cls_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailable(f"backend '{name}' needs {exc.name}: {install}") from None
    return getattr(module, cls_name)(**kwargs)


__all__ = ["Backend", "BACKENDS", "get_backend", "model_backend", "resolve_backend"]
