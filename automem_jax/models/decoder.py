"""Flax NNX decoder for the Llama family (SmolLM2, Llama 3.x, Qwen2/Qwen2.5).

RMSNorm (fp32), RoPE (config theta + Llama-3 / linear scaling, HF rotate-half layout), grouped-query attention with
optional q/k/v bias, SwiGLU MLP, tied or untied embeddings. Compute runs in `dtype` (bf16 by default); norms, RoPE
angles, attention softmax and logits are fp32.

Entry points by phase: `hidden` / `__call__` without a cache (training, full-sequence logits); with a KV cache,
models/decode.py `decode_step` (one token for every cache row) and models/prefill.py `prefill` (a chunk into some
cache rows), which `__call__` dispatches to for callers that hold a cache. Parameters and the per-layer code live in
models/layers.py.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from automem_jax.kernels.config import XLA_ONLY, KernelConfig
from automem_jax.models import attention as attn_lib
from automem_jax.models.config import ModelConfig
from automem_jax.models.decode import decode_step
from automem_jax.models.kv_cache import KVCache
from automem_jax.models.layers import DecoderLayer, LoRAScale, normal, param, rms_norm
from automem_jax.models.prefill import Chunk, prefill
from automem_jax.models.rope import rope_angles

Array = jax.Array

__all__ = ["Decoder", "KVCache", "LoRAScale", "rms_norm", "unstack_layers"]


class Decoder(nnx.Module):
    """`logits, cache = model(tokens, positions, cache=None, segment_ids=None, adapter_ids=None)`."""

    def __init__(self, config: ModelConfig, *, dtype=jnp.bfloat16, rngs: nnx.Rngs, remat: bool = False):
        self.config = config
        self.dtype = dtype
        self.remat = remat  # per-layer jax.checkpoint: bool or a mode of attention.REMAT_MODES (training)
        self.attention_impl = "xla"  # no-cache attention: attention.IMPLS (the trainer picks a fused kernel)
        self.embed = param(normal(rngs, (config.vocab_size, config.hidden_size), dtype), ("vocab", "embed"))
        self.layers = DecoderLayer(config, dtype=dtype, rngs=rngs)
        self.final_norm = param(jnp.ones((config.hidden_size,), jnp.float32), ("embed",))
        self.unembed = None if config.tie_word_embeddings else param(
            normal(rngs, (config.hidden_size, config.vocab_size), dtype), ("embed", "vocab"))
        self.lora_scale: LoRAScale | None = nnx.data(None)  # [num_slots], set by lora.apply_lora
        self.lora_config = None  # LoRAConfig, set by lora.apply_lora

    # --------------------------------------------------------------------------------------------- public calls
    def __call__(self, tokens: Array, positions: Array, *, cache: KVCache | None = None,
                 segment_ids: Array | None = None, adapter_ids: Array | None = None, kv_window: int | None = None,
                 cache_rows: Array | None = None, kernels: KernelConfig = XLA_ONLY) -> tuple[Array, KVCache | None]:
        """Without a cache: full-sequence logits (`hidden`). With one: a step of one token for every cache row
        (T = 1, decode_step), else a chunk into rows `cache_rows` (default: batch row b is cache row b) after the
        entries each row holds (prefill; a row's positions must be consecutive). kv_window: attention reads only
        cache indices below it."""
        tokens, positions = _check_shapes(tokens, positions)
        if cache is None:
            return self.lm_head(self.hidden(tokens, positions, segment_ids=segment_ids, adapter_ids=adapter_ids)), None
        if segment_ids is not None:
            raise ValueError("Decoder: segment_ids (packed training) cannot be combined with a KV cache")
        b, t = tokens.shape
        if cache_rows is None and cache.batch != b:
            raise ValueError(f"Decoder: cache batch {cache.batch} != tokens batch {b}; pass cache_rows (the cache "
                             "row of each batch row) to run on some rows of the cache")
        if t == 1 and cache_rows is None:
            return decode_step(self, tokens, positions, cache, adapter_ids=adapter_ids, window=kv_window,
                               kernels=kernels)
        rows = jnp.arange(b, dtype=jnp.int32) if cache_rows is None else jnp.asarray(cache_rows, jnp.int32)
        chunk = Chunk(tokens, positions, rows, jnp.full((b,), t, jnp.int32), adapter=adapter_ids)
        h, cache = prefill(self, chunk, cache, window=kv_window, kernels=kernels)
        return self.lm_head(h), cache

    def hidden(self, tokens: Array, positions: Array, *, segment_ids: Array | None = None,
               adapter_ids: Array | None = None) -> Array:
        """Final hidden states [B, T, D] without a cache: causal attention within each row (and within each
        segment of packed training rows), through the trainer's fused kernel if `attention_impl` names one."""
        c = self.config
        tokens, positions = _check_shapes(tokens, positions)
        x = self.embed_tokens(tokens)
        cos, sin = rope_angles(c, positions)
        mask = _causal_mask(positions, segment_ids)
        lora_rows = self.lora_rows(adapter_ids, tokens.shape[0])
        attn_fn = attn_lib.no_cache_attention(getattr(self, "attention_impl", "xla"), segment_ids, self.dtype)
        graphdef, state = nnx.split(self.layers)

        def body(x, layer_state):
            layer = nnx.merge(graphdef, layer_state)
            return layer(x, cos, sin, eps=c.rms_norm_eps, mask=mask, lora_rows=lora_rows, attn_fn=attn_fn), None

        x, _ = jax.lax.scan(attn_lib.remat_body(body, self.remat), x, state)
        return rms_norm(x, self.final_norm[...], c.rms_norm_eps)

    def logits(self, ids: Array) -> Array:
        """Full-sequence logits [B, T, V] (positions = arange); jitted, so cheap to call eagerly."""
        return _jit_logits(self, jnp.asarray(ids, jnp.int32))

    def embed_tokens(self, tokens: Array) -> Array:
        return self.embed[...][tokens].astype(self.dtype)

    def lm_head(self, h: Array) -> Array:
        if self.unembed is None:
            return jnp.einsum("btd,vd->btv", h, self.embed[...].astype(h.dtype), preferred_element_type=jnp.float32)
        return jnp.einsum("btd,dv->btv", h, self.unembed[...].astype(h.dtype), preferred_element_type=jnp.float32)

    def lora_rows(self, adapter_ids: Array | None, batch: int):
        """What the projections' LoRA terms read: None without LoRA; (None, scale of slot 0) when every row uses
        slot 0 (training: plain GEMMs over all rows); else (slot per row [B], scale per row [B], 0 for base rows)."""
        if self.lora_scale is None:
            return None
        scale = self.lora_scale[...]
        if adapter_ids is None:
            return None, scale[0]
        adapter_ids = jnp.asarray(adapter_ids, jnp.int32)
        if adapter_ids.shape != (batch,):
            raise ValueError(f"Decoder: adapter_ids must be [B]={batch}, got shape {adapter_ids.shape}")
        slots = jnp.clip(adapter_ids, 0, scale.shape[0] - 1)
        return slots, jnp.where(adapter_ids >= 0, scale[slots], 0.0)


def _check_shapes(tokens, positions) -> tuple[Array, Array]:
    tokens, positions = jnp.asarray(tokens, jnp.int32), jnp.asarray(positions, jnp.int32)
    if tokens.ndim != 2 or positions.shape != tokens.shape:
        raise ValueError(f"Decoder: tokens and positions must both be [B, T]; got {tokens.shape} and "
                         f"{positions.shape}")
    return tokens, positions


def _causal_mask(positions: Array, segment_ids: Array | None) -> Array:
    t = positions.shape[1]
    idx = jnp.arange(t)
    mask = (idx[None, :, None] >= idx[None, None, :]) & (positions[:, None, :] <= positions[:, :, None])
    if segment_ids is not None:
        segment_ids = jnp.asarray(segment_ids)
        mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
    return mask


def unstack_layers(model: Decoder) -> tuple[nnx.State, ...]:
    """The model's stacked layer params as one State per layer, each leaf its own buffer (decode_step's
    `layer_params`). Costs a second copy of the layer weights while both are alive."""
    return _slice_layers(nnx.state(model.layers), model.config.num_layers)


@functools.partial(jax.jit, static_argnums=1)
def _slice_layers(state: nnx.State, num_layers: int) -> tuple[nnx.State, ...]:
    return tuple(jax.tree.map(lambda a: a[i], state) for i in range(num_layers))


@nnx.jit
def _jit_logits(model: Decoder, ids: Array) -> Array:
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape)
    return model(ids, positions)[0]
