"""A decode step's rows as micro-batches (NanoFlow-style intra-step overlap; off by default).

Why: at batch 256 a decode step is the HBM-bound attention plus ~8 small GEMMs and fusions per layer that are bound
by kernel latency, not bandwidth. The attention of one micro-batch and the GEMMs of another have no data
dependence, so a GPU that runs independent kernels concurrently (the decode program's CUDA graph built with XLA's
CONCURRENT command-buffer scheduling) can overlap them. On an H100 it does overlap them, but each micro-batch
repeats every latency-bound kernel, which costs about as much as the overlap wins (bench/NOTES-generate.md,
session 8): kept as an option with its benchmark variants (`bench.generate --decode_variants=mb2,mb2_t1,...`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

# Decode steps over straight-line layers run as this many micro-batches of >= MIN_ROWS rows each. Read at trace time.
MICRO_BATCHES = 1
MIN_ROWS = 32


def parts(batch: int, length: int) -> int:
    """How many micro-batches a step of `batch` rows runs as (MICRO_BATCHES, at most one per MIN_ROWS rows, a
    divisor of the batch); 1 for prefill (length > 1)."""
    if length != 1:
        return 1
    n = max(1, min(MICRO_BATCHES, batch // MIN_ROWS))
    while batch % n:
        n -= 1
    return n


def layers(graphdef, layer_params, x, cos, sin, mask, positions, cache_kv, lora_rows, kv_window, eps: float,
           n_parts: int):
    """The straight-line decode layers (Decoder.hidden's) as `n_parts` micro-batches of contiguous rows. In each
    layer the micro-batches run one after the other through the attention (the cache buffer orders them), so the
    projections and MLP of one are free to overlap the attention of the next. -> (x, cache_kv)."""
    n = x.shape[0] // n_parts
    cut = lambda a, m: a[m * n:(m + 1) * n]  # noqa: E731

    def cut_lora(m):
        if lora_rows is None or lora_rows[0] is None:  # none, or one scale for every row
            return lora_rows
        return cut(lora_rows[0], m), cut(lora_rows[1], m)

    xs = [cut(x, m) for m in range(n_parts)]
    for i, layer_state in enumerate(layer_params):
        for m in range(n_parts):
            # Each micro-batch gets its own handle on the layer's weights (a barrier, no copy): otherwise XLA
            # merges the micro-batches' GEMMs and fusions on the shared weights back into one, which joins them.
            xm, state = jax.lax.optimization_barrier((xs[m], layer_state))
            xs[m], cache_kv = nnx.merge(graphdef, state)(
                xm, cut(cos, m), cut(sin, m), eps=eps, mask=cut(mask, m), cache_kv=cache_kv,
                layer_index=jnp.int32(i), write_index=cut(positions, m), lora_rows=cut_lora(m), kv_window=kv_window,
                cache_row0=m * n)
    return jnp.concatenate(xs), cache_kv
