"""What every stage needs: the config, the task, its folder in the run directory, the backend."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from selfguide.backends import Backend, model_backend, resolve_backend
from selfguide.config import ModelConfig, RunConfig
from selfguide.identity import ENGINE_OPTIONS, check_engine_options, model_identity, stage_identity
from selfguide.models import resolve_model
from selfguide.progress import Progress
from selfguide.store import Stage
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
            self._engine = resolve_backend(self.cfg.model.backend, self.cfg.model.device)
            check_engine_options(self.cfg.model, self._engine)
        return self._engine

    def eval_engine(self) -> str:
        """Evaluation runs the real model on the run's engine; hf when synthesis was scripted or ran
        on openvino (a finetuned model would need its own OpenVINO export, slower than the hf
        evaluation it saves at these sizes, and every system of a verdict runs on one engine)."""
        engine = self._eval_engine_name()
        check_engine_options(self.eval_model_config(), engine)
        return engine

    def _eval_engine_name(self) -> str:
        engine = self.engine()
        return "hf" if engine in ("fake", "openvino") else engine

    def eval_model_config(self) -> ModelConfig:
        """The model settings evaluation runs with: when synthesis runs on another engine than
        evaluation, the settings only synthesis uses (openvino's model.weights) are left at their
        defaults instead of being refused by the evaluation engine."""
        synthesis, evaluation = self.engine(), self._eval_engine_name()
        if synthesis == evaluation or synthesis not in ENGINE_OPTIONS:
            return self.cfg.model
        default = ModelConfig()
        only_synthesis = set(ENGINE_OPTIONS[synthesis]) - set(ENGINE_OPTIONS[evaluation])
        return dataclasses.replace(self.cfg.model, **{k: getattr(default, k) for k in only_synthesis})

    def close_backend(self) -> None:
        """Free the generation model (before training needs the memory)."""
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def model_identity(self) -> dict[str, Any]:
        """The generating model for synthesis stages, without loading it (hashing the file is enough)."""
        if self._model_identity is None:
            if self.backend_factory is not None or self.cfg.model.backend == "fake":
                backend = self.backend()  # an injected backend names itself and the engine that wrote the text
                ident, engine = backend.identity(), backend.name
            else:
                ident, engine = resolve_model(self.cfg.model.name).identity(), self.engine()
            self._model_identity = model_identity(self.cfg.model, engine, ident["name"], ident.get("sha256"))
        return self._model_identity

    def base_model_identity(self, engine: Optional[str]) -> dict[str, Any]:
        """The configured model's file, run by `engine` (None: no engine, as in training)."""
        ident = resolve_model(self.cfg.model.name).identity()
        return model_identity(self.cfg.model, engine, ident["name"], ident["sha256"])

    def open_stage(self, name: str, settings: dict[str, Any], model: dict[str, Any],
                   reads: Optional[dict[str, Any]] = None, folder: Optional[str] = None) -> Stage:
        """The stage `name` in `folder` (default: its name) with its identity (identity.stage_identity)."""
        config, inputs = stage_identity(self.cfg.seed, self.task.fingerprint(), settings, model, reads)
        where = folder or name
        return Stage(self.stage_dir(where), name, config, inputs, self.reuse_dir(where))
