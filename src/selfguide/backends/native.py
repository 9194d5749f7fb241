"""native backend: selfguide's own batched decoder for Llama-family models (CPU first, GPU works).

Scheduling, per `generate` call:
- the prefix every prompt shares (instruction + examples) is encoded once; all sequences attend it;
- each prompt's own suffix is encoded once, however many samples (n) are drawn from it;
- prompt KV outlives the call (`KVStore`, blocks of 16 tokens): a later call encodes only the
  tokens after the longest block prefix an earlier call already encoded;
- `batch_size` KV slots are allocated once; a sequence that ends (end-of-turn, stop string, token
  limit) frees its slot and the next waiting job takes it at once (continuous batching), so a
  batch never waits for its longest member.
Same prompts + same seed + same earlier calls give the same texts (reused KV can round differently
in bf16 from KV encoded afresh). Greedy text matches the hf backend's up to float
rounding (tested in float32).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Optional, Sequence

from selfguide.backends import hf_model
from selfguide.backends.base import Completion, TokenScore, finish_text
from selfguide.backends.hf import HFBackend, shared_prefix_len
from selfguide.backends.kv_store import BLOCK, KVStore
from selfguide.errors import BackendError
from selfguide.models import ModelRef, resolve_model


class NativeBackend(HFBackend):
    """Loads like the hf backend (same tokenizer, template, end ids, dtype); decodes with LlamaDecoder."""

    name = "native"
    ignore_eos = False  # benchmarks: decode exactly max_new_tokens per sequence (vLLM's ignore_eos)

    def __init__(
        self, model: str = "embedded", model_ref: Optional[ModelRef] = None, prefix_cache_mb: int = 1024, **kwargs: Any
    ):
        from selfguide.backends.native_llama import LlamaDecoder, check_supported

        ref = model_ref or resolve_model(model)
        check_supported(hf_model.load_config(hf_model.materialize(ref)))  # before loading any weights
        super().__init__(model=model, model_ref=ref, **kwargs)
        self.decoder = LlamaDecoder(self.model)
        self.end_ids = set(self.end_ids)
        self.store = KVStore(prefix_cache_mb * 2**20) if self.prefix_cache and prefix_cache_mb > 0 else None
        self._identity["engine"] = "selfguide-native"

    def close(self) -> None:
        self.decoder = None
        self.store = None
        super().close()

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
        import torch

        if not prompts:
            return []
        greedy = temperature <= 0
        copies = 1 if greedy else n
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        if any(not x for x in ids):
            raise BackendError("an empty prompt reached the native backend")
        P = shared_prefix_len(ids) if self.prefix_cache else 0
        window = self.decoder.window
        if window is not None and max(len(x) for x in ids) + max_new_tokens > window:
            raise BackendError(f"prompts longer than the model's sliding window ({window}); set model.backend: hf")
        generator = torch.Generator(device=self.device).manual_seed(seed)
        try:
            with torch.inference_mode():
                texts = self._run(ids, P, copies, greedy, temperature, top_k, top_p, max_new_tokens, stop, generator)
        except (RuntimeError, MemoryError) as exc:
            if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
                raise BackendError(
                    f"out of memory while generating; lower model.batch_size (now {self.batch_size}) "
                    "or the stage's max_new_tokens"
                ) from None
            raise
        result = [[texts[(p, c)] for c in range(copies)] for p in range(len(prompts))]
        if greedy and n > 1:
            result = [r * n for r in result]
        return result

    # -- scheduler ----------------------------------------------------------------------------

    def _run(self, ids, P, copies, greedy, temperature, top_k, top_p, max_new_tokens, stop, generator):
        import torch

        dec = self.decoder
        dev = self.device
        prefix_kv = self._encode_prefix(ids[0][:P]) if P else None  # [layers, 2, n_kv, P, d]
        prefix = _per_layer(prefix_kv) if P else None
        suffixes = [x[P:] for x in ids]
        S = max(len(s) for s in suffixes) + max_new_tokens
        dec.rope_table(P + S + 1)
        slots = min(self.batch_size, len(ids) * copies)
        cache = [
            (torch.zeros(slots, dec.n_kv, S, dec.head_dim, dtype=dec.dtype, device=dev),
             torch.zeros(slots, dec.n_kv, S, dec.head_dim, dtype=dec.dtype, device=dev))
            for _ in dec.layers
        ]
        # Jobs in prompt order, copies of a prompt next to each other: its suffix KV is encoded once.
        pending = deque((p, c) for p in range(len(ids)) for c in range(copies))
        encoded: dict[int, tuple[Any, Any, int]] = {}  # prompt -> (suffix KV, last logits, copies left)
        job: list[tuple[int, int]] = []  # per active slot
        out: list[list[int]] = []
        lens = torch.zeros(slots, dtype=torch.long, device=dev)
        last = torch.zeros(slots, dtype=torch.long, device=dev)
        texts: dict[tuple[int, int], Completion] = {}

        def finished(k: int) -> bool:
            toks = out[k]
            if toks and toks[-1] in self.end_ids and not self.ignore_eos:
                return True
            if len(toks) >= max_new_tokens:
                return True
            if not stop:
                return False
            # Trailing U+FFFD is a character whose bytes are still arriving: not final text yet.
            text = self.tokenizer.decode(toks, skip_special_tokens=True).rstrip("\ufffd")
            return any(s and s in text for s in stop)

        def retire(done: list[int]) -> None:
            # Move the last active slot into each freed one so slots 0..A-1 stay the active ones.
            for k in sorted(done, reverse=True):
                ended = bool(out[k]) and out[k][-1] in self.end_ids
                toks = [t for t in out[k] if t not in self.end_ids]
                texts[job[k]] = finish_text(self.tokenizer.decode(toks, skip_special_tokens=True), stop, ended)
                tail = len(job) - 1
                if k != tail:
                    n_tok = int(lens[tail])
                    for K, V in cache:
                        K[k, :, :n_tok] = K[tail, :, :n_tok]
                        V[k, :, :n_tok] = V[tail, :, :n_tok]
                    lens[k], last[k] = lens[tail], last[tail]
                    job[k], out[k] = job[tail], out[tail]
                job.pop()
                out.pop()

        while pending or job:
            admitted = []
            batch = [pending.popleft() for _ in range(min(slots - len(job), len(pending)))]
            fresh = [p for p in dict.fromkeys(p for p, _ in batch) if p not in encoded]
            self._encode(fresh, ids, suffixes, prefix_kv, P, copies, encoded)
            for p, c in batch:
                kv, logits, left = encoded[p]
                k = len(job)
                n_tok = len(suffixes[p])
                for i, (K, V) in enumerate(cache):
                    K[k, :, :n_tok] = kv[i, 0]
                    V[k, :, :n_tok] = kv[i, 1]
                lens[k] = n_tok
                job.append((p, c))
                out.append([])
                admitted.append((k, logits))
                if left == 1:
                    del encoded[p]
                else:
                    encoded[p] = (kv, logits, left - 1)
            if admitted:
                first = _sample(torch.stack([lg for _, lg in admitted]), greedy, temperature, top_k, top_p, generator)
                for (k, _), t in zip(admitted, first.tolist()):
                    out[k].append(t)
                    last[k] = t
                done = [k for k, _ in admitted if finished(k)]
                if done:
                    retire(done)
                    continue
            A = len(job)
            if A == 0:
                continue
            logits = dec.decode(last[:A], lens[:A], prefix, P, cache)
            lens[:A] += 1
            nxt = _sample(logits, greedy, temperature, top_k, top_p, generator)
            last[:A] = nxt
            for k, t in enumerate(nxt.tolist()):
                out[k].append(t)
            done = [k for k in range(A) if finished(k)]
            if done:
                retire(done)
        return texts

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[list[TokenScore]]:
        """log p(continuation + end of turn | prompt), teacher-forced. The shared prefix is encoded
        once, each prompt's own tokens once (their last logits give every continuation's first
        token), then all continuations' remaining tokens in one batch over those prompt KVs: the
        labels add a few tokens each, not another pass over the prompt."""
        import torch

        if not prompts or not continuations:
            return [[] for _ in prompts]
        ids, conts = self.score_ids(prompts, continuations)
        P = shared_prefix_len(ids) if self.prefix_cache else 0
        suffixes = [x[P:] for x in ids]
        result: list[list[TokenScore]] = []
        with torch.inference_mode():
            prefix_kv = self._encode_prefix(ids[0][:P]) if P else None
            prefix = _per_layer(prefix_kv) if P else None
            encoded: dict[int, Any] = {}
            self._encode(list(range(len(ids))), ids, suffixes, prefix_kv, P, 1, encoded)
            firsts = {p: torch.log_softmax(encoded[p][1], -1) for p in encoded}
            jobs = [(p, c) for p in range(len(ids)) for c in range(len(conts))]
            rest: dict[tuple[int, int], float] = {}
            for start in range(0, len(jobs), SCORE_ROWS):
                group = jobs[start : start + SCORE_ROWS]
                rows = [conts[c][:-1] for _, c in group]  # each continuation's tokens after its first
                logprobs = torch.log_softmax(self.decoder.all_logits(rows, prefix, P, [encoded[p][0] for p, _ in group]), -1)
                for r, (p, c) in enumerate(group):
                    cont = conts[c]
                    picked = logprobs[r, : len(cont) - 1].gather(1, torch.tensor(cont[1:], device=self.device)[:, None])
                    rest[(p, c)] = float(picked.sum())
        for p in range(len(ids)):
            result.append([TokenScore(float(firsts[p][cont[0]]) + rest[(p, c)], len(cont)) for c, cont in enumerate(conts)])
        return result

    def _encode_prefix(self, prefix_ids: list[int]) -> Any:
        """KV [layers, 2, n_kv, P, d] of the call's shared prefix, always from one whole pass
        (stored or afresh: the same bits either way), so calls that share only this prefix give
        the same text after a resume as without one."""
        cached = self.store.get_prefix(prefix_ids) if self.store else None
        if cached is not None:
            return cached
        kv, _ = self.decoder.prefill([prefix_ids], None, 0)
        full = _stack_rows(kv, 0, len(prefix_ids))
        if self.store:
            self.store.put_prefix(prefix_ids, full)
            self.store.insert(prefix_ids, lambda a, b: full[:, :, :, a:b])
        return full

    def _encode(self, prompts: list[int], ids, suffixes, prefix_kv, P: int, copies: int, encoded: dict) -> None:
        """Encode the prompts' own tokens (after any block prefix the store has) in length-sorted
        batches of at most PREFILL_TOKENS padded tokens."""
        import torch

        middles: dict[int, Any] = {}
        for p in prompts:
            chain = self.store.match(ids[p], len(ids[p]) - 1) if self.store else []
            if len(chain) * BLOCK > P:
                middles[p] = self.store.gather(chain, P)
        skip = {p: middles[p].shape[3] if p in middles else 0 for p in prompts}
        order = sorted(prompts, key=lambda p: len(suffixes[p]) - skip[p])
        prefix = _per_layer(prefix_kv) if P else None
        while order:
            group = [order.pop()]  # longest first: it sets the padded width
            width = len(suffixes[group[0]]) - skip[group[0]]
            while (order and (len(group) + 1) * width <= PREFILL_TOKENS
                   and len(suffixes[order[-1]]) - skip[order[-1]] >= MIN_FILL * width):
                group.append(order.pop())
            kv, logits = self.decoder.prefill(
                [suffixes[p][skip[p]:] for p in group], prefix, P, [middles.get(p) for p in group]
            )
            for row, p in enumerate(group):
                own = _stack_rows(kv, row, len(suffixes[p]) - skip[p])
                suffix_kv = torch.cat([middles[p], own], 3) if p in middles else own
                encoded[p] = (suffix_kv, logits[row], copies)
                if self.store:
                    self.store.insert(ids[p], lambda a, b, s=suffix_kv: _span(prefix_kv, s, P, a, b))


def _per_layer(kv: Any) -> list[tuple[Any, Any]]:
    """[layers, 2, n_kv, T, d] -> per layer (K, V) [n_kv, T, d] (views)."""
    return [(layer[0], layer[1]) for layer in kv]


def _span(prefix_kv: Any, suffix_kv: Any, P: int, a: int, b: int) -> Any:
    """Tokens [a, b) of a prompt whose KV is prefix_kv (P tokens) followed by suffix_kv."""
    import torch

    if b <= P:
        return prefix_kv[:, :, :, a:b]
    if a >= P:
        return suffix_kv[:, :, :, a - P : b - P]
    return torch.cat([prefix_kv[:, :, :, a:], suffix_kv[:, :, :, : b - P]], 3)


def _stack_rows(kv: list[tuple[Any, Any]], row: int, n: int) -> Any:
    """Row `row`'s first n tokens of per-layer batch K/V [B, n_kv, T, d] -> [layers, 2, n_kv, n, d]."""
    import torch

    return torch.stack([torch.stack([k[row, :, :n], v[row, :, :n]]) for k, v in kv])


SCORE_ROWS = 32  # continuations scored per pass (each row carries its prompt's KV: memory grows with it)
PREFILL_TOKENS = 2048  # padded tokens per batched prompt encoding; larger batches measured no faster (L2-sized activations)
# A prompt joins a prefill batch only if it is at least this share of the batch's width: padding
# costs what real tokens cost (15% faster generate-stage prefill than filling by PREFILL_TOKENS alone).
MIN_FILL = 0.75


# Candidates kept past the k-th largest logit, so that tokens tied with it (bf16 logits tie often)
# stay in the top-k set; more ties than this fall back to sorting the whole vocabulary.
TIE_MARGIN = 64


def _sample(logits: Any, greedy: bool, temperature: float, top_k: int, top_p: float, generator: Any) -> Any:
    """Next tokens [A] from logits [A, vocab] (float32): greedy, or temperature -> top-k -> top-p -> draw.
    With top-k only the top k + TIE_MARGIN candidates are softmaxed and drawn from: the same
    allowed set and distribution, at ~1/20 the cost of a full-vocabulary multinomial."""
    import torch

    if greedy:
        return logits.argmax(-1)
    logits = logits / temperature
    vocab = logits.shape[-1]
    ids = None
    if top_k and top_k < vocab:
        vals, ids = torch.topk(logits, min(vocab, top_k + TIE_MARGIN), dim=-1)
        kth = vals[:, top_k - 1 : top_k]
        if vals.shape[-1] < vocab and bool((vals[:, -1:] >= kth).any()):
            vals, ids = torch.sort(logits, descending=True, dim=-1)
        logits = vals.masked_fill(vals < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
        cum = torch.softmax(sorted_logits, -1).cumsum(-1)
        drop_sorted = cum <= 1 - top_p
        drop_sorted[:, -1] = False  # always keep the most likely token
        drop = drop_sorted.scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    choice = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]
    return choice if ids is None else ids.gather(1, choice[:, None])[:, 0]
