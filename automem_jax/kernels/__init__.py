"""Pallas kernels of the engine's hot ops (decode attention, prefill attention over cache rows, small-batch
projections), each beside its fp32 reference and taking its tiling as an argument; `config.KernelConfig` says which
path each op takes, `probe.resolve` decides "auto" per device. No model imports: the model calls these."""
from automem_jax.kernels.config import (DecodeAttentionTiling, GemvTiling, KernelConfig, PrefillAttentionTiling,
                                        XLA_ONLY)

__all__ = ["DecodeAttentionTiling", "GemvTiling", "KernelConfig", "PrefillAttentionTiling", "XLA_ONLY"]
