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

Numerics: q.k and p.v on bf16 inputs with fp32 accumulation, fp32 softmax (as `decoder.attention`).
"""
from __future__ import annotations

import functools
import threading

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

_ROWS = 16  # query rows per program (the G heads of one kv head, zero-padded): the minimum tensor-core tile
_TARGET_PROGRAMS = 512  # ~4 programs per SM on an H100 (132 SMs): enough loads in flight to stream the cache
_NEG = -1e30
# Tiling defaults, read at trace time (bench.generate's k_* variants time others in the model):
BLOCK_S = 64      # cache entries per inner step
NUM_WARPS = 4
NUM_STAGES = 2    # software-pipelining depth of the K/V loads
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
    return max(1, min(n_blocks, -(-_TARGET_PROGRAMS // (batch * kv_heads))))


@functools.cache
def _probe() -> bool:
    from absl import logging
    result: list = []

    def run():  # JAX trace state is thread-local: a fresh thread compiles and runs the kernel for real even when
        try:    # the caller is in the middle of tracing the model
            result.append(probe_error())
        except Exception as e:  # noqa: BLE001 - any lowering/compile failure means: use the XLA path
            result.append(e)

    thread = threading.Thread(target=run, name="decode_kernel_probe")
    thread.start()
    thread.join()
    err = result[0]
    if isinstance(err, Exception):
        logging.warning("decode_kernel: Pallas kernel unavailable (%r); using the XLA decode attention", err)
        return False
    if not err < 2e-2:
        logging.warning("decode_kernel: probe mismatch (rel err %.3g); using the XLA decode attention", err)
        return False
    return True


def probe_error(interpret: bool = False) -> float:
    """Relative L2 error of the kernel vs an fp32 reference on random data (positions incl. 0 and window-1), for
    one split and for several."""
    L, B, S, K, E, H, W = 2, 3, 200, 2, 64, 6, 136
    keys = jax.random.split(jax.random.key(0), 3)
    ck = jax.random.normal(keys[0], (L, B, S, K, E), jnp.bfloat16)
    cv = jax.random.normal(keys[1], (L, B, S, K, E), jnp.bfloat16)
    q = jax.random.normal(keys[2], (B, 1, H, E), jnp.bfloat16)
    pos = jnp.asarray([0, 70, W - 1], jnp.int32)
    ref = reference(q, ck, cv, 1, pos, W)
    worst = 0.0
    for splits, heads in ((1, 1), (3, 1), (1, 2), (3, 2)):
        out = _jitted(q, ck, cv, jnp.int32(1), pos, window=W, block_s=32, splits=splits, heads=heads,
                      interpret=interpret)
        err = jnp.linalg.norm(out.astype(jnp.float32) - ref) / jnp.linalg.norm(ref)
        worst = max(worst, float(err))
    return worst


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
                           window: int, block_s: int | None = None, splits: int | None = None, heads: int = 1,
                           num_warps: int | None = None, num_stages: int | None = None,
                           interpret: bool | None = None) -> jax.Array:
    """q [B, 1, H, E]; ck/cv [L, B, S, K, E]; layer i32 []; pos i32 [B] -> [B, 1, H, E] (q.dtype).

    Row b attends cache entries j <= pos[b] (and j < window) of layer `layer`. `heads` kv heads share a program
    (their K/V rows of a token are adjacent in the cache, so one program reads a contiguous span).
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

    def kernel(q_ref, layer_ref, pos_ref, k_ref, v_ref, *out_refs):
        bi, hi, si = pl.program_id(0), pl.program_id(1), pl.program_id(2)
        li = layer_ref[0]
        p_row = pos_ref[bi]
        lane = jnp.arange(e, dtype=jnp.int32)[None, :] >= 0                         # [1, E] all true (broadcast)
        # rows past G of the 16-row tile are masked (never read or written): no padded copy of q in memory
        q_rows = (jnp.arange(_ROWS, dtype=jnp.int32)[:, None] < g) & lane
        qs = [plgpu.load(q_ref.at[bi, hi * heads + j, pl.ds(0, _ROWS), :], mask=q_rows, other=0.0)
              for j in range(heads)]                                                # [16, E] bf16 each
        first = si * per_split
        last = jnp.minimum(jnp.minimum(p_row // block_s + 1, n_blocks), first + per_split)

        def body(i, carry):
            s0 = i * block_s
            idx = s0 + jnp.arange(block_s, dtype=jnp.int32)
            valid = (idx <= p_row) & (idx < window)
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
        out_shape, out_specs = jax.ShapeDtypeStruct((b, kv, g, e), q.dtype), whole
    else:
        out_shape = (jax.ShapeDtypeStruct((b, kv, splits, _ROWS, e), jnp.float32),
                     jax.ShapeDtypeStruct((b, kv, splits, _ROWS), jnp.float32),
                     jax.ShapeDtypeStruct((b, kv, splits, _ROWS), jnp.float32))
        out_specs = (part, stat, stat)
    out = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(b, kv // heads, splits),
        in_specs=[whole] * 5,
        out_specs=out_specs,
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name="decode_attention_cache",
    )(qg, layer, pos.astype(jnp.int32), ck, cv)
    if not final:  # merge the splits' partial softmaxes (split 0 always holds position 0, so m_max is finite)
        acc, m, l_sum = out
        w = jnp.exp(m - jnp.max(m, axis=2, keepdims=True))                             # [B, K, splits, 16]
        out = (jnp.sum(acc * w[..., None], axis=2) / jnp.sum(l_sum * w, axis=2)[..., None]).astype(q.dtype)
        out = out[:, :, :g]
    return out.reshape(b, 1, h, e)


@functools.partial(jax.jit, static_argnames=("window", "block_s", "splits", "heads", "interpret"))
def _jitted(q, ck, cv, layer, pos, *, window, block_s=None, splits=None, heads=1, interpret=False):
    return decode_attention_cache(q, ck, cv, layer, pos, window=window, block_s=block_s, splits=splits,
                                  heads=heads, interpret=interpret)
