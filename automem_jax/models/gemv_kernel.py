"""Pallas (GPU/Triton) projections for small decode batches: RMSNorm fused into a split-K GEMV.

Why a kernel: a decode step at a few rows (<= MAX_BATCH) is bound by reading the weights once, but XLA runs each batch-1
projection as a multiply-reduce fusion (0.4-1.1 TB/s on an H100) behind separate norm, bias and residual kernels,
~21 kernels per layer (bench/NOTES-generate.md). Here one program reads a [block_k, block_n] weight tile per step,
as a 16-row tensor-core tile whose rows past the batch are masked (no padded copy of x); each program also sums
the squares of all of x (a few KB, from L2), so the RMSNorm costs no kernel. Several weights that
read the same x (q/k/v, gate/up) share one launch: each program owns a column block of one of them.

Small weights alone would leave most SMs idle, so the reduction (input) axis is split over programs until about
TARGET_PROGRAMS are in flight; the fp32 partial sums are added by the caller's next XLA fusion (bias, RoPE,
residual or SiLU), which it needs anyway.

Numerics: x times the norm weight rounded to the weight dtype before the dot, bf16 x bf16 products accumulated in
fp32, the row's 1/rms applied to the fp32 sums, partials summed in fp32 (XLA's path rounds the normalised x and
each projection's output to bf16; on the H100 the kernel's step is the closer of the two to an fp32 reference).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from automem_jax.models import kernel_probe

ROWS = 16        # batch rows per program: the minimum tensor-core tile; rows past the batch are masked
BLOCK_N = 64     # output columns per program (128-byte rows of a bf16 weight tile)
BLOCK_K = 128    # input rows per inner step
NUM_WARPS = 4
NUM_STAGES = 3   # software pipelining of the weight-tile loads
TARGET_PROGRAMS = 264  # ~2 programs per SM on an H100 (132 SMs): enough loads in flight to stream the weights
# The decoder's small-batch path: False = split-K launches whose fp32 sums XLA finishes (bias, RoPE, SiLU,
# residual: ~5 small fusions per layer); True = `qkv` / `glu` / `add_projection`, which finish in the kernel with
# one split (half the kernels, but each program then reads the whole input depth: on an H100 that was slower,
# SmolLM2 b1 0.83 -> 1.18 ms; bench/NOTES-generate.md). Read at trace time.
FINISH_IN_KERNEL = False
# Batches up to this use the split-K launches (the tile holds ROWS; at 16 rows XLA's GEMMs were ~5% faster on an
# H100).
MAX_BATCH = 8
# LARGE_BATCH: decode batches past ROWS (without LoRA) run the finished launches (`qkv` / `glu` /
# `add_projection`) with a grid axis over row tiles of up to LARGE_ROWS rows, depth chunks of LARGE_BLOCK_K and
# LARGE_STAGES-deep pipelining, instead of XLA's 4 GEMMs plus ~7 small fusions per layer. Off: on an H100 it
# halved the kernels of a batch-256 step (372 -> 163) but was 20-35% slower under every tiling tried (SmolLM2
# 2.69 -> 3.27-4.24 ms, Qwen 2.57 -> 3.46-5.32; `results/generate-decode-large-*.json`): XLA's autotuned GEMMs
# beat these fixed tiles by more than the fusions cost. Kept as the `g_lg_*` bench variants. Read at trace time.
LARGE_BATCH = False
LARGE_ROWS = 64
LARGE_BLOCK_K = 64
LARGE_STAGES = 2
# With FINISH_IN_KERNEL: a weight this large with a residual after it (Qwen2.5-0.5B's down projection) is read by
# split-K programs (more loads in flight than the few full-depth programs of its narrow output), residual by XLA.
SPLIT_BYTES = 4 << 20
# Run the kernel in Pallas interpret mode wherever the model uses it (also on CPU, no probe): tests of the in-model
# wiring against the XLA path. Read at trace time.
INTERPRET = False


def supported(dtype, rows: int, lora: bool = False) -> bool:
    """Used on GPU for bf16 models at batch <= MAX_BATCH, and without LoRA above it (LARGE_BATCH), once a one-time
    probe has compiled the kernel and matched an fp32 reference on this jax/GPU (else a logged fallback to XLA's
    projections)."""
    small = 0 < rows <= min(MAX_BATCH, ROWS)
    if not (dtype == jnp.bfloat16 and (small or (rows > ROWS and LARGE_BATCH and not lora))):
        return False
    return INTERPRET or (jax.default_backend() == "gpu" and _probe())


def finished(rows: int, lora: bool) -> bool:
    """Whether a decode step of `rows` rows runs the finished launches (else split-K sums that XLA finishes)."""
    return not lora and (FINISH_IN_KERNEL or rows > ROWS)


def tiles(m: int, widths: Sequence[int], target: int | None = None) -> tuple[int, int]:
    """(row tile, block_n) of a launch whose programs read the whole input: from (LARGE_ROWS, BLOCK_N), halve the
    larger of the two (down to 16, the smallest tensor-core tile) until about target/2 programs are in flight.
    Batches of <= ROWS rows are one 16-row tile."""
    target = TARGET_PROGRAMS if target is None else target
    rt, bn = (ROWS, BLOCK_N) if m <= ROWS else (LARGE_ROWS, BLOCK_N)
    while sum(-(-n // bn) for n in widths) * -(-m // rt) < target // 2 and max(rt, bn) > 16:
        if rt >= bn and rt > 16:
            rt //= 2
        else:
            bn //= 2
    return rt, bn


def plan(blocks: int, depth: int, block_k: int, target: int | None = None) -> tuple[int, int]:
    """(splits, chunks per split) of the input axis: about `target` programs for `blocks` column blocks, each
    split at least one block_k chunk, no empty split."""
    target = TARGET_PROGRAMS if target is None else target
    chunks = -(-depth // block_k)
    splits = max(1, min(chunks, -(-target // blocks)))
    per = -(-chunks // splits)
    return -(-chunks // per), per


@dataclasses.dataclass(frozen=True)
class _Group:
    """One output of a launch: which weights its programs read and how the fp32 sums end.
    kind "plain": x @ W ("bias" and/or "residual" added in the kernel when the launch has one split);
    "rope": x @ W (+ bias) rotated per head (HF layout) with the rows' cos/sin, a program owns matching columns
    of both halves of a head; "glu": silu(x @ W0) * (x @ W1)."""
    kind: str
    weights: tuple[int, ...]
    width: int
    bias: int | None = None       # index into the launch's bias inputs
    residual: bool = False
    head_dim: int = 0
    finish: bool = False          # the kernel writes the finished output (x.dtype); else fp32 partial sums


def project(x: jax.Array, weights: Sequence[jax.Array], *, norm: jax.Array | None = None, eps: float = 0.0,
            block_n: int | None = None, block_k: int | None = None, splits: int | None = None,
            rows: int | None = None, interpret: bool | None = None) -> list[jax.Array]:
    """x [M, D]; weights [D, N_i] each; norm [D] or None -> [rms_norm(x, norm) @ W_i for each i], fp32 [M, N_i].

    Without `norm`, x itself multiplies the weights. Programs own (column block, row tile of `rows` rows, one
    ROWS tile for M <= ROWS), and the input axis is split over them (see `plan`); the partial sums are added here
    (XLA fuses that into whatever consumes the result)."""
    outs = _plain(x, weights, norm, eps, block_n, block_k, splits, rows, interpret, joint=False)
    return [o.sum(axis=0) if o.shape[0] > 1 else o[0] for o in outs]


def project_partials(x: jax.Array, weights: Sequence[jax.Array], *, norm: jax.Array | None = None,
                     eps: float = 0.0, block_n: int | None = None, block_k: int | None = None,
                     interpret: bool | None = None) -> jax.Array:
    """`project`'s partial sums, unsummed and side by side: fp32 [splits, M, sum N_i] (weight i's columns after
    those of weights < i), for a consumer that adds them itself (decode_kernel.decode_attention_qkv)."""
    return _plain(x, weights, norm, eps, block_n, block_k, None, None, interpret, joint=True)[0]


def _plain(x, weights, norm, eps, block_n, block_k, splits, rows, interpret, joint: bool) -> list[jax.Array]:
    _check(x, weights, norm)
    bn = BLOCK_N if block_n is None else block_n
    bk = _block_k(x.shape[0], block_k)
    rt = _row_tile(x.shape[0], rows)
    groups = [_Group("plain", (i,), w.shape[1]) for i, w in enumerate(weights)]
    if splits is None:
        splits = plan(sum(-(-w.shape[1] // bn) for w in weights) * -(-x.shape[0] // rt), x.shape[1], bk)[0]
    return _launch(x, list(weights), groups, norm=norm, eps=eps, bn=bn, bk=bk, rt=rt, splits=splits, joint=joint,
                   interpret=interpret)


def qkv(x: jax.Array, weights: Sequence[jax.Array], biases: Sequence[jax.Array | None], *, norm: jax.Array,
        eps: float, cos: jax.Array, sin: jax.Array, head_dim: int, block_n: int | None = None,
        block_k: int | None = None, rows: int | None = None, interpret: bool | None = None) -> list[jax.Array]:
    """q, k, v [M, N] (x.dtype) in one launch: rms_norm(x) @ W (+ bias), RoPE (cos/sin [M, head_dim] fp32) on q
    and k; every program reads the whole input, so bias and rotation finish in the kernel."""
    _check(x, weights, norm)
    bk = _block_k(x.shape[0], block_k)
    rt, bn = _tiles(x.shape[0], [w.shape[1] for w in weights], rows, block_n)
    bn = min(bn, head_dim // 2)  # rope programs own bn columns of each half of a head
    bias_in = [b for b in biases if b is not None]
    groups, j = [], 0
    for i, (w, b) in enumerate(zip(weights, biases)):
        groups.append(_Group("rope" if i < 2 else "plain", (i,), w.shape[1], None if b is None else j,
                             head_dim=head_dim, finish=True))
        j += b is not None
    return _launch(x, list(weights), groups, norm=norm, eps=eps, bn=bn, bk=bk, rt=rt, splits=1, biases=bias_in,
                   rope=(cos, sin), interpret=interpret)


def glu(x: jax.Array, w_gate: jax.Array, w_up: jax.Array, *, norm: jax.Array, eps: float,
        block_n: int | None = None, block_k: int | None = None, rows: int | None = None,
        interpret: bool | None = None) -> jax.Array:
    """silu(rms_norm(x) @ Wg) * (rms_norm(x) @ Wu) [M, F] (x.dtype) in one launch (a program reads both)."""
    _check(x, (w_gate, w_up), norm)
    bk = _block_k(x.shape[0], block_k)
    rt, bn = _tiles(x.shape[0], [w_gate.shape[1]], rows, block_n)
    group = _Group("glu", (0, 1), w_gate.shape[1], finish=True)
    return _launch(x, [w_gate, w_up], [group], norm=norm, eps=eps, bn=bn, bk=bk, rt=rt, splits=1,
                   interpret=interpret)[0]


def add_projection(x: jax.Array, w: jax.Array, residual: jax.Array, *, block_n: int | None = None,
                   block_k: int | None = None, rows: int | None = None, interpret: bool | None = None) -> jax.Array:
    """residual + x @ W [M, N] (residual.dtype), summed in fp32 in the kernel (one split)."""
    _check(x, (w,), None)
    bk = _block_k(x.shape[0], block_k)
    rt, bn = _tiles(x.shape[0], [w.shape[1]], rows, block_n)
    group = _Group("plain", (0,), w.shape[1], residual=True, finish=True)
    return _launch(x, [w], [group], eps=0.0, bn=bn, bk=bk, rt=rt, splits=1, residual=residual,
                   interpret=interpret)[0]


def _block_k(m: int, block_k: int | None) -> int:
    return (BLOCK_K if m <= ROWS else LARGE_BLOCK_K) if block_k is None else block_k


def _row_tile(m: int, rows: int | None) -> int:
    return ROWS if m <= ROWS else LARGE_ROWS if rows is None else rows


def _tiles(m: int, widths: Sequence[int], rows: int | None, block_n: int | None) -> tuple[int, int]:
    rt, bn = tiles(m, widths)
    return (rt if rows is None else _row_tile(m, rows)), (bn if block_n is None else block_n)


def _check(x, weights, norm) -> None:
    m, d = x.shape
    if not 0 < m or any(w.ndim != 2 or w.shape[0] != d for w in weights) or (
            norm is not None and norm.shape != (d,)):
        raise ValueError(f"gemv_kernel: needs x [M, D], weights [D, N] and norm [D]; got x {x.shape}, "
                         f"weights {[w.shape for w in weights]}, norm {None if norm is None else norm.shape}")


def _blocks(g: _Group, bn: int) -> int:
    if g.kind == "rope":
        if g.width % g.head_dim or (g.head_dim // 2) % bn:
            raise ValueError(f"gemv_kernel: RoPE output width {g.width} must be whole heads of {g.head_dim}, whose "
                             f"half is a multiple of block_n={bn}")
        return g.width // g.head_dim * (g.head_dim // 2 // bn)
    return -(-g.width // bn)


def _launch(x, weights, groups, *, norm=None, eps, bn, bk, rt=ROWS, splits, biases=(), rope=None, residual=None,
            joint=False, interpret=None) -> list[jax.Array]:
    from jax.experimental.pallas import triton as plgpu

    interpret = INTERPRET if interpret is None else interpret
    m, d = x.shape
    n_chunks = -(-d // bk)
    per = -(-n_chunks // splits)
    blocks = [_blocks(g, bn) for g in groups]
    starts = [sum(blocks[:i]) for i in range(len(groups))]
    offsets = [sum(g.width for g in groups[:i]) if joint else 0 for i in range(len(groups))]  # output columns
    fused_norm = norm is not None
    final = splits == 1  # one split: the kernel finishes the output (else fp32 partial sums)
    if any(g.finish and not final or not g.finish and g.kind != "plain" for g in groups):
        raise ValueError("gemv_kernel: outputs finished in the kernel (bias, residual, RoPE, GLU) need a single "
                         "split")
    names = ["x"] + ["norm"] * fused_norm + [f"w{i}" for i in range(len(weights))] + [
        f"b{i}" for i in range(len(biases))] + ["cos", "sin"] * (rope is not None) + ["res"] * (residual is not None)
    args = [x] + ([norm] if fused_norm else []) + list(weights) + list(biases) + (
        list(rope) if rope is not None else []) + ([residual] if residual is not None else [])
    pos = {n: i for i, n in enumerate(names)}

    def kernel(*refs):
        ins, outs = refs[:len(args)], refs[len(args):]
        ref = lambda n: ins[pos[n]]  # noqa: E731
        p, s, r0 = pl.program_id(0), pl.program_id(1), pl.program_id(2) * rt
        row_ok = r0 + jnp.arange(rt, dtype=jnp.int32)[:, None] < m                  # [rt, 1]
        tile = pl.ds(r0, rt)  # this program's rows

        def x_chunk(c):
            k_ok = c * bk + jnp.arange(bk, dtype=jnp.int32) < d                      # [bk]
            xc = plgpu.load(ref("x").at[tile, pl.ds(c * bk, bk)], mask=row_ok & k_ok[None, :],
                            other=0.0).astype(jnp.float32)
            if fused_norm:  # the norm's per-row scale is applied to the sums (after the loop)
                g = plgpu.load(ref("norm").at[pl.ds(c * bk, bk)], mask=k_ok, other=0.0).astype(jnp.float32)
                return xc, xc * g[None, :], k_ok
            return xc, xc, k_ok

        inv = None
        if fused_norm and not final:  # a split sees part of x: every program sums all of x's squares first
            def squares(c, acc):
                xf = x_chunk(c)[0]
                return acc + jnp.sum(xf * xf, axis=1)
            inv = jax.lax.rsqrt(jax.lax.fori_loop(0, n_chunks, squares, jnp.zeros((rt,), jnp.float32)) / d + eps)

        for gi, grp in enumerate(groups):
            def one_group(gi=gi, grp=grp):
                local = p - starts[gi]
                if grp.kind == "rope":  # columns j0.. of both halves of head h
                    half = grp.head_dim // 2
                    h, j0 = local // (half // bn), local % (half // bn) * bn
                    cols = [h * grp.head_dim + j0, h * grp.head_dim + half + j0]
                else:
                    cols = [local * bn]
                col_ok = [c0 + jnp.arange(bn, dtype=jnp.int32) < grp.width for c0 in cols]
                # (weight, first column, column mask) per accumulator: both halves of one weight for RoPE, the
                # same columns of each weight otherwise
                reads = ([(grp.weights[0], c0, ok) for c0, ok in zip(cols, col_ok)] if grp.kind == "rope"
                         else [(w, cols[0], col_ok[0]) for w in grp.weights])
                own_squares = fused_norm and final  # this program sees all of x: the norm's sum rides the loop

                def body(c, carry):
                    accs, ss = carry
                    xf, xg, k_ok = x_chunk(c)
                    xb = xg.astype(weights[0].dtype)
                    new = []
                    for (w, c0, ok), acc in zip(reads, accs):
                        wt = plgpu.load(ins[pos[f"w{w}"]].at[pl.ds(c * bk, bk), pl.ds(c0, bn)],
                                        mask=k_ok[:, None] & ok[None, :], other=0.0)
                        new.append(acc + jax.lax.dot_general(xb, wt, (((1,), (0,)), ((), ())),
                                                             preferred_element_type=jnp.float32))
                    return tuple(new), (ss + jnp.sum(xf * xf, axis=1) if own_squares else ss)

                first = s * per
                zero = tuple(jnp.zeros((rt, bn), jnp.float32) for _ in reads)
                accs, ss = jax.lax.fori_loop(first, jnp.minimum(first + per, n_chunks), body,
                                             (zero, jnp.zeros((rt,), jnp.float32)))
                if fused_norm:
                    scale = jax.lax.rsqrt(ss / d + eps) if own_squares else inv
                    accs = tuple(a * scale[:, None] for a in accs)
                out = outs[0 if joint else gi]
                if not grp.finish:
                    plgpu.store(out.at[s, tile, pl.ds(offsets[gi] + cols[0], bn)], accs[0],
                                mask=row_ok & col_ok[0][None, :])
                    return
                if grp.bias is not None:
                    accs = tuple(a + plgpu.load(ref(f"b{grp.bias}").at[pl.ds(c0, bn)], mask=ok, other=0.0
                                                ).astype(jnp.float32)[None, :] for a, c0, ok in zip(accs, cols, col_ok))
                if grp.kind == "rope":
                    trig = [[plgpu.load(ref(n).at[tile, pl.ds(j0 + k * half, bn)],
                                        mask=row_ok & col_ok[0][None, :], other=0.0) for n in ("cos", "sin")]
                            for k in range(2)]
                    a1, a2 = accs
                    results = [a1 * trig[0][0] - a2 * trig[0][1], a2 * trig[1][0] + a1 * trig[1][1]]
                elif grp.kind == "glu":
                    g_, u = accs
                    results = [g_ / (1.0 + jnp.exp(-g_)) * u]
                else:
                    results = list(accs)
                    if grp.residual:
                        results = [results[0] + plgpu.load(ref("res").at[tile, pl.ds(cols[0], bn)],
                                                           mask=row_ok & col_ok[0][None, :], other=0.0
                                                           ).astype(jnp.float32)]
                for r, c0, ok in zip(results, cols, col_ok):
                    plgpu.store(out.at[tile, pl.ds(c0, bn)], r.astype(out.dtype), mask=row_ok & ok[None, :])

            if len(groups) == 1:
                one_group()
            else:  # this program's column block belongs to group gi
                pl.when((p >= starts[gi]) & (p < starts[gi] + blocks[gi]))(one_group)

    whole = pl.BlockSpec()  # whole array (a pointer in Triton): the kernel indexes it itself
    out_dtype = x.dtype if residual is None else residual.dtype
    out_shape = tuple(jax.ShapeDtypeStruct((m, g.width), out_dtype) if g.finish
                      else jax.ShapeDtypeStruct((splits, m, g.width), jnp.float32) for g in groups)
    if joint:  # one output, each group's columns at its offset (plain partial sums only)
        if any(g.finish for g in groups):
            raise ValueError("gemv_kernel: a joint output holds partial sums only")
        out_shape = (jax.ShapeDtypeStruct((splits, m, sum(g.width for g in groups)), jnp.float32),)
    outs = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(sum(blocks), splits, -(-m // rt)),
        in_specs=[whole] * len(args),
        out_specs=tuple(whole for _ in out_shape),
        compiler_params=plgpu.CompilerParams(num_warps=NUM_WARPS,
                                             num_stages=NUM_STAGES if m <= ROWS else LARGE_STAGES),
        interpret=interpret,
        name="gemv_" + "_".join(sorted({g.kind for g in groups}))
             + ("_norm" if fused_norm else "") + ("_res" if residual is not None else ""),
    )(*args)
    return list(outs)


def reference(x: jax.Array, weights: Sequence[jax.Array], norm: jax.Array | None = None,
              eps: float = 0.0) -> list[jax.Array]:
    """fp32 rms_norm(x, norm) @ W_i (x normalised in fp32; no rounding anywhere)."""
    xf = x.astype(jnp.float32)
    if norm is not None:
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps) * norm.astype(jnp.float32)
    return [xf @ w.astype(jnp.float32) for w in weights]


def qkv_reference(x, weights, biases, norm, eps, cos, sin, head_dim) -> list[jax.Array]:
    """fp32 `qkv`: projections + bias, HF RoPE on the first two."""
    outs = []
    for i, (y, b) in enumerate(zip(reference(x, weights, norm, eps), biases)):
        y = y if b is None else y + b.astype(jnp.float32)
        if i < 2:
            yh = y.reshape(y.shape[0], -1, head_dim)
            half = head_dim // 2
            rot = jnp.concatenate([-yh[..., half:], yh[..., :half]], axis=-1)
            y = (yh * cos[:, None] + rot * sin[:, None]).reshape(y.shape)
        outs.append(y)
    return outs


@functools.cache
def _probe() -> bool:
    return kernel_probe.passes("gemv_kernel", probe_error, "XLA's projections")


def probe_error(interpret: bool = False) -> float:
    """Worst relative L2 error vs the fp32 references on random data: batch 1, 5 and 20 (two 16-row tiles), widths
    and depth that are not multiples of the blocks, one and several splits, with and without the fused norm, and
    the finished outputs (q/k/v with bias and RoPE, the SiLU gate, a residual add)."""
    keys = jax.random.split(jax.random.key(1), 8)
    d, e = 200, 32
    ws = [jax.random.normal(keys[0], (d, 96), jnp.bfloat16) * 0.1,
          jax.random.normal(keys[1], (d, 40), jnp.bfloat16) * 0.1]
    g = 1.0 + 0.1 * jax.random.normal(keys[2], (d,), jnp.float32)
    bs = [jax.random.normal(keys[4], (96,), jnp.bfloat16), None, jax.random.normal(keys[5], (40,), jnp.bfloat16)]
    worst = 0.0

    def err(y, r):
        return float(jnp.linalg.norm(y.astype(jnp.float32) - r) / jnp.linalg.norm(r))

    for m in (1, 5, 20):
        x = jax.random.normal(keys[3], (m, d), jnp.bfloat16)
        for splits in (1, 2):
            for norm in (None, g):
                got = _jitted(x, ws, norm, splits=splits, interpret=interpret)
                worst = max([worst] + [err(y, r) for y, r in zip(got, reference(x, ws, norm, 1e-6))])
        ang = jax.random.uniform(keys[6], (m, e // 2), jnp.float32, 0, 6.3)
        cos, sin = (jnp.concatenate([f(ang)] * 2, axis=-1) for f in (jnp.cos, jnp.sin))
        qkv_ws = [ws[0], ws[0][:, :64], ws[1]]
        got = _jitted_finished(x, qkv_ws, bs, g, cos, sin, e, interpret=interpret)
        want = qkv_reference(x, qkv_ws, bs, g, 1e-6, cos, sin, e)
        gate, up = reference(x, ws[:1] * 2, g, 1e-6)[0], reference(x, [ws[0] * 0.5], g, 1e-6)[0]
        want += [jax.nn.silu(gate) * up, x.astype(jnp.float32)[:, :96] + reference(x, ws[:1])[0]]
        worst = max([worst] + [err(y, r) for y, r in zip(got, want)])
    return worst


@functools.partial(jax.jit, static_argnames=("splits", "interpret"))
def _jitted(x, ws, norm, *, splits=None, interpret=False):
    return project(x, ws, norm=norm, eps=1e-6, block_n=32, block_k=64, splits=splits, rows=16, interpret=interpret)


@functools.partial(jax.jit, static_argnames=("head_dim", "interpret"))
def _jitted_finished(x, ws, bs, norm, cos, sin, head_dim, *, interpret=False):
    q, k, v = qkv(x, ws, bs, norm=norm, eps=1e-6, cos=cos, sin=sin, head_dim=head_dim, block_k=64, rows=16,
                  interpret=interpret)
    mlp = glu(x, ws[0], ws[0] * 0.5, norm=norm, eps=1e-6, block_k=64, rows=16, interpret=interpret)
    res = add_projection(x, ws[0], x[:, :96], block_k=64, rows=16, interpret=interpret)
    return [q, k, v, mlp, res]
