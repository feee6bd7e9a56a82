"""Pallas (GPU/Triton) flash-decoding attention that reads one layer of the stacked KV cache in place and writes the
step's new K/V into it.

Why a kernel: a layer's K/V window is a slice of the stacked [L, B, S, K, E] cache that the decode step updates in
place. An XLA dot or a library call needs that slice materialised first, and the fused multiply-reduce form XLA
emits instead reads it at ~1/5 of HBM bandwidth. This kernel takes the whole cache plus the layer index and streams
each (row, kv head)'s live window once with an online softmax (on an H100 ~2.1 TB/s of live KV, 5x the XLA path),
and stores the step's K/V itself (the cache buffers are aliased to outputs), so the step has no scatter kernels.

Grid (row, kv head, split): the G query heads of a kv head share one program (a 16-row tensor-core tile whose rows
past G are masked, so q needs no padded copy), so K/V are read once per kv head. Small batches split the window
over programs (flash-decoding) so the GPU has enough loads in flight; the partial (max, sum, acc) are merged by XLA.
With one split the kernel writes the normalised output directly.

`decode_attention_qkv` takes the step's projection before it is q, k and v (the fused q/k/v projection's output or
its split-K partial sums) and does the rest itself: sum, bias, rounding, RoPE, slicing the heads.

Numerics: q.k and p.v on bf16 inputs with fp32 accumulation, fp32 softmax (as the XLA attention).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from automem_jax.kernels.config import DecodeAttentionTiling

_ROWS = 16  # query rows per program (the G heads of one kv head, zero-padded): the minimum tensor-core tile
_NEG = -1e30


def supports(dtype, cache_dtype, group: int, head_dim: int) -> str | None:
    """None if the kernel applies to these shapes, else why not. bf16 only (fp32 models stay on XLA)."""
    if jnp.dtype(dtype) != jnp.bfloat16 or jnp.dtype(cache_dtype) != jnp.bfloat16:
        return f"needs a bf16 model and cache (got {jnp.dtype(dtype).name} / {jnp.dtype(cache_dtype).name})"
    if group > _ROWS:
        return f"needs query heads / kv heads <= {_ROWS} (got {group})"
    if head_dim % 2:
        return f"needs an even head_dim (got {head_dim})"
    return None


def num_splits(batch: int, kv_heads: int, window: int, tiling: DecodeAttentionTiling) -> int:
    """Window splits per (row, kv head): enough programs to fill the GPU, at least one block per split."""
    n_blocks = -(-window // tiling.block_s)
    return max(1, min(n_blocks, -(-tiling.target_programs // (batch * kv_heads))))


def reference(q: jax.Array, ck: jax.Array, cv: jax.Array, layer: int, pos: jax.Array, window: int) -> jax.Array:
    """fp32 decode attention of row b over cache entries j <= pos[b] of `layer` -> [B, 1, H, E] fp32."""
    b, _, h, e = q.shape
    kv = ck.shape[3]
    k = ck[layer, :, :window].astype(jnp.float32)                                   # [B, W, K, E]
    v = cv[layer, :, :window].astype(jnp.float32)
    qg = q.astype(jnp.float32).reshape(b, kv, h // kv, e)
    s = jnp.einsum("bkge,bwke->bkgw", qg, k) * e ** -0.5
    s = jnp.where((jnp.arange(window)[None, :] <= pos[:, None])[:, None, None], s, -jnp.inf)
    out = jnp.einsum("bkgw,bwke->bkge", jax.nn.softmax(s, axis=-1), v)
    return out.reshape(b, 1, h, e)


def decode_attention(q: jax.Array, k_new: jax.Array, v_new: jax.Array, ck: jax.Array, cv: jax.Array,
                     layer: jax.Array, pos: jax.Array, *, window: int, tiling: DecodeAttentionTiling,
                     rows: jax.Array | None = None, splits: int | None = None, interpret: bool = False):
    """q [B, 1, H, E]; k_new/v_new [B, 1, K, E] (the step's K/V, not yet in the cache); ck/cv [L, R, S, K, E];
    layer i32 []; pos i32 [B]; rows i32 [B]: the cache row of each batch row, distinct (None: row b, R = B)
    -> (out [B, 1, H, E] q.dtype, ck, cv).

    Row b attends cache entries j < pos[b] (and j < window) of `layer` plus its new token, which the kernel stores
    at pos[b] (in place; a position past the cache is dropped, as by a scatter). A row parked at pos >= S (a done or
    free slot, engine/steps.decode) reads and writes nothing; its output is 0. No race: only the program that owns
    position pos[b] of (row, kv head) writes it, and every program reads entries j < pos[b] only."""
    return _attention(q, ck, cv, layer, pos, window=window, tiling=tiling, splits=splits, interpret=interpret,
                      kv_new=(k_new.astype(q.dtype), v_new.astype(q.dtype)), rows=rows)


@dataclasses.dataclass(frozen=True)
class _Fused:
    """The q/k/v source of `decode_attention_qkv`: sums [S, B, H + 2K, E] (fp32 partial sums or one array),
    biases [H, E] / [K, E] / [K, E] or None, cos/sin [B, E] fp32, the rounding dtype and the q head count."""
    sums: jax.Array
    biases: tuple
    cos: jax.Array
    sin: jax.Array
    dtype: object
    num_heads: int


def decode_attention_qkv(sums: jax.Array, ck: jax.Array, cv: jax.Array, layer: jax.Array, pos: jax.Array, *,
                         window: int, num_heads: int, cos: jax.Array, sin: jax.Array, tiling: DecodeAttentionTiling,
                         biases: tuple = (None, None, None), dtype=jnp.bfloat16, rows: jax.Array | None = None,
                         splits: int | None = None, interpret: bool = False):
    """`decode_attention` from the q/k/v projection itself.

    sums [S, B, (H + 2K) * E]: the projection of the step's rows whose columns are q's H heads, then k's K, then
    v's K (HF order), as S partial sums (fp32) or one array (S = 1). The kernel adds the S terms and the biases
    ([H*E], [K*E], [K*E] or None) in fp32, rounds to `dtype` (as the model's q/k/v), rotates q and k (HF RoPE with
    cos/sin [B, E] fp32, rounded to `dtype` again) and writes k, v into the cache at pos; rows as there.
    -> (out, ck, cv)."""
    s_, b, n = sums.shape
    e = ck.shape[-1]
    kv = ck.shape[3]
    if n != (num_heads + 2 * kv) * e or cos.shape != (b, e) or sin.shape != (b, e):
        raise ValueError(f"decode_attention_qkv: needs sums [S, B, (H + 2K) * E] and cos/sin [B, E]; got sums "
                         f"{sums.shape}, cos {cos.shape}, sin {sin.shape} with H={num_heads}, K={kv}, E={e}")
    heads_of = (num_heads, kv, kv)
    bias = tuple(None if x is None else x.reshape(h, e) for x, h in zip(biases, heads_of))
    fused = _Fused(sums.reshape(s_, b, n // e, e), bias, cos.astype(jnp.float32), sin.astype(jnp.float32), dtype,
                   num_heads)
    q_shape = jax.ShapeDtypeStruct((b, 1, num_heads, e), dtype)
    return _attention(q_shape, ck, cv, layer, pos, window=window, tiling=tiling, splits=splits, interpret=interpret,
                      fused=fused, rows=rows)


def _attention(q, ck, cv, layer, pos, *, window: int, tiling: DecodeAttentionTiling, splits: int | None,
               interpret: bool, kv_new=None, fused: _Fused | None = None, rows: jax.Array | None = None):
    """The kernel; q/k/v come from `kv_new` with q, or from the projection (`fused`, q is then only its shape)."""
    from jax.experimental.pallas import triton as plgpu

    b, t, h, e = q.shape
    kv = ck.shape[3]
    g = h // kv
    if t != 1 or g > _ROWS or window > ck.shape[2] or (ck.shape[1] != b if rows is None else rows.shape != (b,)):
        raise ValueError(f"decode_attention: needs T=1, heads/kv_heads <= {_ROWS}, window <= cache length and a "
                         f"cache row per batch row (rows [B], or B cache rows); got T={t}, G={g}, window={window}, "
                         f"cache length {ck.shape[2]}, B={b}, cache rows {ck.shape[1]}, "
                         f"rows {None if rows is None else rows.shape}")
    block_s = tiling.block_s
    splits = num_splits(b, kv, window, tiling) if splits is None else splits
    n_blocks = -(-window // block_s)
    per_split = -(-n_blocks // splits)
    layer = jnp.asarray(layer, jnp.int32).reshape(1)
    scale = e ** -0.5
    final = splits == 1
    if fused is None:  # a bitcast: the kernel reads the G real rows into a 16-row tile itself (masked)
        names, args = ["q"], [q.reshape(b, kv, g, e)]
        names += ["kn", "vn"]
        args += list(kv_new)
    else:
        names = ["sums"] + [f"b{i}" for i, x in enumerate(fused.biases) if x is not None] + ["cos", "sin"]
        args = [fused.sums] + [x for x in fused.biases if x is not None] + [fused.cos, fused.sin]
    names += ["layer", "pos", "rows", "ck", "cv"]
    args += [layer, pos.astype(jnp.int32), jnp.arange(b, dtype=jnp.int32) if rows is None else rows.astype(jnp.int32),
             ck, cv]
    at = {n: i for i, n in enumerate(names)}

    def kernel(*refs):
        ins, out_refs = refs[:len(args)], refs[len(args):]
        ref = lambda n: ins[at[n]]  # noqa: E731
        k_ref, v_ref = ref("ck"), ref("cv")
        ck_out, cv_out = out_refs[-2:]
        bi, hi, si = pl.program_id(0), pl.program_id(1), pl.program_id(2)
        li = ref("layer")[0]
        ci = ref("rows")[bi]                                                        # the row's cache row
        p_row = ref("pos")[bi]
        lane = jnp.arange(e, dtype=jnp.int32)[None, :] >= 0                         # [1, E] all true (broadcast)
        # rows past G of the 16-row tile are masked (never read or written): no padded copy of q in memory
        q_rows = (jnp.arange(_ROWS, dtype=jnp.int32)[:, None] < g) & lane
        if fused is None:
            qt = plgpu.load(ref("q").at[bi, hi, pl.ds(0, _ROWS), :], mask=q_rows, other=0.0)    # [16, E] bf16
        else:
            qt = _rotated(fused, ref, bi, 0, hi * g, g, lane)
        first = si * per_split
        # cached entries read: j < pos (entry pos is the new token, taken from registers). Every block read holds
        # at least one of them, so the running max is finite after the first block.
        n_read = jnp.where(p_row < ck.shape[2], (p_row + block_s - 1) // block_s, 0)  # parked: reads nothing
        last = jnp.minimum(jnp.minimum(n_read, n_blocks), first + per_split)

        def body(i, carry):
            m, l_sum, acc = carry
            s0 = i * block_s
            idx = s0 + jnp.arange(block_s, dtype=jnp.int32)
            valid = (idx < p_row) & (idx < window)
            mask = valid[:, None] & lane
            kb = plgpu.load(k_ref.at[li, ci, pl.ds(s0, block_s), hi, :], mask=mask, other=0.0)
            vb = plgpu.load(v_ref.at[li, ci, pl.ds(s0, block_s), hi, :], mask=mask, other=0.0)
            s = jax.lax.dot_general(qt, kb, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32) * scale
            s = jnp.where(valid[None, :], s, _NEG)                                   # [16, BS]
            m_new = jnp.maximum(m, jnp.max(s, axis=1))
            p = jnp.exp(s - m_new[:, None])
            alpha = jnp.exp(m - m_new)
            acc = acc * alpha[:, None] + jax.lax.dot_general(p.astype(vb.dtype), vb, (((1,), (0,)), ((), ())),
                                                             preferred_element_type=jnp.float32)
            return m_new, l_sum * alpha + jnp.sum(p, axis=1), acc

        init = (jnp.full((_ROWS,), _NEG, jnp.float32), jnp.zeros((_ROWS,), jnp.float32),
                jnp.zeros((_ROWS, e), jnp.float32))
        res = jax.lax.fori_loop(first, last, body, init)
        # the program owning entry pos stores the new K/V there (any pos < cache length; the split of the last
        # block for pos >= window) and attends them (only pos < window)
        writer = jnp.minimum(p_row // block_s, n_blocks - 1) // per_split == si
        own = writer & (p_row < window)
        in_cache = writer & (p_row < ck.shape[2])

        def with_new(res):
            m, l_sum, acc = res
            if fused is None:
                kn = plgpu.load(ref("kn").at[bi, pl.ds(0, 1), hi, :])                # [1, E]
                vn = plgpu.load(ref("vn").at[bi, pl.ds(0, 1), hi, :])
            else:  # row 0 of a 16-row tile (the others masked to zero): summed out to [1, E]
                h_ = fused.num_heads
                kn = _rotated(fused, ref, bi, 1, h_ + hi, 1, lane)
                vn = _head_rows(fused, ref, bi, 2, h_ + kv + hi, 1, lane)
                kn, vn = (jnp.sum(x.astype(jnp.float32), axis=0, keepdims=True).astype(x.dtype) for x in (kn, vn))
            for out_ref, new in ((ck_out, kn), (cv_out, vn)):
                plgpu.store(out_ref.at[li, ci, pl.ds(p_row, 1), hi, :], new.astype(out_ref.dtype),
                            mask=lane & in_cache)
            # the score of the cached (cache-dtype) value, as a scatter-then-read path sees it
            s_new = jnp.sum(qt.astype(jnp.float32) * kn.astype(ck_out.dtype).astype(jnp.float32), axis=1) * scale
            m_new = jnp.where(own, jnp.maximum(m, s_new), m)
            p_new = jnp.where(own, jnp.exp(s_new - m_new), 0.0)
            alpha = jnp.exp(m - m_new)
            acc = acc * alpha[:, None] + p_new[:, None] * vn.astype(cv_out.dtype).astype(jnp.float32)
            return m_new, l_sum * alpha + p_new, acc

        # only the writer (one split of each (row, kv head)) builds and attends the new K/V
        m, l_sum, acc = jax.lax.cond(writer, with_new, lambda r: r, res)
        if final:
            plgpu.store(out_refs[0].at[bi, hi, pl.ds(0, _ROWS), :],
                        (acc / jnp.maximum(l_sum, 1e-30)[:, None]).astype(out_refs[0].dtype), mask=q_rows)
        else:
            out_refs[0][...] = acc
            out_refs[1][...] = m
            out_refs[2][...] = l_sum

    part = pl.BlockSpec((None, None, None, _ROWS, e), lambda i, j, s: (i, j, s, 0, 0))
    stat = pl.BlockSpec((None, None, None, _ROWS), lambda i, j, s: (i, j, s, 0))
    whole = pl.BlockSpec()  # whole array (a pointer in Triton): the kernel indexes it itself
    if final:
        out_shape, out_specs = [jax.ShapeDtypeStruct((b, kv, g, e), q.dtype)], [whole]
    else:
        out_shape = [jax.ShapeDtypeStruct((b, kv, splits, _ROWS, e), jnp.float32),
                     jax.ShapeDtypeStruct((b, kv, splits, _ROWS), jnp.float32),
                     jax.ShapeDtypeStruct((b, kv, splits, _ROWS), jnp.float32)]
        out_specs = [part, stat, stat]
    # the cache buffers are outputs too, aliased to the cache inputs: written in place
    aliases = {at["ck"]: len(out_shape), at["cv"]: len(out_shape) + 1}
    out_shape += [jax.ShapeDtypeStruct(ck.shape, ck.dtype), jax.ShapeDtypeStruct(cv.shape, cv.dtype)]
    out_specs += [whole, whole]
    outs = pl.pallas_call(
        kernel,
        out_shape=tuple(out_shape),
        grid=(b, kv, splits),
        in_specs=[whole] * len(args),
        out_specs=tuple(out_specs),
        input_output_aliases=aliases,
        compiler_params=plgpu.CompilerParams(num_warps=tiling.num_warps, num_stages=tiling.num_stages),
        interpret=interpret,
        name="decode_attention_cache",
    )(*args)
    if final:
        out = outs[0]
    else:  # merge the splits' partial softmaxes (split 0 holds position 0 or the new token: m_max is finite)
        acc, m, l_sum = outs[:3]
        w = jnp.exp(m - jnp.max(m, axis=2, keepdims=True))                             # [B, K, splits, 16]
        den = jnp.maximum(jnp.sum(l_sum * w, axis=2), 1e-30)  # 0 only for a parked row (all-zero acc: out 0)
        out = (jnp.sum(acc * w[..., None], axis=2) / den[..., None]).astype(q.dtype)
        out = out[:, :, :g]
    return out.reshape(b, 1, h, e), outs[-2], outs[-1]


def _head_rows(fused: _Fused, ref, bi, which: int, first, n: int, lane, swap: bool = False) -> jax.Array:
    """Heads first.. (n real rows of a 16-row tile) of row bi: the sum of the projection's partial sums plus the
    bias (which: 0 q, 1 k, 2 v), in fp32, rounded to the model dtype as the model's q/k/v -> [16, E].
    swap: the same tile with its two column halves exchanged (read through row and column index arrays)."""
    from jax.experimental.pallas import triton as plgpu
    e = fused.sums.shape[-1]
    ok = (jnp.arange(_ROWS, dtype=jnp.int32)[:, None] < n) & lane
    rows = jnp.arange(_ROWS, dtype=jnp.int32)[:, None] + jnp.zeros((1, e), jnp.int32)          # [16, E]
    cols = (jnp.arange(e, dtype=jnp.int32)[None, :] + e // 2) % e + jnp.zeros((_ROWS, 1), jnp.int32)

    def tile(r, lead, start):
        return r.at[(*lead, start + rows, cols)] if swap else r.at[(*lead, pl.ds(start, _ROWS), slice(None))]

    acc = None
    for s in range(fused.sums.shape[0]):
        part = plgpu.load(tile(ref("sums"), (jnp.int32(s), bi), first), mask=ok, other=0.0).astype(jnp.float32)
        acc = part if acc is None else acc + part
    if fused.biases[which] is not None:  # its rows: heads of q, k or v alone
        kv = (fused.sums.shape[2] - fused.num_heads) // 2
        local = first - (0, fused.num_heads, fused.num_heads + kv)[which]
        acc = acc + plgpu.load(tile(ref(f"b{which}"), (), local), mask=ok, other=0.0).astype(jnp.float32)
    return acc.astype(fused.dtype)


def _rotated(fused: _Fused, ref, bi, which: int, first, n: int, lane) -> jax.Array:
    """`_head_rows` with HF RoPE (row bi's cos/sin), rounded to the model dtype again: x * cos + (-x2, x1) * sin,
    the half swap read from memory a second time (no lane shuffles)."""
    from jax.experimental.pallas import triton as plgpu
    x = _head_rows(fused, ref, bi, which, first, n, lane).astype(jnp.float32)
    xs = _head_rows(fused, ref, bi, which, first, n, lane, swap=True).astype(jnp.float32)
    e = x.shape[-1]
    sign = jnp.where(jnp.arange(e, dtype=jnp.int32)[None, :] < e // 2, -1.0, 1.0)
    cos = plgpu.load(ref("cos").at[pl.ds(bi, 1), :])                                 # [1, E] fp32
    sin = plgpu.load(ref("sin").at[pl.ds(bi, 1), :])
    return (x * cos + sign * xs * sin).astype(fused.dtype)


# ------------------------------------------------------------------------------------------------------ probe
def probe_error(tiling: DecodeAttentionTiling = DecodeAttentionTiling(), head_dim: int = 64,
                interpret: bool = False) -> float:
    """Relative L2 error vs an fp32 reference on random data (positions incl. 0 and window-1, one past the window,
    one parked past the cache), for one split and for several, from q/k/v and from fused q/k/v sums; a wrong cache
    write counts as error 1."""
    L, B, S, K, E, H, W = 2, 4, 200, 2, head_dim, 6, 136
    keys = jax.random.split(jax.random.key(0), 5)
    ck = jax.random.normal(keys[0], (L, B, S, K, E), jnp.bfloat16)
    cv = jax.random.normal(keys[1], (L, B, S, K, E), jnp.bfloat16)
    q = jax.random.normal(keys[2], (B, 1, H, E), jnp.bfloat16)
    kn = jax.random.normal(keys[3], (B, 1, K, E), jnp.bfloat16)
    vn = jax.random.normal(keys[4], (B, 1, K, E), jnp.bfloat16)
    pos = jnp.asarray([0, 70, W - 1, S + 3], jnp.int32)
    rows = jnp.arange(B)
    ck_new = ck.at[1, rows, pos].set(kn[:, 0], mode="drop")
    cv_new = cv.at[1, rows, pos].set(vn[:, 0], mode="drop")
    ref = reference(q, ck_new, cv_new, 1, pos, W)[:3]
    small = dataclasses.replace(tiling, block_s=32)
    worst = _fused_probe_error(ck, cv, pos[:3], W, small, interpret)
    for splits in (1, 3):
        # copies: the kernel writes its cache inputs in place (they are donated by the model's step)
        out, ck2, cv2 = _jitted(q, kn, vn, jnp.copy(ck), jnp.copy(cv), jnp.int32(1), pos, window=W, tiling=small,
                                splits=splits, interpret=interpret)
        worst = max(worst, _rel_err(out[:3], ref), float(jnp.abs(out[3].astype(jnp.float32)).max()))
        if not (bool(jnp.array_equal(ck2, ck_new)) and bool(jnp.array_equal(cv2, cv_new))):
            worst = max(worst, 1.0)
    return worst


def _fused_probe_error(ck, cv, pos, window: int, tiling, interpret: bool) -> float:
    """`decode_attention_qkv` from two fp32 partial sums with biases vs the fp32 reference of the rounded, rotated
    q/k/v; the written K/V rows by their relative error (a write anywhere else counts as error 1)."""
    ck, cv = ck[:, :len(pos)], cv[:, :len(pos)]
    _, b, _, k, e = ck.shape
    h = 3 * k
    keys = jax.random.split(jax.random.key(1), 4)
    sums = jax.random.normal(keys[0], (2, b, (h + 2 * k) * e), jnp.float32)
    biases = tuple(jax.random.normal(key, (n * e,), jnp.bfloat16) for key, n in zip(keys[1:], (h, k, k)))
    ang = pos.astype(jnp.float32)[:, None] * 0.37 ** jnp.arange(e // 2, dtype=jnp.float32)
    cos, sin = (jnp.concatenate([f(ang)] * 2, axis=-1) for f in (jnp.cos, jnp.sin))
    y = (sums.sum(0) + jnp.concatenate(biases).astype(jnp.float32)).astype(jnp.bfloat16).astype(jnp.float32)
    y = y.reshape(b, h + 2 * k, e)
    rot = jnp.concatenate([-y[..., e // 2:], y[..., :e // 2]], axis=-1) * sin[:, None] + y * cos[:, None]
    rows = jnp.arange(b)
    q = rot[:, :h].astype(jnp.bfloat16)[:, None]
    ck_new = ck.at[1, rows, pos].set(rot[:, h:h + k].astype(ck.dtype))
    cv_new = cv.at[1, rows, pos].set(y[:, h + k:].astype(cv.dtype))
    ref = reference(q, ck_new, cv_new, 1, pos, window)
    worst = 0.0
    for splits in (1, 3):
        out, ck2, cv2 = _jitted_qkv(sums, jnp.copy(ck), jnp.copy(cv), jnp.int32(1), pos, cos, sin, biases,
                                    window=window, num_heads=h, tiling=tiling, splits=splits, interpret=interpret)
        worst = max(worst, _rel_err(out, ref))
        for got, want, old in ((ck2, ck_new, ck), (cv2, cv_new, cv)):  # the new rows (RoPE may round by an ulp)
            worst = max(worst, _rel_err(got[1, rows, pos], want[1, rows, pos].astype(jnp.float32)))
            if not bool(jnp.array_equal(got.at[1, rows, pos].set(0), old.at[1, rows, pos].set(0))):
                worst = max(worst, 1.0)  # nothing else written
    return worst


def _rel_err(out: jax.Array, ref: jax.Array) -> float:
    return float(jnp.linalg.norm(out.astype(jnp.float32) - ref) / jnp.linalg.norm(ref))


@functools.partial(jax.jit, static_argnames=("window", "tiling", "splits", "interpret"))
def _jitted(q, kn, vn, ck, cv, layer, pos, *, window, tiling, splits=None, interpret=False):
    return decode_attention(q, kn, vn, ck, cv, layer, pos, window=window, tiling=tiling, splits=splits,
                            interpret=interpret)


@functools.partial(jax.jit, static_argnames=("window", "num_heads", "tiling", "splits", "interpret"))
def _jitted_qkv(sums, ck, cv, layer, pos, cos, sin, biases, *, window, num_heads, tiling, splits, interpret=False):
    return decode_attention_qkv(sums, ck, cv, layer, pos, window=window, num_heads=num_heads, cos=cos, sin=sin,
                                biases=biases, tiling=tiling, splits=splits, interpret=interpret)
