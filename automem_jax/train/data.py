"""SFT data: tokenize chat examples, pack them to fixed-length rows, store with tensorstore (zarr), stream back.

On disk (`out_dir/`): one zarr array per field, all [num_rows, seq_len]:
  tokens       int32  input ids (pad where unused)
  targets      int32  next token within the same segment (pad at segment ends)
  loss_mask    uint8  1 where `targets` is a token of an assistant reply: every reply of the example (`loss_turns`
                      "all", LLaMA-Factory's default `mask_history: false`, which AutoMem trained with) or only the
                      final one ("final", LLaMA-Factory's `mask_history: true`)
  segment_ids  int32  1, 2, ... per packed example in the row; 0 = padding
  positions    int32  restart at 0 for every segment
plus `manifest.json` (written last; its presence marks a complete dataset). Zarr chunks of `rows_per_chunk`
rows let many hosts read disjoint rows of one shared directory.

Order: `BatchStream` reads row `perm_e[i]` for global sample position p = e * num_rows + i, where perm_e is a
permutation seeded by (seed, e). The only state is the integer position, so a resumed run continues the exact
same data order from a checkpointed position.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tensorstore as ts

FIELDS = {"tokens": np.int32, "targets": np.int32, "loss_mask": np.uint8, "segment_ids": np.int32,
          "positions": np.int32}
FORMAT_VERSION = 1
LOSS_TURNS = ("all", "final")


@dataclasses.dataclass
class DatasetInfo:
    path: str
    seq_len: int
    num_rows: int
    num_examples: int
    num_tokens: int  # real (non-pad) tokens
    num_loss_tokens: int
    dropped_too_long: int
    dropped_no_loss: int
    pad_id: int
    format_version: int = FORMAT_VERSION
    loss_turns: str = "final"  # datasets written before the field existed were final-turn only

    @classmethod
    def load(cls, path: str | Path) -> "DatasetInfo":
        manifest = Path(path) / "manifest.json"
        if not manifest.exists():
            raise FileNotFoundError(f"dataset: {manifest} not found; build the dataset with build_dataset() "
                                    "(a directory without manifest.json is incomplete)")
        d = json.loads(manifest.read_text())
        d["path"] = str(Path(path))
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}})


def final_turn_mask(mask: Sequence[int]) -> np.ndarray:
    """Keep only the last contiguous run of 1s: the loss covers the final assistant reply, not earlier turns."""
    m = np.asarray(mask, dtype=np.uint8)
    ones = np.flatnonzero(m)
    if ones.size == 0:
        return m
    end = ones[-1] + 1
    start = end
    while start > 0 and m[start - 1]:
        start -= 1
    out = np.zeros_like(m)
    out[start:end] = 1
    return out


def tokenize_examples(examples: Sequence[dict], tokenizer: Any, loss_turns: str = "all"
                      ) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(ids int32, loss mask)] for chat examples {'messages': [...]}: the mask covers every assistant reply
    (`loss_turns="all"`) or only the final one ("final")."""
    if loss_turns not in LOSS_TURNS:
        raise ValueError(f"dataset: loss_turns must be one of {LOSS_TURNS} ('all' = every assistant turn, "
                         f"LLaMA-Factory's default; 'final' = the last reply only), got {loss_turns!r}")
    out = []
    for i, ex in enumerate(examples):
        msgs = ex.get("messages") if isinstance(ex, dict) else None
        if not msgs or msgs[-1].get("role") != "assistant":
            raise ValueError(f"dataset: example {i} needs 'messages' ending with an assistant message")
        ids, mask = tokenizer.encode_chat_with_mask(msgs)
        if len(ids) != len(mask):
            raise ValueError(f"dataset: tokenizer returned {len(ids)} ids but {len(mask)} mask entries")
        mask = np.asarray(mask, np.uint8)
        out.append((np.asarray(ids, np.int32), final_turn_mask(mask) if loss_turns == "final" else mask))
    return out


def pack(sequences: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int, pad_id: int
         ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Greedy first-fit packing (deterministic: input order) into rows of `seq_len` tokens."""
    rows: list[list[tuple[np.ndarray, np.ndarray]]] = []
    free: list[int] = []
    stats = {"dropped_too_long": 0, "dropped_no_loss": 0, "num_examples": 0}
    for ids, mask in sequences:
        if len(ids) > seq_len:
            stats["dropped_too_long"] += 1
            continue
        if mask[1:].sum() == 0:  # nothing to predict: a target is token t+1, so mask[0] can never count
            stats["dropped_no_loss"] += 1
            continue
        stats["num_examples"] += 1
        for r, room in enumerate(free):
            if room >= len(ids):
                rows[r].append((ids, mask))
                free[r] -= len(ids)
                break
        else:
            rows.append([(ids, mask)])
            free.append(seq_len - len(ids))
    n = len(rows)
    arrays = {"tokens": np.full((n, seq_len), pad_id, np.int32), "targets": np.full((n, seq_len), pad_id, np.int32),
              "loss_mask": np.zeros((n, seq_len), np.uint8), "segment_ids": np.zeros((n, seq_len), np.int32),
              "positions": np.zeros((n, seq_len), np.int32)}
    for r, segs in enumerate(rows):
        t = 0
        for s, (ids, mask) in enumerate(segs, start=1):
            L = len(ids)
            arrays["tokens"][r, t:t + L] = ids
            arrays["targets"][r, t:t + L - 1] = ids[1:]
            arrays["loss_mask"][r, t:t + L - 1] = mask[1:]  # predict token t+1: counts if t+1 is a reply token
            arrays["segment_ids"][r, t:t + L] = s
            arrays["positions"][r, t:t + L] = np.arange(L, dtype=np.int32)
            t += L
    return arrays, stats


def _zarr_spec(path: Path, shape=None, dtype=None, chunk_rows: int = 64) -> dict:
    spec: dict[str, Any] = {"driver": "zarr", "kvstore": {"driver": "file", "path": str(path)}}
    if shape is not None:
        spec["metadata"] = {"shape": list(shape), "chunks": [max(1, min(chunk_rows, shape[0])), shape[1]],
                            "dtype": np.dtype(dtype).str,
                            "compressor": {"id": "zstd", "level": 3}}
    return spec


def build_dataset(examples: Sequence[dict], tokenizer: Any, out_dir: str | Path, seq_len: int, *,
                  loss_turns: str = "all", rows_per_chunk: int = 64) -> DatasetInfo:
    """Tokenize (chat template; loss on the assistant replies chosen by `loss_turns`), pack and store `examples`.

    Writes into a temp sibling directory and renames it into place, so a kill never leaves a half dataset.
    """
    if seq_len < 2:
        raise ValueError(f"dataset: seq_len must be >= 2, got {seq_len}")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = (list(tokenizer.eos_token_ids) or [0])[0]
    arrays, stats = pack(tokenize_examples(examples, tokenizer, loss_turns), seq_len, int(pad_id))
    if stats["num_examples"] == 0:
        raise ValueError(f"dataset: no example left to train on ({len(examples)} given, "
                         f"{stats['dropped_too_long']} longer than seq_len={seq_len}, "
                         f"{stats['dropped_no_loss']} without reply tokens); raise seq_len or select more")
    out = Path(out_dir)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        for name, arr in arrays.items():
            store = ts.open(_zarr_spec(tmp / name, arr.shape, arr.dtype, rows_per_chunk), create=True).result()
            store[...] = arr
        info = DatasetInfo(path=str(out), seq_len=seq_len, num_rows=int(arrays["tokens"].shape[0]),
                           num_examples=stats["num_examples"], num_tokens=int((arrays["segment_ids"] > 0).sum()),
                           num_loss_tokens=int(arrays["loss_mask"].sum()),
                           dropped_too_long=stats["dropped_too_long"], dropped_no_loss=stats["dropped_no_loss"],
                           pad_id=int(pad_id), loss_turns=loss_turns)
        manifest = dataclasses.asdict(info) | {"fields": {k: np.dtype(v).name for k, v in FIELDS.items()}}
        manifest.pop("path")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


class PackedDataset:
    """Random access to the rows of a built dataset, read from disk on demand."""

    def __init__(self, path: str | Path):
        self.info = DatasetInfo.load(path)
        self._arrays = {name: ts.open(_zarr_spec(Path(path) / name), open=True, read=True).result()
                        for name in FIELDS}

    def __len__(self) -> int:
        return self.info.num_rows

    @property
    def seq_len(self) -> int:
        return self.info.seq_len

    def read(self, rows: Sequence[int]) -> dict[str, np.ndarray]:
        idx = np.asarray(rows, dtype=np.int64)
        futures = {k: a.oindex[idx].read() for k, a in self._arrays.items()}  # all fields read concurrently
        return {k: f.result().astype(FIELDS[k]) for k, f in futures.items()}


class BatchStream:
    """Deterministic epoch-wise shuffled batches; resumable from `position` (samples consumed so far)."""

    def __init__(self, dataset: PackedDataset, batch_size: int, seed: int, position: int = 0, *,
                 shard_index: int = 0, num_shards: int = 1):
        if batch_size % num_shards:
            raise ValueError(f"data: batch_size={batch_size} must divide by num_shards={num_shards} (hosts)")
        self.dataset, self.batch_size, self.seed, self.position = dataset, batch_size, seed, position
        self.shard_index, self.num_shards = shard_index, num_shards
        self._perm_cache: tuple[int, np.ndarray] | None = None

    def _perm(self, epoch: int) -> np.ndarray:
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            self._perm_cache = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset)))
        return self._perm_cache[1]

    def rows_at(self, position: int, count: int) -> np.ndarray:
        n = len(self.dataset)
        return np.array([self._perm(p // n)[p % n] for p in range(position, position + count)], np.int64)

    def epoch(self) -> float:
        return self.position / len(self.dataset)

    def next(self) -> dict[str, np.ndarray]:
        """The next global batch's rows for this host (host k of n reads its contiguous 1/n of the batch)."""
        per_host = self.batch_size // self.num_shards
        rows = self.rows_at(self.position + self.shard_index * per_host, per_host)
        self.position += self.batch_size
        return self.dataset.read(rows)
