"""Decode projection kernel (models/gemv_kernel.py), run in Pallas interpret mode on CPU."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from automem_jax.models import gemv_kernel


def _rel(a, b) -> float:
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize("m,splits,norm,rows", [(1, 1, True, None), (3, 2, True, None), (16, 3, False, None),
                                                (5, None, True, None), (40, 2, True, 16), (40, 1, False, None)])
def test_project_matches_fp32_reference(m, splits, norm, rows):
    """Depth and widths that are not multiples of the blocks (masked tails), one weight and several sharing x;
    batches past 16 rows as several row tiles (the last one masked) or one tile of LARGE_ROWS."""
    rng = np.random.default_rng(m)
    d = 150
    x = jnp.asarray(rng.standard_normal((m, d)), jnp.bfloat16)
    ws = [jnp.asarray(0.1 * rng.standard_normal((d, n)), jnp.bfloat16) for n in (70, 16, 33)]
    g = jnp.asarray(1 + 0.1 * rng.standard_normal(d), jnp.float32) if norm else None
    got = gemv_kernel.project(x, ws, norm=g, eps=1e-5, block_n=32, block_k=64, splits=splits, rows=rows,
                              interpret=True)
    ref = gemv_kernel.reference(x, ws, g, 1e-5)
    for y, r, w in zip(got, ref, ws):
        assert y.shape == (m, w.shape[1]) and y.dtype == jnp.float32
        assert _rel(y, r) < 1e-2  # x rounded to bf16 after the norm, as XLA's path feeds its dot


def test_project_partials_sum_to_the_projections_side_by_side():
    """One output [splits, M, sum N_i] whose split sums are the weights' projections, in weight order."""
    rng = np.random.default_rng(3)
    d = 300
    x = jnp.asarray(rng.standard_normal((2, d)), jnp.bfloat16)
    ws = [jnp.asarray(0.1 * rng.standard_normal((d, n)), jnp.bfloat16) for n in (96, 32, 32)]
    g = jnp.asarray(1 + 0.1 * rng.standard_normal(d), jnp.float32)
    parts = gemv_kernel.project_partials(x, ws, norm=g, eps=1e-5, block_k=64, interpret=True)
    assert parts.dtype == jnp.float32 and parts.shape[1:] == (2, 160) and parts.shape[0] > 1  # split over d
    ref = jnp.concatenate(gemv_kernel.reference(x, ws, g, 1e-5), axis=1)
    assert _rel(parts.sum(axis=0), ref) < 1e-2


@pytest.mark.parametrize("m,bias,rows", [(1, True, None), (7, False, None), (37, True, 16)])
def test_finished_outputs_match_fp32_references(m, bias, rows):
    """The launches that finish their outputs in the kernel: q/k/v with bias and RoPE (a program owns matching
    columns of both halves of a head), the SiLU gate of gate/up, and a projection plus residual; past 16 rows
    over row tiles (each program's rows of x, cos/sin, residual and output)."""
    rng = np.random.default_rng(10 + m)
    d, e = 150, 32
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    x = jnp.asarray(f32(m, d), jnp.bfloat16)
    ws = [jnp.asarray(0.1 * f32(d, n), jnp.bfloat16) for n in (4 * e, 2 * e, 2 * e)]
    bs = [jnp.asarray(f32(w.shape[1]), jnp.bfloat16) if bias else None for w in ws]
    g = jnp.asarray(1 + 0.1 * f32(d), jnp.float32)
    ang = jnp.asarray(rng.uniform(0, 6.3, (m, e // 2)), jnp.float32)
    cos, sin = (jnp.concatenate([f(ang)] * 2, axis=-1) for f in (jnp.cos, jnp.sin))
    got = gemv_kernel.qkv(x, ws, bs, norm=g, eps=1e-5, cos=cos, sin=sin, head_dim=e, block_k=64, rows=rows,
                          interpret=True)
    want = gemv_kernel.qkv_reference(x, ws, bs, g, 1e-5, cos, sin, e)
    for y, r in zip(got, want):
        assert y.dtype == jnp.bfloat16 and _rel(y.astype(jnp.float32), r) < 1e-2
    # a wrong rotation (no RoPE) is far off: the check above can fail
    assert _rel(got[0].astype(jnp.float32), gemv_kernel.reference(x, ws[:1], g, 1e-5)[0] + (
        0 if bs[0] is None else bs[0].astype(jnp.float32))) > 0.3
    wu = jnp.asarray(0.1 * f32(d, 80), jnp.bfloat16)
    wg = jnp.asarray(0.1 * f32(d, 80), jnp.bfloat16)
    mlp = gemv_kernel.glu(x, wg, wu, norm=g, eps=1e-5, block_k=64, rows=rows, interpret=True)
    gate, up = gemv_kernel.reference(x, [wg, wu], g, 1e-5)
    assert mlp.shape == (m, 80) and _rel(mlp.astype(jnp.float32), jax.nn.silu(gate) * up) < 1e-2
    res = jnp.asarray(f32(m, 80), jnp.bfloat16)
    out = gemv_kernel.add_projection(x, wu, res, block_k=64, rows=rows, interpret=True)
    want = res.astype(jnp.float32) + gemv_kernel.reference(x, [wu])[0]
    assert out.dtype == jnp.bfloat16 and _rel(out.astype(jnp.float32), want) < 1e-2


def test_plan_fills_the_gpu_without_empty_splits():
    assert gemv_kernel.plan(18, 896, 128, 264) == (7, 1)     # Qwen q/k/v at batch 1: one chunk per split
    assert gemv_kernel.plan(14, 4864, 128, 264) == (19, 2)   # Qwen down projection: 14 column blocks
    assert gemv_kernel.plan(400, 896, 128, 264) == (1, 7)    # enough column blocks: no split
    splits, per = gemv_kernel.plan(9, 1000, 128, 264)
    assert (splits - 1) * per < 8 <= splits * per           # 8 chunks, every split holds one
    # programs that read the whole input: batch 1 narrows the column blocks, batch 256 first the row tiles
    assert gemv_kernel.tiles(1, [896, 128, 128], 264) == (16, 16) and gemv_kernel.tiles(1, [4864], 264) == (16, 32)
    assert gemv_kernel.tiles(256, [576, 192, 192], 264) == (32, 32)  # SmolLM2 q/k/v: 240 programs
    assert gemv_kernel.tiles(256, [4864], 264) == (64, 64)           # Qwen gate/up: 76 x 4 already


def test_bad_shapes_are_refused_with_the_reason(monkeypatch):
    x = jnp.zeros((0, 32), jnp.bfloat16)
    with pytest.raises(ValueError, match=r"x \[M, D\]"):
        gemv_kernel.project(x, [jnp.zeros((32, 8), jnp.bfloat16)], interpret=True)
    with pytest.raises(ValueError, match="weights"):
        gemv_kernel.project(jnp.zeros((2, 32), jnp.bfloat16), [jnp.zeros((31, 8), jnp.bfloat16)], interpret=True)
    assert not gemv_kernel.supported(jnp.float32, 1) and not gemv_kernel.supported(jnp.bfloat16, 9)
    monkeypatch.setattr(gemv_kernel, "INTERPRET", True)
    monkeypatch.setattr(gemv_kernel, "LARGE_BATCH", True)
    # past ROWS only without LoRA, and then the outputs finish in the kernel; MAX_BATCH..ROWS stays XLA's
    assert gemv_kernel.supported(jnp.bfloat16, 17) and not gemv_kernel.supported(jnp.bfloat16, 17, lora=True)
    assert gemv_kernel.supported(jnp.bfloat16, 4, lora=True) and not gemv_kernel.supported(jnp.float32, 17)
    assert not gemv_kernel.supported(jnp.bfloat16, 9)
    assert gemv_kernel.finished(17, False) and not gemv_kernel.finished(17, True)
    assert gemv_kernel.finished(4, False) == gemv_kernel.FINISH_IN_KERNEL
    monkeypatch.setattr(gemv_kernel, "LARGE_BATCH", False)
    assert not gemv_kernel.supported(jnp.bfloat16, 17)


def _step(model, cache, tokens, pos, window, layer_params, adapter_ids):
    def fwd(t, p, c, lp, a):  # a fresh function per call: jax.jit caches traces by function
        return model(t, p, cache=c, kv_window=window, layer_params=lp, adapter_ids=a)
    jaxpr = str(jax.make_jaxpr(fwd)(tokens, pos, cache, layer_params, adapter_ids))
    logits, new_cache = jax.jit(fwd)(tokens, pos, cache, layer_params, adapter_ids)
    return np.asarray(logits, np.float32)[:, 0], new_cache, jaxpr.count("name=gemv")


@pytest.mark.parametrize("unstacked,lora,bias,finish,split_down,large", [
    (True, False, True, False, False, False), (True, False, True, True, False, False),
    (True, False, False, True, True, False), (False, True, False, False, False, False),
    (True, False, True, False, False, True), (True, True, False, False, False, True)])
def test_in_model_projections_match_the_xla_decode_path(monkeypatch, unstacked, lora, bias, finish, split_down,
                                                        large):
    """A decode step with the projection kernels (interpret mode) equals XLA's: norm, bias, RoPE, residuals, the
    SiLU gate and each row's LoRA adapter (slot 1, slot 0, base) are wired right, and the cache gets the same K/V.
    finish: gemv_kernel.FINISH_IN_KERNEL (bias, RoPE, SiLU, residual in the kernels); split_down: there, the down
    projection read by split-K programs, its residual added by XLA (large weights). large: the batch is past
    ROWS: the finished launches over row tiles without LoRA, XLA's projections with it (no launch)."""
    from automem_jax.models import decoder as decoder_lib
    from automem_jax.models.lora import LoRAConfig, apply_lora
    from automem_jax.models.testing import tiny_decoder
    model = tiny_decoder(4, bias=bias)
    cfg = model.config
    rng = np.random.default_rng(1)
    adapter_ids = None
    if lora:
        apply_lora(model, LoRAConfig(rank=4, alpha=8, num_slots=2), nnx.Rngs(2))
        for name in ("q_proj", "v_proj", "o_proj", "up_proj", "down_proj"):
            p = getattr(model.layers, name)
            p.lora_b[...] = jnp.asarray(0.5 * rng.standard_normal(p.lora_b.shape), jnp.float32)
        adapter_ids = jnp.asarray([1, 0, -1], jnp.int32)
    batch, max_len, window = 3, 64, 48
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    cache = decoder_lib.KVCache(*(jnp.asarray(rng.standard_normal(shape), jnp.bfloat16) for _ in range(2)))
    tokens = jnp.asarray(rng.integers(3, 256, size=(batch, 1)), jnp.int32)
    pos = jnp.asarray([[0], [17], [window - 1]], jnp.int32)
    layer_params = decoder_lib.unstack_layers(model) if unstacked else None
    monkeypatch.setattr(decoder_lib, "DECODE_GEMV", False)
    ref, ref_cache, ref_n = _step(model, cache, tokens, pos, window, layer_params, adapter_ids)
    monkeypatch.setattr(decoder_lib, "DECODE_GEMV", True)
    monkeypatch.setattr(gemv_kernel, "INTERPRET", True)
    monkeypatch.setattr(gemv_kernel, "FINISH_IN_KERNEL", finish)
    monkeypatch.setattr(gemv_kernel, "SPLIT_BYTES", 0 if split_down else gemv_kernel.SPLIT_BYTES)
    monkeypatch.setattr(gemv_kernel, "MAX_BATCH", 2 if large else gemv_kernel.MAX_BATCH)
    monkeypatch.setattr(gemv_kernel, "ROWS", 2 if large else gemv_kernel.ROWS)  # batch 3 is past ROWS
    monkeypatch.setattr(gemv_kernel, "LARGE_BATCH", True)
    got, got_cache, got_n = _step(model, cache, tokens, pos, window, layer_params, adapter_ids)
    launches = 0 if large and lora else 4 * (cfg.num_layers if unstacked else 1)  # qkv, o, gate/up, down per layer
    assert ref_n == 0 and got_n == launches
    for g, r in ((got_cache.k, ref_cache.k), (got_cache.v, ref_cache.v)):
        assert _rel(g.astype(jnp.float32), r.astype(jnp.float32)) < 1e-2
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 2e-2
    # greedy picks agree up to near-ties (random weights give flat logits): XLA scores the kernel's pick within
    # bf16 rounding of its own best
    assert (ref.max(-1) - ref[np.arange(batch), got.argmax(-1)] < 1e-2).all()
    if lora:  # the adapter moved the logits (else the LoRA wiring would be untested)
        monkeypatch.setattr(decoder_lib, "DECODE_GEMV", True)
        base, _, _ = _step(model, cache, tokens, pos, window, layer_params, jnp.asarray([-1, -1, -1], jnp.int32))
        assert np.abs(base[0] - got[0]).max() > 0.1 and np.abs(base[2] - got[2]).max() == 0
