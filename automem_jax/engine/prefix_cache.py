"""Host-side index of which token prefixes each KV-cache slot holds, for prefix reuse.

Every slot's valid KV is described by its token ids (plus the adapter they were computed with, since LoRA on k/v
changes the KV). Block-aligned prefixes are hashed (a polynomial prefix hash, vectorised); a new prompt finds the
slot holding its longest block-aligned prefix in O(prompt/block) dict look-ups, then extends the match token by
token inside that one slot. This serves both shared prompt heads (system prompt + spec, copied from a running or
finished slot) and multi-turn chats that only append (the finished slot is reused in place, suffix-only prefill).
"""
from __future__ import annotations

from typing import Collection, Hashable, Sequence

import numpy as np


_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier (golden ratio): powers stay distinct mod 2**64
_POWERS = np.ones((0,), np.uint64)


def _grow_powers(n: int) -> None:
    global _POWERS
    n = max(n, 2 * len(_POWERS), 4096)
    with np.errstate(over="ignore"):
        _POWERS = np.cumprod(np.full((n,), _BASE, np.uint64), dtype=np.uint64)


class PrefixIndex:
    def __init__(self, num_slots: int, block: int = 16):
        self.block = block
        self._tokens: list[np.ndarray] = [np.zeros((0,), np.int32) for _ in range(num_slots)]
        self._salt: list[Hashable] = [None] * num_slots
        self._hashes: list[np.ndarray] = [np.zeros((0,), np.uint64) for _ in range(num_slots)]
        self._by_hash: dict[int, dict[int, None]] = {}  # prefix key -> slots holding that prefix (ordered set)

    def chain(self, salt: Hashable, tokens: np.ndarray, known: tuple[np.ndarray, np.ndarray] | None = None
              ) -> np.ndarray:
        """One u64 key per block-aligned prefix: a 64-bit polynomial hash of the prefix, xor the salt's hash.

        Vectorised (one numpy pass per prompt, no per-block Python hashing: this index runs on the host for every
        request). A hash collision cannot give wrong KV: `match` verifies the candidate slot's tokens exactly.
        `known`: (tokens, their keys under the same salt), e.g. what a slot held before: the keys of the blocks the
        two share are kept and the hash runs on from there (a turn that appends, a head reused in place, a finished
        reply), so only the new blocks are hashed."""
        tokens = np.asarray(tokens, np.int32)
        nb = len(tokens) // self.block
        salt_key = np.uint64(hash(("prefix", salt)) & 0xFFFFFFFFFFFFFFFF)
        done, head = 0, np.zeros((0,), np.uint64)
        if known is not None and nb:
            k_tokens, k_keys = known
            n = min(len(k_tokens), len(tokens), len(k_keys) * self.block)
            diff = np.flatnonzero(k_tokens[:n] != tokens[:n])
            done = min((int(diff[0]) if len(diff) else n) // self.block, nb)
            head = k_keys[:done]
        if done == nb:
            return head.copy()  # a view of `known` otherwise
        lo, hi = done * self.block, nb * self.block
        if len(_POWERS) < hi:
            _grow_powers(hi)
        with np.errstate(over="ignore"):  # uint64 arithmetic wraps: the hash is mod 2**64 by design
            terms = (tokens[lo:hi].astype(np.uint64) + np.uint64(1)) * _POWERS[lo:hi]
            if done:  # the raw running sum at the last shared block (the key is that sum xor the salt's hash)
                terms[0] += head[-1] ^ salt_key
            prefix = np.cumsum(terms, dtype=np.uint64)[self.block - 1::self.block]
        return np.concatenate([head, prefix ^ salt_key])

    def tokens(self, slot: int) -> np.ndarray:
        return self._tokens[slot]

    def set(self, slot: int, tokens: Sequence[int], salt: Hashable, keys: np.ndarray | None = None) -> None:
        """Declare that `slot` holds (or, once its pending prefill runs, will hold) KV for `tokens` under `salt`.

        keys: `chain(salt, tokens)` if the caller has it (from `match`). Otherwise only the blocks past what the
        slot held before are hashed, and in either case only the keys past the old and new contents' common blocks
        change: the work is per changed block, not per block of the prompt."""
        tokens = np.asarray(tokens, np.int32)
        old = self._hashes[slot]
        new = keys
        if new is None:
            same_salt = salt == self._salt[slot]
            new = self.chain(salt, tokens, known=(self._tokens[slot], old) if same_salt else None)
        lim = min(len(old), len(new))
        diff = np.flatnonzero(old[:lim] != new[:lim])
        keep = int(diff[0]) if len(diff) else lim
        for h in old[keep:].tolist():
            slots = self._by_hash.get(h)
            if slots is not None:
                slots.pop(slot, None)
                if not slots:
                    del self._by_hash[h]
        for h in new[keep:].tolist():
            self._by_hash.setdefault(h, {})[slot] = None
        self._tokens[slot], self._salt[slot], self._hashes[slot] = tokens, salt, new

    def clear(self, slot: int) -> None:
        self.set(slot, (), None)

    def match(self, tokens: Sequence[int], salt: Hashable, prefer: Collection[int] | None = None,
              keys: np.ndarray | None = None) -> tuple[int, int]:
        """(slot, n): a slot holding the longest prefix of `tokens` (n tokens, 0 = none); a slot in `prefer` (the
        engine's free slots) wins ties.
        keys: `chain(salt, tokens)` if the caller has it (and hands it on to `set`: one hash per request)."""
        tokens = np.asarray(tokens, np.int32)
        hashes = (self.chain(salt, tokens) if keys is None else keys).tolist()
        for i in range(len(hashes) - 1, -1, -1):
            slots = self._by_hash.get(hashes[i])
            if not slots:
                continue
            slot = next(iter(slots))
            if prefer:  # scan the smaller of the two (a shared head is held by every slot, a round frees many)
                small, big = (prefer, slots) if len(prefer) < len(slots) else (slots, prefer)
                slot = next((s for s in small if s in big), slot)
            held = self._tokens[slot]
            n = min(len(held), len(tokens))
            mismatch = np.flatnonzero(held[:n] != tokens[:n])
            return slot, int(mismatch[0]) if len(mismatch) else n
        return -1, 0
