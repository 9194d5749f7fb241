"""What a stage's results depend on: the one place that builds a stage identity.

A finished stage is reused only when its identity matches exactly: the numerics version of the
code, the run seed, the stage's own settings, the task, the model file's hash, the engine that
ran it and every engine option (batch size, prefix caching, dtype...), and the
hashes of what it reads. Nothing else builds identities; stages pass their settings here.

`NUMERICS_VERSION` is bumped whenever a change to generation, annotation, training or scoring
code changes what they write for the same settings. Every stage manifest and every benchmark
row records it, so a result made by older code is never reused and never mixed into a table.

History:
  0  (unnamed) results up to commit 7fa3765, the published NIv2 table
  1  KV store, prefill batching, shared-prefix store, blocked bf16 weights, q/k rotation,
     top-k draws (ced82c6..c02ae2b); cut annotation samples rejected; evaluation decode budget
     from the examples only; task121's demonstration overlaps left out of its test split
  2  training encodes the prompt prefix all pairs share once per batch (train.shared_prefix):
     same loss and gradients to float rounding, but one LoRA-dropout mask for the prefix instead
     of one per row, so the trained weights differ in their last bits
  3  the CPU default engine is openvino (OpenVINO GenAI, fp16 weights) instead of selfguide's own
     decoder, which is gone: synthesis draws differ; evaluation runs on hf
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Optional

from selfguide.config import ModelConfig
from selfguide.errors import ConfigError

NUMERICS_VERSION = 3

# The model settings each engine takes; any other model setting changed from its default is a
# config error for that engine, never a silent no-op. All of them are part of the identity.
ENGINE_OPTIONS: dict[str, tuple[str, ...]] = {
    "hf": ("dtype", "batch_size", "device", "threads", "prefix_cache"),
    "vllm": ("dtype", "batch_size", "prefix_cache", "tensor_parallel_size", "gpu_memory_utilization"),
    "openvino": ("dtype", "batch_size", "threads", "prefix_cache", "weights"),
    "fake": (),
}
GENERAL_MODEL_KEYS = ("name", "backend", "device")  # device also places training and picks the engine

# Settings added after stages and bench rows were made, each with the value at which it changes nothing. At that
# value a setting is left out of every identity (the stages' and the bench rows'), so that what was made before the
# setting existed stays valid; set to anything else, it is part of the identity like every other setting.
NEUTRAL_ADDITIONS: dict[str, Any] = {
    "generate.form_filter": False,
    "generate.direction": "input",
    "annotate.drop_input_copies": False,
    "train.neftune_alpha": None,
    "evaluate.gate_epochs": False,
}


def without_neutral_additions(settings: dict[str, Any], section: str = "") -> dict[str, Any]:
    """`settings` (one config section's, or flattened `section.key` ones when `section` is empty) without the
    NEUTRAL_ADDITIONS that are at their neutral value."""
    prefix = f"{section}." if section else ""

    def neutral(key: str, value: Any) -> bool:
        name = prefix + key
        return name in NEUTRAL_ADDITIONS and value == NEUTRAL_ADDITIONS[name] and type(value) is type(NEUTRAL_ADDITIONS[name])

    return {k: v for k, v in settings.items() if not neutral(k, v)}


def engine_options(m: ModelConfig, engine: str) -> dict[str, Any]:
    """The settings of `m` that `engine` uses, as keyword arguments of its backend."""
    return {k: getattr(m, k) for k in ENGINE_OPTIONS.get(engine, ())}


def check_engine_options(m: ModelConfig, engine: str) -> None:
    """Refuse model settings that the engine would ignore (e.g. threads on vllm)."""
    if engine not in ENGINE_OPTIONS or engine == "fake":
        return  # fake stands in for any engine; unknown names are reported by get_backend
    default = ModelConfig()
    ignored = [f.name for f in dataclasses.fields(m)
               if f.name not in GENERAL_MODEL_KEYS and f.name not in ENGINE_OPTIONS[engine]
               and getattr(m, f.name) != getattr(default, f.name)]
    if ignored:
        users = {k: [e for e, opts in ENGINE_OPTIONS.items() if k in opts] for k in ignored}
        detail = "; ".join(f"model.{k} (used by {', '.join(users[k]) or 'no engine'})" for k in ignored)
        raise ConfigError(f"the {engine} backend does not use {detail}; remove the setting or choose a backend that uses it")


def digest(value: Any) -> str:
    """Short sha256 of a JSON-able value (sorted keys): a content hash for identities."""
    blob = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def model_identity(m: ModelConfig, engine: Optional[str], name: str, sha256: Optional[str] = None,
                   trained: Optional[str] = None) -> dict[str, Any]:
    """The model behind a stage: its file's hash (or the digest of the train stage that made it),
    and the engine that ran it with every option of that engine (None: no engine, training)."""
    ident: dict[str, Any] = {"name": name}
    if sha256 is not None:
        ident["sha256"] = sha256
    if trained is not None:
        ident["trained"] = trained
    if engine is not None:
        ident.update(engine=engine, **engine_options(m, engine))
    return ident


def stage_identity(seed: int, task_fingerprint: str, settings: dict[str, Any], model: dict[str, Any],
                   reads: Optional[dict[str, Any]] = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config, inputs) of a stage: what `Stage` compares before reusing anything."""
    config = {"numerics": NUMERICS_VERSION, "seed": seed, **settings}
    inputs = {"task": task_fingerprint, "model": model, **(reads or {})}
    return config, inputs
