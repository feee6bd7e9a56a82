"""Rotary position embeddings (HF layout): inverse frequencies with Llama-3 / linear scaling, angles, rotation."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from automem_jax.models.config import ModelConfig

Array = jax.Array


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """Inverse frequencies [head_dim/2] in float32, including Llama-3 / linear scaling (as transformers computes)."""
    dim = config.head_dim
    inv = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
    inv = inv.astype(np.float32)
    sc = config.rope_scaling_dict
    kind = sc.get("rope_type", "default") if sc else "default"
    if kind == "linear":
        inv = inv / np.float32(sc["factor"])
    elif kind == "llama3":
        factor, low, high = float(sc["factor"]), float(sc["low_freq_factor"]), float(sc["high_freq_factor"])
        old_ctx = float(sc["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv


def rope_angles(config: ModelConfig, positions: Array) -> tuple[Array, Array]:
    """cos, sin of shape [B, T, head_dim] (fp32) for integer positions [B, T]."""
    inv = jnp.asarray(rope_inv_freq(config))
    freqs = positions.astype(jnp.float32)[..., None] * inv
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """x [B, T, N, hd]; HF layout (rotate the two halves)."""
    xf = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]).astype(x.dtype)
