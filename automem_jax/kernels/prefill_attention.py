"""Pallas (GPU/Triton) flash attention for a prefill chunk over cache rows, reading each row's cached head in place.

Why: a prefill into cache rows (a prompt's new suffix after a reused head) attends the head already in the cache
plus the chunk itself. A library attention needs both as one [rows, window] K/V copy: the windows of every layer
gathered out of the cache, the chunk's K/V scattered into them and the mask turned into a bias, which also keeps it
from skipping the masked blocks. This kernel takes the whole stacked cache plus the layer index and each row's
cache row and head length, streams the head blocks j < start once, then the chunk's own K/V causally, with an
online softmax; nothing is copied and no block past a row's length is read. A query block wholly past its row's
real chunk length (right padding) reads nothing and writes zeros (finite, so the padded positions' later layers stay
finite; no real query attends them).

Grid (row, query head, query block): query t of row r (at position start[r] + t) attends cache entries j < start[r]
of cache row rows[r] and the chunk's entries t' <= t (packed rows, `first`: the request's earlier rows too).
Numerics: bf16 dots with fp32 accumulation, fp32 softmax.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from automem_jax.kernels.config import PrefillAttentionTiling

_NEG = -1e30


def supports(dtype, head_dim: int) -> str | None:
    """None if the kernel applies, else why not."""
    if jnp.dtype(dtype) != jnp.bfloat16:
        return f"needs a bf16 model (got {jnp.dtype(dtype).name})"
    if head_dim % 16:
        return f"needs head_dim % 16 == 0 (got {head_dim})"
    return None


def reference(q, k_new, v_new, ck, cv, layer: int, rows, start) -> jax.Array:
    """fp32 attention of the chunk over [head of its cache row; the chunk itself] -> [n, T, H, E] fp32."""
    n, t, h, e = q.shape
    kv = ck.shape[3]
    s = ck.shape[2]
    keys = jnp.concatenate([ck[layer, rows], k_new], axis=1).astype(jnp.float32)          # [n, S + T, K, E]
    values = jnp.concatenate([cv[layer, rows], v_new], axis=1).astype(jnp.float32)
    j = jnp.arange(s + t)
    ti = jnp.arange(t)
    visible = jnp.where(j[None, None, :] < s, j[None, None, :] < start[:, None, None],
                        (j[None, None, :] - s) <= ti[None, :, None])                        # [n, T, S + T]
    qg = q.astype(jnp.float32).reshape(n, t, kv, h // kv, e)
    logits = jnp.einsum("ntkge,nske->nkgts", qg, keys) * e ** -0.5
    logits = jnp.where(visible[:, None, None], logits, -jnp.inf)
    out = jnp.einsum("nkgts,nske->ntkge", jax.nn.softmax(logits, axis=-1), values)
    return out.reshape(n, t, h, e)


def prefill_attention(q: jax.Array, k_new: jax.Array, v_new: jax.Array, ck: jax.Array, cv: jax.Array,
                      layer: jax.Array, rows: jax.Array, start: jax.Array, lengths: jax.Array | None = None,
                      first: jax.Array | None = None, *, tiling: PrefillAttentionTiling,
                      interpret: bool = False) -> jax.Array:
    """q [n, T, H, E]; k_new/v_new [n, T, K, E] (the chunk's K/V, not in the cache); ck/cv [L, R, S, K, E];
    layer i32 []; rows i32 [n] (cache rows); start i32 [n] (head lengths = the chunk's first positions, <= S);
    lengths i32 [n] (each row's real chunk length, <= T; None = T): outputs at t >= lengths[r] are not needed, and
    query blocks wholly past it are skipped (zeros). first i32 [n] (packed rows, engine/packed_prefill.py): a
    request longer than T spans rows first[r]..r, all of them full but its last, in one cache row; its head is
    start[first[r]] entries and row r's queries see the rows before it whole (None = each row is one request)
    -> [n, T, H, E] (q.dtype). Packed rows shorter than the tiling's blocks are one tile per row."""
    from jax.experimental.pallas import triton as plgpu

    n, t, h, e = q.shape
    block_t = min(tiling.block_t, t) if first is not None else tiling.block_t
    block_s = min(tiling.block_s, t) if first is not None else tiling.block_s
    kv = ck.shape[3]
    if h % kv or k_new.shape != (n, t, kv, e) or v_new.shape != k_new.shape or ck.shape[-1] != e:
        raise ValueError(f"prefill_attention: needs q [n, T, H, E], k_new/v_new [n, T, K, E] and a cache "
                         f"[L, R, S, K, E] with K dividing H; got q {q.shape}, k_new {k_new.shape}, v_new "
                         f"{v_new.shape}, cache {ck.shape}")
    if first is not None and t % block_s:
        raise ValueError(f"prefill_attention: packed rows (first) need the key block ({block_s}) to divide the row "
                         f"length T={t}")
    group = h // kv
    scale = e ** -0.5

    def kernel(q_ref, kn_ref, vn_ref, ck_ref, cv_ref, layer_ref, rows_ref, start_ref, len_ref, first_ref, o_ref):
        r, hi, tb = pl.program_id(0), pl.program_id(1), pl.program_id(2)
        kh = hi // group
        # b0: the first row of this row's request (packed: its earlier rows hold the request's earlier blocks, full
        # and in order, so the chunk is rows b0..r end to end; unpacked: b0 = r); its head is start[b0] entries
        b0 = first_ref[r]
        li, row, p0, real = layer_ref[0], rows_ref[r], start_ref[b0], len_ref[r]
        off0 = (r - b0) * t                                                          # the chunk index of query 0
        live = tb * block_t < real                                                  # else a padding block
        lane = jnp.arange(e, dtype=jnp.int32)[None, :] >= 0                         # [1, E] all true
        t_idx = tb * block_t + jnp.arange(block_t, dtype=jnp.int32)
        q_ok = (t_idx < t)[:, None] & lane
        qt = plgpu.load(q_ref.at[r, pl.ds(tb * block_t, block_t), hi, :], mask=q_ok, other=0.0)

        def attend(carry, k, v, visible):                                           # visible [BT, BS]
            m, l_sum, acc = carry
            s = jax.lax.dot_general(qt, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32) * scale
            s = jnp.where(visible, s, _NEG)
            m_new = jnp.maximum(m, jnp.max(s, axis=1))
            p = jnp.where(visible, jnp.exp(s - m_new[:, None]), 0.0)  # a row with nothing visible yet adds 0
            alpha = jnp.exp(m - m_new)
            acc = acc * alpha[:, None] + jax.lax.dot_general(p.astype(v.dtype), v, (((1,), (0,)), ((), ())),
                                                             preferred_element_type=jnp.float32)
            return m_new, l_sum * alpha + jnp.sum(p, axis=1), acc

        def head_block(i, carry):  # cached entries j < p0 of the row, read in place
            idx = i * block_s + jnp.arange(block_s, dtype=jnp.int32)
            ok = idx < p0
            k = plgpu.load(ck_ref.at[li, row, pl.ds(i * block_s, block_s), kh, :], mask=ok[:, None] & lane,
                           other=0.0)
            v = plgpu.load(cv_ref.at[li, row, pl.ds(i * block_s, block_s), kh, :], mask=ok[:, None] & lane,
                           other=0.0)
            return attend(carry, k, v, ok[None, :] & (t_idx < t)[:, None])

        def chunk_block(i, carry):  # the chunk's own entries up to each query (the padding past `real` is not read)
            idx = i * block_s + jnp.arange(block_s, dtype=jnp.int32)                # chunk index
            ok = idx < off0 + real
            # a key block lies in one row (lax.div/rem: jnp's floor // and % do not lower to Triton here)
            src, at = b0 + jax.lax.div(i * block_s, t), jax.lax.rem(i * block_s, t)
            k = plgpu.load(kn_ref.at[src, pl.ds(at, block_s), kh, :], mask=ok[:, None] & lane, other=0.0)
            v = plgpu.load(vn_ref.at[src, pl.ds(at, block_s), kh, :], mask=ok[:, None] & lane, other=0.0)
            return attend(carry, k, v, ok[None, :] & (idx[None, :] <= off0 + t_idx[:, None]))

        init = (jnp.full((block_t,), _NEG, jnp.float32), jnp.zeros((block_t,), jnp.float32),
                jnp.zeros((block_t, e), jnp.float32))
        # a padding block runs no iteration: acc and l stay 0, so it writes zeros
        carry = jax.lax.fori_loop(0, jnp.where(live, (p0 + block_s - 1) // block_s, 0), head_block, init)
        last = off0 + jnp.minimum((tb + 1) * block_t, real)                         # causal: blocks up to the tile
        n_chunk = jnp.where(live, (last + block_s - 1) // block_s, 0)
        m, l_sum, acc = jax.lax.fori_loop(0, n_chunk, chunk_block, carry)
        plgpu.store(o_ref.at[r, pl.ds(tb * block_t, block_t), hi, :],
                    (acc / jnp.maximum(l_sum, 1e-30)[:, None]).astype(o_ref.dtype), mask=q_ok)

    whole = pl.BlockSpec()  # whole arrays (pointers in Triton): the kernel indexes them itself
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        grid=(n, h, pl.cdiv(t, block_t)),
        in_specs=[whole] * 10,
        out_specs=whole,
        compiler_params=plgpu.CompilerParams(num_warps=tiling.num_warps, num_stages=tiling.num_stages),
        interpret=interpret,
        name="prefill_attention_cache",
    )(q, k_new.astype(q.dtype), v_new.astype(q.dtype), ck, cv, jnp.asarray(layer, jnp.int32).reshape(1),
      rows.astype(jnp.int32), start.astype(jnp.int32),
      jnp.full((n,), t, jnp.int32) if lengths is None else jnp.minimum(lengths.astype(jnp.int32), t),
      jnp.arange(n, dtype=jnp.int32) if first is None else first.astype(jnp.int32))


# ------------------------------------------------------------------------------------------------------ probe
def probe_error(tiling: PrefillAttentionTiling = PrefillAttentionTiling(), head_dim: int = 64,
                interpret: bool = False) -> float:
    """Worst relative L2 error vs `reference` on random data: rows with no head, a head ending mid-block, a long
    head, a chunk shorter than a query block, padding past each row's length; and packed rows."""
    L, R, S, K, G, E, T = 2, 5, 160, 2, 3, head_dim, 40
    keys = jax.random.split(jax.random.key(0), 5)
    ck, cv = (jax.random.normal(k, (L, R, S, K, E), jnp.bfloat16) for k in keys[:2])
    q = jax.random.normal(keys[2], (3, T, K * G, E), jnp.bfloat16)
    kn, vn = (jax.random.normal(k, (3, T, K, E), jnp.bfloat16) for k in keys[3:])
    rows, start = jnp.asarray([4, 0, 2], jnp.int32), jnp.asarray([0, 37, 110], jnp.int32)
    lengths = jnp.asarray([T, 11, 29], jnp.int32)  # padding from mid-block and whole blocks of padding
    small = dataclasses.replace(tiling, block_t=16, block_s=32)
    out = _jitted(q, kn, vn, ck, cv, jnp.int32(1), rows, start, lengths, tiling=small, interpret=interpret)
    real = (jnp.arange(T)[None, :] < lengths[:, None])[:, :, None, None]
    ref = jnp.where(real, reference(q, kn, vn, ck, cv, 1, rows, start), 0.0)
    out = jnp.where(real, out.astype(jnp.float32), 0.0)
    err = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
    # packed rows (engine/packed_prefill.py): a 2-row request after a head, then a 1-row request without one
    q2, kn2, vn2 = q[:, :32], kn[:, :32], vn[:, :32]
    first, lengths = jnp.asarray([0, 0, 2], jnp.int32), jnp.asarray([32, 18, 20], jnp.int32)
    start2 = jnp.asarray([37, 69, 0], jnp.int32)
    out = _jitted(q2, kn2, vn2, ck, cv, jnp.int32(1), rows[jnp.asarray([1, 1, 0])], start2, lengths, first,
                  tiling=small, interpret=interpret).astype(jnp.float32)
    for b0, b1, length in ((0, 2, 50), (2, 3, 20)):
        flat = lambda a: a[b0:b1].reshape(1, (b1 - b0) * 32, *a.shape[2:])[:, :length]  # noqa: E731
        ref = reference(flat(q2), flat(kn2), flat(vn2), ck, cv, 1, rows[jnp.asarray([1 - b0 // 2])],
                        start2[b0:b0 + 1])
        err = max(err, float(jnp.linalg.norm(flat(out) - ref) / jnp.linalg.norm(ref)))
    return err


@functools.partial(jax.jit, static_argnames=("tiling", "interpret"))
def _jitted(q, kn, vn, ck, cv, layer, rows, start, lengths=None, first=None, *, tiling, interpret=False):
    return prefill_attention(q, kn, vn, ck, cv, layer, rows, start, lengths, first, tiling=tiling,
                             interpret=interpret)
