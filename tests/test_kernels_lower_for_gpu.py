"""Every Pallas kernel lowers to Triton for a CUDA GPU, checked on CPU.

`lower(lowering_platforms=("cuda",))` runs the Pallas -> Triton lowering that a GPU compile starts with. On a GPU a
kernel that fails it is replaced by its XLA fallback with one warning (kernels/probe.py), so a lowering error there
costs a device run and shows only as a slower figure; here it fails the test. (What comes after the lowering,
Triton's own compile to PTX, still needs a GPU.)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from automem_jax.kernels import decode_attention, gemv, prefill_attention
from automem_jax.kernels.config import DecodeAttentionTiling, GemvTiling, PrefillAttentionTiling

BF16, I32, F32 = jnp.bfloat16, jnp.int32, jnp.float32


def _spec(shape, dtype=BF16):
    return jax.ShapeDtypeStruct(shape, dtype)


def _lower(fn, *args, **static) -> str:
    text = fn.trace(*args, **static).lower(lowering_platforms=("cuda",)).as_text()
    assert "triton" in text  # the kernel became a Triton custom call (not an XLA fallback)
    return text


@pytest.mark.parametrize("packed", [False, True])
def test_prefill_kernel_lowers(packed):
    """SmolLM2-like heads (9 query heads over 3 kv heads, head_dim 64); packed: 64-token rows, first row indices."""
    n, t, layers, slots, seq = 8, 64, 2, 4, 256
    cache = _spec((layers, slots, seq, 3, 64))
    rows = _spec((n,), I32)
    _lower(prefill_attention._jitted, _spec((n, t, 9, 64)), _spec((n, t, 3, 64)), _spec((n, t, 3, 64)), cache,
           cache, _spec((), I32), rows, rows, rows, rows if packed else None, tiling=PrefillAttentionTiling())


@pytest.mark.parametrize("splits", [1, 3])
def test_decode_kernel_lowers(splits):
    b, layers, seq = 4, 2, 256
    cache = _spec((layers, b, seq, 3, 64))
    kv_new = _spec((b, 1, 3, 64))
    _lower(decode_attention._jitted, _spec((b, 1, 9, 64)), kv_new, kv_new, cache, cache, _spec((), I32),
           _spec((b,), I32), window=192, tiling=DecodeAttentionTiling(), splits=splits)


@pytest.mark.parametrize("splits", [1, 3])
def test_decode_kernel_from_fused_qkv_sums_lowers(splits):
    b, h, k, e = 4, 9, 3, 64
    cache = _spec((2, b, 256, k, e))
    biases = (_spec((h * e,)), _spec((k * e,)), _spec((k * e,)))
    _lower(decode_attention._jitted_qkv, _spec((2, b, (h + 2 * k) * e), F32), cache, cache, _spec((), I32),
           _spec((b,), I32), _spec((b, e), F32), _spec((b, e), F32), biases, window=192, num_heads=h,
           tiling=DecodeAttentionTiling(), splits=splits)


@pytest.mark.parametrize("rows,splits", [(1, 1), (1, 2), (8, 2)])
def test_gemv_kernels_lower(rows, splits):
    d, e = 576, 64
    ws = [_spec((d, 9 * e)), _spec((d, 3 * e)), _spec((d, 3 * e))]
    _lower(gemv._jitted, _spec((rows, d)), ws, _spec((d,), F32), tiling=GemvTiling(), splits=splits)
    _lower(gemv._jitted_partials, _spec((rows, d)), ws, _spec((d,), F32), tiling=GemvTiling())
