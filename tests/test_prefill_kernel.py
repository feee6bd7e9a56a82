"""Prefill attention over cache rows read in place (kernels/prefill_attention.py), Pallas interpret mode on CPU,
alone and in the model's prefill (models/prefill.py)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from automem_jax.kernels import prefill_attention as prefill_kernel
from automem_jax.kernels.config import KernelConfig, PrefillAttentionTiling, XLA_ONLY
from automem_jax.models.kv_cache import KVCache
from automem_jax.models.prefill import Chunk, prefill


def _tiling(block_t: int = 64, block_s: int = 64) -> PrefillAttentionTiling:
    return PrefillAttentionTiling(block_t=block_t, block_s=block_s)


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
    out = prefill_kernel.prefill_attention(q, kn, vn, ck, cv, jnp.int32(1), rows, start,
                                           tiling=_tiling(block_t, block_s), interpret=True)
    ref = prefill_kernel.reference(q, kn, vn, ck, cv, 1, rows, start)
    assert out.shape == q.shape and out.dtype == jnp.bfloat16
    assert float(jnp.linalg.norm(out.astype(jnp.float32) - ref) / jnp.linalg.norm(ref)) < 1e-2


def test_padding_past_each_rows_length_is_skipped_and_not_read():
    """lengths: real queries match the reference over the real chunk only (the padding's K/V, huge, are not read),
    query blocks wholly past a row's length are zeros."""
    L, R, S, K, G, E, T = 1, 3, 64, 1, 2, 32, 48
    rng = np.random.default_rng(0)
    ck, cv = (jnp.asarray(rng.standard_normal((L, R, S, K, E)), jnp.bfloat16) for _ in range(2))
    q = jnp.asarray(rng.standard_normal((3, T, K * G, E)), jnp.bfloat16)
    kn, vn = (jnp.asarray(rng.standard_normal((3, T, K, E)), jnp.bfloat16) for _ in range(2))
    rows, start = jnp.asarray([2, 0, 1], jnp.int32), jnp.asarray([5, 0, 30], jnp.int32)
    lengths = jnp.asarray([T, 7, 20], jnp.int32)
    pad = (jnp.arange(T)[None, :] >= lengths[:, None])[:, :, None, None]
    kn, vn = (jnp.where(pad, 1e4, a).astype(a.dtype) for a in (kn, vn))
    out = prefill_kernel.prefill_attention(q, kn, vn, ck, cv, jnp.int32(0), rows, start, lengths,
                                           tiling=_tiling(16, 16), interpret=True).astype(jnp.float32)
    ref = prefill_kernel.reference(q, jnp.where(pad, 0, kn), jnp.where(pad, 0, vn), ck, cv, 0, rows, start)
    for r, n in enumerate([T, 7, 20]):
        np.testing.assert_allclose(out[r, :n], ref[r, :n], atol=3e-2, rtol=3e-2)
        first_dead = -(-n // 16) * 16  # blocks starting at or past the length
        assert bool(jnp.all(out[r, first_dead:] == 0)) and bool(jnp.all(jnp.isfinite(out[r])))
    assert prefill_kernel.probe_error(interpret=True) < 1e-2


def test_packed_rows_match_each_request_attended_alone():
    """first: requests laid out as T-token rows end to end (engine/packed_prefill.py), one spanning three rows with
    a head, one full row without, one short row after a head, and a dummy row: each request's real queries equal the
    reference over its own head and its whole chunk; the padding past each request's end is never read."""
    L, R, S, K, G, E, T = 1, 4, 96, 2, 2, 32, 16
    rng = np.random.default_rng(1)
    ck, cv = (jnp.asarray(rng.standard_normal((L, R, S, K, E)), jnp.bfloat16) for _ in range(2))
    spans = [(0, 3, 3, 10, 37), (3, 4, 1, 0, 16), (4, 5, 2, 40, 5)]  # (first row, end row, cache row, head, length)
    n = 6  # one dummy row
    q = jnp.asarray(rng.standard_normal((n, T, K * G, E)), jnp.bfloat16)
    kn, vn = (np.asarray(rng.standard_normal((n, T, K, E)), np.float32) for _ in range(2))
    first, rows, start, lengths = (np.zeros(n, np.int32) for _ in range(4))
    first[5], rows[5] = 5, 0  # the dummy: length 0
    for b0, b1, row, head, length in spans:
        for b in range(b0, b1):
            first[b], rows[b], start[b] = b0, row, head + (b - b0) * T
            lengths[b] = min(T, length - (b - b0) * T)
            kn[b, lengths[b]:] = vn[b, lengths[b]:] = 1e4  # padding: a read would show
    kn, vn = jnp.asarray(kn, jnp.bfloat16), jnp.asarray(vn, jnp.bfloat16)
    out = prefill_kernel.prefill_attention(q, kn, vn, ck, cv, jnp.int32(0), jnp.asarray(rows), jnp.asarray(start),
                                           jnp.asarray(lengths), jnp.asarray(first), tiling=_tiling(8, 16),
                                           interpret=True).astype(jnp.float32)
    for b0, b1, row, head, length in spans:
        flat = lambda a: a[b0:b1].reshape(1, (b1 - b0) * T, *a.shape[2:])[:, :length]  # noqa: E731
        ref = prefill_kernel.reference(flat(q), flat(kn), flat(vn), ck, cv, 0, jnp.asarray([row]),
                                       jnp.asarray([head]))
        np.testing.assert_allclose(flat(out), ref, atol=3e-2, rtol=3e-2)
    assert bool(jnp.all(out[5] == 0))
    with pytest.raises(ValueError, match="divide the row length"):
        prefill_kernel.prefill_attention(q, kn, vn, ck, cv, jnp.int32(0), jnp.asarray(rows), jnp.asarray(start),
                                         jnp.asarray(lengths), jnp.asarray(first), tiling=_tiling(16, 12),
                                         interpret=True)


def test_bad_shapes_name_what_is_expected():
    q = jnp.zeros((1, 8, 4, 64), jnp.bfloat16)
    kv = jnp.zeros((1, 8, 3, 64), jnp.bfloat16)  # 3 kv heads do not divide 4 query heads
    cache = jnp.zeros((1, 2, 16, 3, 64), jnp.bfloat16)
    with pytest.raises(ValueError, match="K dividing H"):
        prefill_kernel.prefill_attention(q, kv, kv, cache, cache, jnp.int32(0), jnp.zeros((1,), jnp.int32),
                                         jnp.zeros((1,), jnp.int32), tiling=_tiling(), interpret=True)
    assert "bf16" in prefill_kernel.supports(jnp.float32, 64) and "head_dim" in prefill_kernel.supports(
        jnp.bfloat16, 40)


def test_in_model_prefill_in_place_equals_the_window_path():
    """kernels.prefill_attention = "kernel": a prefill into cache rows (heads already in the cache) gives the logits
    and the cache of the XLA window-copy path, and takes no window copy of the cache; a row's padding (length) does
    not change its real positions."""
    from automem_jax.models.testing import tiny_decoder
    model = tiny_decoder(2, bias=True)
    cfg = model.config
    rng = np.random.default_rng(0)
    shape = (cfg.num_layers, 4, 64, cfg.num_kv_heads, cfg.head_dim)
    cache = KVCache(*(jnp.asarray(rng.standard_normal(shape), jnp.bfloat16) for _ in range(2)))
    tokens = jnp.asarray(rng.integers(3, 200, (2, 16)), jnp.int32)
    start = jnp.asarray([0, 21], jnp.int32)
    positions = start[:, None] + jnp.arange(16, dtype=jnp.int32)[None, :]
    rows = jnp.asarray([3, 1], jnp.int32)
    kernels = KernelConfig(decode_attention="xla", prefill_attention="kernel", projections="xla", interpret=True)

    def run(kernels, lengths=(16, 16)):
        def fwd(t, p, c, r):
            h, c = prefill(model, Chunk(t, p, r, jnp.asarray(lengths, jnp.int32)), c, window=48, kernels=kernels)
            return model.lm_head(h), c
        jaxpr = str(jax.make_jaxpr(fwd)(tokens, positions, cache, rows))
        logits, new = jax.jit(fwd)(tokens, positions, cache, rows)
        return np.asarray(logits, np.float32), new, jaxpr

    ref, ref_cache, ref_jaxpr = run(XLA_ONLY)
    got, got_cache, jaxpr = run(kernels)
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
    # row 1 holds 9 real tokens (7 of padding, as the engine's buckets do): its real positions are unchanged
    cut, _, _ = run(kernels, lengths=(16, 9))
    np.testing.assert_allclose(cut[0], got[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cut[1, :9], got[1, :9], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="packed rows .Chunk.first. need the in-place prefill kernel"):
        prefill(model, Chunk(tokens, positions, rows, jnp.asarray([16, 16]), first=jnp.asarray([0, 1])), cache)
