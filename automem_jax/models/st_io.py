"""Minimal safetensors reader/writer on numpy (bf16 via ml_dtypes).

Why not `safetensors.safe_open`: its numpy backend cannot return bf16, and its mmap keeps every touched page of a
file resident while the handle is open. Here each tensor is read with one positioned read into a fresh buffer, so
host memory holds only the tensor being placed (the loader's "no full host copy" guarantee).
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Mapping

import ml_dtypes
import numpy as np

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}


class SafetensorsError(ValueError):
    pass


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """(header without __metadata__, byte offset where data starts)."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise SafetensorsError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise SafetensorsError(f"{path}: not a safetensors file (header length {n})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SafetensorsError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, not an object)")
    header.pop("__metadata__", None)
    for name, entry in header.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str) and _ints(entry.get("shape"))
                and _ints(entry.get("data_offsets")) and len(entry["data_offsets"]) == 2):
            raise SafetensorsError(f"{path}: corrupt safetensors header: tensor {name!r} needs dtype (a string), "
                                   f"shape and data_offsets (lists of non-negative integers), got {entry!r:.200}")
    return header, 8 + n


def _ints(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)


class SafetensorsFile:
    """Lazy per-tensor access: `names`, `shape(name)`, `dtype(name)`, `read(name) -> np.ndarray`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.header, self._data_start = read_header(self.path)

    @property
    def names(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def dtype(self, name: str) -> np.dtype:
        code = self.header[name]["dtype"]
        if code not in DTYPES:
            raise SafetensorsError(f"{self.path}: tensor {name!r} has unsupported dtype {code}")
        return DTYPES[code]

    def read(self, name: str) -> np.ndarray:
        if name not in self.header:
            raise SafetensorsError(f"{self.path}: no tensor named {name!r}")
        info = self.header[name]
        dtype, shape = self.dtype(name), tuple(info["shape"])
        start, end = info["data_offsets"]
        count = int(np.prod(shape)) if shape else 1
        if end - start != count * dtype.itemsize:
            raise SafetensorsError(f"{self.path}: tensor {name!r} byte size {end - start} does not match "
                                   f"shape {shape} dtype {info['dtype']}")
        with open(self.path, "rb") as f:
            f.seek(self._data_start + start)
            arr = np.fromfile(f, dtype=dtype, count=count)
        if arr.size != count:
            raise SafetensorsError(f"{self.path}: file truncated while reading {name!r}")
        return arr.reshape(shape)


def write(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
          ) -> None:
    """Write tensors atomically (temp file + rename), streaming one tensor at a time."""
    path = Path(path)
    header: dict = {}
    offset = 0
    arrays = {}
    for name, arr in tensors.items():
        arr = np.asarray(arr)
        if arr.dtype not in _NAMES:
            raise SafetensorsError(f"write {path}: tensor {name!r} has unsupported dtype {arr.dtype}")
        arrays[name] = arr
        header[name] = {"dtype": _NAMES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for arr in arrays.values():
                np.ascontiguousarray(arr).tofile(f)
        os.chmod(tmp, 0o644 & ~_umask())  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
