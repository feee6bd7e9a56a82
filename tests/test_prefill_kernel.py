"""Prefill attention over cache rows read in place (models/prefill_kernel.py), Pallas interpret mode on CPU."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from automem_jax.models import prefill_kernel


@pytest.mark.parametrize("block_t,block_s", [(16, 16), (16, 32), (32, 16)])
def test_kernel_matches_fp32_reference(block_t, block_s):
    """Rows with no head, a head ending mid-block and a long one, in permuted cache rows; a chunk that is not a
    multiple of the query block. Entries past each row's head hold huge values: a read of them would show."""
    L, R, S, K, G, E, T = 2, 5, 96, 2, 3, 64, 40
    rng = np.random.default_rng(block_t + block_s)
    ck, cv = (jnp.asarray(rng.standard_normal((L, R, S, K, E)), jnp.bfloat16) for _ in range(2))
    q = jnp.asarray(rng.standard_normal((3, T, K * G, E)), jnp.bfloat16)
    kn, vn = (jnp.asarray(rng.standard_normal((3, T, K, E)), jnp.bfloat16) for _ in range(2))
    rows, start = jnp.asarray([4, 0, 2], jnp.int32), jnp.asarray([0, 21, 56], jnp.int32)
    beyond = jnp.zeros((R, S), bool).at[rows].set(jnp.arange(S)[None, :] >= start[:, None])
    ck, cv = (jnp.where(beyond[None, :, :, None, None], 1e4, c).astype(c.dtype) for c in (ck, cv))
    out = prefill_kernel.prefill_attention_cache(q, kn, vn, ck, cv, jnp.int32(1), rows, start, block_t=block_t,
                                                 block_s=block_s, interpret=True)
    ref = prefill_kernel.reference(q, kn, vn, ck, cv, 1, rows, start)
    assert out.shape == q.shape and out.dtype == jnp.bfloat16
    assert float(jnp.linalg.norm(out.astype(jnp.float32) - ref) / jnp.linalg.norm(ref)) < 1e-2


def test_bad_shapes_name_what_is_expected():
    q = jnp.zeros((1, 8, 4, 64), jnp.bfloat16)
    kv = jnp.zeros((1, 8, 3, 64), jnp.bfloat16)  # 3 kv heads do not divide 4 query heads
    cache = jnp.zeros((1, 2, 16, 3, 64), jnp.bfloat16)
    with pytest.raises(ValueError, match="K dividing H"):
        prefill_kernel.prefill_attention_cache(q, kv, kv, cache, cache, jnp.int32(0), jnp.zeros((1,), jnp.int32),
                                               jnp.zeros((1,), jnp.int32), interpret=True)
    assert not prefill_kernel.supported(jnp.float32, 64)


@pytest.mark.parametrize("unstacked", [False, True])
def test_in_model_prefill_in_place_equals_the_window_path(monkeypatch, unstacked):
    """decoder.PREFILL_ATTENTION_IMPL = "kernel": a prefill into cache rows (heads already in the cache) gives the
    logits and the cache of the window-copy path, with the layer scan and with straight-line layers, and takes no
    window copy of the cache."""
    from automem_jax.models import decoder as decoder_lib
    from automem_jax.models.testing import tiny_decoder
    model = tiny_decoder(2, bias=True)
    cfg = model.config
    rng = np.random.default_rng(0)
    shape = (cfg.num_layers, 4, 64, cfg.num_kv_heads, cfg.head_dim)
    cache = decoder_lib.KVCache(*(jnp.asarray(rng.standard_normal(shape), jnp.bfloat16) for _ in range(2)))
    tokens = jnp.asarray(rng.integers(3, 200, (2, 16)), jnp.int32)
    start = jnp.asarray([0, 21], jnp.int32)
    positions = start[:, None] + jnp.arange(16, dtype=jnp.int32)[None, :]
    rows = jnp.asarray([3, 1], jnp.int32)
    layer_params = decoder_lib.unstack_layers(model) if unstacked else None

    def run():
        def fwd(t, p, c, r, lp):
            return model(t, p, cache=c, cache_rows=r, kv_window=48, layer_params=lp)
        jaxpr = str(jax.make_jaxpr(fwd)(tokens, positions, cache, rows, layer_params))
        logits, new = jax.jit(fwd)(tokens, positions, cache, rows, layer_params)
        return np.asarray(logits, np.float32), new, jaxpr

    ref, ref_cache, ref_jaxpr = run()
    monkeypatch.setattr(decoder_lib, "PREFILL_ATTENTION_IMPL", "kernel")
    monkeypatch.setattr(prefill_kernel, "INTERPRET", True)
    got, got_cache, jaxpr = run()
    assert "pallas_call" in jaxpr and "prefill_attention_cache" in jaxpr
    assert jaxpr.count(" gather[") < ref_jaxpr.count(" gather[")  # the window gathers are gone
    for a, b in ((got_cache.k, ref_cache.k), (got_cache.v, ref_cache.v)):
        assert jnp.array_equal(a[0], b[0])  # layer 0's new K/V do not depend on attention numerics
        err = jnp.linalg.norm((a - b).astype(jnp.float32)) / jnp.linalg.norm(b.astype(jnp.float32))
        assert err < 1e-2  # later layers' do, slightly; everything outside the chunk's entries is untouched
    written = jnp.zeros((4, 64), bool).at[rows[:, None], positions].set(True)
    for a, old in ((got_cache.k, cache.k), (got_cache.v, cache.v)):
        assert jnp.array_equal(jnp.where(written[None, :, :, None, None], 0, a),
                               jnp.where(written[None, :, :, None, None], 0, old))
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 2e-2
    assert (got.argmax(-1) == ref.argmax(-1)).mean() > 0.9
