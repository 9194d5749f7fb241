"""llama.cpp (llama-cpp-python's low-level API) as a batched engine, for the generation benchmark.

The high-level `Llama` class has no batched generation, so this drives `llama_decode` with one
sequence id per prompt (`n_seq_max` = batch, separate KV per sequence) and samples in numpy with
the same temperature/top-k rule as the other engines. Token ids come from the HF tokenizer of the
same model (same vocabulary), so every engine sees identical prompts. The GGUF is the embedded
model's own Q4_1 file, as shipped. Build used (AMX off, see feasibility.md):
CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF
-DLLAMA_BUILD_SERVER=OFF" pip install llama-cpp-python==0.3.36 diskcache   (this AMD EPYC has AVX-512 BF16,
no AMX; the feasibility note's AMX-off flag set dies here with "illegal instruction")
"""

from __future__ import annotations

import ctypes
from typing import Optional, Sequence

import numpy as np

from selfguide.backends.base import Completion


class LlamaCppEngine:
    name = "llama.cpp"

    def __init__(self, gguf_path: str, tokenizer, end_ids, batch_size: int = 32, n_ctx_per_seq: int = 1024, threads: int = 2):
        import llama_cpp

        self.ll = llama_cpp
        self.tokenizer = tokenizer
        self.end_ids = set(end_ids)
        self.batch_size = batch_size
        self.ignore_eos = False
        llama_cpp.llama_backend_init()
        self.model = llama_cpp.llama_model_load_from_file(gguf_path.encode(), llama_cpp.llama_model_default_params())
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx_per_seq * batch_size
        params.n_batch = 512
        params.n_ubatch = 512
        params.n_seq_max = batch_size
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = False
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self.batch = llama_cpp.llama_batch_init(512, 0, batch_size)

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """entries: (token, position, sequence, want_logits), at most n_batch of them."""
        b = self.batch
        for i, (tok, pos, seq, want) in enumerate(entries):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = want
        b.n_tokens = len(entries)
        if self.ll.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def _logits(self, i: int) -> np.ndarray:
        ptr = self.ll.llama_get_logits_ith(self.ctx, i)
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,)).copy()

    def _prefill(self, toks: list[int], start: int, seq: int) -> Optional[np.ndarray]:
        """Encode toks at positions start.. into seq, n_batch at a time; logits after the last one."""
        for c in range(0, len(toks), 512):
            chunk = toks[c : c + 512]
            last = c + len(chunk) == len(toks)
            self._decode([(t, start + c + j, seq, last and j == len(chunk) - 1) for j, t in enumerate(chunk)])
        return self._logits(len(toks) - 1 - (len(toks) - 1) // 512 * 512) if toks else None

    def generate(self, prompts: Sequence[str], n: int = 1, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 max_new_tokens: int = 64, stop: Sequence[str] = (), seed: int = 0) -> list[list[Completion]]:
        """Like selfguide's engines: the prefix all prompts share is encoded once and copied to every
        sequence (llama_memory_seq_cp); each prompt's own part once, copied to its n samples."""
        from selfguide.backends.base import finish_text
        from selfguide.backends.hf import shared_prefix_len

        rng = np.random.default_rng(seed)
        jobs = [p for p in range(len(prompts)) for _ in range(1 if temperature <= 0 else n)]
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        P = shared_prefix_len(ids)
        mem = self.ll.llama_get_memory(self.ctx)
        texts: list[Completion] = []
        for start in range(0, len(jobs), self.batch_size):
            group = jobs[start : start + self.batch_size]
            self.ll.llama_memory_clear(mem, True)
            leaders = {p: s for s, p in reversed(list(enumerate(group)))}  # first sequence of each prompt
            if P:  # (with separate KV streams llama.cpp copies whole sequences only: copy before suffixes)
                self._prefill(ids[group[0]][:P], 0, 0)
                for s in leaders.values():
                    if s != 0:
                        self.ll.llama_memory_seq_cp(mem, 0, s, -1, -1)
            out: list[list[int]] = [[] for _ in group]
            first_logits: dict[int, np.ndarray] = {}
            for s, p in enumerate(group):
                if leaders[p] == s:
                    first_logits[p] = self._prefill(ids[p][P:], P, s)
                else:  # another sample of the same prompt: copy its encoded prompt
                    self.ll.llama_memory_seq_cp(mem, leaders[p], s, -1, -1)
                out[s].append(self._sample(first_logits[p], temperature, top_k, rng))
            pos = [len(ids[p]) for p in group]
            alive = list(range(len(group)))
            for _ in range(max_new_tokens - 1):
                alive = [s for s in alive if not self._done(out[s], max_new_tokens, stop)]
                if not alive:
                    break
                self._decode([(out[s][-1], pos[s], s, True) for s in alive])
                for i, s in enumerate(alive):
                    pos[s] += 1
                    out[s].append(self._sample(self._logits(i), temperature, top_k, rng))
            for s in range(len(group)):
                ended = bool(out[s]) and out[s][-1] in self.end_ids
                toks = [t for t in out[s] if t not in self.end_ids]
                texts.append(finish_text(self.tokenizer.decode(toks, skip_special_tokens=True), stop, ended))
        result: list[list[Completion]] = [[] for _ in prompts]
        for p, t in zip(jobs, texts):
            result[p].append(t)
        return result

    def _done(self, toks: list[int], limit: int, stop: Sequence[str]) -> bool:
        if len(toks) >= limit or (toks[-1] in self.end_ids and not self.ignore_eos):
            return True
        return bool(stop) and any(s in self.tokenizer.decode(toks, skip_special_tokens=True) for s in stop)

    @staticmethod
    def _sample(logits: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator) -> int:
        if temperature <= 0:
            return int(logits.argmax())
        logits = logits / temperature
        if top_k:
            keep = np.argpartition(-logits, top_k)[:top_k]
            sub = logits[keep] - logits[keep].max()
            probs = np.exp(sub) / np.exp(sub).sum()
            return int(keep[rng.choice(top_k, p=probs)])
        probs = np.exp(logits - logits.max())
        return int(rng.choice(len(probs), p=probs / probs.sum()))
