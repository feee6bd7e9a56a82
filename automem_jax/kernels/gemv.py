"""Pallas (GPU/Triton) projections for small decode batches: RMSNorm fused into a split-K GEMV.

Why a kernel: a decode step at a few rows is bound by reading the weights once, but XLA runs each batch-1
projection as a multiply-reduce fusion (0.4-1.1 TB/s on an H100) behind separate norm kernels. Here one program
reads a [block_k, block_n] weight tile per step as a 16-row tensor-core tile whose rows past the batch are masked
(no padded copy of x); each program also sums the squares of all of x (a few KB, from L2), so the RMSNorm costs no
kernel. Several weights that read the same x (q/k/v, gate/up) share one launch: each program owns a column block of
one of them.

Small weights alone would leave most SMs idle, so the reduction (input) axis is split over programs until about
`target_programs` are in flight; the fp32 partial sums are added by the caller's next XLA fusion (bias, RoPE,
residual or SiLU), which it needs anyway.

Numerics: x times the norm weight rounded to the weight dtype before the dot, bf16 x bf16 products accumulated in
fp32, the row's 1/rms applied to the fp32 sums, partials summed in fp32.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from automem_jax.kernels.config import GemvTiling

_ROWS = 16  # batch rows per program: the minimum tensor-core tile; rows past the batch are masked


def supports(dtype, rows: int, tiling: GemvTiling) -> str | None:
    """None if a decode step of `rows` rows runs its projections through the kernel, else why not."""
    if jnp.dtype(dtype) != jnp.bfloat16:
        return f"needs a bf16 model (got {jnp.dtype(dtype).name})"
    if not 0 < rows <= min(tiling.max_batch, _ROWS):
        return f"needs 1..{min(tiling.max_batch, _ROWS)} rows (got {rows})"
    return None


def plan(blocks: int, depth: int, block_k: int, target: int) -> tuple[int, int]:
    """(splits, chunks per split) of the input axis: about `target` programs for `blocks` column blocks, each
    split at least one block_k chunk, no empty split."""
    chunks = -(-depth // block_k)
    splits = max(1, min(chunks, -(-target // blocks)))
    per = -(-chunks // splits)
    return -(-chunks // per), per


def project(x: jax.Array, weights: Sequence[jax.Array], *, norm: jax.Array | None = None, eps: float = 0.0,
            tiling: GemvTiling = GemvTiling(), splits: int | None = None,
            interpret: bool = False) -> list[jax.Array]:
    """x [M, D] (M <= 16); weights [D, N_i] each; norm [D] or None -> [rms_norm(x, norm) @ W_i], fp32 [M, N_i].

    Without `norm`, x itself multiplies the weights. The input axis is split over programs (see `plan`); the partial
    sums are added here (XLA fuses that into whatever consumes the result)."""
    outs = _launch(x, weights, norm, eps, tiling, splits, interpret, joint=False)
    return [o.sum(axis=0) if o.shape[0] > 1 else o[0] for o in outs]


def project_partials(x: jax.Array, weights: Sequence[jax.Array], *, norm: jax.Array | None = None,
                     eps: float = 0.0, tiling: GemvTiling = GemvTiling(), interpret: bool = False) -> jax.Array:
    """`project`'s partial sums, unsummed and side by side: fp32 [splits, M, sum N_i] (weight i's columns after
    those of weights < i), for a consumer that adds them itself (decode_attention.decode_attention_qkv)."""
    return _launch(x, weights, norm, eps, tiling, None, interpret, joint=True)[0]


def reference(x: jax.Array, weights: Sequence[jax.Array], norm: jax.Array | None = None,
              eps: float = 0.0) -> list[jax.Array]:
    """fp32 rms_norm(x, norm) @ W_i (x normalised in fp32; no rounding anywhere)."""
    xf = x.astype(jnp.float32)
    if norm is not None:
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps) * norm.astype(jnp.float32)
    return [xf @ w.astype(jnp.float32) for w in weights]


def _launch(x, weights, norm, eps, tiling: GemvTiling, splits, interpret, joint: bool) -> list[jax.Array]:
    from jax.experimental.pallas import triton as plgpu

    m, d = x.shape
    if not 0 < m <= _ROWS or any(w.ndim != 2 or w.shape[0] != d for w in weights) or (
            norm is not None and norm.shape != (d,)):
        raise ValueError(f"gemv: needs x [M <= {_ROWS}, D], weights [D, N] and norm [D]; got x {x.shape}, "
                         f"weights {[w.shape for w in weights]}, norm {None if norm is None else norm.shape}")
    bn, bk = tiling.block_n, tiling.block_k
    widths = [w.shape[1] for w in weights]
    blocks = [-(-n // bn) for n in widths]
    starts = [sum(blocks[:i]) for i in range(len(weights))]
    offsets = [sum(widths[:i]) if joint else 0 for i in range(len(weights))]  # output columns
    n_chunks = -(-d // bk)
    if splits is None:
        splits = plan(sum(blocks), d, bk, tiling.target_programs)[0]
    per = -(-n_chunks // splits)
    fused_norm = norm is not None
    args = [x] + ([norm] if fused_norm else []) + list(weights)
    w0 = 1 + fused_norm  # index of the first weight among the inputs

    def kernel(*refs):
        ins, outs = refs[:len(args)], refs[len(args):]
        p, s = pl.program_id(0), pl.program_id(1)
        row_ok = jnp.arange(_ROWS, dtype=jnp.int32)[:, None] < m                    # [16, 1]
        tile = pl.ds(0, _ROWS)

        def x_chunk(c):
            k_ok = c * bk + jnp.arange(bk, dtype=jnp.int32) < d                      # [bk]
            xc = plgpu.load(ins[0].at[tile, pl.ds(c * bk, bk)], mask=row_ok & k_ok[None, :],
                            other=0.0).astype(jnp.float32)
            if fused_norm:  # the norm's per-row scale is applied to the sums (after the loop)
                g = plgpu.load(ins[1].at[pl.ds(c * bk, bk)], mask=k_ok, other=0.0).astype(jnp.float32)
                return xc, xc * g[None, :], k_ok
            return xc, xc, k_ok

        inv = None
        if fused_norm and splits > 1:  # a split sees part of x: every program sums all of x's squares first
            def squares(c, acc):
                xf = x_chunk(c)[0]
                return acc + jnp.sum(xf * xf, axis=1)
            inv = jax.lax.rsqrt(jax.lax.fori_loop(0, n_chunks, squares, jnp.zeros((_ROWS,), jnp.float32)) / d + eps)

        for wi in range(len(weights)):
            def one_weight(wi=wi):
                c0 = (p - starts[wi]) * bn
                col_ok = c0 + jnp.arange(bn, dtype=jnp.int32) < widths[wi]
                own_squares = fused_norm and splits == 1  # this program sees all of x: the norm's sum rides along

                def body(c, carry):
                    acc, ss = carry
                    xf, xg, k_ok = x_chunk(c)
                    wt = plgpu.load(ins[w0 + wi].at[pl.ds(c * bk, bk), pl.ds(c0, bn)],
                                    mask=k_ok[:, None] & col_ok[None, :], other=0.0)
                    acc = acc + jax.lax.dot_general(xg.astype(wt.dtype), wt, (((1,), (0,)), ((), ())),
                                                    preferred_element_type=jnp.float32)
                    return acc, (ss + jnp.sum(xf * xf, axis=1) if own_squares else ss)

                first = s * per
                acc, ss = jax.lax.fori_loop(first, jnp.minimum(first + per, n_chunks), body,
                                            (jnp.zeros((_ROWS, bn), jnp.float32), jnp.zeros((_ROWS,), jnp.float32)))
                if fused_norm:
                    acc = acc * (jax.lax.rsqrt(ss / d + eps) if own_squares else inv)[:, None]
                out = outs[0 if joint else wi]
                plgpu.store(out.at[s, tile, pl.ds(offsets[wi] + c0, bn)], acc, mask=row_ok & col_ok[None, :])

            if len(weights) == 1:
                one_weight()
            else:  # this program's column block belongs to weight wi
                pl.when((p >= starts[wi]) & (p < starts[wi] + blocks[wi]))(one_weight)

    whole = pl.BlockSpec()  # whole array (a pointer in Triton): the kernel indexes it itself
    if joint:  # one output, each weight's columns at its offset
        out_shape = (jax.ShapeDtypeStruct((splits, m, sum(widths)), jnp.float32),)
    else:
        out_shape = tuple(jax.ShapeDtypeStruct((splits, m, n), jnp.float32) for n in widths)
    outs = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(sum(blocks), splits),
        in_specs=[whole] * len(args),
        out_specs=tuple(whole for _ in out_shape),
        compiler_params=plgpu.CompilerParams(num_warps=tiling.num_warps, num_stages=tiling.num_stages),
        interpret=interpret,
        name="gemv" + ("_norm" if fused_norm else ""),
    )(*args)
    return list(outs)


# ------------------------------------------------------------------------------------------------------ probe
def probe_error(tiling: GemvTiling = GemvTiling(), interpret: bool = False) -> float:
    """Worst relative L2 error vs the fp32 reference on random data: batch 1, 5 and 16, widths and depth that are
    not multiples of the blocks, one and several splits, with and without the fused norm, and the joint partials."""
    keys = jax.random.split(jax.random.key(1), 4)
    d = 200
    ws = [jax.random.normal(keys[0], (d, 96), jnp.bfloat16) * 0.1,
          jax.random.normal(keys[1], (d, 40), jnp.bfloat16) * 0.1]
    g = 1.0 + 0.1 * jax.random.normal(keys[2], (d,), jnp.float32)
    small = dataclasses.replace(tiling, block_n=32, block_k=64)
    worst = 0.0

    def err(y, r):
        return float(jnp.linalg.norm(y.astype(jnp.float32) - r) / jnp.linalg.norm(r))

    for m in (1, 5, 16):
        x = jax.random.normal(keys[3], (m, d), jnp.bfloat16)
        for splits in (1, 2):
            for norm in (None, g):
                got = _jitted(x, ws, norm, tiling=small, splits=splits, interpret=interpret)
                worst = max([worst] + [err(y, r) for y, r in zip(got, reference(x, ws, norm, 1e-6))])
        parts = _jitted_partials(x, ws, g, tiling=small, interpret=interpret)
        worst = max(worst, err(parts.sum(0), jnp.concatenate(reference(x, ws, g, 1e-6), axis=1)))
    return worst


@functools.partial(jax.jit, static_argnames=("tiling", "splits", "interpret"))
def _jitted(x, ws, norm, *, tiling, splits=None, interpret=False):
    return project(x, ws, norm=norm, eps=1e-6, tiling=tiling, splits=splits, interpret=interpret)


@functools.partial(jax.jit, static_argnames=("tiling", "interpret"))
def _jitted_partials(x, ws, norm, *, tiling, interpret=False):
    return project_partials(x, ws, norm=norm, eps=1e-6, tiling=tiling, interpret=interpret)
