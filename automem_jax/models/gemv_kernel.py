"""Pallas (GPU/Triton) projections for small decode batches: RMSNorm fused into a split-K GEMV.

Why a kernel: a decode step at batch <= 16 is bound by reading the weights once, but XLA runs each batch-1
projection as a multiply-reduce fusion (0.4-1.1 TB/s on an H100) behind separate norm, bias and residual kernels,
~21 kernels per layer (bench/NOTES-generate.md). Here one program reads a [block_k, block_n] weight tile per step,
as a 16-row tensor-core tile whose rows past the batch are masked (no padded copy of x); the RMSNorm of x is
computed by every program from x itself (a few KB, from L2), so the norm costs no kernel. Several weights that
read the same x (q/k/v, gate/up) share one launch: each program owns a column block of one of them.

Small weights alone would leave most SMs idle, so the reduction (input) axis is split over programs until about
TARGET_PROGRAMS are in flight; the fp32 partial sums are added by the caller's next XLA fusion (bias, RoPE,
residual or SiLU), which it needs anyway.

Numerics: x normalised in fp32 and rounded to the weight dtype before the dot (as `decoder.rms_norm` feeds XLA's
dot), bf16 x bf16 products accumulated in fp32, partials summed in fp32.
"""
from __future__ import annotations

import functools
import threading
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

ROWS = 16        # batch rows per program: the minimum tensor-core tile; rows past the batch are masked
BLOCK_N = 64     # output columns per program (128-byte rows of a bf16 weight tile)
BLOCK_K = 128    # input rows per inner step
NUM_WARPS = 4
NUM_STAGES = 3   # software pipelining of the weight-tile loads
TARGET_PROGRAMS = 264  # ~2 programs per SM on an H100 (132 SMs): enough loads in flight to stream the weights
# Run the kernel in Pallas interpret mode wherever the model uses it (also on CPU, no probe): tests of the in-model
# wiring against the XLA path. Read at trace time.
INTERPRET = False


def supported(dtype, rows: int) -> bool:
    """Used on GPU for bf16 models at batch <= ROWS, once a one-time probe has compiled the kernel and matched an
    fp32 reference on this jax/GPU (else a logged fallback to XLA's projections)."""
    if not (dtype == jnp.bfloat16 and 0 < rows <= ROWS):
        return False
    return INTERPRET or (jax.default_backend() == "gpu" and _probe())


def plan(blocks: int, depth: int, block_k: int, target: int | None = None) -> tuple[int, int]:
    """(splits, chunks per split) of the input axis: about `target` programs for `blocks` column blocks, each
    split at least one block_k chunk, no empty split."""
    target = TARGET_PROGRAMS if target is None else target
    chunks = -(-depth // block_k)
    splits = max(1, min(chunks, -(-target // blocks)))
    per = -(-chunks // splits)
    return -(-chunks // per), per


def project(x: jax.Array, weights: Sequence[jax.Array], *, norm: jax.Array | None = None, eps: float = 0.0,
            block_n: int | None = None, block_k: int | None = None, splits: int | None = None,
            interpret: bool | None = None) -> list[jax.Array]:
    """x [M, D]; weights [D, N_i] each; norm [D] or None -> [rms_norm(x, norm) @ W_i for each i], fp32 [M, N_i].

    M <= ROWS. Without `norm`, x itself multiplies the weights."""
    from jax.experimental.pallas import triton as plgpu

    interpret = INTERPRET if interpret is None else interpret
    bn = BLOCK_N if block_n is None else block_n
    bk = BLOCK_K if block_k is None else block_k
    m, d = x.shape
    widths = [w.shape[1] for w in weights]
    if not 0 < m <= ROWS or any(w.ndim != 2 or w.shape[0] != d for w in weights) or (
            norm is not None and norm.shape != (d,)):
        raise ValueError(f"gemv_kernel.project: needs x [M<={ROWS}, D], weights [D, N] and norm [D]; got x "
                         f"{x.shape}, weights {[w.shape for w in weights]}, norm "
                         f"{None if norm is None else norm.shape}")
    blocks = [-(-n // bn) for n in widths]
    starts = [sum(blocks[:i]) for i in range(len(blocks))]
    n_chunks = -(-d // bk)
    if splits is None:
        splits, per = plan(sum(blocks), d, bk)
    else:
        per = -(-n_chunks // splits)
    fused_norm = norm is not None
    n_w = len(weights)

    def kernel(x_ref, *refs):
        g_ref = refs[0] if fused_norm else None
        w_refs = refs[int(fused_norm):int(fused_norm) + n_w]
        out_refs = refs[int(fused_norm) + n_w:]
        p, s = pl.program_id(0), pl.program_id(1)
        row_ok = jnp.arange(ROWS, dtype=jnp.int32)[:, None] < m                     # [16, 1]

        def x_chunk(c):
            k_ok = c * bk + jnp.arange(bk, dtype=jnp.int32) < d                      # [bk]
            xc = plgpu.load(x_ref.at[pl.ds(0, ROWS), pl.ds(c * bk, bk)], mask=row_ok & k_ok[None, :], other=0.0)
            return xc, k_ok

        if fused_norm:
            def squares(c, acc):
                xf = x_chunk(c)[0].astype(jnp.float32)
                return acc + jnp.sum(xf * xf, axis=1)
            inv = jax.lax.rsqrt(jax.lax.fori_loop(0, n_chunks, squares, jnp.zeros((ROWS,), jnp.float32)) / d + eps)

        for i in range(n_w):
            def one_weight(i=i):
                n0 = (p - starts[i]) * bn
                col_ok = n0 + jnp.arange(bn, dtype=jnp.int32) < widths[i]            # [bn]

                def body(c, acc):
                    xc, k_ok = x_chunk(c)
                    if fused_norm:
                        g = plgpu.load(g_ref.at[pl.ds(c * bk, bk)], mask=k_ok, other=0.0).astype(jnp.float32)
                        xc = xc.astype(jnp.float32) * inv[:, None] * g[None, :]
                    w = plgpu.load(w_refs[i].at[pl.ds(c * bk, bk), pl.ds(n0, bn)],
                                   mask=k_ok[:, None] & col_ok[None, :], other=0.0)
                    return acc + jax.lax.dot_general(xc.astype(w.dtype), w, (((1,), (0,)), ((), ())),
                                                     preferred_element_type=jnp.float32)

                first = s * per
                acc = jax.lax.fori_loop(first, jnp.minimum(first + per, n_chunks), body,
                                        jnp.zeros((ROWS, bn), jnp.float32))
                plgpu.store(out_refs[i].at[s, pl.ds(0, ROWS), pl.ds(n0, bn)], acc, mask=row_ok & col_ok[None, :])

            if n_w == 1:
                one_weight()
            else:  # this program's column block belongs to weight i
                pl.when((p >= starts[i]) & (p < starts[i] + blocks[i]))(one_weight)

    whole = pl.BlockSpec()  # whole array (a pointer in Triton): the kernel indexes it itself
    args = [x] + ([norm] if fused_norm else []) + list(weights)
    outs = pl.pallas_call(
        kernel,
        out_shape=tuple(jax.ShapeDtypeStruct((splits, m, n), jnp.float32) for n in widths),
        grid=(sum(blocks), splits),
        in_specs=[whole] * len(args),
        out_specs=tuple(whole for _ in widths),
        compiler_params=plgpu.CompilerParams(num_warps=NUM_WARPS, num_stages=NUM_STAGES),
        interpret=interpret,
        name="gemv_norm" if fused_norm else "gemv",
    )(*args)
    return [o.sum(axis=0) if splits > 1 else o[0] for o in outs]


def reference(x: jax.Array, weights: Sequence[jax.Array], norm: jax.Array | None = None,
              eps: float = 0.0) -> list[jax.Array]:
    """fp32 rms_norm(x, norm) @ W_i (x normalised in fp32; no rounding anywhere)."""
    xf = x.astype(jnp.float32)
    if norm is not None:
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps) * norm.astype(jnp.float32)
    return [xf @ w.astype(jnp.float32) for w in weights]


@functools.cache
def _probe() -> bool:
    from absl import logging
    result: list = []

    def run():  # a fresh thread: JAX trace state is thread-local, so this compiles and runs the kernel for real
        try:    # even when the caller is in the middle of tracing the model
            result.append(probe_error())
        except Exception as e:  # noqa: BLE001 - any lowering/compile failure means: use XLA's projections
            result.append(e)

    thread = threading.Thread(target=run, name="gemv_kernel_probe")
    thread.start()
    thread.join()
    err = result[0]
    if isinstance(err, Exception):
        logging.warning("gemv_kernel: Pallas kernel unavailable (%r); using XLA's projections", err)
        return False
    if not err < 2e-2:
        logging.warning("gemv_kernel: probe mismatch (rel err %.3g); using XLA's projections", err)
        return False
    return True


def probe_error(interpret: bool = False) -> float:
    """Worst relative L2 error vs the fp32 reference on random data: batch 1 and 5, widths and depth that are not
    multiples of the blocks, one and several splits, with and without the fused norm."""
    keys = jax.random.split(jax.random.key(1), 4)
    d = 200
    ws = [jax.random.normal(keys[0], (d, 96), jnp.bfloat16) * 0.1,
          jax.random.normal(keys[1], (d, 40), jnp.bfloat16) * 0.1]
    g = 1.0 + 0.1 * jax.random.normal(keys[2], (d,), jnp.float32)
    worst = 0.0
    for m in (1, 5):
        x = jax.random.normal(keys[3], (m, d), jnp.bfloat16)
        for splits in (1, 2):
            for norm in (None, g):
                got = _jitted(x, ws, norm, splits=splits, interpret=interpret)
                for y, r in zip(got, reference(x, ws, norm, 1e-6)):
                    worst = max(worst, float(jnp.linalg.norm(y - r) / jnp.linalg.norm(r)))
    return worst


@functools.partial(jax.jit, static_argnames=("splits", "interpret"))
def _jitted(x, ws, norm, *, splits=None, interpret=False):
    return project(x, ws, norm=norm, eps=1e-6, block_n=32, block_k=64, splits=splits, interpret=interpret)
