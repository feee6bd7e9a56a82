"""The decoder's parameters (stacked over layers) and the XLA pieces of a layer every phase shares.

Layers are *stacked*: every per-layer parameter carries a leading `layers` axis and a forward pass is one
`jax.lax.scan` over them (compile time stays flat in depth), or straight-line layers over per-layer copies
(`decoder.unstack_layers`, the engine's decode on a GPU). The per-layer view is an ordinary `DecoderLayer` module
(nnx.merge of the sliced state), so LoRA params added to its projections are [num_slots, in..., rank] per layer.
Every parameter carries `logical_axes` metadata (models/sharding.py RULES).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from automem_jax.models.attention import attention
from automem_jax.models.config import ModelConfig
from automem_jax.models.rope import apply_rope

Array = jax.Array
_INIT_STD = 0.02


class LoRAScale(nnx.Variable):
    """Per-slot LoRA scale alpha/r (not trainable: not a Param/LoRAParam)."""


def param(value: Array, axes: tuple[str | None, ...]) -> nnx.Param:
    return nnx.Param(value, logical_axes=axes)


def normal(rngs: nnx.Rngs, shape: tuple[int, ...], dtype) -> Array:
    return (jax.random.normal(rngs.params(), shape, jnp.float32) * _INIT_STD).astype(dtype)


def rms_norm(x: Array, weight: Array, eps: float) -> Array:
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (weight.astype(jnp.float32) * xf).astype(x.dtype)


class Proj(nnx.Module):
    """Dense map x[..., *in_shape] -> [..., *out_shape] with optional bias and optional multi-slot LoRA.

    LoRA (added by lora.apply_lora): `lora_a` [slots, *in_shape, r], `lora_b` [slots, r, *out_shape] (per layer).
    """

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], in_axes: tuple[str, ...],
                 out_axes: tuple[str, ...], *, num_layers: int, bias: bool, dtype, rngs: nnx.Rngs):
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.in_axes, self.out_axes = tuple(in_axes), tuple(out_axes)
        self.kernel = param(normal(rngs, (num_layers, *in_shape, *out_shape), dtype), ("layers", *in_axes, *out_axes))
        self.bias = param(jnp.zeros((num_layers, *out_shape), dtype), ("layers", *out_axes)) if bias else None
        self.lora_a: nnx.LoRAParam | None = nnx.data(None)  # data attrs: apply_lora assigns params later
        self.lora_b: nnx.LoRAParam | None = nnx.data(None)

    def __call__(self, x: Array, lora_rows: tuple[Array, Array] | None) -> Array:
        """lora_rows: (slot index per row [B] clipped >= 0, scale per row [B] (0 for base-only rows)) or None;
        (None, scale []) when every row uses slot 0."""
        n_in = len(self.in_shape)
        kernel = self.kernel[...]
        y = jnp.tensordot(x, kernel.astype(x.dtype), axes=n_in)
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        delta = self.lora_delta(x, lora_rows)
        return y if delta is None else y + delta.reshape(y.shape).astype(y.dtype)

    def lora_delta(self, x: Array, lora_rows: tuple[Array, Array] | None) -> Array | None:
        """The LoRA term of x [B, T, *in_shape] -> [B, T, prod(out_shape)] (x.dtype); None without LoRA."""
        if self.lora_a is None or lora_rows is None:
            return None
        slots, scale = lora_rows
        b_, t_ = x.shape[:2]
        n_out = int(np.prod(self.out_shape))
        a = self.lora_a[...]
        b = self.lora_b[...]
        if slots is None:  # every row on slot 0 (training): plain [B*T]-row GEMMs, no per-row copy of A/B
            xa = x.reshape(b_, t_, -1) @ a[0].reshape(-1, a.shape[-1]).astype(x.dtype)
            return (xa * scale.astype(x.dtype)) @ b[0].reshape(b.shape[1], n_out).astype(x.dtype)
        a = a.reshape(a.shape[0], -1, a.shape[-1])[slots].astype(x.dtype)        # [B, IN, r]
        b = b.reshape(b.shape[0], b.shape[1], n_out)[slots].astype(x.dtype)     # [B, r, OUT]
        xa = jnp.einsum("bti,bir->btr", x.reshape(b_, t_, -1), a)
        return jnp.einsum("btr,bro->bto", xa * scale.astype(x.dtype)[:, None, None], b)

    def finish_sums(self, y: Array, x: Array | None, lora_rows) -> Array:
        """Finish the fp32 output y [B, N] of a kernel projection of x [B, 1, *in_shape]: bias, then the LoRA term
        of x (x is only read with LoRA) -> fp32 [B, N]."""
        if self.bias is not None:
            y = y + self.bias[...].reshape(-1).astype(jnp.float32)
        delta = None if x is None else self.lora_delta(x, lora_rows)
        return y if delta is None else y + delta[:, 0].astype(jnp.float32)


class DecoderLayer(nnx.Module):
    """All layers' parameters, stacked on a leading axis; the methods run ONE layer (called on a per-layer slice)."""

    def __init__(self, config: ModelConfig, *, dtype, rngs: nnx.Rngs):
        c = config
        L, D, F, H, K, E = (c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads,
                            c.head_dim)
        kw = dict(num_layers=L, dtype=dtype, rngs=rngs)
        self.attn_norm = param(jnp.ones((L, D), jnp.float32), ("layers", "embed"))
        self.q_proj = Proj((D,), (H, E), ("embed",), ("q_heads", "head_dim"), bias=c.attention_bias, **kw)
        self.k_proj = Proj((D,), (K, E), ("embed",), ("kv_heads", "head_dim"), bias=c.attention_bias, **kw)
        self.v_proj = Proj((D,), (K, E), ("embed",), ("kv_heads", "head_dim"), bias=c.attention_bias, **kw)
        self.o_proj = Proj((H, E), (D,), ("q_heads", "head_dim"), ("embed",), bias=False, **kw)
        self.mlp_norm = param(jnp.ones((L, D), jnp.float32), ("layers", "embed"))
        self.gate_proj = Proj((D,), (F,), ("embed",), ("mlp",), bias=False, **kw)
        self.up_proj = Proj((D,), (F,), ("embed",), ("mlp",), bias=False, **kw)
        self.down_proj = Proj((F,), (D,), ("mlp",), ("embed",), bias=False, **kw)

    def __call__(self, x: Array, cos: Array, sin: Array, *, eps: float, mask: Array, lora_rows,
                 attn_fn=None) -> Array:
        """A layer without a cache (training, full-sequence logits): attention within the rows under `mask`, or
        `attn_fn(q, k, v)` (a fused training kernel, models/attention.py)."""
        q, k, v = self.qkv(x, cos, sin, eps, lora_rows)
        attn = attn_fn(q, k, v) if attn_fn is not None else attention(q, k, v, mask)
        return self.finish(x, attn, lora_rows, eps)

    def qkv(self, x: Array, cos: Array, sin: Array, eps: float, lora_rows) -> tuple[Array, Array, Array]:
        """q [B, T, H, E], k and v [B, T, K, E] of x (RMSNorm, projections, RoPE on q and k)."""
        h = rms_norm(x, self.attn_norm[...], eps)
        q = apply_rope(self.q_proj(h, lora_rows), cos, sin)
        k = apply_rope(self.k_proj(h, lora_rows), cos, sin)
        return q, k, self.v_proj(h, lora_rows)

    def finish(self, x: Array, attn: Array, lora_rows, eps: float) -> Array:
        """Output projection + residual, then the MLP block."""
        x = x + self.o_proj(attn, lora_rows)
        h = rms_norm(x, self.mlp_norm[...], eps)
        mlp = jax.nn.silu(self.gate_proj(h, lora_rows)) * self.up_proj(h, lora_rows)
        return x + self.down_proj(mlp, lora_rows)
