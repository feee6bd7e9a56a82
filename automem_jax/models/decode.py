"""The decode phase: one token for every cache row (or for the rows named), its K/V written at the row's position.

Per layer three attention paths, chosen by the (resolved) KernelConfig when the program is traced:
- the Pallas kernel from the q/k/v projection's raw output (no LoRA, no tensor parallelism): the kernel sums,
  biases, rotates and slices q/k/v, writes the new K/V and attends (kernels/decode_attention.py);
- the Pallas kernel from q, k, v (LoRA rows, or per shard of the heads under tensor parallelism);
- XLA: the new K/V scattered into the cache, then a multiply-reduce attention over the layer's window.
Projections of small batches run through kernels/gemv.py (RMSNorm fused in; bias, LoRA, RoPE, SiLU and residuals
are the XLA fusions after it), else XLA's.
Rows parked at a position >= the cache length (done or free slots) write nothing (the kernel skips them, the
scatter drops them).
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from automem_jax.kernels import decode_attention as attn_kernel
from automem_jax.kernels import gemv
from automem_jax.kernels.config import KERNEL, XLA_ONLY, KernelConfig
from automem_jax.kernels.shard import heads_spec, per_shard, tensor_size
from automem_jax.models.attention import decode_attention
from automem_jax.models.kv_cache import KVCache
from automem_jax.models.layers import DecoderLayer, rms_norm
from automem_jax.models.rope import apply_rope, rope_angles

Array = jax.Array


class _Step(NamedTuple):
    """What every layer of one decode step shares."""
    kernels: KernelConfig
    cos: Array          # [B, 1, E] fp32
    sin: Array
    pos: Array          # i32 [B]: each row's write position
    rows: Array | None  # i32 [B]: each row's cache row (None: row b)
    window: int         # cache entries attention reads (every live position is below it)
    lora_rows: Any
    eps: float


def decode_step(model, tokens: Array, positions: Array, cache: KVCache, *, rows: Array | None = None,
                adapter_ids: Array | None = None, window: int | None = None, kernels: KernelConfig = XLA_ONLY,
                layer_params: Sequence[nnx.State] | None = None) -> tuple[Array, KVCache]:
    """tokens, positions [B, 1] (a row's position is the cache index its K/V go to) -> (logits [B, 1, V] fp32,
    cache). rows i32 [B]: distinct cache rows the batch rows are (None: batch row b is cache row b), so a step can
    run on the live slots only. window (static): attention reads only cache indices < window (the caller keeps
    every live position below it), so a step costs the live context, not the cache length. layer_params:
    `decoder.unstack_layers` of the model (straight-line layers on per-layer buffers: in the scan every layer's
    weights are dynamic slices, which XLA copies out before each library GEMM)."""
    c = model.config
    tokens, positions = jnp.asarray(tokens, jnp.int32), jnp.asarray(positions, jnp.int32)
    b = tokens.shape[0]
    if tokens.shape != (b, 1) or positions.shape != (b, 1) or (
            cache.batch != b if rows is None else rows.shape != (b,)):
        raise ValueError(f"decode_step: needs tokens and positions [B, 1], and a cache of B rows or rows [B]; got "
                         f"tokens {tokens.shape}, positions {positions.shape}, cache rows {cache.batch}, rows "
                         f"{None if rows is None else rows.shape}")
    window = cache.max_len if window is None else window
    if not 0 < window <= cache.max_len:
        raise ValueError(f"decode_step: window={window} must be in [1, cache max_len={cache.max_len}]")
    cos, sin = rope_angles(c, positions)
    step = _Step(kernels, cos, sin, positions[:, 0], rows, window, model.lora_rows(adapter_ids, b), c.rms_norm_eps)
    x = model.embed_tokens(tokens)
    graphdef, state = nnx.split(model.layers)
    kv = (cache.k, cache.v)
    if layer_params is None:
        def body(carry, xs):
            layer_state, i = xs
            return _layer(nnx.merge(graphdef, layer_state), *carry, i, step), None
        (x, kv), _ = jax.lax.scan(body, (x, kv), (state, jnp.arange(c.num_layers)))
    else:
        if len(layer_params) != c.num_layers:
            raise ValueError(f"decode_step: layer_params has {len(layer_params)} layers, the model {c.num_layers}")
        for i, layer_state in enumerate(layer_params):
            x, kv = _layer(nnx.merge(graphdef, layer_state), x, kv, jnp.int32(i), step)
    h = rms_norm(x, model.final_norm[...], c.rms_norm_eps)
    return model.lm_head(h), cache.replace(*kv)


def _layer(layer: DecoderLayer, x: Array, kv: tuple[Array, Array], i: Array, step: _Step):
    k = step.kernels
    tp = tensor_size() > 1
    projections = (k.projections == KERNEL and not tp and layer.q_proj.kernel[...].dtype == x.dtype
                   and gemv.supports(x.dtype, x.shape[0], k.gemv) is None)
    if k.decode_attention == KERNEL and step.lora_rows is None and not tp:
        attn, kv = _fused_attention(layer, x, kv, i, step, projections)
    else:
        q, k_new, v_new = _qkv(layer, x, step, projections)
        attend = _kernel_attention if k.decode_attention == KERNEL else _xla_attention
        attn, kv = attend(q, k_new, v_new, kv, i, step)
    return _finish(layer, x, attn, step, projections), kv


def _qkv(layer: DecoderLayer, x: Array, step: _Step, projections: bool) -> tuple[Array, Array, Array]:
    if not projections:
        return layer.qkv(x, step.cos, step.sin, step.eps, step.lora_rows)
    projs = (layer.q_proj, layer.k_proj, layer.v_proj)
    b, d = x.shape[0], x.shape[-1]
    ys = gemv.project(x[:, 0], [p.kernel[...].reshape(d, -1) for p in projs], norm=layer.attn_norm[...],
                      eps=step.eps, tiling=step.kernels.gemv, interpret=step.kernels.interpret)
    h = None if step.lora_rows is None else rms_norm(x, layer.attn_norm[...], step.eps)
    q, k, v = (p.finish_sums(y, h, step.lora_rows).astype(x.dtype).reshape(b, 1, *p.out_shape)
               for p, y in zip(projs, ys))
    return apply_rope(q, step.cos, step.sin), apply_rope(k, step.cos, step.sin), v


def _fused_attention(layer: DecoderLayer, x: Array, kv, i: Array, step: _Step, projections: bool):
    """The kernel from the q/k/v projection's output: the projection kernel's split-K partial sums, or one XLA GEMM
    whose input depth is split into qkv_split_k batched parts (XLA's own split-K would add a reduce kernel)."""
    projs = (layer.q_proj, layer.k_proj, layer.v_proj)
    d = x.shape[-1]
    ws = [p.kernel[...].reshape(d, -1) for p in projs]
    kc = step.kernels
    if projections:
        sums = gemv.project_partials(x[:, 0], ws, norm=layer.attn_norm[...], eps=step.eps, tiling=kc.gemv,
                                     interpret=kc.interpret)
    else:
        h, w = rms_norm(x, layer.attn_norm[...], step.eps)[:, 0], jnp.concatenate(ws, axis=1)
        sk = kc.qkv_split_k if d % kc.qkv_split_k == 0 else 1
        sums = jnp.einsum("bsd,sdn->sbn", h.reshape(x.shape[0], sk, d // sk), w.reshape(sk, d // sk, -1),
                          preferred_element_type=jnp.float32 if sk > 1 else None)
    attn, ck, cv = attn_kernel.decode_attention_qkv(
        sums, *kv, i, step.pos, window=step.window, num_heads=layer.q_proj.out_shape[0], cos=step.cos[:, 0],
        sin=step.sin[:, 0], dtype=x.dtype, tiling=kc.decode, interpret=kc.interpret, rows=step.rows,
        biases=tuple(None if p.bias is None else p.bias[...].reshape(-1) for p in projs))
    return attn, (ck, cv)


def _kernel_attention(q: Array, k: Array, v: Array, kv, i: Array, step: _Step):
    """The kernel from q, k, v; under tensor parallelism per shard of the heads (q/k/v and the cache are sharded
    on their head axis alike)."""
    kc = step.kernels
    fn = functools.partial(attn_kernel.decode_attention, window=step.window, tiling=kc.decode,
                           interpret=kc.interpret)
    heads, cache = heads_spec(4, 2), heads_spec(5, 3)
    rows = jnp.arange(q.shape[0], dtype=jnp.int32) if step.rows is None else step.rows
    run = per_shard(lambda q, k, v, ck, cv, i, pos, rows: fn(q, k, v, ck, cv, i, pos, rows=rows),
                    (heads, heads, heads, cache, cache, P(), P(), P()), (heads, cache, cache))
    attn, ck, cv = run(q, k, v, *kv, i, step.pos, rows)
    return attn, (ck, cv)


def _xla_attention(q: Array, k: Array, v: Array, kv, i: Array, step: _Step):
    ck, cv = kv
    rows = jnp.arange(q.shape[0]) if step.rows is None else step.rows
    at = (i, rows[:, None], step.pos[:, None])
    ck = ck.at[at].set(k.astype(ck.dtype), mode="drop")   # in place under donation; parked rows dropped
    cv = cv.at[at].set(v.astype(cv.dtype), mode="drop")
    if step.rows is None:
        keys, values = ck[i, :, :step.window], cv[i, :, :step.window]               # [B, W, K, E]
    else:
        keys, values = ck[i, step.rows, :step.window], cv[i, step.rows, :step.window]
    mask = jnp.arange(step.window)[None, None, :] <= step.pos[:, None, None]         # [B, 1, W]
    attn = decode_attention(q, keys.astype(q.dtype), values.astype(q.dtype), mask)
    return attn, (ck, cv)


def _finish(layer: DecoderLayer, x: Array, attn: Array, step: _Step, projections: bool) -> Array:
    """Output projection + residual and the MLP; through the projection kernel: split-K launches for o, gate/up
    (RMSNorm fused) and down, whose fp32 sums XLA finishes (bias, LoRA terms, SiLU, residuals)."""
    if not projections:
        return layer.finish(x, attn, step.lora_rows, step.eps)
    b, d = x.shape[0], x.shape[-1]
    lora, kc = step.lora_rows, step.kernels
    run = functools.partial(gemv.project, tiling=kc.gemv, interpret=kc.interpret)
    wo, wg, wu, wd = (p.kernel[...] for p in (layer.o_proj, layer.gate_proj, layer.up_proj, layer.down_proj))
    (o,) = run(attn.reshape(b, -1), [wo.reshape(-1, d)])
    x = x + layer.o_proj.finish_sums(o, attn if lora else None, lora).astype(x.dtype)[:, None]
    gate, up = run(x[:, 0], [wg, wu], norm=layer.mlp_norm[...], eps=step.eps)
    h = rms_norm(x, layer.mlp_norm[...], step.eps) if lora else None
    mlp = (jax.nn.silu(layer.gate_proj.finish_sums(gate, h, lora))
           * layer.up_proj.finish_sums(up, h, lora)).astype(x.dtype)                     # [B, F]
    (down,) = run(mlp, [wd])
    return x + layer.down_proj.finish_sums(down, mlp[:, None] if lora else None, lora).astype(x.dtype)[:, None]
