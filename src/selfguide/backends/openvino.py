"""openvino backend: OpenVINO GenAI's ContinuousBatchingPipeline, the default CPU engine (a
maintained one, faster than selfguide's former hand-written decoder on every stage call on the
CPUs measured: docs/benchmarks/generation.md).

OpenVINO runs its own model format, so a model is exported once (optimum-intel's
`optimum-cli export openvino`, fp16 weights or int8 with `model.weights`; compute in bf16 where the CPU has it, else fp32, or as `model.dtype` says) into the
user cache, keyed by the model's hash like the GGUF conversion. optimum-intel pins an older
transformers than selfguide's, so the export runs in its own virtual environment
(`selfguide engines setup-openvino` builds it; $SELFGUIDE_OPENVINO_EXPORTER names an existing
`optimum-cli`). Prompts are rendered and texts decoded with the model's transformers tokenizer,
as in every backend; each prompt is one request with its own seed (`rng_seed`), so texts do not
depend on which prompts share a call; n samples are `num_return_sequences`; prefix caching
shares the instruction + examples (one prompt is run for a token first: without that, prompts
submitted together do not share their prefix). OpenVINO GenAI has no teacher-forced scoring, so
`score` runs the transformers model (loaded on first use).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

from selfguide.backends import hf_model
from selfguide.backends.base import Completion, TokenScore, finish_text
from selfguide.errors import BackendError, BackendUnavailable
from selfguide.models import ModelRef, cache_dir, model_hash, resolve_model

log = logging.getLogger(__name__)
WEIGHT_FORMATS = ("fp16", "int8")  # optimum-cli --weight-format; int8 = 8-bit weight-only compression (NNCF)
EXPORT_PINS = ("torch==2.13.0", "optimum-intel[openvino]==2.2.0", "transformers<5.6")
# model.dtype -> OpenVINO's compute precision; auto keeps OpenVINO's choice (bf16 where the CPU has it)
PRECISIONS = {"auto": None, "float32": "f32", "bfloat16": "bf16"}


def compute_precision(dtype: str) -> str:
    """The precision OpenVINO computes in for `dtype` on this CPU (part of the identity)."""
    if PRECISIONS.get(dtype):
        return str(PRECISIONS[dtype])
    import openvino

    return str(openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))


def exporter_venv() -> Path:
    return cache_dir() / "openvino-export"


def find_exporter() -> Optional[Path]:
    env = os.environ.get("SELFGUIDE_OPENVINO_EXPORTER")
    if env:
        return Path(env) if Path(env).exists() else None
    cli = exporter_venv() / "bin" / "optimum-cli"
    return cli if cli.exists() else None


def setup_exporter() -> Path:
    """Build the export environment (~1.4 GB: CPU torch, optimum-intel, its transformers)."""
    import sys

    venv = exporter_venv()
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    # torch pinned in the same resolution, so pip keeps the CPU build instead of pulling CUDA wheels
    for step in ([sys.executable, "-m", "venv", str(venv)], [*pip, *EXPORT_PINS]):
        if subprocess.run(step).returncode != 0:
            raise BackendError(f"could not build the OpenVINO export environment ({' '.join(step[:4])} ... failed); "
                               f"check the network or pip's message above, then run `selfguide engines setup-openvino` again")
    # torchvision resolves to a build whose operators do not load beside CPU torch (engines.md, blocker 5)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "uninstall", "-y", "-q", "torchvision"], check=False)
    return venv / "bin" / "optimum-cli"


def export(ref: ModelRef, weights: str = "fp16") -> Path:
    """The OpenVINO folder of `ref` with `weights`, exported once into the cache."""
    if weights not in WEIGHT_FORMATS:
        raise BackendError(f"model.weights={weights!r} is not one of {', '.join(WEIGHT_FORMATS)}")
    target = cache_dir() / "openvino" / f"{model_hash(ref)[:16]}-{weights}"
    if (target / "openvino_model.xml").exists():
        return target
    cli = find_exporter()
    if cli is None:
        raise BackendUnavailable("backend 'openvino' exports each model once with optimum-intel, which needs its own "
                                 "environment: run `selfguide engines setup-openvino` (about 1.4 GB, a few minutes)")
    hf_dir = hf_model.materialize(ref)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    log.info("exporting %s to OpenVINO once (cache: %s)", ref.name, target)
    proc = subprocess.run([str(cli), "export", "openvino", "--model", str(hf_dir), "--task", "text-generation-with-past",
                           "--weight-format", weights, str(tmp)], capture_output=True, text=True)
    if proc.returncode != 0 or not (tmp / "openvino_model.xml").exists():
        shutil.rmtree(tmp, ignore_errors=True)
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BackendError(f"optimum-cli could not export {hf_dir} to OpenVINO: {tail[0][:300]}")
    if target.exists():
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, target)
    return target


class OpenVINOBackend(hf_model.TokenizerFrontEnd):
    name = "openvino"
    ignore_eos = False  # benchmarks: decode exactly max_new_tokens per sequence

    def __init__(self, model: str = "embedded", dtype: str = "auto", batch_size: int = 32, threads: int = 0,
                 prefix_cache: bool = True, weights: str = "fp16", model_ref: Optional[ModelRef] = None):
        try:
            import openvino_genai as og
        except ImportError:
            raise BackendUnavailable("backend 'openvino' needs openvino-genai: pip install openvino-genai") from None
        self.ref = model_ref or resolve_model(model)
        path = export(self.ref, weights)
        hf_dir = hf_model.materialize(self.ref)
        self.tokenizer = hf_model.load_tokenizer(hf_dir)
        self.end_ids = hf_model.end_token_ids(self.tokenizer)
        self.prefix_cache = prefix_cache
        sched = og.SchedulerConfig()
        sched.enable_prefix_caching = prefix_cache
        sched.cache_size = 1  # GB of KV blocks
        sched.max_num_seqs = batch_size
        sched.max_num_batched_tokens = 4096
        props: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads} if threads else {}
        if dtype not in PRECISIONS:
            raise BackendError(f"model.dtype={dtype!r} is not one of {', '.join(PRECISIONS)}")
        if PRECISIONS[dtype]:
            props["INFERENCE_PRECISION_HINT"] = PRECISIONS[dtype]
        self._og = og
        self.pipe = og.ContinuousBatchingPipeline(str(path), sched, "CPU", props)
        self.dtype, self.batch_size, self.threads = dtype, batch_size, threads
        self._scorer: Any = None
        self._identity = {**self.ref.identity(), "engine": "openvino-genai", "weights": weights,
                          "compute": compute_precision(dtype), "openvino_genai": og.__version__.split("-")[0]}

    def _config(self, n: int, temperature: float, top_k: int, top_p: float, max_new_tokens: int, stop: Sequence[str],
                seed: int) -> Any:
        g = self._og.GenerationConfig()
        g.apply_chat_template = False  # prompts arrive rendered
        g.max_new_tokens = max_new_tokens
        g.stop_token_ids = set(self.end_ids)
        if stop:
            g.stop_strings = set(stop)
            # kept in the text and cut by finish_text: without it, a completion that opens with a stop
            # string comes back as no sequence at all (OpenVINO GenAI 2026.4)
            g.include_stop_str_in_output = True
        if self.ignore_eos:
            g.ignore_eos = True
            g.min_new_tokens = max_new_tokens
        if temperature > 0:
            g.do_sample = True
            g.temperature = temperature
            g.top_k = top_k if top_k else 0
            g.top_p = top_p
            g.num_return_sequences = n
            g.rng_seed = seed
        return g

    def generate(self, prompts: Sequence[str], n: int = 1, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 max_new_tokens: int = 64, stop: Sequence[str] = (), seed: int = 0) -> list[list[Completion]]:
        if not prompts:
            return []
        if self.prefix_cache and len(prompts) > 1:
            # encode one prompt (and so the shared prefix) first: requests added together do not share it otherwise
            self._run([prompts[0]], [self._config(1, 0.0, 0, 1.0, 1, (), 0)])
        configs = [self._config(n, temperature, top_k, top_p, max_new_tokens, stop, seed * 1_000_003 + i)
                   for i in range(len(prompts))]
        outs = self._run(list(prompts), configs)
        result = []
        asked = n if temperature > 0 else 1  # greedy: one sequence, copied n times below
        for prompt_index, per_prompt in enumerate(outs):
            if len(per_prompt) != asked:
                raise BackendError(f"OpenVINO returned {len(per_prompt)} sequences for prompt {prompt_index} of the call, "
                                   f"{asked} asked for")
            texts = []
            for o in per_prompt:
                ids = list(o.generated_ids)
                ended = bool(ids) and ids[-1] in self.end_ids
                if ended:
                    ids = ids[:-1]
                stopped = str(o.finish_reason).endswith("STOP")
                texts.append(finish_text(self.tokenizer.decode(ids, skip_special_tokens=True), stop, ended or stopped))
            result.append(texts)
        if temperature <= 0 and n > 1:
            result = [r * n for r in result]
        return result

    def _run(self, prompts: list[str], configs: list[Any]) -> list[list[Any]]:
        try:
            handles = [self.pipe.add_request(i, p, c) for i, (p, c) in enumerate(zip(prompts, configs))]
            while self.pipe.has_non_finished_requests():
                self.pipe.step()
            return [h.read_all() for h in handles]
        except RuntimeError as exc:
            raise BackendError(f"OpenVINO generation failed: {str(exc).splitlines()[0][:300]}") from None

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[list[TokenScore]]:
        """Teacher-forced scores from the transformers model (OpenVINO GenAI has no such call)."""
        if self._scorer is None:
            from selfguide.backends.hf import HFBackend

            log.info("openvino: label scores run on the transformers model (loaded once)")
            self._scorer = HFBackend(model_ref=self.ref, dtype=self.dtype, batch_size=self.batch_size, threads=self.threads,
                                     prefix_cache=self.prefix_cache)
        return self._scorer.score(prompts, continuations)

    def close(self) -> None:
        self.pipe = None
        if self._scorer is not None:
            self._scorer.close()
            self._scorer = None
