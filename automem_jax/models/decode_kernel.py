"""Pallas (GPU/Triton) flash-decoding attention that reads one layer of the stacked KV cache in place.

Why a kernel: a layer's K/V window is a slice of the stacked [L, B, S, K, E] cache that the decode step updates in
place. An XLA dot or a library call (cuDNN) needs that slice materialised first, and the fused multiply-reduce form
XLA emits instead reads it at ~1/5 of HBM bandwidth (bench/NOTES-generate.md). This kernel takes the whole cache
plus the layer index and streams each (row, kv head)'s live window once with an online softmax: on an H100 it reads
the live KV at ~2.1 TB/s, 5x the XLA path.

Grid (row, kv head, split): the G query heads of a kv head share one program (a 16-row tensor-core tile whose rows
past G are masked, so q needs no padded copy), so K/V are read once per kv head. Small batches split the window
over `splits` programs (flash-decoding) so the GPU has enough programs in flight; the partial (max, sum, acc) are
merged by one small XLA fusion. With one split the kernel writes the normalised output directly.

Numerics: q.k and p.v on bf16 inputs with fp32 accumulation, fp32 softmax (as `attention.attention`).
"""
from __future__ import annotations

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


def supported(q_dtype, cache_dtype, group: int) -> bool:
    """The kernel path is used on GPU for bf16 caches (the CPU/TPU and fp32 paths stay pure XLA), once a one-time
    probe has compiled it and matched an fp32 reference on this jax/GPU (else a logged fallback to XLA)."""
    if not (cache_dtype == jnp.bfloat16 and q_dtype == jnp.bfloat16 and group <= _ROWS):
        return False
    return INTERPRET or (jax.default_backend() == "gpu" and _probe())


def num_splits(batch: int, kv_heads: int, window: int, block_s: int) -> int:
    """Window splits per (row, kv head): enough programs to fill the GPU, at least one block per split."""
    n_blocks = -(-window // block_s)
    return max(1, min(n_blocks, -(-TARGET_PROGRAMS // (batch * kv_heads))))


@functools.cache
def _probe() -> bool:
    return kernel_probe.passes("decode_kernel", probe_error, "the XLA decode attention")


def probe_error(interpret: bool = False) -> float:
    """Relative L2 error of the kernel vs an fp32 reference on random data (positions incl. 0 and window-1), for
    one split and for several, reading the cache only and writing the new K/V itself (kv_new: a wrong cache write
    counts as error 1)."""
    L, B, S, K, E, H, W = 2, 3, 200, 2, 64, 6, 136
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
    worst = 0.0
    for splits, heads in ((1, 1), (3, 1), (1, 2), (3, 2)):
        kw = dict(window=W, block_s=32, splits=splits, heads=heads, interpret=interpret)
        out = _jitted(q, ck, cv, jnp.int32(1), pos, **kw)
        worst = max(worst, _rel_err(out, ref))
        # copies: the kernel writes its cache inputs in place (they are donated by the model's step)
        out, ck2, cv2 = _jitted(q, jnp.copy(ck), jnp.copy(cv), jnp.int32(1), pos, (kn, vn), **kw)
        worst = max(worst, _rel_err(out, ref_new))
        if not (bool(jnp.array_equal(ck2, ck_new)) and bool(jnp.array_equal(cv2, cv_new))):
            worst = max(worst, 1.0)
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


def decode_attention_cache(q: jax.Array, ck: jax.Array, cv: jax.Array, layer: jax.Array, pos: jax.Array, *,
                           window: int, kv_new: tuple[jax.Array, jax.Array] | None = None,
                           block_s: int | None = None, splits: int | None = None, heads: int = 1,
                           num_warps: int | None = None, num_stages: int | None = None,
                           interpret: bool | None = None):
    """q [B, 1, H, E]; ck/cv [L, B, S, K, E]; layer i32 []; pos i32 [B] -> [B, 1, H, E] (q.dtype).

    Row b attends cache entries j <= pos[b] (and j < window) of layer `layer`. `heads` kv heads share a program
    (their K/V rows of a token are adjacent in the cache, so one program reads a contiguous span).

    kv_new = (k, v) [B, 1, K, E]: the step's new K/V, not yet in the cache. The kernel writes them at pos[b] of the
    layer (in place: the cache buffers are aliased to outputs; a position past the cache is dropped, as by the
    model's scatter) and attends them from registers, so the step needs no scatter kernels.
    Returns (out, ck, cv) then. No race: only the program that owns position pos[b] of (row, kv head) writes it,
    and every program reads entries j < pos[b] only.
    """
    from jax.experimental.pallas import triton as plgpu

    interpret = INTERPRET if interpret is None else interpret
    block_s = BLOCK_S if block_s is None else block_s
    num_warps = NUM_WARPS if num_warps is None else num_warps
    num_stages = NUM_STAGES if num_stages is None else num_stages
    b, t, h, e = q.shape
    kv = ck.shape[3]
    g = h // kv
    if t != 1 or g > _ROWS or window > ck.shape[2] or kv % heads:
        raise ValueError(f"decode_attention_cache: needs T=1, heads/kv_heads <= {_ROWS}, window <= cache length and"
                         f" kv_heads % heads == 0; got T={t}, G={g}, window={window}, cache length {ck.shape[2]},"
                         f" kv_heads={kv}, heads={heads}")
    splits = num_splits(b, kv // heads, window, block_s) if splits is None else splits
    n_blocks = -(-window // block_s)
    per_split = -(-n_blocks // splits)
    qg = q.reshape(b, kv, g, e)  # a bitcast: the kernel reads the G real rows into a 16-row tile itself (masked)
    layer = jnp.asarray(layer, jnp.int32).reshape(1)
    scale = e ** -0.5
    final = splits == 1
    update = kv_new is not None

    def kernel(q_ref, layer_ref, pos_ref, k_ref, v_ref, *refs):
        if update:
            kn_ref, vn_ref, *out_refs = refs
            ck_out, cv_out = out_refs[-2:]
        else:
            out_refs = refs
        bi, hi, si = pl.program_id(0), pl.program_id(1), pl.program_id(2)
        li = layer_ref[0]
        p_row = pos_ref[bi]
        lane = jnp.arange(e, dtype=jnp.int32)[None, :] >= 0                         # [1, E] all true (broadcast)
        # rows past G of the 16-row tile are masked (never read or written): no padded copy of q in memory
        q_rows = (jnp.arange(_ROWS, dtype=jnp.int32)[:, None] < g) & lane
        qs = [plgpu.load(q_ref.at[bi, hi * heads + j, pl.ds(0, _ROWS), :], mask=q_rows, other=0.0)
              for j in range(heads)]                                                # [16, E] bf16 each
        first = si * per_split
        # cached entries read: j <= pos (j < pos with kv_new: entry pos is the new token, taken from registers).
        # Every block read holds at least one of them, so the running max is finite after the first block.
        n_read = (p_row + block_s - 1) // block_s if update else p_row // block_s + 1
        last = jnp.minimum(jnp.minimum(n_read, n_blocks), first + per_split)

        def body(i, carry):
            s0 = i * block_s
            idx = s0 + jnp.arange(block_s, dtype=jnp.int32)
            valid = ((idx < p_row) if update else (idx <= p_row)) & (idx < window)
            mask = valid[:, None] & lane
            kbs = [plgpu.load(k_ref.at[li, bi, pl.ds(s0, block_s), hi * heads + j, :], mask=mask, other=0.0)
                   for j in range(heads)]
            vbs = [plgpu.load(v_ref.at[li, bi, pl.ds(s0, block_s), hi * heads + j, :], mask=mask, other=0.0)
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
            new_res = []
            for j, (m, l_sum, acc) in enumerate(res):
                kh = hi * heads + j
                kn = plgpu.load(kn_ref.at[bi, pl.ds(0, 1), kh, :])                  # [1, E]
                vn = plgpu.load(vn_ref.at[bi, pl.ds(0, 1), kh, :])
                for out_ref, new in ((ck_out, kn), (cv_out, vn)):
                    plgpu.store(out_ref.at[li, bi, pl.ds(p_row, 1), kh, :], new.astype(out_ref.dtype),
                                mask=lane & in_cache)
                # the score of the cached (cache-dtype) value, as the scatter-then-read path sees it
                s_new = jnp.sum(qs[j].astype(jnp.float32) * kn.astype(ck_out.dtype).astype(jnp.float32),
                                axis=1) * scale                                     # [16]
                m_new = jnp.where(own, jnp.maximum(m, s_new), m)
                p_new = jnp.where(own, jnp.exp(s_new - m_new), 0.0)
                alpha = jnp.exp(m - m_new)
                l_sum = l_sum * alpha + p_new
                acc = acc * alpha[:, None] + p_new[:, None] * vn.astype(cv_out.dtype).astype(jnp.float32)
                new_res.append((m_new, l_sum, acc))
            res = tuple(new_res)
        for j, (m, l_sum, acc) in enumerate(res):
            if final:
                plgpu.store(out_refs[0].at[bi, hi * heads + j, pl.ds(0, _ROWS), :],
                            (acc / l_sum[:, None]).astype(out_refs[0].dtype), mask=q_rows)
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
    args = [qg, layer, pos.astype(jnp.int32), ck, cv]
    aliases = {}
    if update:  # the cache buffers are outputs too, aliased to inputs 3 and 4: written in place
        args += [kv_new[0].astype(q.dtype), kv_new[1].astype(q.dtype)]
        aliases = {3: len(out_shape), 4: len(out_shape) + 1}
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
        out = (jnp.sum(acc * w[..., None], axis=2) / jnp.sum(l_sum * w, axis=2)[..., None]).astype(q.dtype)
        out = out[:, :, :g]
    out = out.reshape(b, 1, h, e)
    return (out, outs[-2], outs[-1]) if update else out


@functools.partial(jax.jit, static_argnames=("window", "block_s", "splits", "heads", "interpret"))
def _jitted(q, ck, cv, layer, pos, kv_new=None, *, window, block_s=None, splits=None, heads=1, interpret=False):
    return decode_attention_cache(q, ck, cv, layer, pos, window=window, kv_new=kv_new, block_s=block_s,
                                  splits=splits, heads=heads, interpret=interpret)
