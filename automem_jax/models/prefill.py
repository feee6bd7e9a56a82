"""The prefill phase: a chunk of new tokens per row into some rows of the cache, after the head each row holds.

Two paths, chosen by the (resolved) KernelConfig when the program is traced:
- in place (kernels/prefill_attention.py): each layer's attention reads the rows' cached heads straight from the
  stacked cache and the chunk's own K/V from registers; padding past each row's length is skipped; packed rows
  (a request's suffix over consecutive rows, `Chunk.first`) need it;
- XLA: every layer's window of the rows ([L, n, W, K, E], bounded by the engine's max_prefill_window_tokens) is
  gathered once before the layer scan, the chunk's K/V go into that copy and attention runs over it.
Either way the layers leave the cache untouched and the new K/V of all layers are written once at the end, in place.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from automem_jax.kernels import prefill_attention as attn_kernel
from automem_jax.kernels.config import KERNEL, XLA_ONLY, KernelConfig
from automem_jax.kernels.shard import heads_spec, per_shard
from automem_jax.models.attention import attention
from automem_jax.models.kv_cache import KVCache
from automem_jax.models.layers import rms_norm
from automem_jax.models.rope import rope_angles

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Chunk:
    """The rows of one prefill (leading dim n). A row's positions are consecutive: start + arange(T)."""
    tokens: Array                  # i32 [n, T]
    positions: Array               # i32 [n, T]: the cache index each token's K/V go to (>= the cache: dropped)
    rows: Array                    # i32 [n]: the cache row of each row
    lengths: Array                 # i32 [n]: real tokens in the row (outputs past them are not needed)
    first: Array | None = None     # i32 [n]: packed rows, the first row of the row's request
    adapter: Array | None = None   # i32 [n]: LoRA slot per row (-1: base)


def prefill(model, chunk: Chunk, cache: KVCache, *, window: int | None = None,
            kernels: KernelConfig = XLA_ONLY) -> tuple[Array, KVCache]:
    """-> (final hidden states [n, T, D], cache with the chunk's K/V written). window (static, XLA path): the cache
    entries attended, above every position of the chunk."""
    c = model.config
    tokens, positions = jnp.asarray(chunk.tokens, jnp.int32), jnp.asarray(chunk.positions, jnp.int32)
    n, t = tokens.shape
    if positions.shape != (n, t) or chunk.rows.shape != (n,) or chunk.lengths.shape != (n,):
        raise ValueError(f"prefill: needs tokens and positions [n, T], rows and lengths [n]; got tokens "
                         f"{tokens.shape}, positions {positions.shape}, rows {chunk.rows.shape}, lengths "
                         f"{chunk.lengths.shape}")
    in_place = kernels.prefill_attention == KERNEL
    if chunk.first is not None and not in_place:
        raise ValueError("prefill: packed rows (Chunk.first) need the in-place prefill kernel "
                         "(kernels.prefill_attention resolved to 'kernel': a GPU and a bf16 model); use one row per "
                         "request")
    window = cache.max_len if window is None else window
    if not 0 < window <= cache.max_len:
        raise ValueError(f"prefill: window={window} must be in [1, cache max_len={cache.max_len}]")
    cos, sin = rope_angles(c, positions)
    lora_rows = model.lora_rows(chunk.adapter, n)
    eps = c.rms_norm_eps
    graphdef, state = nnx.split(model.layers)
    x = model.embed_tokens(tokens)
    if in_place:
        attend = functools.partial(_kernel_attention, cache=cache, chunk=chunk, kernels=kernels)
        xs = (state, jnp.arange(c.num_layers))
    else:
        mask = jnp.arange(window)[None, None, :] <= positions[:, :, None]                    # [n, T, W]
        attend = functools.partial(_window_attention, positions=positions, mask=mask)
        # the rows' windows of all layers, gathered before the scan: the loop never touches the cache
        xs = (state, cache.k[:, chunk.rows, :window], cache.v[:, chunk.rows, :window])

    def body(x, xs):
        layer = nnx.merge(graphdef, xs[0])
        q, k, v = layer.qkv(x, cos, sin, eps, lora_rows)
        k, v = k.astype(cache.k.dtype), v.astype(cache.v.dtype)
        attn, new_kv = attend(q, k, v, *xs[1:])
        return layer.finish(x, attn.astype(x.dtype), lora_rows, eps), new_kv

    x, new_kv = jax.lax.scan(body, x, xs)
    # The barrier orders the write after the last layer's cache reads (the last attention does not feed new_kv), so
    # XLA need not copy the cache to write it early.
    x, new_kv = jax.lax.optimization_barrier((x, new_kv))
    if in_place:  # every layer's new K/V [L, n, T, K, E] at the rows' positions (past the cache: dropped)
        idx = (slice(None), chunk.rows[:, None], positions)
        kv = tuple(full.at[idx].set(new, mode="drop") for full, new in zip((cache.k, cache.v), new_kv))
    else:  # the T entries each row's window copy holds from write_start on, one update per row
        s0 = write_start(positions, window)
        kv = tuple(_write_rows(full, new, chunk.rows, s0) for full, new in zip((cache.k, cache.v), new_kv))
    return rms_norm(x, model.final_norm[...], eps), cache.replace(*kv)


def _kernel_attention(q, k, v, i, *, cache: KVCache, chunk: Chunk, kernels: KernelConfig):
    """In place; under tensor parallelism per shard of the heads (q/k/v and the cache on their head axis)."""
    fn = functools.partial(attn_kernel.prefill_attention, tiling=kernels.prefill, interpret=kernels.interpret)
    heads, whole = heads_spec(4, 2), heads_spec(5, 3)
    run = per_shard(lambda q, k, v, ck, cv, i, rows, start, lengths, first: fn(
        q, k, v, ck, cv, i, rows, start, lengths, first),
        (heads, heads, heads, whole, whole, P(), P(), P(), P(), P()), heads)
    first = chunk.first if chunk.first is not None else jnp.arange(q.shape[0], dtype=jnp.int32)
    attn = run(q, k, v, cache.k, cache.v, i, chunk.rows, chunk.positions[:, 0], chunk.lengths, first)
    return attn, (k, v)


def _window_attention(q, k, v, kw, vw, *, positions, mask):
    """Over the layer's window copy [n, W, K, E] with the chunk's K/V put in (past the window: dropped); returns
    the T entries from write_start on, for the one write after the layers."""
    r_idx = jnp.arange(q.shape[0])[:, None]
    keys = kw.at[r_idx, positions].set(k, mode="drop")
    values = vw.at[r_idx, positions].set(v, mode="drop")
    attn = attention(q, keys.astype(q.dtype), values.astype(q.dtype), mask)
    t, s0 = q.shape[1], write_start(positions, kw.shape[1])
    out = tuple(jax.vmap(lambda a, s: jax.lax.dynamic_slice_in_dim(a, s, t, axis=0))(a, s0) for a in (keys, values))
    return attn, out


def write_start(positions: Array, window: int) -> Array:
    """Where a row's T written entries start: its first position, moved back so that the T entries fit in the
    window (only when the padded bucket runs past the cache; the entries before the first position then come from
    the row's own window copy, i.e. are rewritten unchanged)."""
    return jnp.minimum(positions[:, 0], window - positions.shape[1])


def _write_rows(full: Array, new: Array, rows: Array, start: Array) -> Array:
    """full[:, rows[i], start[i]:start[i]+T] = new[:, i] for each row: one dynamic_update_slice per row (in place
    under donation; a scatter wrote rows back at ~0.1 TB/s on an H100)."""
    def body(i, full):
        upd = jax.lax.dynamic_slice_in_dim(new, i, 1, axis=1)
        return jax.lax.dynamic_update_slice(full, upd, (0, rows[i], start[i], 0, 0))
    return jax.lax.fori_loop(0, rows.shape[0], body, full, unroll=True)  # n is static: no device loop to sync on
