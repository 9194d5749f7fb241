"""Prompt KV kept across `generate` calls (the native engine's automatic prefix cache).

Why: the generate stage calls the engine once per round, and its prompts repeat long pieces from
round to round (the instruction followed by the same demonstrations in one of a few orders), so
~40% of the prompt tokens a round encodes were already encoded in an earlier round
(docs/benchmarks/generation.md). The KV of a token depends on every token before it, so entries
are blocks of BLOCK tokens in a trie keyed by (parent block, the block's tokens): a lookup walks a
prompt block by block from its first token. Least recently used leaf blocks are evicted beyond
the byte budget; parents are touched after their children, so a parent outlives its children.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

BLOCK = 16  # tokens per entry: a lookup reuses whole blocks only


@dataclass
class _Node:
    key: tuple[int, tuple[int, ...]]
    kv: Any  # [layers, 2, n_kv, BLOCK, head_dim]
    children: int = 0


@dataclass
class KVStore:
    budget_bytes: int
    nodes: "OrderedDict[int, _Node]" = field(default_factory=OrderedDict)  # LRU order, oldest first
    index: dict[tuple[int, tuple[int, ...]], int] = field(default_factory=dict)
    used_bytes: int = 0
    hit_tokens: int = 0  # prompt tokens served from the store (a statistic for benchmarks)
    _next_id: int = 1  # node 0 is the empty prefix

    def match(self, ids: list[int], limit: int) -> list[int]:
        """Node ids of the longest stored block prefix of `ids` that has at most `limit` tokens."""
        chain: list[int] = []
        parent = 0
        for end in range(BLOCK, limit + 1, BLOCK):
            node = self.index.get((parent, tuple(ids[end - BLOCK : end])))
            if node is None:
                break
            chain.append(node)
            parent = node
        self._touch(chain)
        return chain

    def gather(self, chain: list[int], start: int) -> Any:
        """KV [layers, 2, n_kv, T, d] of the chain's tokens from position `start` on."""
        import torch

        first = start // BLOCK
        kv = torch.cat([self.nodes[n].kv for n in chain[first:]], dim=3)
        self.hit_tokens += len(chain) * BLOCK - start
        return kv[:, :, :, start - first * BLOCK :]

    def insert(self, ids: list[int], kv_of: Callable[[int, int], Any]) -> None:
        """Store every whole block of `ids`; `kv_of(a, b)` gives the KV of tokens [a, b) for the missing ones."""
        if self.budget_bytes <= 0:
            return
        chain = self.match(ids, len(ids))
        start = len(chain) * BLOCK
        end = len(ids) // BLOCK * BLOCK
        if end <= start:
            return
        kv = kv_of(start, end)
        parent = chain[-1] if chain else 0
        for a in range(start, end, BLOCK):
            key = (parent, tuple(ids[a : a + BLOCK]))
            node = _Node(key, kv[:, :, :, a - start : a - start + BLOCK].clone())
            nid = self._next_id
            self._next_id += 1
            self.nodes[nid] = node
            self.index[key] = nid
            if parent:
                self.nodes[parent].children += 1
            self.used_bytes += node.kv.numel() * node.kv.element_size()
            chain.append(nid)
            parent = nid
        self._touch(chain)
        self._evict()

    def clear(self) -> None:
        self.nodes.clear()
        self.index.clear()
        self.used_bytes = 0

    def _touch(self, chain: list[int]) -> None:
        for nid in reversed(chain):  # deepest first: the root-most block ends up most recent
            self.nodes.move_to_end(nid)

    def _evict(self) -> None:
        while self.used_bytes > self.budget_bytes and self.nodes:
            victim = next(nid for nid, node in self.nodes.items() if node.children == 0)  # a trie has a leaf
            node = self.nodes.pop(victim)
            del self.index[node.key]
            if node.key[0]:
                self.nodes[node.key[0]].children -= 1
            self.used_bytes -= node.kv.numel() * node.kv.element_size()
