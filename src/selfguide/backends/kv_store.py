"""Prompt KV kept across `generate` calls (the native engine's automatic prefix cache).

Why: the generate stage calls the engine once per round, and its prompts repeat long pieces from
round to round (the instruction followed by the same demonstrations in one of a few orders), so
~40% of the prompt tokens a round encodes were already encoded in an earlier round
(docs/benchmarks/generation.md). The KV of a token depends on every token before it, so entries
are blocks of BLOCK tokens in a trie keyed by (parent block, the block's tokens): a lookup walks a
prompt block by block from its first token. A call's shared prefix is also kept whole, keyed by
its exact tokens: it is always encoded in one pass, so its KV is the same bits whether it comes
from memory or is encoded afresh (a resumed process encodes it afresh). Least recently used
entries (leaf blocks, whole prefixes) are evicted beyond the byte budget; parents are touched after
their children, so a parent outlives its children.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

BLOCK = 16  # tokens per entry: a lookup reuses whole blocks only


@dataclass
class _Node:
    key: Optional[tuple[int, tuple[int, ...]]]  # (parent, block tokens); None for a whole prefix
    kv: Any  # [layers, 2, n_kv, tokens, head_dim]
    children: int = 0
    exact: Optional[tuple[int, ...]] = None  # a whole prefix's tokens


@dataclass
class KVStore:
    budget_bytes: int
    nodes: "OrderedDict[int, _Node]" = field(default_factory=OrderedDict)  # LRU order, oldest first
    index: dict[tuple[int, tuple[int, ...]], int] = field(default_factory=dict)
    prefixes: dict[tuple[int, ...], int] = field(default_factory=dict)  # exact tokens -> node
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

    def get_prefix(self, ids: list[int]) -> Any:
        """The stored KV of exactly these tokens, or None."""
        nid = self.prefixes.get(tuple(ids))
        if nid is None:
            return None
        self.nodes.move_to_end(nid)
        self.hit_tokens += len(ids)
        return self.nodes[nid].kv

    def put_prefix(self, ids: list[int], kv: Any) -> None:
        if self.budget_bytes <= 0 or tuple(ids) in self.prefixes:
            return
        self.prefixes[tuple(ids)] = self._add(_Node(None, kv, exact=tuple(ids)))
        self._evict()

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
            nid = self._add(_Node(key, kv[:, :, :, a - start : a - start + BLOCK].clone()))
            self.index[key] = nid
            if parent:
                self.nodes[parent].children += 1
            chain.append(nid)
            parent = nid
        self._touch(chain)
        self._evict()

    def clear(self) -> None:
        self.nodes.clear()
        self.index.clear()
        self.prefixes.clear()
        self.used_bytes = 0

    def _add(self, node: _Node) -> int:
        nid = self._next_id
        self._next_id += 1
        self.nodes[nid] = node
        self.used_bytes += node.kv.numel() * node.kv.element_size()
        return nid

    def _touch(self, chain: list[int]) -> None:
        for nid in reversed(chain):  # deepest first: the root-most block ends up most recent
            self.nodes.move_to_end(nid)

    def _evict(self) -> None:
        while self.used_bytes > self.budget_bytes and self.nodes:
            victim = next(nid for nid, node in self.nodes.items() if node.children == 0)  # a trie has a leaf
            node = self.nodes.pop(victim)
            if node.exact is not None:
                del self.prefixes[node.exact]
            else:
                del self.index[node.key]
                if node.key[0]:
                    self.nodes[node.key[0]].children -= 1
            self.used_bytes -= node.kv.numel() * node.kv.element_size()
