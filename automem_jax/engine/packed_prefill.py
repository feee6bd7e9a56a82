"""Packed prefill: a call's prompt suffixes laid end to end as 64-token rows, so the layers run on real tokens.

Why: the row-per-request prefill pads every suffix to a power-of-two bucket and the call's row count to a power of
two (with duplicate rows), so its GEMMs and norms can run on up to ~4x the real tokens, and it compiles one program
per (rows, bucket, window). Packed, a request of L new tokens takes ceil(L / block) rows of its own (under `block`
tokens of padding), the call's row count is bucketed finely (`rows_bucket`), and one program per (rows, sampling
mode) serves every mix of lengths and heads. The row length trades padding (short suffixes) against the kernel's
query tile (a row is one program per head, which reads the row's head and earlier rows once). A request's later
rows attend its earlier rows' K/V inside the in-place prefill kernel (models/prefill_kernel.py, `first`), so this
layout needs that kernel (Decoder.packed_rows_supported).

Host-side only: numpy arrays in, a PackedBlocks of arrays out (the jitted program is engine/steps.prefill_packed).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from automem_jax.models import prefill_kernel

BLOCK = prefill_kernel.BLOCK_T  # default tokens per row (the engine's `packed_prefill_block`)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PackedBlocks:
    """One packed prefill call (leading dim = the padded row count n)."""

    tokens: np.ndarray     # i32 [n, block]
    positions: np.ndarray  # i32 [n, block]: the cache index each token is written at (pad rows: past the cache)
    rows: np.ndarray       # i32 [n]: the cache row (slot) of each row's request
    lengths: np.ndarray    # i32 [n]: real tokens in the row (0: a pad row)
    first: np.ndarray      # i32 [n]: the first row of the row's request
    adapter: np.ndarray    # i32 [n]: the request's adapter slot (-1: base)
    last: np.ndarray       # i32 [n]: flat index (row * block + offset) of request i's last token (pads repeat)


def rows_needed(length: int, block: int = BLOCK) -> int:
    return -(-length // block)


def rows_bucket(n: int) -> int:
    """Powers of two up to 64 rows, then multiples of 64: under 1.5x padding past 64 rows, few programs."""
    if n <= 64:
        return 1 << max(0, (n - 1).bit_length())
    return -(-n // 64) * 64


def plan(lengths: Sequence[int], max_rows: int, block: int = BLOCK) -> list[list[int]]:
    """Requests (by index, in order) into calls of at most max_rows rows; a longer request gets a call alone."""
    calls: list[list[int]] = []
    used = 0
    for i, length in enumerate(lengths):
        need = rows_needed(length, block)
        if not calls or used + need > max_rows:
            calls.append([])
            used = 0
        calls[-1].append(i)
        used += need
    return calls


def pack(suffixes: Sequence[np.ndarray], starts: Sequence[int], slots: Sequence[int], adapters: Sequence[int],
         *, park: int, block: int = BLOCK) -> PackedBlocks:
    """Lay out requests (suffix token ids, head length = first position, cache slot, adapter) as `block`-token rows.

    Pad rows sit at positions >= park (the cache length), so their K/V writes are dropped; they attend nothing
    (length 0). The last-token index of pad requests repeats the last real request's (the caller pads its request
    arrays the same way)."""
    if not suffixes or any(len(s) < 1 for s in suffixes):
        raise ValueError("packed_prefill.pack: needs at least one request, each with at least one new token")
    if block < 16 or block % 16:
        raise ValueError(f"packed_prefill.pack: block={block} must be a multiple of 16 (the kernel's tiles)")
    # vectorised over requests (a call packs up to hundreds; a numpy pass per request cost ~20 us each)
    m = len(suffixes)
    lens = np.fromiter((len(s) for s in suffixes), np.int64, count=m)
    need = -(-lens // block)
    total = int(need.sum())
    n = rows_bucket(total)
    b0 = np.cumsum(need) - need                      # each request's first row
    req = np.repeat(np.arange(m), need)              # the request of each real row
    k = np.arange(total) - b0[req]                   # the row's index within its request
    tokens = np.zeros((n, block), np.int32)
    tok_start = np.cumsum(lens) - lens               # each request's first token in the concatenation
    dest = np.repeat(b0 * block - tok_start, lens) + np.arange(int(lens.sum()))
    tokens.reshape(-1)[dest] = np.concatenate([np.asarray(s, np.int32) for s in suffixes])
    positions = np.tile(park + np.arange(block, dtype=np.int32), (n, 1))
    positions[:total] = (np.asarray(starts, np.int64)[req] + k * block)[:, None] + np.arange(block)
    rows = np.full((n,), slots[0], np.int32)
    rows[:total] = np.asarray(slots, np.int64)[req]
    lengths = np.zeros((n,), np.int32)
    lengths[:total] = np.minimum(block, lens[req] - block * k)
    first = np.arange(n, dtype=np.int32)
    first[:total] = b0[req]
    adapter = np.full((n,), -1, np.int32)
    adapter[:total] = np.asarray(adapters, np.int64)[req]
    last = np.zeros((n,), np.int32)
    last[:m] = b0 * block + lens - 1
    last[m:] = last[m - 1]
    return PackedBlocks(tokens, positions, rows, lengths, first, adapter, last)
