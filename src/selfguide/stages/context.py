"""What every stage needs: the config, the task, its folder in the run directory, the backend."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from selfguide.backends import Backend, model_backend, resolve_backend
from selfguide.config import RunConfig
from selfguide.models import resolve_model
from selfguide.progress import Progress
from selfguide.task import TaskSpec

log = logging.getLogger(__name__)


def derive_seed(*parts: Any) -> int:
    """A seed from (run seed, task, stage, unit index): independent of batching and of resume."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass
class Context:
    cfg: RunConfig
    task: TaskSpec
    force: bool = False
    backend_factory: Optional[Callable[[], Backend]] = None
    progress: Progress = field(default_factory=Progress)
    train_callbacks: list[Any] = field(default_factory=list)  # extra transformers TrainerCallbacks
    reuse_from: Optional[str] = None  # another run's name: its finished stages with the same identity are copied
    _backend: Optional[Backend] = None
    _engine: Optional[str] = None
    _model_identity: Optional[dict[str, Any]] = None

    @property
    def task_dir(self) -> Path:
        return Path(self.cfg.run_dir) / self.cfg.name / self.task.id

    def stage_dir(self, stage: str) -> Path:
        return self.task_dir / stage

    def reuse_dir(self, stage: str) -> Optional[Path]:
        """The same stage in the `reuse_from` run, if one is named."""
        if not self.reuse_from or self.reuse_from == self.cfg.name:
            return None
        return Path(self.cfg.run_dir) / self.reuse_from / self.task.id / stage

    def backend(self) -> Backend:
        """The generation backend, created on first use and shared by the stages of a run."""
        if self._backend is None:
            if self.backend_factory is not None:
                self._backend = self.backend_factory()
            else:
                self._backend = model_backend(self.cfg.model, self.cfg.model.name, self.engine())
        return self._backend

    def engine(self) -> str:
        """The configured backend with `auto` resolved (recorded in every stage's identity)."""
        if self._engine is None:
            self._engine = resolve_backend(self.cfg.model.backend, self.cfg.model.name, self.cfg.model.device)
        return self._engine

    def close_backend(self) -> None:
        """Free the generation model (before training needs the memory)."""
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def model_identity(self) -> dict[str, Any]:
        """Identity of the generating model without loading it (hashing the file is enough)."""
        if self._model_identity is None:
            m = self.cfg.model
            if self.backend_factory is not None or m.backend == "fake":
                ident = self.backend().identity()
                self._model_identity = {k: ident[k] for k in ("name", "sha256") if k in ident}
            else:
                ident = resolve_model(m.name).identity()
                self._model_identity = {"name": ident["name"], "sha256": ident["sha256"]}
            self._model_identity.update(backend=self.engine(), dtype=m.dtype)
            if m.prefix_cache:  # other numerics: results made without it are not reused
                self._model_identity["prefix_cache"] = True
        return self._model_identity
