"""transformers backend: CPU or GPU, real batching (left padding, length-sorted), n samples.

Texts come back without the chat template's end token: decoding stops at the first end-of-turn
id and special tokens are skipped; stop strings end each sequence early and are cut off.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

from selfguide.backends import hf_model
from selfguide.backends.base import cut_at_stop
from selfguide.errors import BackendError
from selfguide.models import ModelRef, resolve_model

log = logging.getLogger(__name__)


class HFBackend:
    name = "hf"

    def __init__(
        self,
        model: str = "embedded",
        dtype: str = "auto",
        batch_size: int = 32,
        device: str = "auto",
        threads: int = 0,
        model_ref: Optional[ModelRef] = None,
        **_: Any,
    ):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.ref = model_ref or resolve_model(model)
        self.device = hf_model.pick_device(device)
        self.dtype = hf_model.pick_dtype(dtype, self.device)
        self.batch_size = batch_size
        path = hf_model.materialize(self.ref)
        self.tokenizer = hf_model.load_tokenizer(path)
        self.tokenizer.padding_side = "left"
        self.model = hf_model.load_model(path, self.dtype, self.device)
        self.end_ids = hf_model.end_token_ids(self.tokenizer, self.model)
        self._identity = {**self.ref.identity(), "engine": "transformers", "dtype": str(self.dtype).replace("torch.", "")}

    # -- contract -------------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def render(self, messages: Sequence[dict[str, str]], prefill: str = "") -> str:
        return hf_model.render_prompt(self.tokenizer, messages, prefill)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def close(self) -> None:
        import gc

        self.model = None
        gc.collect()

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
    ) -> list[list[str]]:
        greedy = temperature <= 0
        copies = 1 if greedy else n
        jobs = [(p, c) for p in range(len(prompts)) for c in range(copies)]
        lengths = [len(self.tokenizer(prompts[p], add_special_tokens=False)["input_ids"]) for p, _ in jobs]
        # Longest first: similar lengths share a batch (little padding) and memory peaks early.
        order = sorted(range(len(jobs)), key=lambda j: (-lengths[j], j))
        texts: dict[int, str] = {}
        for b, start in enumerate(range(0, len(order), self.batch_size)):
            batch = order[start : start + self.batch_size]
            outs = self._generate_batch(
                [prompts[jobs[j][0]] for j in batch], greedy, temperature, top_k, top_p, max_new_tokens, stop,
                seed=seed * 1_000_003 + b,
            )
            texts.update(zip(batch, outs))
        result: list[list[str]] = [[] for _ in prompts]
        for j, (p, _) in enumerate(jobs):
            result[p].append(texts[j])
        if greedy and n > 1:
            result = [r * n for r in result]
        return result

    # -- internals --------------------------------------------------------------------------

    def _generate_batch(
        self, batch_prompts: list[str], greedy: bool, temperature: float, top_k: int, top_p: float,
        max_new_tokens: int, stop: Sequence[str], seed: int,
    ) -> list[str]:
        import torch

        enc = self.tokenizer(batch_prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "eos_token_id": self.end_ids,
            "pad_token_id": self.tokenizer.pad_token_id,
            "do_sample": not greedy,
        }
        if greedy:
            kwargs.update(temperature=None, top_k=None, top_p=None)
        else:
            kwargs.update(temperature=temperature, top_k=top_k or None, top_p=top_p)
        if stop:
            kwargs.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        torch.manual_seed(seed)
        try:
            with torch.inference_mode():
                out = self.model.generate(**enc, **kwargs)
        except (RuntimeError, MemoryError) as exc:
            if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
                raise BackendError(
                    f"out of memory while generating {len(batch_prompts)} sequences; lower model.batch_size "
                    f"(now {self.batch_size}) or the stage's max_new_tokens"
                ) from None
            raise
        new_tokens = out[:, enc["input_ids"].shape[1] :].tolist()
        texts = []
        for ids in new_tokens:
            for k, tid in enumerate(ids):
                if tid in self.end_ids:
                    ids = ids[:k]
                    break
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            texts.append(cut_at_stop(text, stop))
        return texts
