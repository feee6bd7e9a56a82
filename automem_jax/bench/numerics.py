"""Numerics checks of the generation kernels on the device, recorded beside the benchmark figures (bench.generate).

Each runs the bf16 model with a kernel and with XLA's path on the same weights and a random cache, both against
an fp32 copy of them (XLA), and reports relative L2 / max-abs errors and greedy agreement. Paths are chosen by the
KernelConfig passed to the model's entry points.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from automem_jax.kernels.config import KernelConfig, XLA_ONLY

# each kernel alone ("kernel" where it applies, resolved per device by kernels/probe.py), the rest XLA
DECODE_KERNEL = dataclasses.replace(XLA_ONLY, decode_attention="auto")
GEMV_KERNEL = dataclasses.replace(XLA_ONLY, projections="auto")
PREFILL_KERNEL = dataclasses.replace(XLA_ONLY, prefill_attention="auto")


def _random_cache(cfg, batch: int, length: int, seed: int):
    from automem_jax.models.kv_cache import KVCache
    rng = np.random.default_rng(seed)
    shape = (cfg.num_layers, batch, length, cfg.num_kv_heads, cfg.head_dim)
    return KVCache(jnp.asarray(rng.standard_normal(shape), jnp.bfloat16),
                   jnp.asarray(rng.standard_normal(shape), jnp.bfloat16))


def _resolved(model, kernels: KernelConfig) -> KernelConfig:
    from automem_jax.kernels import probe
    c = model.config
    return probe.resolve(kernels, probe.ModelShape(model.dtype, jnp.bfloat16, c.head_dim,
                                                   c.num_heads // c.num_kv_heads, c.num_kv_heads))


def _cached_logits(model, kernels: KernelConfig, tokens, pos, cache, window: int, rows: bool = False,
                   layer_params=None) -> tuple[np.ndarray, int]:
    """Logits of one cached forward (a decode step, or with `rows` a prefill into cache rows, the engine's forms)
    under `kernels`, and the Triton kernel calls in the compiled program (> 0: no silent fallback)."""
    from automem_jax.models.decode import decode_step
    from automem_jax.models.prefill import Chunk, prefill
    from flax import nnx
    kernels = _resolved(model, kernels)
    graphdef, params = nnx.split(model)

    def fwd(params, t, p, c, lp):  # the weights are an argument: closed over, they would be captured as constants
        m = nnx.merge(graphdef, params)
        if rows:
            n, length = t.shape
            h, _ = prefill(m, Chunk(t, p, jnp.arange(n, dtype=jnp.int32), jnp.full((n,), length, jnp.int32)),
                           c, window=window, kernels=kernels)
            return m.lm_head(h)
        return decode_step(m, t, p, c, window=window, kernels=kernels, layer_params=lp)[0]

    compiled = jax.jit(fwd).lower(params, tokens, pos, cache, layer_params).compile()
    return (np.asarray(compiled(params, tokens, pos, cache, layer_params), np.float32),
            compiled.as_text().count("__gpu$xla.gpu.triton"))


def _errors(ref: np.ndarray, got: np.ndarray) -> dict:
    return {"rel_l2_err": float(np.linalg.norm(ref - got) / np.linalg.norm(ref)),
            "max_abs_err": float(np.abs(ref - got).max()), "argmax_agree": float(np.mean(ref.argmax(-1) ==
                                                                                        got.argmax(-1)))}


def _fp32_copy(model, cache):
    """The same weights and cache in fp32 (the numerics reference)."""
    from flax import nnx
    graphdef, params = nnx.split(model)
    up = lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x  # noqa: E731
    model32 = nnx.merge(graphdef, jax.tree.map(up, params))
    model32.dtype = jnp.float32  # the activations' dtype (the embedding is cast to it)
    return model32, jax.tree.map(up, cache)


def _decode_inputs(cfg, batch: int, window: int, seed: int):
    rng = np.random.default_rng(seed)
    pos = rng.integers(0, window, size=(batch, 1)).astype(np.int32)
    pos[0, 0], pos[-1, 0] = 0, window - 1
    return jnp.asarray(rng.integers(3, cfg.vocab_size, size=(batch, 1)), jnp.int32), jnp.asarray(pos)


def _kernel_vs_xla(model, kernels: KernelConfig, batch: int, window: int, max_len: int, seed: int) -> dict:
    """One decode step on a random cache: the bf16 model with `kernels` and with XLA's paths, each against the same
    weights and cache in fp32."""
    tokens, pos = _decode_inputs(model.config, batch, window, seed)
    cache = _random_cache(model.config, batch, max_len, 0)
    model32, cache32 = _fp32_copy(model, cache)
    ref, _ = _cached_logits(model32, XLA_ONLY, tokens, pos, cache32, window)
    xla, _ = _cached_logits(model, XLA_ONLY, tokens, pos, cache, window)
    kernel, calls = _cached_logits(model, kernels, tokens, pos, cache, window)
    return {"batch": batch, "window": window, "kernel_calls_in_hlo": calls, "xla_bf16_vs_fp32": _errors(ref, xla),
            "kernel_bf16_vs_fp32": _errors(ref, kernel), "kernel_vs_xla_bf16": _errors(xla, kernel)}


def check_decode_kernel_numerics(model, batch: int = 8, window: int = 256, max_len: int = 320) -> dict:
    """The decode attention kernel alone (kernels/decode_attention.py)."""
    return _kernel_vs_xla(model, DECODE_KERNEL, batch, window, max_len, 2)


def check_gemv_numerics(model, batch: int = 4, window: int = 256, max_len: int = 320) -> dict:
    """The small-batch projection kernel alone (kernels/gemv.py), plus its own probe error."""
    from automem_jax.kernels import gemv
    out = _kernel_vs_xla(model, GEMV_KERNEL, batch, window, max_len, 3)
    return {**out, "probe_rel_err": gemv.probe_error(interpret=jax.default_backend() != "gpu")}


def check_prefill_numerics(model, batch: int = 4, length: int = 128, window: int = 512) -> dict:
    """A prefill chunk into cache rows after heads of different lengths (start 0 .. window-length): the bf16 model
    with the in-place prefill kernel and with XLA's window path, each against the same weights and cache in fp32."""
    cfg = model.config
    rng = np.random.default_rng(1)
    start = np.linspace(0, window - length, batch).astype(np.int32)
    pos = jnp.asarray(start[:, None] + np.arange(length)[None, :], jnp.int32)
    tokens = jnp.asarray(rng.integers(3, cfg.vocab_size, size=(batch, length)), jnp.int32)
    cache = _random_cache(cfg, batch, window, 1)
    model32, cache32 = _fp32_copy(model, cache)
    ref, _ = _cached_logits(model32, XLA_ONLY, tokens, pos, cache32, window, rows=True)
    xla, _ = _cached_logits(model, XLA_ONLY, tokens, pos, cache, window, rows=True)
    kernel, calls = _cached_logits(model, PREFILL_KERNEL, tokens, pos, cache, window, rows=True)
    return {"batch": batch, "length": length, "window": window, "starts": start.tolist(),
            "prefill_kernel_calls": calls, "xla_bf16_vs_fp32": _errors(ref, xla),
            "kernel_rows_bf16_vs_fp32": _errors(ref, kernel), "kernel_vs_xla_bf16": _errors(xla, kernel)}


def check_kernel_shapes(head_dims=(64, 128), batches=(1, 64)) -> dict:
    """The decode kernels at other models' attention shapes (their tiles scale with head_dim): the decode kernel's
    probe per head_dim, then one decode step of 2-layer random models with Qwen2.5-7B-like (28 / 4 heads of 128,
    q/k/v bias) and Llama-3-8B-like (32 / 8 heads of 128) attention, kernels vs XLA's decode path."""
    from automem_jax.kernels import decode_attention
    from automem_jax.kernels.config import DecodeAttentionTiling
    from automem_jax.models.config import tiny_config
    from automem_jax.models.decoder import unstack_layers
    from automem_jax.models.loader import random_model
    out: dict = {}
    for e in head_dims:
        try:
            out[f"probe_head_dim_{e}"] = decode_attention.probe_error(
                DecodeAttentionTiling(), head_dim=e, interpret=jax.default_backend() != "gpu")
        except Exception as ex:  # noqa: BLE001 - recorded, the model steps below show the fallback
            out[f"probe_head_dim_{e}"] = repr(ex)[:500]
    shapes = {"qwen2p5_7b_like": dict(num_heads=28, num_kv_heads=4, head_dim=128, hidden_size=3584,
                                      attention_bias=True),
              "llama3_8b_like": dict(num_heads=32, num_kv_heads=8, head_dim=128, hidden_size=4096)}
    kernels = KernelConfig()  # every kernel where it applies
    for name, kw in shapes.items():
        cfg = tiny_config(vocab_size=1024, intermediate_size=1024, num_layers=2, **kw)
        model = random_model(cfg, dtype=jnp.bfloat16, seed=0)
        layer_params = unstack_layers(model)
        for b in batches:
            cache = _random_cache(cfg, b, 640, b)
            tokens, pos = _decode_inputs(cfg, b, 600, b)
            xla, _ = _cached_logits(model, XLA_ONLY, tokens, pos, cache, 600, layer_params=layer_params)
            got, calls = _cached_logits(model, kernels, tokens, pos, cache, 600, layer_params=layer_params)
            out[f"{name}_b{b}"] = {"kernels": dataclasses.asdict(_resolved(model, kernels)),
                                   "kernel_calls_in_hlo": calls, "kernel_vs_xla_bf16": _errors(xla[:, 0], got[:, 0])}
    return out
