"""Pallas (GPU/Triton) flash-decoding attention that reads one layer of the stacked KV cache in place.

Why a kernel: a layer's K/V window is a slice of the stacked [L, B, S, K, E] cache that the decode step updates in
place. An XLA dot or a library call (cuDNN) needs that slice materialised first, and the fused multiply-reduce form
XLA emits instead reads it at ~1/5 of HBM bandwidth (bench/NOTES-generate.md). This kernel takes the whole cache
plus the layer index and streams each (row, kv head)'s live window once with an online softmax: on an H100 it reads
the live KV at ~2.1 TB/s, 5x the XLA path.

Grid (row, kv head, split): the G query heads of a kv head share one program (a 16-row tensor-core tile whose rows
past G are masked, so q needs no padded copy), so K/V are read once per kv head. Small batches split the window
over `splits` programs (flash-decoding) so the GPU has enough programs in flight; the partial (max, sum, acc) are
merged by XLA (three small fusions at batch 1). With one split the kernel writes the normalised output directly.

`decode_attention_qkv` takes the step's projections before they are q, k and v: the fused q/k/v projection's
output (or its split-K partial sums), and does the rest itself (sum, bias, rounding, RoPE, slicing the heads), so
those XLA fusions between the projection and the attention (3-4 per layer) are gone.

Numerics: q.k and p.v on bf16 inputs with fp32 accumulation, fp32 softmax (as `attention.attention`).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from automem_jax.models import kernel_probe

_ROWS = 16  # query rows per program (the G heads of one kv head, zero-padded): the minimum tensor-core tile
_NEG = -1e30
# Tiling defaults, read at trace time (bench.generate's k_* variants time others in the model):
BLOCK_S = 64      # cache entries per inner step
NUM_WARPS = 4
NUM_STAGES = 2    # software-pipelining depth of the K/V loads
TARGET_PROGRAMS = 512  # window splits until ~4 programs per SM on an H100 (132 SMs): loads in flight to stream KV
# Run the kernel in Pallas interpret mode wherever the model uses it (also on CPU, no probe): for tests of the
# in-model wiring (layer index, positions, window) against the XLA path. Read at trace time.
INTERPRET = False


def supported(q_dtype, cache_dtype, group: int, head_dim: int = 64) -> bool:
    """The kernel path is used on GPU for bf16 caches (the CPU/TPU and fp32 paths stay pure XLA), once a one-time
    probe at this head_dim has compiled it and matched an fp32 reference on this jax/GPU (else a logged fallback
    to XLA). Per head_dim because its tiles are [block, head_dim]: what fits the GPU's shared memory and
    registers at 64 may not at 128."""
    if not (cache_dtype == jnp.bfloat16 and q_dtype == jnp.bfloat16 and group <= _ROWS and head_dim % 2 == 0):
        return False
    return INTERPRET or (jax.default_backend() == "gpu" and _probe(head_dim))


def num_splits(batch: int, kv_heads: int, window: int, block_s: int) -> int:
    """Window splits per (row, kv head): enough programs to fill the GPU, at least one block per split."""
    n_blocks = -(-window // block_s)
    return max(1, min(n_blocks, -(-TARGET_PROGRAMS // (batch * kv_heads))))


@functools.cache
def _probe(head_dim: int) -> bool:
    return kernel_probe.passes(f"decode_kernel(head_dim={head_dim})", functools.partial(probe_error, head_dim=head_dim),
                               "the XLA decode attention")


def probe_error(interpret: bool = False, head_dim: int = 64) -> float:
    """Relative L2 error of the kernel vs an fp32 reference on random data (positions incl. 0 and window-1), for
    one split and for several, reading the cache only and writing the new K/V itself (kv_new: a wrong cache write
    counts as error 1), and from fused q/k/v sums (`decode_attention_qkv`)."""
    L, B, S, K, E, H, W = 2, 3, 200, 2, head_dim, 6, 136
    keys = jax.random.split(jax.random.key(0), 5)
    ck = jax.random.normal(keys[0], (L, B, S, K, E), jnp.bfloat16)
    cv = jax.random.normal(keys[1], (L, B, S, K, E), jnp.bfloat16)
    q = jax.random.normal(keys[2], (B, 1, H, E), jnp.bfloat16)
    kn = jax.random.normal(keys[3], (B, 1, K, E), jnp.bfloat16)
    vn = jax.random.normal(keys[4], (B, 1, K, E), jnp.bfloat16)
    pos = jnp.asarray([0, 70, W - 1], jnp.int32)
    ref = reference(q, ck, cv, 1, pos, W)
    rows = jnp.arange(B)
    ck_new, cv_new = ck.at[1, rows, pos].set(kn[:, 0]), cv.at[1, rows, pos].set(vn[:, 0])
    ref_new = reference(q, ck_new, cv_new, 1, pos, W)
    worst = _fused_probe_error(ck, cv, pos, W, interpret)
    for splits, heads in ((1, 1), (3, 1), (1, 2), (3, 2)):
        kw = dict(window=W, block_s=32, splits=splits, heads=heads, interpret=interpret)
        out = _jitted(q, ck, cv, jnp.int32(1), pos, **kw)
        worst = max(worst, _rel_err(out, ref))
        # copies: the kernel writes its cache inputs in place (they are donated by the model's step)
        out, ck2, cv2 = _jitted(q, jnp.copy(ck), jnp.copy(cv), jnp.int32(1), pos, (kn, vn), **kw)
        worst = max(worst, _rel_err(out, ref_new))
        if not (bool(jnp.array_equal(ck2, ck_new)) and bool(jnp.array_equal(cv2, cv_new))):
            worst = max(worst, 1.0)
    # a micro-batch (rows 1.. of the cache, models/decode_micro_batch.py): its rows only, read and written
    kw = dict(window=W, block_s=32, splits=3, interpret=interpret, row0=1)
    out, ck2, cv2 = _jitted(q[1:], jnp.copy(ck), jnp.copy(cv), jnp.int32(1), pos[1:], (kn[1:], vn[1:]), **kw)
    worst = max(worst, _rel_err(out, ref_new[1:]))
    want_k, want_v = ck.at[1, rows[1:], pos[1:]].set(kn[1:, 0]), cv.at[1, rows[1:], pos[1:]].set(vn[1:, 0])
    if not (bool(jnp.array_equal(ck2, want_k)) and bool(jnp.array_equal(cv2, want_v))):
        worst = max(worst, 1.0)
    return worst


def _fused_probe_error(ck, cv, pos, window: int, interpret: bool) -> float:
    """`decode_attention_qkv` from two fp32 partial sums with biases vs the fp32 reference of the rounded, rotated
    q/k/v; the written K/V rows by their relative error (a write anywhere else counts as error 1)."""
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
                                    window=window, num_heads=h, splits=splits, interpret=interpret)
        worst = max(worst, _rel_err(out, ref))
        for got, want, old in ((ck2, ck_new, ck), (cv2, cv_new, cv)):  # the new rows (RoPE may round by an ulp)
            worst = max(worst, _rel_err(got[1, rows, pos], want[1, rows, pos].astype(jnp.float32)))
            if not bool(jnp.array_equal(got.at[1, rows, pos].set(0), old.at[1, rows, pos].set(0))):
                worst = max(worst, 1.0)  # nothing else written
    return worst


def _rel_err(out: jax.Array, ref: jax.Array) -> float:
    return float(jnp.linalg.norm(out.astype(jnp.float32) - ref) / jnp.linalg.norm(ref))


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
                         window: int, num_heads: int, cos: jax.Array, sin: jax.Array,
                         biases: tuple = (None, None, None), dtype=jnp.bfloat16, row0: int = 0, **tiling):
    """The decode attention of `decode_attention_cache(q, ..., kv_new=(k, v))` from the q/k/v projection itself.

    sums [S, B, (H + 2K) * E]: the projection of the step's rows whose columns are q's H heads, then k's K, then
    v's K (HF order), as S partial sums (gemv_kernel's split-K output, fp32) or one array (S = 1). The kernel adds
    the S terms and the biases ([H*E], [K*E], [K*E] or None) in fp32, rounds to `dtype` (as the model's q/k/v),
    rotates q and k (HF RoPE with cos/sin [B, E] fp32, rounded to `dtype` again) and writes k, v into the cache at
    pos. row0: as in `decode_attention_cache`. Returns (out [B, 1, H, E] dtype, ck, cv)."""
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
    return decode_attention_cache(q_shape, ck, cv, layer, pos, window=window, fused=fused, row0=row0, **tiling)


def decode_attention_cache(q: jax.Array, ck: jax.Array, cv: jax.Array, layer: jax.Array, pos: jax.Array, *,
                           window: int, kv_new: tuple[jax.Array, jax.Array] | None = None,
                           block_s: int | None = None, splits: int | None = None, heads: int = 1,
                           num_warps: int | None = None, num_stages: int | None = None,
                           interpret: bool | None = None, fused: _Fused | None = None, row0: int = 0):
    """q [B, 1, H, E]; ck/cv [L, R, S, K, E]; layer i32 []; pos i32 [B] -> [B, 1, H, E] (q.dtype).

    Row b attends cache entries j <= pos[b] (and j < window) of layer `layer`. A row parked at pos >= S (the
    cache length: a finished or free slot in a decode step, steps.decode) reads and writes nothing; its output is 0.
    Batch row b is cache row row0 + b (static; R >= row0 + B): a micro-batch of the step's rows reads and writes its
    own rows of the whole cache (models/decode_micro_batch.py). `heads` kv heads share a program
    (their K/V rows of a token are adjacent in the cache, so one program reads a contiguous span).

    kv_new = (k, v) [B, 1, K, E]: the step's new K/V, not yet in the cache. The kernel writes them at pos[b] of the
    layer (in place: the cache buffers are aliased to outputs; a position past the cache is dropped, as by the
    model's scatter) and attends them from registers, so the step needs no scatter kernels.
    Returns (out, ck, cv) then. No race: only the program that owns position pos[b] of (row, kv head) writes it,
    and every program reads entries j < pos[b] only.
    fused (from `decode_attention_qkv`; q is then only its shape): q, k and v come from the projection's sums.
    """
    from jax.experimental.pallas import triton as plgpu

    interpret = INTERPRET if interpret is None else interpret
    block_s = BLOCK_S if block_s is None else block_s
    num_warps = NUM_WARPS if num_warps is None else num_warps
    num_stages = NUM_STAGES if num_stages is None else num_stages
    b, t, h, e = q.shape
    kv = ck.shape[3]
    g = h // kv
    if fused is not None and heads != 1:
        raise ValueError("decode_attention_qkv: one kv head per program (heads=1)")
    if t != 1 or g > _ROWS or window > ck.shape[2] or kv % heads or not 0 <= row0 <= ck.shape[1] - b:
        raise ValueError(f"decode_attention_cache: needs T=1, heads/kv_heads <= {_ROWS}, window <= cache length,"
                         f" kv_heads % heads == 0 and 0 <= row0 <= cache rows - B; got T={t}, G={g}, window={window},"
                         f" cache length {ck.shape[2]}, kv_heads={kv}, heads={heads}, row0={row0}, B={b},"
                         f" cache rows {ck.shape[1]}")
    splits = num_splits(b, kv // heads, window, block_s) if splits is None else splits
    n_blocks = -(-window // block_s)
    per_split = -(-n_blocks // splits)
    layer = jnp.asarray(layer, jnp.int32).reshape(1)
    scale = e ** -0.5
    final = splits == 1
    update = kv_new is not None or fused is not None
    if fused is None:  # a bitcast: the kernel reads the G real rows into a 16-row tile itself (masked)
        names, args = ["q"], [q.reshape(b, kv, g, e)]
    else:
        names = ["sums"] + [f"b{i}" for i, x in enumerate(fused.biases) if x is not None] + ["cos", "sin"]
        args = [fused.sums] + [x for x in fused.biases if x is not None] + [fused.cos, fused.sin]
    names += ["layer", "pos", "ck", "cv"] + ["kn", "vn"] * (kv_new is not None)
    args += [layer, pos.astype(jnp.int32), ck, cv]
    if kv_new is not None:
        args += [kv_new[0].astype(q.dtype), kv_new[1].astype(q.dtype)]
    at = {n: i for i, n in enumerate(names)}

    def kernel(*refs):
        ins, out_refs = refs[:len(args)], refs[len(args):]
        ref = lambda n: ins[at[n]]  # noqa: E731
        k_ref, v_ref = ref("ck"), ref("cv")
        if update:
            ck_out, cv_out = out_refs[-2:]
        bi, hi, si = pl.program_id(0), pl.program_id(1), pl.program_id(2)
        li = ref("layer")[0]
        ci = bi + row0                                                              # the row's cache row
        p_row = ref("pos")[bi]
        lane = jnp.arange(e, dtype=jnp.int32)[None, :] >= 0                         # [1, E] all true (broadcast)
        # rows past G of the 16-row tile are masked (never read or written): no padded copy of q in memory
        q_rows = (jnp.arange(_ROWS, dtype=jnp.int32)[:, None] < g) & lane
        if fused is None:
            qs = [plgpu.load(ref("q").at[bi, hi * heads + j, pl.ds(0, _ROWS), :], mask=q_rows, other=0.0)
                  for j in range(heads)]                                            # [16, E] bf16 each
        else:
            qs = [_rotated(fused, ref, bi, 0, hi * g, g, lane)]
        first = si * per_split
        # cached entries read: j <= pos (j < pos with kv_new: entry pos is the new token, taken from registers).
        # Every block read holds at least one of them, so the running max is finite after the first block.
        n_read = (p_row + block_s - 1) // block_s if update else p_row // block_s + 1
        n_read = jnp.where(p_row < ck.shape[2], n_read, 0)  # a parked row reads nothing (its write is dropped)
        last = jnp.minimum(jnp.minimum(n_read, n_blocks), first + per_split)

        def body(i, carry):
            s0 = i * block_s
            idx = s0 + jnp.arange(block_s, dtype=jnp.int32)
            valid = ((idx < p_row) if update else (idx <= p_row)) & (idx < window)
            mask = valid[:, None] & lane
            kbs = [plgpu.load(k_ref.at[li, ci, pl.ds(s0, block_s), hi * heads + j, :], mask=mask, other=0.0)
                   for j in range(heads)]
            vbs = [plgpu.load(v_ref.at[li, ci, pl.ds(s0, block_s), hi * heads + j, :], mask=mask, other=0.0)
                   for j in range(heads)]
            out = []
            for j in range(heads):
                m, l_sum, acc = carry[j]
                s = jax.lax.dot_general(qs[j], kbs[j], (((1,), (1,)), ((), ())),
                                        preferred_element_type=jnp.float32) * scale   # [16, BS]
                s = jnp.where(valid[None, :], s, _NEG)
                m_new = jnp.maximum(m, jnp.max(s, axis=1))
                p = jnp.exp(s - m_new[:, None])
                alpha = jnp.exp(m - m_new)
                l_sum = l_sum * alpha + jnp.sum(p, axis=1)
                acc = acc * alpha[:, None] + jax.lax.dot_general(
                    p.astype(vbs[j].dtype), vbs[j], (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
                out.append((m_new, l_sum, acc))
            return tuple(out)

        init = tuple((jnp.full((_ROWS,), _NEG, jnp.float32), jnp.zeros((_ROWS,), jnp.float32),
                      jnp.zeros((_ROWS, e), jnp.float32)) for _ in range(heads))
        res = jax.lax.fori_loop(first, last, body, init)
        if update:  # the program owning entry pos stores the new K/V there (as the scatter: any pos < cache
            # length; the split of the last block for pos >= window) and attends them (only pos < window)
            writer = jnp.minimum(p_row // block_s, n_blocks - 1) // per_split == si
            own = writer & (p_row < window)
            in_cache = writer & (p_row < ck.shape[2])

            def with_new(res):
                new_res = []
                for j, (m, l_sum, acc) in enumerate(res):
                    kh = hi * heads + j
                    if fused is None:
                        kn = plgpu.load(ref("kn").at[bi, pl.ds(0, 1), kh, :])       # [1, E]
                        vn = plgpu.load(ref("vn").at[bi, pl.ds(0, 1), kh, :])
                    else:  # row 0 of a 16-row tile (the others masked to zero): summed out to [1, E]
                        h_ = fused.num_heads
                        kn = _rotated(fused, ref, bi, 1, h_ + kh, 1, lane)
                        vn = _head_rows(fused, ref, bi, 2, h_ + kv + kh, 1, lane)
                        kn, vn = (jnp.sum(x.astype(jnp.float32), axis=0, keepdims=True).astype(x.dtype)
                                  for x in (kn, vn))
                    for out_ref, new in ((ck_out, kn), (cv_out, vn)):
                        plgpu.store(out_ref.at[li, ci, pl.ds(p_row, 1), kh, :], new.astype(out_ref.dtype),
                                    mask=lane & in_cache)
                    # the score of the cached (cache-dtype) value, as the scatter-then-read path sees it
                    s_new = jnp.sum(qs[j].astype(jnp.float32) * kn.astype(ck_out.dtype).astype(jnp.float32),
                                    axis=1) * scale                                 # [16]
                    m_new = jnp.where(own, jnp.maximum(m, s_new), m)
                    p_new = jnp.where(own, jnp.exp(s_new - m_new), 0.0)
                    alpha = jnp.exp(m - m_new)
                    l_sum = l_sum * alpha + p_new
                    acc = acc * alpha[:, None] + p_new[:, None] * vn.astype(cv_out.dtype).astype(jnp.float32)
                    new_res.append((m_new, l_sum, acc))
                return tuple(new_res)

            # only the writer (one split of each (row, kv head)) builds and attends the new K/V
            res = jax.lax.cond(writer, with_new, lambda r: r, res)
        for j, (m, l_sum, acc) in enumerate(res):
            if final:
                plgpu.store(out_refs[0].at[bi, hi * heads + j, pl.ds(0, _ROWS), :],
                            (acc / jnp.maximum(l_sum, 1e-30)[:, None]).astype(out_refs[0].dtype), mask=q_rows)
            else:
                out_refs[0][j] = acc
                out_refs[1][j] = m
                out_refs[2][j] = l_sum

    part = pl.BlockSpec((None, heads, None, _ROWS, e), lambda i, j, s: (i, j, s, 0, 0))
    stat = pl.BlockSpec((None, heads, None, _ROWS), lambda i, j, s: (i, j, s, 0))
    whole = pl.BlockSpec()  # whole array (a pointer in Triton): the kernel indexes it itself
    if final:
        out_shape, out_specs = [jax.ShapeDtypeStruct((b, kv, g, e), q.dtype)], [whole]
    else:
        out_shape = [jax.ShapeDtypeStruct((b, kv, splits, _ROWS, e), jnp.float32),
                     jax.ShapeDtypeStruct((b, kv, splits, _ROWS), jnp.float32),
                     jax.ShapeDtypeStruct((b, kv, splits, _ROWS), jnp.float32)]
        out_specs = [part, stat, stat]
    aliases = {}
    if update:  # the cache buffers are outputs too, aliased to the cache inputs: written in place
        aliases = {at["ck"]: len(out_shape), at["cv"]: len(out_shape) + 1}
        out_shape += [jax.ShapeDtypeStruct(ck.shape, ck.dtype), jax.ShapeDtypeStruct(cv.shape, cv.dtype)]
        out_specs += [whole, whole]
    outs = pl.pallas_call(
        kernel,
        out_shape=tuple(out_shape),
        grid=(b, kv // heads, splits),
        in_specs=[whole] * len(args),
        out_specs=tuple(out_specs),
        input_output_aliases=aliases,
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
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
    out = out.reshape(b, 1, h, e)
    return (out, outs[-2], outs[-1]) if update else out


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


@functools.partial(jax.jit, static_argnames=("window", "block_s", "splits", "heads", "interpret", "row0"))
def _jitted(q, ck, cv, layer, pos, kv_new=None, *, window, block_s=None, splits=None, heads=1, interpret=False,
            row0=0):
    return decode_attention_cache(q, ck, cv, layer, pos, window=window, kv_new=kv_new, block_s=block_s,
                                  splits=splits, heads=heads, interpret=interpret, row0=row0)


@functools.partial(jax.jit, static_argnames=("window", "num_heads", "splits", "interpret"))
def _jitted_qkv(sums, ck, cv, layer, pos, cos, sin, biases, *, window, num_heads, splits, interpret=False):
    return decode_attention_qkv(sums, ck, cv, layer, pos, window=window, num_heads=num_heads, cos=cos, sin=sin,
                                biases=biases, block_s=32, splits=splits, interpret=interpret)
