"""PrefixIndex: the incremental hash equals hashing from scratch, and matches follow what each slot holds."""
from __future__ import annotations

import numpy as np

from automem_jax.engine.prefix_cache import PrefixIndex


def _rand(rng, n):
    return rng.integers(0, 50_000, n).astype(np.int32)


def test_incremental_keys_equal_keys_from_scratch():
    rng = np.random.default_rng(0)
    idx = PrefixIndex(4, block=16)
    head = _rand(rng, 200)
    cases = [
        (head, ("base",)),                                              # first fill
        (np.concatenate([head, _rand(rng, 37)]), ("base",)),            # a reply / turn appended
        (np.concatenate([head[:120], _rand(rng, 90)]), ("base",)),      # head reused in place, new suffix
        (head[:70], ("base",)),                                         # shorter than before
        (head[:70], ("adapter", "a", 0)),                               # same tokens, other salt: all keys change
        (head[:15], ("adapter", "a", 0)),                               # under one block
        (np.concatenate([head[:15], _rand(rng, 400)]), ("adapter", "a", 0)),
    ]
    for tokens, salt in cases:
        idx.set(1, tokens, salt)
        fresh = PrefixIndex(4, block=16).chain(salt, tokens)
        assert len(fresh) == len(tokens) // 16
        np.testing.assert_array_equal(idx._hashes[1], fresh)
        # the dict holds exactly the slot's current keys
        held = {h for h, slots in idx._by_hash.items() if 1 in slots}
        assert held == set(fresh.tolist())


def test_match_after_incremental_updates_and_given_keys():
    rng = np.random.default_rng(1)
    idx = PrefixIndex(3, block=16)
    head = _rand(rng, 256)
    a = np.concatenate([head, _rand(rng, 40)])
    idx.set(0, head, ("base",))
    idx.set(0, a, ("base",))  # extended in place
    keys = idx.chain(("base",), a)
    idx.set(2, a[:100], ("base",), keys=idx.chain(("base",), a[:100]))
    query = np.concatenate([a, _rand(rng, 20)])
    assert idx.match(query, ("base",)) == (0, len(a))
    assert idx.match(query, ("base",), keys=idx.chain(("base",), query)) == (0, len(a))
    assert idx.match(a[:100], ("base",), prefer={2}) == (2, 100)
    assert idx.match(query, ("adapter", "x", 0)) == (-1, 0)  # another salt never matches base KV
    np.testing.assert_array_equal(keys, idx._hashes[0])
    idx.clear(0)
    assert idx.match(query, ("base",)) == (2, 100)
