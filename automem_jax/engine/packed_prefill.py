"""Packed prefill: a call's prompt suffixes laid end to end as 64-token rows, so the layers run on real tokens.

Why: the row-per-request prefill pads every suffix to a power-of-two bucket and the call's row count to a power of
two (with duplicate rows), so its GEMMs and norms can run on up to ~4x the real tokens, and it compiles one program
per (rows, bucket, window). Packed, a request of L new tokens takes ceil(L / block) rows of its own (under `block`
tokens of padding), the call's row count is bucketed finely (`rows_bucket`), and one program per (rows, sampling
mode) serves every mix of lengths and heads. The row length trades padding (short suffixes) against the kernel's
query tile (a row is one program per head, which reads the row's head and earlier rows once). A request's later
rows attend its earlier rows' K/V inside the in-place prefill kernel (kernels/prefill_attention.py, `first`), so
this layout needs that kernel.

Host-side only: numpy arrays in, a PackedBlocks of arrays out (the jitted program is engine/steps.prefill_packed).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from automem_jax.engine.config import EngineConfig

BLOCK = EngineConfig.packed_prefill_block  # default tokens per row: the prefill kernel's query tile


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
         *, park: int, block: int = BLOCK, rows: int = 0) -> PackedBlocks:
    """Lay out requests (suffix token ids, head length = first position, cache slot, adapter) as `block`-token rows,
    `rows_bucket` of them (or `rows`, if more: every replica of a data-parallel call has the same row count).

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
    n = max(rows, rows_bucket(total))
    out = idle(n, park, block, slot=slots[0])
    b0 = np.cumsum(need) - need                      # each request's first row
    req = np.repeat(np.arange(m), need)              # the request of each real row
    k = np.arange(total) - b0[req]                   # the row's index within its request
    tok_start = np.cumsum(lens) - lens               # each request's first token in the concatenation
    dest = np.repeat(b0 * block - tok_start, lens) + np.arange(int(lens.sum()))
    out.tokens.reshape(-1)[dest] = np.concatenate([np.asarray(s, np.int32) for s in suffixes])
    out.positions[:total] = (np.asarray(starts, np.int64)[req] + k * block)[:, None] + np.arange(block)
    out.rows[:total] = np.asarray(slots, np.int64)[req]
    out.lengths[:total] = np.minimum(block, lens[req] - block * k)
    out.first[:total] = b0[req]
    out.adapter[:total] = np.asarray(adapters, np.int64)[req]
    out.last[:m] = b0 * block + lens - 1
    out.last[m:] = out.last[m - 1]
    return out


def idle(n: int, park: int, block: int = BLOCK, slot: int = -1) -> PackedBlocks:
    """n pad rows (a replica with nothing to prefill in a data-parallel call): parked, length 0, slot `slot`."""
    return PackedBlocks(tokens=np.zeros((n, block), np.int32),
                        positions=np.tile(park + np.arange(block, dtype=np.int32), (n, 1)),
                        rows=np.full((n,), slot, np.int32), lengths=np.zeros((n,), np.int32),
                        first=np.arange(n, dtype=np.int32), adapter=np.full((n,), -1, np.int32),
                        last=np.zeros((n,), np.int32))


def concat(parts: Sequence[PackedBlocks]) -> PackedBlocks:
    """Replicas' calls of equal row counts, one after the other (each keeps its own row indices)."""
    if len(parts) == 1:
        return parts[0]
    names = [f.name for f in dataclasses.fields(PackedBlocks)]
    return PackedBlocks(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in names})
