"""Data-parallel slot bookkeeping of the scheduler: slot s belongs to replica s // slots_per_replica, and a prefill
or copy call carries the same number of rows for every replica (engine/runner.py)."""
from __future__ import annotations

import itertools
from typing import Iterator, Sequence


class FreeSlots:
    """The free slots of each replica, least recently used first (ordered dicts: O(1) membership and removal; a
    list and a set per request were O(slots) each, ~1M steps for a 1024-request round). Iterating yields them all
    (prefix matching prefers free slots)."""

    def __init__(self, slots: Sequence[int], replicas: int, per_replica: int):
        self._per = per_replica
        self._by: list[dict[int, None]] = [{} for _ in range(replicas)]
        for s in slots:
            self._by[s // per_replica][s] = None

    def __contains__(self, slot: int) -> bool:
        return slot in self._by[slot // self._per]

    def __len__(self) -> int:
        return sum(map(len, self._by))

    def __iter__(self) -> Iterator[int]:
        return itertools.chain.from_iterable(self._by)

    def first(self, replica: int | None = None) -> int:
        """The least recently used free slot of `replica` (None: of the replica with the most free slots), or -1."""
        if replica is None:
            replica = max(range(len(self._by)), key=lambda r: len(self._by[r]))
        return next(iter(self._by[replica]), -1)

    def remove(self, slot: int) -> None:
        del self._by[slot // self._per][slot]


def pad_blocks(parts: Sequence[Sequence], n: int) -> list:
    """Each replica's items padded to n with exact duplicates of its last one (None for a replica without any),
    concatenated: the per-replica row layout of a call (engine/runner.py)."""
    out: list = []
    for part in parts:
        out += [part[min(i, len(part) - 1)] for i in range(n)] if part else [None] * n
    return out


def block_rows(parts: Sequence[Sequence], n: int) -> list[int]:
    """The row of each item of `parts` (in order) in `pad_blocks(parts, n)`."""
    return [r * n + i for r, part in enumerate(parts) for i in range(len(part))]
