"""Decode projection kernel (kernels/gemv.py), run in Pallas interpret mode on CPU, alone and in the model."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from automem_jax.kernels import gemv
from automem_jax.kernels.config import GemvTiling, KernelConfig, XLA_ONLY

SMALL = GemvTiling(block_n=32, block_k=64)


def _rel(a, b) -> float:
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize("m,splits,norm", [(1, 1, True), (3, 2, True), (16, 3, False), (5, None, True)])
def test_project_matches_fp32_reference(m, splits, norm):
    """Depth and widths that are not multiples of the blocks (masked tails), one weight and several sharing x."""
    rng = np.random.default_rng(m)
    d = 150
    x = jnp.asarray(rng.standard_normal((m, d)), jnp.bfloat16)
    ws = [jnp.asarray(0.1 * rng.standard_normal((d, n)), jnp.bfloat16) for n in (70, 16, 33)]
    g = jnp.asarray(1 + 0.1 * rng.standard_normal(d), jnp.float32) if norm else None
    got = gemv.project(x, ws, norm=g, eps=1e-5, tiling=SMALL, splits=splits, interpret=True)
    ref = gemv.reference(x, ws, g, 1e-5)
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
    parts = gemv.project_partials(x, ws, norm=g, eps=1e-5, tiling=dataclasses.replace(SMALL, block_n=64),
                                  interpret=True)
    assert parts.dtype == jnp.float32 and parts.shape[1:] == (2, 160) and parts.shape[0] > 1  # split over d
    ref = jnp.concatenate(gemv.reference(x, ws, g, 1e-5), axis=1)
    assert _rel(parts.sum(axis=0), ref) < 1e-2
    assert gemv.probe_error(GemvTiling(), interpret=True) < 2e-2


def test_plan_fills_the_gpu_without_empty_splits():
    assert gemv.plan(18, 896, 128, 264) == (7, 1)     # Qwen q/k/v at batch 1: one chunk per split
    assert gemv.plan(14, 4864, 128, 264) == (19, 2)   # Qwen down projection: 14 column blocks
    assert gemv.plan(400, 896, 128, 264) == (1, 7)    # enough column blocks: no split
    splits, per = gemv.plan(9, 1000, 128, 264)
    assert (splits - 1) * per < 8 <= splits * per     # 8 chunks, every split holds one


def test_bad_shapes_are_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"x \[M <= 16, D\]"):
        gemv.project(jnp.zeros((0, 32), jnp.bfloat16), [jnp.zeros((32, 8), jnp.bfloat16)], interpret=True)
    with pytest.raises(ValueError, match="weights"):
        gemv.project(jnp.zeros((2, 32), jnp.bfloat16), [jnp.zeros((31, 8), jnp.bfloat16)], interpret=True)
    assert "bf16" in gemv.supports(jnp.float32, 1, GemvTiling())
    assert "1..8 rows" in gemv.supports(jnp.bfloat16, 9, GemvTiling())
    assert gemv.supports(jnp.bfloat16, 8, GemvTiling()) is None
    assert gemv.supports(jnp.bfloat16, 16, GemvTiling(max_batch=16)) is None


def _step(model, cache, tokens, pos, window, layer_params, adapter_ids, kernels):
    from automem_jax.models.decode import decode_step

    def fwd(t, p, c, lp, a):
        return decode_step(model, t, p, c, adapter_ids=a, window=window, kernels=kernels, layer_params=lp)
    jaxpr = str(jax.make_jaxpr(fwd)(tokens, pos, cache, layer_params, adapter_ids))
    logits, new_cache = jax.jit(fwd)(tokens, pos, cache, layer_params, adapter_ids)
    return np.asarray(logits, np.float32)[:, 0], new_cache, jaxpr.count("name=gemv")


@pytest.mark.parametrize("unstacked,lora,bias,batch", [(True, False, True, 3), (False, True, False, 3),
                                                       (True, True, True, 3), (True, False, False, 9)])
def test_in_model_projections_match_the_xla_decode_path(unstacked, lora, bias, batch):
    """A decode step with the projection kernels (interpret mode) equals XLA's: norm, bias, RoPE, residuals, the
    SiLU gate and each row's LoRA adapter (slot 1, slot 0, base) are wired right, and the cache gets the same K/V.
    A batch past gemv.max_batch (9 > 8) runs XLA's projections (no launch)."""
    from automem_jax.models.decoder import unstack_layers
    from automem_jax.models.kv_cache import KVCache
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
        adapter_ids = jnp.asarray(([1, 0, -1] * 3)[:batch], jnp.int32)
    max_len, window = 64, 48
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    cache = KVCache(*(jnp.asarray(rng.standard_normal(shape), jnp.bfloat16) for _ in range(2)))
    tokens = jnp.asarray(rng.integers(3, 256, size=(batch, 1)), jnp.int32)
    pos = jnp.asarray(rng.integers(0, window, size=(batch, 1)), jnp.int32)
    layer_params = unstack_layers(model) if unstacked else None
    ref, ref_cache, ref_n = _step(model, cache, tokens, pos, window, layer_params, adapter_ids, XLA_ONLY)
    kernels = KernelConfig(decode_attention="xla", prefill_attention="xla", projections="kernel", interpret=True)
    got, got_cache, got_n = _step(model, cache, tokens, pos, window, layer_params, adapter_ids, kernels)
    launches = 0 if batch > 8 else 4 * (cfg.num_layers if unstacked else 1)  # qkv, o, gate/up, down per layer
    assert ref_n == 0 and got_n == launches
    for g, r in ((got_cache.k, ref_cache.k), (got_cache.v, ref_cache.v)):
        assert _rel(g.astype(jnp.float32), r.astype(jnp.float32)) < 1e-2
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 2e-2
    # greedy picks agree up to near-ties (random weights give flat logits): XLA scores the kernel's pick within
    # bf16 rounding of its own best
    assert (ref.max(-1) - ref[np.arange(batch), got.argmax(-1)] < 1e-2).all()
    if lora:  # the adapter moved the logits (else the LoRA wiring would be untested)
        base, _, _ = _step(model, cache, tokens, pos, window, layer_params, jnp.full((batch,), -1, jnp.int32),
                           kernels)
        assert np.abs(base[0] - got[0]).max() > 0.1 and np.abs(base[2] - got[2]).max() == 0
