"""Pallas flash-decoding kernel (kernels/decode_attention.py), run in Pallas interpret mode on CPU, alone and in the
model's decode step (models/decode.py)."""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from automem_jax.kernels import decode_attention as kernel
from automem_jax.kernels import probe
from automem_jax.kernels.config import DecodeAttentionTiling, KernelConfig, XLA_ONLY
from automem_jax.models.decode import decode_step
from automem_jax.models.decoder import unstack_layers
from automem_jax.models.kv_cache import KVCache

TILING = DecodeAttentionTiling()
# the kernel in the model, interpreted on CPU; projections stay XLA's unless a test asks for the gemv kernel
KERNEL = KernelConfig(decode_attention="kernel", prefill_attention="xla", projections="xla", interpret=True)


@pytest.mark.parametrize("splits,block_s", [(1, 32), (4, 16), (3, 16)])
def test_kernel_writes_the_new_kv_in_place_and_attends_it(splits, block_s):
    """The kernel stores the step's K/V at each row's position (as a scatter would, also for a position past the
    window) and its output equals the fp32 reference over the cache with them written. Entries at and past each
    row's position hold 1e4 (any read of them would show). A row parked past the cache (a done slot,
    engine/steps.decode) reads and writes nothing and gets 0."""
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
    out, ck2, cv2 = kernel.decode_attention(q, kn, vn, ck, cv, jnp.int32(1), pos, window=W, splits=splits,
                                            tiling=DecodeAttentionTiling(block_s=block_s), interpret=True)
    assert out.shape == (B, 1, H, E) and out.dtype == jnp.bfloat16
    assert jnp.array_equal(ck2, want_k) and jnp.array_equal(cv2, want_v)
    ref = kernel.reference(q, want_k, want_v, 1, pos, W)[:4]
    err = float(jnp.linalg.norm(out[:4].astype(jnp.float32) - ref) / jnp.linalg.norm(ref))
    assert err < 1e-2, err  # rows past the window attend the whole window (and not the new token) on both sides
    assert not jnp.any(out[4])  # parked


def test_num_splits_fills_the_gpu_but_keeps_a_block_per_split():
    assert kernel.num_splits(256, 3, 680, TILING) == 1       # 768 programs already
    assert kernel.num_splits(1, 2, 680, TILING) == 11         # one row: one 64-entry block per split
    assert kernel.num_splits(64, 2, 680, TILING) == 4
    assert kernel.num_splits(64, 2, 680, dataclasses.replace(TILING, target_programs=1)) == 1


def test_probe_runs_at_the_models_head_dim(monkeypatch):
    """The probe is per (tiling, head_dim) (tiles are [block, head_dim]): 128 passes in interpret mode; on a GPU
    `resolve` probes each once, turns "auto" into "kernel" where it passes and "xla" where it fails, and refuses an
    explicit "kernel" where the shapes rule it out."""
    assert kernel.probe_error(TILING, head_dim=128, interpret=True) < 2e-2
    seen = []
    monkeypatch.setattr(probe, "passes", lambda name, fn, fallback: seen.append(name) or "64" in name)
    probe._probed.cache_clear()
    try:
        shape = lambda e: probe.ModelShape(jnp.bfloat16, jnp.bfloat16, e, 4, 2)  # noqa: E731
        cfg = KernelConfig(prefill_attention="xla", projections="xla")
        assert probe.resolve(cfg, shape(64), "gpu").decode_attention == "kernel"
        assert probe.resolve(cfg, shape(128), "gpu").decode_attention == "xla"  # its probe "failed"
        assert probe.resolve(cfg, shape(64), "gpu").decode_attention == "kernel"
        assert probe.resolve(cfg, shape(64), "cpu").decode_attention == "xla"
    finally:
        probe._probed.cache_clear()
    assert seen == ["decode_attention(head_dim=64)", "decode_attention(head_dim=128)"]
    with pytest.raises(ValueError, match=r"kernels.decode_attention='kernel'.*even head_dim"):
        probe.resolve(KernelConfig(decode_attention="kernel"), probe.ModelShape(jnp.bfloat16, jnp.bfloat16, 63, 4,
                                                                                  2), "gpu")
    with pytest.raises(ValueError, match="kv heads .3. not divisible by the tensor axis .2."):
        probe.resolve(KernelConfig(decode_attention="kernel", interpret=True),
                      probe.ModelShape(jnp.bfloat16, jnp.bfloat16, 64, 3, 3, tensor=2), "cpu")


def test_bad_shapes_are_refused_with_the_reason():
    q = jnp.zeros((1, 1, 40, 64), jnp.bfloat16)  # 40 query heads on 2 kv heads: G=20 > the 16-row tile
    ck = jnp.zeros((1, 1, 8, 2, 64), jnp.bfloat16)
    kv = jnp.zeros((1, 1, 2, 64), jnp.bfloat16)
    with pytest.raises(ValueError, match="heads/kv_heads <= 16"):
        kernel.decode_attention(q, kv, kv, ck, ck, jnp.int32(0), jnp.zeros((1,), jnp.int32), window=8,
                                tiling=TILING, interpret=True)
    assert kernel.supports(jnp.float32, jnp.bfloat16, 4, 64) and kernel.supports(jnp.bfloat16, jnp.bfloat16, 20, 64)
    assert kernel.supports(jnp.bfloat16, jnp.bfloat16, 4, 64) is None
    # the fused entry point: q/k/v columns that do not match the cache's heads, cos/sin of another width
    sums, trig = jnp.zeros((1, 1, 5 * 64), jnp.float32), jnp.zeros((1, 64), jnp.float32)
    with pytest.raises(ValueError, match=r"sums \[S, B, \(H \+ 2K\) \* E\]"):
        kernel.decode_attention_qkv(sums, ck, ck, jnp.int32(0), jnp.zeros((1,), jnp.int32), window=8, num_heads=2,
                                    cos=trig, sin=trig, tiling=TILING, interpret=True)
    with pytest.raises(ValueError, match="cos/sin"):
        kernel.decode_attention_qkv(jnp.zeros((1, 1, 6 * 64)), ck, ck, jnp.int32(0), jnp.zeros((1,), jnp.int32),
                                    window=8, num_heads=2, cos=trig[:, :32], sin=trig[:, :32], tiling=TILING,
                                    interpret=True)


def _random_cache(cfg, batch: int, max_len: int, seed: int) -> KVCache:
    rng = np.random.default_rng(seed)
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    return KVCache(*(jnp.asarray(rng.standard_normal(shape), jnp.bfloat16) for _ in range(2)))


def _decode(model, cache, tokens, pos, window, kernels, layer_params=None, adapter_ids=None):
    """Logits of one decode step, the updated cache, and the traced program's text (which paths ran)."""
    def fwd(t, p, c, lp, a):
        return decode_step(model, t, p, c, adapter_ids=a, window=window, kernels=kernels, layer_params=lp)
    jaxpr = str(jax.make_jaxpr(fwd)(tokens, pos, cache, layer_params, adapter_ids))
    logits, new_cache = jax.jit(fwd)(tokens, pos, cache, layer_params, adapter_ids)
    return np.asarray(logits, np.float32)[:, 0], new_cache, jaxpr


@pytest.mark.parametrize("unstacked,fused,gemv,bias", [
    (False, False, False, False), (True, False, False, True), (True, True, False, True), (False, True, True, True),
    (True, True, True, False)])
def test_in_model_kernel_matches_the_xla_decode_path(unstacked, fused, gemv, bias):
    """The model's decode step with the kernel (interpret mode) equals the XLA path: layer index (traced in the
    scan, constant in straight-line layers), positions and window are wired right, and the cache the kernel writes
    is the scatter's. fused: no LoRA, so the kernel takes the q/k/v projection's output (bias, RoPE, head slices in
    the kernel), from one XLA GEMM or from the projection kernel's split-K partial sums (gemv); else the model has
    LoRA slots (all rows on the base) and the kernel takes q/k/v."""
    from flax import nnx

    from automem_jax.models.lora import LoRAConfig, apply_lora
    from automem_jax.models.testing import tiny_decoder
    model = tiny_decoder(3, bias=bias)
    adapter_ids = None
    if not fused:
        apply_lora(model, LoRAConfig(rank=4, alpha=8, num_slots=1), nnx.Rngs(0))
        adapter_ids = jnp.full((4,), -1, jnp.int32)
    batch, max_len, window = 4, 96, 80
    cache = _random_cache(model.config, batch, max_len, 0)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(3, 256, size=(batch, 1)), jnp.int32)
    pos = jnp.asarray([[0], [9], [40], [window - 1]], jnp.int32)
    layer_params = unstack_layers(model) if unstacked else None
    ref, ref_cache, ref_jaxpr = _decode(model, cache, tokens, pos, window, XLA_ONLY, layer_params, adapter_ids)
    kernels = dataclasses.replace(KERNEL, projections="kernel" if gemv else "xla")
    got, got_cache, jaxpr = _decode(model, cache, tokens, pos, window, kernels, layer_params, adapter_ids)
    assert "pallas_call" in jaxpr and "pallas_call" not in ref_jaxpr
    assert ("name=gemv" in jaxpr) == gemv
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


@pytest.mark.slow
def test_embedded_smollm2_greedy_tokens_same_with_the_kernel():
    """Real weights (the embedded SmolLM2-135M, bf16): greedy replies through the engine are token for token the
    same with the decode kernel (interpret mode, straight-line layers) as with the XLA decode path."""
    from automem_jax.engine.base import Request, SamplingParams
    from automem_jax.engine.jax_engine import JaxEngine
    from automem_jax.models.hub import embedded_model_dir
    from automem_jax.models.loader import load_model
    from automem_jax.models.tokenizer import load_tokenizer
    d = embedded_model_dir()
    model, tok = load_model(d, dtype=jnp.bfloat16), load_tokenizer(d)
    msgs = [[{"role": "user", "content": q}] for q in ("What is the capital of France?", "Name three colours.")]
    reqs = [Request(messages=m, sampling=SamplingParams(temperature=0.0, max_new_tokens=12)) for m in msgs]
    outs = {}
    for name, kernels in (("xla", XLA_ONLY), ("kernel", KERNEL)):
        eng = JaxEngine(model, tokenizer=tok, max_batch=2, max_seq_len=128, decode_steps=4, unstack_layers=True,
                        kernels=kernels)
        assert eng.runner.kernels.decode_attention == name
        outs[name] = [c.token_ids for c in eng.generate(reqs)]
    assert outs["kernel"] == outs["xla"]
    assert all(len(t) >= 3 for t in outs["kernel"])


@pytest.mark.parametrize("kernels", [XLA_ONLY, KERNEL])
def test_done_rows_are_parked_in_decode_steps(kernels):
    """steps.decode runs done rows (finished or free slots) parked past the cache: their cache rows stay exactly as
    they were (no re-write of their last token), and the live rows' tokens are those of a batch without them."""
    from flax import nnx

    from automem_jax.engine import steps
    from automem_jax.models.testing import tiny_decoder
    model = tiny_decoder(2)
    cache = _random_cache(model.config, 3, 64, 2)
    state = steps.DecodeState.init(3, 1)
    state = dataclasses.replace(state, tokens=jnp.asarray([5, 6, 7], jnp.int32), pos=jnp.asarray([10, 20, 30]),
                                done=jnp.asarray([False, True, False]), max_new=jnp.full((3,), 99, jnp.int32))
    graphdef, params = nnx.split(model)
    run = jax.jit(functools.partial(steps.decode, num_steps=3, window=48, kernels=kernels, sampling_mode="greedy"))
    new_cache, _, out = run(graphdef, params, cache, state, None, jnp.zeros((3,), bool))
    for new, old in ((new_cache.k, cache.k), (new_cache.v, cache.v)):
        assert jnp.array_equal(new[:, 1], old[:, 1])  # the done row: untouched
        assert not jnp.array_equal(new[:, 0, 10:13], old[:, 0, 10:13])  # a live row wrote its 3 tokens
    assert (np.asarray(out[1]) == -1).all()
    # the live rows alone (row 1 dropped from the batch) decode the same tokens
    alone = jax.tree.map(lambda a: a[np.asarray([0, 2])], state)
    sub = KVCache(cache.k[:, [0, 2]], cache.v[:, [0, 2]])
    _, _, out2 = run(graphdef, params, sub, alone, None, jnp.zeros((2,), bool))
    np.testing.assert_array_equal(np.asarray(out)[[0, 2]], np.asarray(out2))
    # stepping only the live slots of the full cache (`rows`) decodes the same tokens and leaves row 1 as it was
    live_cache, _, out3 = run(graphdef, params, cache, state, jnp.asarray([0, 2], jnp.int32), jnp.zeros((2,), bool))
    np.testing.assert_array_equal(np.asarray(out3), np.asarray(out2))
    assert jnp.array_equal(live_cache.k[:, 1], cache.k[:, 1])


@pytest.mark.parametrize("kernels", [XLA_ONLY, KERNEL])
def test_a_step_over_some_cache_rows_equals_the_full_step_on_those_rows(kernels):
    """decode_step(rows=...): batch row b is cache row rows[b] (the live slots of a larger cache). Its logits are
    the full step's at those rows, only those rows' entries are written, and the fused kernel (no LoRA) agrees."""
    from automem_jax.models.testing import tiny_decoder
    model = tiny_decoder(5, bias=True)
    cache = _random_cache(model.config, 4, 64, 3)
    rng = np.random.default_rng(4)
    tokens = jnp.asarray(rng.integers(3, 256, size=(4, 1)), jnp.int32)
    pos = jnp.asarray([[3], [17], [40], [9]], jnp.int32)
    full, full_cache, _ = _decode(model, cache, tokens, pos, 48, kernels)
    rows = jnp.asarray([3, 1], jnp.int32)
    step = jax.jit(lambda t, p, c: decode_step(model, t, p, c, rows=rows, window=48, kernels=kernels))
    logits, new = step(tokens[rows], pos[rows], cache)
    np.testing.assert_allclose(np.asarray(logits, np.float32)[:, 0], full[np.asarray(rows)], rtol=0, atol=1e-5)
    for a, b, old in ((new.k, full_cache.k, cache.k), (new.v, full_cache.v, cache.v)):
        assert jnp.array_equal(a[:, rows], b[:, rows]) and jnp.array_equal(a[:, [0, 2]], old[:, [0, 2]])
