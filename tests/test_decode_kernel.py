"""Pallas flash-decoding kernel (models/decode_kernel.py), run in Pallas interpret mode on CPU."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from automem_jax.models import decode_kernel


@pytest.mark.parametrize("splits,heads,block_s", [(1, 1, 32), (4, 1, 16), (1, 2, 32), (3, 2, 16)])
def test_kernel_matches_fp32_reference(splits, heads, block_s):
    L, B, S, K, E, H, W = 3, 4, 96, 2, 64, 6, 80
    rng = np.random.default_rng(splits * 10 + heads)
    ck = jnp.asarray(rng.standard_normal((L, B, S, K, E)), jnp.bfloat16)
    cv = jnp.asarray(rng.standard_normal((L, B, S, K, E)), jnp.bfloat16)
    q = jnp.asarray(rng.standard_normal((B, 1, H, E)), jnp.bfloat16)
    pos = jnp.asarray([0, 17, 50, W - 1], jnp.int32)  # first entry only, mid-block, last entry of the window
    # entries past each row's position hold huge values: any read of them would show in the output
    beyond = jnp.arange(S)[None, :, None, None] > pos[:, None, None, None]
    ck = ck.at[2].set(jnp.where(beyond, 1e4, ck[2]).astype(ck.dtype))
    cv = cv.at[2].set(jnp.where(beyond, 1e4, cv[2]).astype(cv.dtype))
    out = decode_kernel.decode_attention_cache(q, ck, cv, jnp.int32(2), pos, window=W, block_s=block_s,
                                               splits=splits, heads=heads, interpret=True)
    ref = decode_kernel.reference(q, ck, cv, 2, pos, W)
    assert out.shape == (B, 1, H, E) and out.dtype == jnp.bfloat16
    err = float(jnp.linalg.norm(out.astype(jnp.float32) - ref) / jnp.linalg.norm(ref))
    assert err < 1e-2, err


@pytest.mark.parametrize("splits,heads,block_s", [(1, 1, 32), (4, 1, 16), (3, 2, 16)])
def test_kernel_writes_the_new_kv_in_place_and_attends_it(splits, heads, block_s):
    """kv_new: the kernel stores the step's K/V at each row's position (as the model's scatter would, also for a
    position past the window) and its output equals the reference over the cache with them written. The old
    content at the position (1e4) must not leak into the output. A row parked past the cache (a done slot,
    steps.decode) reads and writes nothing and gets 0."""
    L, B, S, K, E, H, W = 2, 5, 96, 2, 64, 6, 80
    rng = np.random.default_rng(7 + splits)
    ck, cv = (jnp.asarray(rng.standard_normal((L, B, S, K, E)), jnp.bfloat16) for _ in range(2))
    q = jnp.asarray(rng.standard_normal((B, 1, H, E)), jnp.bfloat16)
    kn, vn = (jnp.asarray(rng.standard_normal((B, 1, K, E)), jnp.bfloat16) for _ in range(2))
    pos = jnp.asarray([0, 32, 47, W + 3, S + 5], jnp.int32)  # block start, mid, past the window, past the cache
    stale = jnp.arange(S)[None, :, None, None] >= pos[:, None, None, None]
    ck = ck.at[1].set(jnp.where(stale, 1e4, ck[1]).astype(ck.dtype))
    cv = cv.at[1].set(jnp.where(stale, 1e4, cv[1]).astype(cv.dtype))
    rows = jnp.arange(B)
    want_k = ck.at[1, rows, pos].set(kn[:, 0], mode="drop")
    want_v = cv.at[1, rows, pos].set(vn[:, 0], mode="drop")
    out, ck2, cv2 = decode_kernel.decode_attention_cache(q, ck, cv, jnp.int32(1), pos, window=W, kv_new=(kn, vn),
                                                         block_s=block_s, splits=splits, heads=heads, interpret=True)
    assert jnp.array_equal(ck2, want_k) and jnp.array_equal(cv2, want_v)
    ref = decode_kernel.reference(q, want_k, want_v, 1, pos, W)[:4]
    err = float(jnp.linalg.norm(out[:4].astype(jnp.float32) - ref) / jnp.linalg.norm(ref))
    assert err < 1e-2, err  # rows past the window attend the whole window (and not the new token) on both sides
    assert not jnp.any(out[4])  # parked


def test_kernel_on_a_micro_batch_reads_and_writes_only_its_cache_rows():
    """row0: batch row b is cache row row0 + b (a micro-batch, models/decode_micro_batch.py); the other rows are left
    as they were."""
    L, R, S, K, E, H, W = 2, 6, 64, 2, 64, 4, 48
    rng = np.random.default_rng(3)
    ck, cv = (jnp.asarray(rng.standard_normal((L, R, S, K, E)), jnp.bfloat16) for _ in range(2))
    q = jnp.asarray(rng.standard_normal((2, 1, H, E)), jnp.bfloat16)
    kn, vn = (jnp.asarray(rng.standard_normal((2, 1, K, E)), jnp.bfloat16) for _ in range(2))
    pos = jnp.asarray([5, 40], jnp.int32)
    rows = jnp.asarray([3, 4])
    want_k, want_v = ck.at[1, rows, pos].set(kn[:, 0]), cv.at[1, rows, pos].set(vn[:, 0])
    out, ck2, cv2 = decode_kernel.decode_attention_cache(q, ck, cv, jnp.int32(1), pos, window=W, kv_new=(kn, vn),
                                                         block_s=16, splits=2, interpret=True, row0=3)
    assert jnp.array_equal(ck2, want_k) and jnp.array_equal(cv2, want_v)
    ref = decode_kernel.reference(q, want_k[:, 3:5], want_v[:, 3:5], 1, pos, W)
    assert float(jnp.linalg.norm(out.astype(jnp.float32) - ref) / jnp.linalg.norm(ref)) < 1e-2
    with pytest.raises(ValueError, match="row0"):
        decode_kernel.decode_attention_cache(q, ck, cv, jnp.int32(1), pos, window=W, interpret=True, row0=5)


def test_num_splits_fills_the_gpu_but_keeps_a_block_per_split():
    assert decode_kernel.num_splits(256, 3, 680, 64) == 1       # 768 programs already
    assert decode_kernel.num_splits(1, 2, 680, 64) == 11         # one row: one 64-entry block per split
    assert decode_kernel.num_splits(64, 2, 680, 64) == 4


def test_probe_runs_at_the_models_head_dim(monkeypatch):
    """The one-time probe is per head_dim (tiles are [block, head_dim]): 128 passes in interpret mode, an odd
    head_dim (no RoPE halves) is refused before any probe, and each head_dim is probed once."""
    assert decode_kernel.probe_error(interpret=True, head_dim=128) < 2e-2
    assert not decode_kernel.supported(jnp.bfloat16, jnp.bfloat16, 4, head_dim=63)
    seen = []
    monkeypatch.setattr(decode_kernel.jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(decode_kernel.kernel_probe, "passes", lambda name, *a, **k: seen.append(name) or True)
    decode_kernel._probe.cache_clear()
    try:
        assert all(decode_kernel.supported(jnp.bfloat16, jnp.bfloat16, 4, e) for e in (64, 128, 64, 128))
    finally:
        decode_kernel._probe.cache_clear()
    assert seen == ["decode_kernel(head_dim=64)", "decode_kernel(head_dim=128)"]


def test_bad_shapes_are_refused_with_the_reason():
    q = jnp.zeros((1, 1, 40, 64), jnp.bfloat16)  # 40 query heads on 2 kv heads: G=20 > the 16-row tile
    ck = jnp.zeros((1, 1, 8, 2, 64), jnp.bfloat16)
    with pytest.raises(ValueError, match="heads/kv_heads <= 16"):
        decode_kernel.decode_attention_cache(q, ck, ck, jnp.int32(0), jnp.zeros((1,), jnp.int32), window=8,
                                             interpret=True)
    assert not decode_kernel.supported(jnp.bfloat16, jnp.bfloat16, 4) or jax.default_backend() == "gpu"
    # the fused entry point: q/k/v columns that do not match the cache's heads, cos/sin of another width
    sums, trig = jnp.zeros((1, 1, 5 * 64), jnp.float32), jnp.zeros((1, 64), jnp.float32)
    with pytest.raises(ValueError, match=r"sums \[S, B, \(H \+ 2K\) \* E\]"):
        decode_kernel.decode_attention_qkv(sums, ck, ck, jnp.int32(0), jnp.zeros((1,), jnp.int32), window=8,
                                           num_heads=2, cos=trig, sin=trig, interpret=True)
    with pytest.raises(ValueError, match="cos/sin"):
        decode_kernel.decode_attention_qkv(jnp.zeros((1, 1, 6 * 64)), ck, ck, jnp.int32(0), jnp.zeros((1,), jnp.int32),
                                           window=8, num_heads=2, cos=trig[:, :32], sin=trig[:, :32], interpret=True)


def _decode_logits(model, cache, tokens, pos, window, layer_params=None) -> tuple[np.ndarray, object, bool]:
    """Logits of one decode step, the updated cache, and whether the traced program holds the Pallas kernel."""
    def fwd(t, p, c, lp):  # a fresh function per call: jax.jit caches traces by function
        return model(t, p, cache=c, kv_window=window, layer_params=lp)
    uses_kernel = "pallas_call" in str(jax.make_jaxpr(fwd)(tokens, pos, cache, layer_params))
    logits, new_cache = jax.jit(fwd)(tokens, pos, cache, layer_params)
    return np.asarray(logits, np.float32)[:, 0], new_cache, uses_kernel


@pytest.mark.parametrize("unstacked,writes_kv,fused,gemv,bias", [
    (False, True, False, False, False), (True, True, False, False, False), (True, False, False, False, False),
    (True, True, True, False, True), (False, True, True, True, True), (True, True, True, True, False)])
def test_in_model_kernel_matches_the_xla_decode_path(monkeypatch, unstacked, writes_kv, fused, gemv, bias):
    """The model's decode step with the kernel (interpret mode) equals the XLA path: layer index (traced in the
    scan, constant in straight-line layers), positions and window are wired right, and the cache the kernel
    writes (decoder.DECODE_KERNEL_WRITES_KV) is the scatter's. fused: the kernel takes the q/k/v projection's
    output (decoder.DECODE_QKV_FUSED: bias, RoPE, head slices in the kernel), from one XLA GEMM or from the
    projection kernel's split-K partial sums (gemv)."""
    from automem_jax.models import decoder as decoder_lib
    from automem_jax.models import gemv_kernel
    from automem_jax.models.testing import tiny_decoder
    model = tiny_decoder(3, bias=bias)
    cfg = model.config
    rng = np.random.default_rng(0)
    monkeypatch.setattr(decoder_lib, "DECODE_QKV_FUSED", fused)
    monkeypatch.setattr(gemv_kernel, "INTERPRET", gemv)
    batch, max_len, window = 4, 96, 80
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    cache = decoder_lib.KVCache(jnp.asarray(rng.standard_normal(shape), jnp.bfloat16),
                                jnp.asarray(rng.standard_normal(shape), jnp.bfloat16))
    tokens = jnp.asarray(rng.integers(3, 256, size=(batch, 1)), jnp.int32)
    pos = jnp.asarray([[0], [9], [40], [window - 1]], jnp.int32)
    layer_params = decoder_lib.unstack_layers(model) if unstacked else None
    monkeypatch.setattr(decoder_lib, "DECODE_KERNEL", False)
    monkeypatch.setattr(decoder_lib, "DECODE_GEMV", False)
    ref, ref_cache, ref_kernel = _decode_logits(model, cache, tokens, pos, window, layer_params)
    monkeypatch.setattr(decoder_lib, "DECODE_GEMV", True)
    monkeypatch.setattr(decoder_lib, "DECODE_KERNEL", True)
    monkeypatch.setattr(decoder_lib, "DECODE_KERNEL_WRITES_KV", writes_kv)
    monkeypatch.setattr(decode_kernel, "INTERPRET", True)
    calls = []  # trace-time calls of the fused entry point: proves which path ran
    orig = decode_kernel.decode_attention_qkv
    monkeypatch.setattr(decode_kernel, "decode_attention_qkv", lambda *a, **k: calls.append(1) or orig(*a, **k))
    got, got_cache, got_kernel = _decode_logits(model, cache, tokens, pos, window, layer_params)
    assert got_kernel and not ref_kernel and bool(calls) == (fused and writes_kv)
    for got_c, ref_c, old_c in ((got_cache.k, ref_cache.k, cache.k), (got_cache.v, ref_cache.v, cache.v)):
        written = jnp.arange(max_len)[None, None, :] == pos[None, :, :]           # [1, B, S]: each row's position
        assert jnp.array_equal(jnp.where(written[..., None, None], 0, got_c), jnp.where(written[..., None, None], 0,
                                                                                         old_c))  # nothing else
        # layer 0's new K/V do not depend on attention numerics (the gemv sums and the fused kernel's fp32 bias
        # add round differently: within the error bound below)
        if not (gemv or fused and bias):
            assert jnp.array_equal(got_c[0], ref_c[0])
        err = jnp.linalg.norm((got_c - ref_c).astype(jnp.float32)) / jnp.linalg.norm(ref_c.astype(jnp.float32))
        assert err < 1e-2
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-2
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_micro_batch_count_rule(monkeypatch):
    from automem_jax.models import decode_micro_batch as micro_batch
    monkeypatch.setattr(micro_batch, "MICRO_BATCHES", 4)
    monkeypatch.setattr(micro_batch, "MIN_ROWS", 16)
    assert [micro_batch.parts(b, 1) for b in (1, 16, 32, 48, 64, 256)] == [1, 1, 2, 3, 4, 4]
    assert micro_batch.parts(256, 8) == 1  # prefill is never split


@pytest.mark.parametrize("kernel", [False, True])
def test_micro_batched_decode_step_equals_the_whole_batch(monkeypatch, kernel):
    """models/decode_micro_batch.py: the step's rows as micro-batches give the same logits and the same cache as one
    batch (the XLA path, and the fused kernel in interpret mode with each micro-batch's cache-row offset)."""
    from automem_jax.models import decode_micro_batch as micro_batch
    from automem_jax.models import decoder as decoder_lib
    from automem_jax.models.testing import tiny_decoder
    model = tiny_decoder(3, bias=True)
    cfg = model.config
    rng = np.random.default_rng(1)
    batch, max_len, window = 6, 64, 48
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    cache = decoder_lib.KVCache(jnp.asarray(rng.standard_normal(shape), jnp.bfloat16),
                                jnp.asarray(rng.standard_normal(shape), jnp.bfloat16))
    tokens = jnp.asarray(rng.integers(3, 256, size=(batch, 1)), jnp.int32)
    pos = jnp.asarray([[0], [9], [40], [window - 1], [17], [33]], jnp.int32)
    layer_params = decoder_lib.unstack_layers(model)
    monkeypatch.setattr(decoder_lib, "DECODE_KERNEL", kernel)
    monkeypatch.setattr(decoder_lib, "DECODE_GEMV", False)
    monkeypatch.setattr(decode_kernel, "INTERPRET", kernel)
    monkeypatch.setattr(micro_batch, "MIN_ROWS", 2)
    ref, ref_cache, _ = _decode_logits(model, cache, tokens, pos, window, layer_params)
    offsets = []  # trace-time cache-row offsets of the kernel calls: proves the split ran
    orig = decode_kernel.decode_attention_qkv
    monkeypatch.setattr(decode_kernel, "decode_attention_qkv",
                        lambda *a, **k: offsets.append(k["row0"]) or orig(*a, **k))
    monkeypatch.setattr(micro_batch, "MICRO_BATCHES", 3)
    jaxpr = str(jax.make_jaxpr(lambda t, p, c, lp: model(t, p, cache=c, kv_window=window, layer_params=lp))(
        tokens, pos, cache, layer_params))
    assert jaxpr.count("optimization_barrier") == 3 * cfg.num_layers  # one per micro-batch and layer
    offsets.clear()
    got, got_cache, _ = _decode_logits(model, cache, tokens, pos, window, layer_params)
    if kernel:
        assert offsets[:3] == [0, 2, 4] and len(offsets) == 3 * cfg.num_layers
    for a, b in ((got_cache.k, ref_cache.k), (got_cache.v, ref_cache.v)):
        err = jnp.linalg.norm((a - b).astype(jnp.float32)) / jnp.linalg.norm(b.astype(jnp.float32))
        assert err < 1e-3
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-2 * np.abs(ref).max())
    assert (got.argmax(-1) == ref.argmax(-1)).all()


@pytest.mark.slow
def test_embedded_smollm2_greedy_tokens_same_with_the_kernel(monkeypatch):
    """Real weights (the embedded SmolLM2-135M, bf16): greedy replies through the engine are token for token the
    same with the kernel (interpret mode, straight-line layers) as with the XLA decode path."""
    from automem_jax.engine.base import Request, SamplingParams
    from automem_jax.engine.jax_engine import JaxEngine
    from automem_jax.models import decoder as decoder_lib
    from automem_jax.models.hub import embedded_model_dir
    from automem_jax.models.loader import load_model
    from automem_jax.models.tokenizer import load_tokenizer
    d = embedded_model_dir()
    model, tok = load_model(d, dtype=jnp.bfloat16), load_tokenizer(d)
    msgs = [[{"role": "user", "content": q}] for q in ("What is the capital of France?", "Name three colours.")]
    reqs = [Request(messages=m, sampling=SamplingParams(temperature=0.0, max_new_tokens=12)) for m in msgs]
    traced = []  # the kernel's trace-time calls: proves the engine's programs use it
    orig = decode_kernel.decode_attention_cache
    monkeypatch.setattr(decode_kernel, "decode_attention_cache", lambda *a, **k: traced.append(1) or orig(*a, **k))
    outs = {}
    for kernel in (False, True):
        monkeypatch.setattr(decoder_lib, "DECODE_KERNEL", kernel)
        monkeypatch.setattr(decode_kernel, "INTERPRET", kernel)
        # prefill on the layer scan in both: straight-line prefill rounds differently in bf16 (as close to fp32,
        # but it can flip a greedy token), and this test is about the decode kernel
        eng = JaxEngine(model, tokenizer=tok, max_batch=2, max_seq_len=128, decode_steps=4, unstack_layers=kernel,
                        prefill_unstacked=False)
        outs[kernel] = [c.token_ids for c in eng.generate(reqs)]
    assert traced  # 30 layers x the decode programs traced with the kernel on
    assert outs[True] == outs[False]
    assert all(len(t) >= 3 for t in outs[True])


@pytest.mark.parametrize("kernel", [False, True])
def test_done_rows_are_parked_in_decode_steps(monkeypatch, kernel):
    """steps.decode runs done rows (finished or free slots) parked past the cache: their cache rows stay exactly as
    they were (no re-write of their last token), and the live rows' tokens are those of a batch without them."""
    import dataclasses

    from flax import nnx

    from automem_jax.engine import steps
    from automem_jax.models import decoder as decoder_lib
    from automem_jax.models.testing import tiny_decoder
    model = tiny_decoder(2)
    monkeypatch.setattr(decoder_lib, "DECODE_KERNEL", kernel)
    monkeypatch.setattr(decoder_lib, "DECODE_GEMV", False)
    monkeypatch.setattr(decode_kernel, "INTERPRET", kernel)
    cfg, rng = model.config, np.random.default_rng(2)
    shape = (cfg.num_layers, 3, 64, cfg.num_kv_heads, cfg.head_dim)
    cache = decoder_lib.KVCache(*(jnp.asarray(rng.standard_normal(shape), jnp.bfloat16) for _ in range(2)))
    state = steps.DecodeState.init(3, 1)
    state = dataclasses.replace(state, tokens=jnp.asarray([5, 6, 7], jnp.int32), pos=jnp.asarray([10, 20, 30]),
                                done=jnp.asarray([False, True, False]), max_new=jnp.full((3,), 99, jnp.int32))
    graphdef, params = nnx.split(model)
    run = jax.jit(functools.partial(steps.decode, num_steps=3, window=48, sampling_mode="greedy"))
    new_cache, _, out = run(graphdef, params, cache, state, jnp.zeros((3,), bool))
    for new, old in ((new_cache.k, cache.k), (new_cache.v, cache.v)):
        assert jnp.array_equal(new[:, 1], old[:, 1])  # the done row: untouched
        assert not jnp.array_equal(new[:, 0, 10:13], old[:, 0, 10:13])  # a live row wrote its 3 tokens
    assert (np.asarray(out[1]) == -1).all()
    # the live rows alone (row 1 dropped from the batch) decode the same tokens
    alone = jax.tree.map(lambda a: a[np.asarray([0, 2])], state)
    sub = decoder_lib.KVCache(cache.k[:, [0, 2]], cache.v[:, [0, 2]])
    _, _, out2 = run(graphdef, params, sub, alone, jnp.zeros((2,), bool))
    np.testing.assert_array_equal(np.asarray(out)[[0, 2]], np.asarray(out2))
