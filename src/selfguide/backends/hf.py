"""transformers backend: CPU or GPU, real batching (left padding, length-sorted), n samples.

Texts come back without the chat template's end token: decoding stops at the first end-of-turn
id and special tokens are skipped; stop strings end each sequence early and are cut off.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

from selfguide.backends import hf_model
from selfguide.backends.base import Completion, TokenScore, finish_text
from selfguide.errors import BackendError
from selfguide.models import ModelRef, resolve_model

log = logging.getLogger(__name__)


MIN_SHARED_PREFIX = 32  # tokens; below this a separate prefix pass is not worth it


def shared_prefix_len(ids: list[list[int]]) -> int:
    """Tokens all prompts share at the start, leaving every prompt at least one token of its own."""
    if not ids:
        return 0
    limit = min(len(x) for x in ids) - 1
    first = ids[0]
    k = 0
    while k < limit and all(x[k] == first[k] for x in ids):
        k += 1
    return k if k >= MIN_SHARED_PREFIX else 0


class HFBackend(hf_model.TokenizerFrontEnd):
    name = "hf"
    ignore_eos = False  # benchmarks: decode exactly max_new_tokens per sequence (vLLM's ignore_eos)

    def __init__(
        self,
        model: str = "embedded",
        dtype: str = "auto",
        batch_size: int = 32,
        device: str = "auto",
        threads: int = 0,
        prefix_cache: bool = True,
        model_ref: Optional[ModelRef] = None,
    ):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.ref = model_ref or resolve_model(model)
        self.device = hf_model.pick_device(device)
        self.dtype = hf_model.pick_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.prefix_cache = prefix_cache
        path = hf_model.materialize(self.ref)
        self.tokenizer = hf_model.load_tokenizer(path)
        self.tokenizer.padding_side = "left"
        self.model = hf_model.load_model(path, self.dtype, self.device)
        self.end_ids = hf_model.end_token_ids(self.tokenizer, self.model)
        self.end_text = hf_model.end_of_turn_text(self.tokenizer)
        self._identity = {**self.ref.identity(), "engine": "transformers", "dtype": str(self.dtype).replace("torch.", "")}

    # -- contract -------------------------------------------------------------------------

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
    ) -> list[list[Completion]]:
        greedy = temperature <= 0
        copies = 1 if greedy else n
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        prefix_len = shared_prefix_len(ids) if self.prefix_cache else 0
        prefix = self._encode_prefix(ids[0][:prefix_len]) if prefix_len else None
        jobs = [(p, c) for p in range(len(prompts)) for c in range(copies)]
        # Longest first: similar lengths share a batch (little padding) and memory peaks early.
        order = sorted(range(len(jobs)), key=lambda j: (-len(ids[jobs[j][0]]), j))
        texts: dict[int, Completion] = {}
        for b, start in enumerate(range(0, len(order), self.batch_size)):
            batch = order[start : start + self.batch_size]
            outs = self._generate_batch(
                [ids[jobs[j][0]] for j in batch], prefix_len, prefix, greedy, temperature, top_k, top_p, max_new_tokens,
                stop, seed=seed * 1_000_003 + b,
            )
            texts.update(zip(batch, outs))
        result: list[list[Completion]] = [[] for _ in prompts]
        for j, (p, _) in enumerate(jobs):
            result[p].append(texts[j])
        if greedy and n > 1:
            result = [r * n for r in result]
        return result

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[list[TokenScore]]:
        """log p(continuation + end of turn | prompt) for every pair, by teacher forcing.

        The prefix all prompts share is encoded once; each row is then (left padding, the prompt's
        own suffix, one continuation), right-aligned so the continuation's logits are the row's last
        positions and only those go through the output head."""
        import copy

        import torch

        if not prompts or not continuations:
            return [[] for _ in prompts]
        ids, conts = self.score_ids(prompts, continuations)
        prefix_len = shared_prefix_len(ids) if self.prefix_cache else 0
        prefix = HFBackend._encode_prefix(self, ids[0][:prefix_len]) if prefix_len else None
        jobs = [(p, c) for p in range(len(ids)) for c in range(len(conts))]
        order = sorted(range(len(jobs)), key=lambda j: (-len(ids[jobs[j][0]]), j))
        found: dict[int, TokenScore] = {}
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            rows = [ids[jobs[j][0]][prefix_len:] + conts[jobs[j][1]] for j in batch]
            width = max(len(r) for r in rows)
            keep = max(len(conts[jobs[j][1]]) for j in batch) + 1
            tokens, masks, positions = [], [], []
            for r in rows:
                gap = width - len(r)
                tokens.append([pad] * gap + r)
                masks.append([1] * prefix_len + [0] * gap + [1] * len(r))
                positions.append([prefix_len] * gap + list(range(prefix_len, prefix_len + len(r))))
            kwargs: dict[str, Any] = {}
            if prefix is not None:
                cache = copy.deepcopy(prefix)
                cache.batch_repeat_interleave(len(batch))
                kwargs["cache"] = cache
            with torch.inference_mode():
                logits = self.model(
                    input_ids=torch.tensor(tokens, device=self.device),
                    attention_mask=torch.tensor(masks, device=self.device),
                    position_ids=torch.tensor(positions, device=self.device),
                    use_cache=prefix is not None, logits_to_keep=keep, **kwargs,
                ).logits.float()
            logprobs = torch.log_softmax(logits, dim=-1)
            for row, j in enumerate(batch):
                cont = conts[jobs[j][1]]
                c = len(cont)
                # logits at position t predict token t+1: the continuation's predictors end one before the row
                picked = logprobs[row, keep - 1 - c : keep - 1].gather(1, torch.tensor(cont, device=self.device)[:, None])
                found[j] = TokenScore(float(picked.sum()), c)
        result: list[list[TokenScore]] = [[] for _ in prompts]
        for j, (p, _) in enumerate(jobs):
            result[p].append(found[j])
        return result

    # -- internals --------------------------------------------------------------------------

    def _encode_prefix(self, prefix_ids: list[int]) -> Any:
        """KV cache of the prompt prefix every prompt of the call shares (instruction + examples)."""
        import torch

        with torch.inference_mode():
            return self.model(torch.tensor([prefix_ids], device=self.device), use_cache=True).cache

    def _generate_batch(
        self, batch_ids: list[list[int]], prefix_len: int, prefix_cache: Any, greedy: bool, temperature: float,
        top_k: int, top_p: float, max_new_tokens: int, stop: Sequence[str], seed: int,
    ) -> list[Completion]:
        import copy

        import torch

        # Row = shared prefix, then left padding, then the prompt's own suffix. Position ids come from
        # the attention mask, so each suffix continues right after the prefix.
        width = max(len(x) for x in batch_ids) - prefix_len
        pad = self.tokenizer.pad_token_id
        rows, masks = [], []
        for x in batch_ids:
            suffix = x[prefix_len:]
            gap = width - len(suffix)
            rows.append(x[:prefix_len] + [pad] * gap + suffix)
            masks.append([1] * prefix_len + [0] * gap + [1] * len(suffix))
        enc = {"input_ids": torch.tensor(rows, device=self.device), "attention_mask": torch.tensor(masks, device=self.device)}
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "eos_token_id": self.end_ids,
            "pad_token_id": pad,
            "do_sample": not greedy,
        }
        if self.ignore_eos:
            kwargs["min_new_tokens"] = max_new_tokens
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(batch_ids))
            kwargs["cache"] = cache
        if greedy:
            kwargs.update(temperature=None, top_k=None, top_p=None)
        else:
            kwargs.update(temperature=temperature, top_k=top_k, top_p=top_p)  # 0 = off (None would mean HF's 50)
        if stop:
            kwargs.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        torch.manual_seed(seed)
        try:
            with torch.inference_mode():
                out = self.model.generate(**enc, **kwargs)
        except (RuntimeError, MemoryError) as exc:
            if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
                raise BackendError(
                    f"out of memory while generating {len(batch_ids)} sequences; lower model.batch_size "
                    f"(now {self.batch_size}) or the stage's max_new_tokens"
                ) from None
            raise
        new_tokens = out[:, enc["input_ids"].shape[1] :].tolist()
        texts = []
        for ids in new_tokens:
            ended = False
            for k, tid in enumerate(ids):
                if tid in self.end_ids:
                    ids, ended = ids[:k], True
                    break
            texts.append(finish_text(self.tokenizer.decode(ids, skip_special_tokens=True), stop, ended))
        return texts
