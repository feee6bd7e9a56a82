"""Numerics checks of the generation kernels on the device, recorded beside the benchmark figures (bench.generate).

Each runs the bf16 model with a kernel and with XLA's path on the same weights and a random cache, both against
an fp32 copy of them (XLA), and reports relative L2 / max-abs errors and greedy agreement.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _random_cache(cfg, batch: int, length: int, seed: int):
    from automem_jax.models import decoder as decoder_lib
    rng = np.random.default_rng(seed)
    shape = (cfg.num_layers, batch, length, cfg.num_kv_heads, cfg.head_dim)
    return decoder_lib.KVCache(jnp.asarray(rng.standard_normal(shape), jnp.bfloat16),
                               jnp.asarray(rng.standard_normal(shape), jnp.bfloat16))


def _cached_logits(model, flag: str, impl: str, tokens, pos, cache, window: int, rows: bool = False,
                   count: str = "__cudnn$fmha") -> tuple[np.ndarray, int]:
    """Logits of one cached forward with decoder.<flag> = impl, and the calls of `count` in the compiled program
    (cuDNN attention by default: > 0 shows no silent fallback). rows: as a prefill into cache rows (the engine's)."""
    from flax import nnx
    from automem_jax.models import decoder as decoder_lib
    graphdef, params = nnx.split(model)
    saved = getattr(decoder_lib, flag)
    try:
        setattr(decoder_lib, flag, impl)

        cache_rows = jnp.arange(tokens.shape[0], dtype=jnp.int32) if rows else None

        def fwd(params, t, p, c):  # a fresh function per impl: jax.jit caches traces by function
            return nnx.merge(graphdef, params)(t, p, cache=c, kv_window=window, cache_rows=cache_rows)[0]

        compiled = jax.jit(fwd).lower(params, tokens, pos, cache).compile()
        return np.asarray(compiled(params, tokens, pos, cache), np.float32), compiled.as_text().count(count)
    finally:
        setattr(decoder_lib, flag, saved)


def _errors(ref: np.ndarray, got: np.ndarray) -> dict:
    return {"rel_l2_err": float(np.linalg.norm(ref - got) / np.linalg.norm(ref)),
            "max_abs_err": float(np.abs(ref - got).max()), "argmax_agree": float(np.mean(ref.argmax(-1) ==
                                                                                        got.argmax(-1)))}


def _compare_impls(model, flag: str, impls: tuple[str, str], tokens, pos, cache, window: int) -> dict:
    """Logits of one cached forward with decoder.<flag> set to each of two impls: relative L2 error, max abs error,
    argmax agreement, and the cuDNN attention calls in each compiled program."""
    (a, calls_a), (b, calls_b) = (_cached_logits(model, flag, impl, tokens, pos, cache, window) for impl in impls)
    return {**_errors(a, b), "cudnn_fmha_calls": calls_b, "xla_fmha_calls": calls_a}


def _fp32_copy(model, cache):
    """The same weights and cache in fp32 (the numerics reference)."""
    from flax import nnx
    graphdef, params = nnx.split(model)
    up = lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x  # noqa: E731
    model32 = nnx.merge(graphdef, jax.tree.map(up, params))
    model32.dtype = jnp.float32  # the activations' dtype (Decoder.hidden casts the embeddings to it)
    return model32, jax.tree.map(up, cache)


def check_decode_numerics(model, batch: int = 8, window: int = 256, max_len: int = 320) -> dict:
    """One decode step on a random cache, XLA vs cuDNN decode attention. Positions span [0, window-1]."""
    cfg = model.config
    rng = np.random.default_rng(0)
    pos = rng.integers(0, window, size=(batch, 1)).astype(np.int32)
    pos[0, 0], pos[-1, 0] = 0, window - 1
    tokens = jnp.asarray(rng.integers(3, cfg.vocab_size, size=(batch, 1)), jnp.int32)
    out = _compare_impls(model, "DECODE_ATTENTION_IMPL", ("xla", "cudnn"), tokens, jnp.asarray(pos),
                         _random_cache(cfg, batch, max_len, 0), window)
    return {"batch": batch, "window": window, **out, "pass": out["rel_l2_err"] < 1e-2 and out["cudnn_fmha_calls"] > 0}


def check_decode_kernel_numerics(model, batch: int = 8, window: int = 256, max_len: int = 320) -> dict:
    """One decode step on a random cache: the bf16 model with the Pallas kernel and with the XLA decode attention,
    each against the same weights and cache in fp32 (XLA, the reference)."""
    cfg = model.config
    rng = np.random.default_rng(2)
    pos = rng.integers(0, window, size=(batch, 1)).astype(np.int32)
    pos[0, 0], pos[-1, 0] = 0, window - 1
    tokens = jnp.asarray(rng.integers(3, cfg.vocab_size, size=(batch, 1)), jnp.int32)
    cache = _random_cache(cfg, batch, max_len, 0)
    model32, cache32 = _fp32_copy(model, cache)
    ref, _ = _cached_logits(model32, "DECODE_KERNEL", False, tokens, jnp.asarray(pos), cache32, window)
    xla, _ = _cached_logits(model, "DECODE_KERNEL", False, tokens, jnp.asarray(pos), cache, window)
    kernel, _ = _cached_logits(model, "DECODE_KERNEL", True, tokens, jnp.asarray(pos), cache, window)
    return {"batch": batch, "window": window, "xla_bf16_vs_fp32": _errors(ref, xla),
            "kernel_bf16_vs_fp32": _errors(ref, kernel), "kernel_vs_xla_bf16": _errors(xla, kernel)}


def check_gemv_numerics(model, batch: int = 4, window: int = 256, max_len: int = 320) -> dict:
    """One decode step of `batch` rows: the bf16 model with the projection kernel (gemv_kernel: split-K sums at
    <= MAX_BATCH rows, the finished launches past ROWS with LARGE_BATCH) and with XLA's projections, each against
    the same weights and cache in fp32; plus the kernel's own probe error."""
    from automem_jax.models import gemv_kernel
    cfg = model.config
    rng = np.random.default_rng(3)
    pos = jnp.asarray(rng.integers(0, window, size=(batch, 1)), jnp.int32)
    tokens = jnp.asarray(rng.integers(3, cfg.vocab_size, size=(batch, 1)), jnp.int32)
    cache = _random_cache(cfg, batch, max_len, 0)
    model32, cache32 = _fp32_copy(model, cache)
    ref, _ = _cached_logits(model32, "DECODE_GEMV", False, tokens, pos, cache32, window)
    xla, _ = _cached_logits(model, "DECODE_GEMV", False, tokens, pos, cache, window)
    kernel, _ = _cached_logits(model, "DECODE_GEMV", True, tokens, pos, cache, window)
    return {"batch": batch, "window": window, "kernel_used": gemv_kernel.supported(jnp.bfloat16, batch),
            "probe_rel_err": gemv_kernel.probe_error(interpret=jax.default_backend() != "gpu"),
            "xla_bf16_vs_fp32": _errors(ref, xla),
            "gemv_bf16_vs_fp32": _errors(ref, kernel), "gemv_vs_xla_bf16": _errors(xla, kernel)}


def check_prefill_numerics(model, batch: int = 4, length: int = 128, window: int = 512) -> dict:
    """A prefill chunk over a random cache after prefixes of different lengths (start 0 .. window-length): the bf16
    XLA and cuDNN prefill attention and (into cache rows) models/prefill_kernel.py, each against the same weights
    and cache in fp32 (XLA, the reference)."""
    cfg = model.config
    rng = np.random.default_rng(1)
    start = np.linspace(0, window - length, batch).astype(np.int32)
    pos = jnp.asarray(start[:, None] + np.arange(length)[None, :], jnp.int32)
    tokens = jnp.asarray(rng.integers(3, cfg.vocab_size, size=(batch, length)), jnp.int32)
    cache = _random_cache(cfg, batch, window, 1)
    flag = "PREFILL_ATTENTION_IMPL"
    model32, cache32 = _fp32_copy(model, cache)
    ref, _ = _cached_logits(model32, flag, "xla", tokens, pos, cache32, window)
    xla, _ = _cached_logits(model, flag, "xla", tokens, pos, cache, window)
    cudnn, calls = _cached_logits(model, flag, "auto", tokens, pos, cache, window)
    # the engine's form: a prefill into cache rows, through the kernel that reads the heads in place
    kernel, triton = _cached_logits(model, flag, "kernel", tokens, pos, cache, window, rows=True,
                                    count="__gpu$xla.gpu.triton")
    return {"batch": batch, "length": length, "window": window, "starts": start.tolist(), "cudnn_fmha_calls": calls,
            "xla_bf16_vs_fp32": _errors(ref, xla), "cudnn_bf16_vs_fp32": _errors(ref, cudnn),
            "cudnn_vs_xla_bf16": _errors(xla, cudnn), "prefill_kernel_calls": triton,
            "kernel_rows_bf16_vs_fp32": _errors(ref, kernel)}


def check_kernel_shapes(head_dims=(64, 128), batches=(1, 64)) -> dict:
    """The decode kernels at other models' attention shapes (their tiles scale with head_dim): the decode kernel's
    probe per head_dim, then one decode step of 2-layer random models with Qwen2.5-7B-like (28 / 4 heads of 128,
    q/k/v bias) and Llama-3-8B-like (32 / 8 heads of 128) attention, kernels vs XLA's decode path."""
    from automem_jax.models import decode_kernel, decoder as decoder_lib
    from automem_jax.models.config import tiny_config
    from automem_jax.models.loader import random_model
    out: dict = {}
    for e in head_dims:
        try:
            out[f"probe_head_dim_{e}"] = decode_kernel.probe_error(interpret=jax.default_backend() != "gpu",
                                                                  head_dim=e)
        except Exception as ex:  # noqa: BLE001 - recorded, the model steps below show the fallback
            out[f"probe_head_dim_{e}"] = repr(ex)[:500]
    shapes = {"qwen2p5_7b_like": dict(num_heads=28, num_kv_heads=4, head_dim=128, hidden_size=3584,
                                      attention_bias=True),
              "llama3_8b_like": dict(num_heads=32, num_kv_heads=8, head_dim=128, hidden_size=4096)}
    for name, kw in shapes.items():
        cfg = tiny_config(vocab_size=1024, intermediate_size=1024, num_layers=2, **kw)
        model = random_model(cfg, dtype=jnp.bfloat16, seed=0)
        layer_params = decoder_lib.unstack_layers(model)
        for b in batches:
            rng = np.random.default_rng(b)
            cache = _random_cache(cfg, b, 640, b)
            tokens = jnp.asarray(rng.integers(3, cfg.vocab_size, size=(b, 1)), jnp.int32)
            pos = jnp.asarray(rng.integers(0, 600, size=(b, 1)), jnp.int32)
            logits = {}
            for kernel in (False, True):
                saved, decoder_lib.DECODE_KERNEL = decoder_lib.DECODE_KERNEL, kernel
                try:  # a fresh function per setting: jax.jit caches traces by function
                    fwd = lambda t, p, c, lp: model(t, p, cache=c, kv_window=600, layer_params=lp)[0]  # noqa: E731
                    logits[kernel] = np.asarray(jax.jit(fwd)(tokens, pos, cache, layer_params), np.float32)[:, 0]
                finally:
                    decoder_lib.DECODE_KERNEL = saved
            out[f"{name}_b{b}"] = {"kernel_used": decode_kernel.supported(jnp.bfloat16, jnp.bfloat16,
                                                                          cfg.num_heads // cfg.num_kv_heads,
                                                                          cfg.head_dim),
                                   "kernel_vs_xla_bf16": _errors(logits[False], logits[True])}
    return out
