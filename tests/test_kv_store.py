"""The native engine's cross-call KV store: a trie of token blocks with a byte budget."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from selfguide.backends.kv_store import BLOCK, KVStore  # noqa: E402


def _kv_of(ids: list[int]):
    """Fake KV whose value at each position is the token id there: gathers are checkable."""
    table = torch.tensor(ids, dtype=torch.float32)[None, None, None, :, None].expand(2, 2, 1, -1, 3)
    return lambda a, b: table[:, :, :, a:b]


def test_match_returns_whole_blocks_of_the_same_prefix_only():
    store = KVStore(budget_bytes=2**30)
    ids = list(range(100, 100 + 3 * BLOCK + 5))
    store.insert(ids, _kv_of(ids))
    assert len(store.nodes) == 3  # the trailing 5 tokens are not a whole block
    chain = store.match(ids + [1, 2], limit=len(ids))
    assert len(chain) == 3
    assert len(store.match(ids, limit=2 * BLOCK + 3)) == 2  # never past the limit
    got = store.gather(chain, start=BLOCK + 4)
    assert got[0, 0, 0, :, 0].tolist() == [float(t) for t in ids[BLOCK + 4 : 3 * BLOCK]]
    assert store.hit_tokens == 3 * BLOCK - (BLOCK + 4)
    # the same second block after a different first block is another entry (its KV differs)
    other = [7] * BLOCK + ids[BLOCK : 2 * BLOCK]
    assert store.match(other, limit=len(other)) == []


def test_eviction_keeps_the_budget_and_drops_leaves_before_their_parents():
    one_block = 2 * 2 * 1 * BLOCK * 3 * 4  # bytes of one entry of _kv_of's shape
    store = KVStore(budget_bytes=5 * one_block)
    a = list(range(3 * BLOCK))
    store.insert(a, _kv_of(a))
    b = a[:BLOCK] + list(range(500, 500 + 2 * BLOCK))  # shares a's first block
    store.insert(b, _kv_of(b))
    assert store.used_bytes == 5 * one_block
    assert len(store.match(a, len(a))) == 3  # a is now the most recent
    c = list(range(900, 900 + BLOCK))
    store.insert(c, _kv_of(c))
    assert store.used_bytes <= 5 * one_block
    assert len(store.match(a, len(a))) == 3  # the least recent leaf (b's last block) went first
    assert len(store.match(b, len(b))) == 2  # b lost only its last block
    assert store.match(c, len(c)) != []


def test_whole_prefixes_are_kept_by_exact_tokens_and_share_the_budget():
    one_block = 2 * 2 * 1 * BLOCK * 3 * 4
    store = KVStore(budget_bytes=3 * one_block)
    prefix = list(range(40, 40 + BLOCK + 3))  # not a whole number of blocks: kept whole anyway
    kv = _kv_of(prefix)(0, len(prefix))
    store.put_prefix(prefix, kv)
    assert store.get_prefix(prefix) is kv and store.get_prefix(prefix[:-1]) is None
    assert store.hit_tokens == len(prefix)
    a = list(range(2 * BLOCK))
    store.insert(a, _kv_of(a))  # 2 blocks + the prefix's 19 tokens > 3 blocks: the prefix is the oldest
    assert store.get_prefix(prefix) is None and store.used_bytes == 2 * one_block
    assert len(store.match(a, len(a))) == 2
