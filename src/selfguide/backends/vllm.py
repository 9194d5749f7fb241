"""vllm backend: vLLM's offline `LLM` engine, for GPUs (`pip install selfguide[vllm]`).

The engine lives in a child process (spawned, never forked: CUDA does not survive a fork). It is
created once per stage and `close()` ends the process, which is the only reliable way to give
all of vLLM's GPU memory back before training starts in the parent. Prompts are rendered with
the model's own chat template in the parent, exactly as the other backends do; vLLM's automatic
prefix caching shares the instruction + examples prefix; every request carries its own seed
(run seed, call seed, prompt index), so results do not depend on how vLLM batches them.
"""

from __future__ import annotations

import multiprocessing as mp
from typing import Any, Optional, Sequence

from selfguide.backends import hf_model
from selfguide.backends.base import STOP, Completion, TokenScore, finish_text
from selfguide.errors import BackendError, BackendUnavailable
from selfguide.models import ModelRef, resolve_model


def _engine_loop(conn: Any, engine_args: dict[str, Any]) -> None:
    """Child process: build the LLM once, then answer generate requests until told to stop."""
    try:
        from vllm import LLM, SamplingParams

        llm = LLM(**engine_args)
        conn.send(("ready", None))
    except Exception as exc:  # reported to the parent as one line
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    while True:
        request = conn.recv()
        if request is None:
            return
        try:
            if request[0] == "score":  # token ids; the log-probability each prompt token got
                rows = [{"prompt_token_ids": ids} for ids in request[1]]
                outs = llm.generate(rows, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
                conn.send(("ok", [[None if lp is None else lp[tid].logprob for tid, lp in zip(ids, o.prompt_logprobs)]
                                  for ids, o in zip(request[1], outs)]))
                continue
            prompts, params = request[1]
            sampling = [SamplingParams(**p) for p in params]
            outs = llm.generate(prompts, sampling, use_tqdm=False)
            conn.send(("ok", [[(c.text, c.finish_reason) for c in o.outputs] for o in outs]))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def sampling_params(
    n: int, temperature: float, top_k: int, top_p: float, max_new_tokens: int, stop: Sequence[str], end_ids: list[int], seed: int,
) -> dict[str, Any]:
    """vLLM SamplingParams for one prompt: same semantics as the other backends (temperature 0 = greedy)."""
    greedy = temperature <= 0
    return {
        "n": 1 if greedy else n,
        "temperature": 0.0 if greedy else temperature,
        "top_k": top_k if (top_k and not greedy) else -1,
        "top_p": 1.0 if greedy else top_p,
        "max_tokens": max_new_tokens,
        "stop": list(stop) or None,
        "stop_token_ids": end_ids,
        "skip_special_tokens": True,
        "seed": seed,
    }


class VLLMBackend(hf_model.TokenizerFrontEnd):
    name = "vllm"
    ignore_eos = False

    def __init__(
        self,
        model: str = "embedded",
        dtype: str = "auto",
        batch_size: int = 256,
        prefix_cache: bool = True,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        model_ref: Optional[ModelRef] = None,
    ):
        import importlib.util

        import torch

        if importlib.util.find_spec("vllm") is None:  # found, not imported: the engine process imports it
            raise BackendUnavailable("backend 'vllm' needs vllm: pip install 'selfguide[vllm]' (a CUDA GPU is required)")

        if not torch.cuda.is_available():
            raise BackendUnavailable("backend 'vllm' needs a CUDA GPU; on CPU use model.backend: auto (openvino, else hf)")
        self.ref = model_ref or resolve_model(model)
        path = hf_model.materialize(self.ref)
        self.tokenizer = hf_model.load_tokenizer(path)
        self.end_ids = hf_model.end_token_ids(self.tokenizer)
        self.end_text = hf_model.end_of_turn_text(self.tokenizer)
        vllm_dtype = {"auto": "auto", "float32": "float32", "bfloat16": "bfloat16"}[dtype]
        engine_args = {
            "model": str(path), "tokenizer": str(path), "dtype": vllm_dtype, "seed": 0,
            "tensor_parallel_size": tensor_parallel_size, "gpu_memory_utilization": gpu_memory_utilization,
            "enable_prefix_caching": prefix_cache, "max_num_seqs": batch_size,
        }
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_engine_loop, args=(child, engine_args), daemon=True)
        self._proc.start()
        status, detail = self._conn.recv()
        if status != "ready":
            self.close()
            raise BackendError(f"vLLM could not start the model: {detail}")
        self._identity = {**self.ref.identity(), "engine": "vllm", "dtype": dtype,
                          "tensor_parallel_size": tensor_parallel_size}

    def generate(
        self,
        prompts: Sequence[str],
        n: int = 1,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
        stop: Sequence[str] = (),
        seed: int = 0,
    ) -> list[list[Completion]]:
        if not prompts:
            return []
        params = [
            {**sampling_params(n, temperature, top_k, top_p, max_new_tokens, stop, self.end_ids, seed * 1_000_003 + i),
             "ignore_eos": self.ignore_eos}
            for i in range(len(prompts))
        ]
        self._conn.send(("generate", (list(prompts), params)))
        status, result = self._conn.recv()
        if status != "ok":
            raise BackendError(f"vLLM generation failed: {result}")
        # vLLM's finish_reason: "stop" (end token or stop string, already cut) or "length"
        out = [[finish_text(t, stop, ended=reason == STOP) for t, reason in texts] for texts in result]
        if temperature <= 0 and n > 1:
            out = [r * n for r in out]
        return out

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[list[TokenScore]]:
        """log p(continuation + end of turn | prompt) from vLLM's prompt log-probabilities (prefix
        caching shares the prompt between a prompt's continuations)."""
        if not prompts or not continuations:
            return [[] for _ in prompts]
        ids, conts = self.score_ids(prompts, continuations)
        self._conn.send(("score", [x + c for x in ids for c in conts]))
        status, result = self._conn.recv()
        if status != "ok":
            raise BackendError(f"vLLM scoring failed: {result}")
        flat = [TokenScore(float(sum(lps[-len(c):])), len(c)) for lps, c in zip(result, [c for _ in ids for c in conts])]
        return [flat[i * len(conts) : (i + 1) * len(conts)] for i in range(len(ids))]

    def close(self) -> None:
        """End the engine process: the GPU memory is free when this returns."""
        proc = getattr(self, "_proc", None)
        if proc is None:
            return
        try:
            self._conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        proc.join(timeout=60)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=10)
        self._proc = None
