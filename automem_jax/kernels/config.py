"""Which path each hot op of the engine takes, and how the Pallas kernels tile: one frozen config.

Passed down to the model's entry points as a static argument (it is hashable), so a program's paths are fixed when it
is traced and two configs are two programs; nothing is read from module globals. "auto" is resolved once per engine
by `kernels.probe.resolve` (a GPU kernel where it measured faster and its one-time probe passes; XLA on CPU and TPU
and wherever a kernel does not apply). No JAX import here: the experiment config reads these defaults.
"""
from __future__ import annotations

import dataclasses

AUTO, KERNEL, XLA = "auto", "kernel", "xla"
CHOICES = (AUTO, KERNEL, XLA)


@dataclasses.dataclass(frozen=True)
class DecodeAttentionTiling:
    """kernels/decode_attention.py: each (row, kv head)'s window split over programs, `block_s` entries a step."""
    block_s: int = 64
    num_warps: int = 4
    num_stages: int = 2           # software pipelining of the K/V loads
    target_programs: int = 512    # window splits until ~4 programs per SM of an H100 (132 SMs)


@dataclasses.dataclass(frozen=True)
class PrefillAttentionTiling:
    """kernels/prefill_attention.py: a program per (row, query head, `block_t` queries), `block_s` keys a step."""
    block_t: int = 64
    block_s: int = 64
    num_warps: int = 4
    num_stages: int = 2


@dataclasses.dataclass(frozen=True)
class GemvTiling:
    """kernels/gemv.py: split-K projections of decode batches up to `max_batch` rows (XLA's GEMMs won at 16)."""
    block_n: int = 64             # output columns per program (128-byte rows of a bf16 weight tile)
    block_k: int = 128            # input rows per inner step
    num_warps: int = 4
    num_stages: int = 3
    target_programs: int = 264    # ~2 programs per SM of an H100: enough loads in flight to stream the weights
    max_batch: int = 8


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """decode_attention: a decode step's attention (the kernel also writes the step's K/V into the cache);
    prefill_attention: a prefill into cache rows (the kernel reads each row's cached head in place, and packed
    prompts need it); projections: the projections of decode batches of <= gemv.max_batch rows. Each "auto",
    "kernel" (an error where the kernel cannot run) or "xla".
    qkv_split_k: decode batches past gemv.max_batch run the fused q/k/v projection as a batched GEMM over this many
    parts of its input depth, whose fp32 sums the attention kernel adds.
    interpret: Pallas interpret mode wherever a kernel runs (CPU tests of the kernels in the model; no probe)."""
    decode_attention: str = AUTO
    prefill_attention: str = AUTO
    projections: str = AUTO
    qkv_split_k: int = 2
    interpret: bool = False
    decode: DecodeAttentionTiling = DecodeAttentionTiling()
    prefill: PrefillAttentionTiling = PrefillAttentionTiling()
    gemv: GemvTiling = GemvTiling()

    def __post_init__(self):
        for name in ("decode_attention", "prefill_attention", "projections"):
            if getattr(self, name) not in CHOICES:
                raise ValueError(f"kernels.{name}={getattr(self, name)!r}: use one of {list(CHOICES)}")
        if self.qkv_split_k < 1:
            raise ValueError(f"kernels.qkv_split_k={self.qkv_split_k}: must be >= 1 (1 = one plain GEMM)")
        for name, tiling in (("decode", self.decode), ("prefill", self.prefill), ("gemv", self.gemv)):
            for f in dataclasses.fields(tiling):
                if getattr(tiling, f.name) < 1:
                    raise ValueError(f"kernels.{name}.{f.name}={getattr(tiling, f.name)}: must be >= 1")

    @classmethod
    def from_dict(cls, d: dict) -> "KernelConfig":
        """From a plain (nested) dict, as the experiment config and the benchmarks hold it; unknown keys are errors."""
        d = dict(d)
        nested = {"decode": DecodeAttentionTiling, "prefill": PrefillAttentionTiling, "gemv": GemvTiling}
        for key, kind in nested.items():
            if key in d and not isinstance(d[key], kind):
                d[key] = _build(kind, d[key], f"kernels.{key}")
        return _build(cls, d, "kernels")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


XLA_ONLY = KernelConfig(decode_attention=XLA, prefill_attention=XLA, projections=XLA)


def _build(kind, d: dict, where: str):
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known: {sorted(names)}")
    return kind(**d)
