"""Flax NNX decoder for the Llama family (SmolLM2, Llama 3.x, Qwen2/Qwen2.5).

RMSNorm (fp32), RoPE (config theta + Llama-3 / linear scaling, HF rotate-half layout), grouped-query attention with
optional q/k/v bias, SwiGLU MLP, tied or untied embeddings. Compute runs in `dtype` (bf16 by default); norms, RoPE
angles, attention softmax and logits are fp32.

Layers are *stacked*: every per-layer parameter carries a leading `layers` axis and the forward pass is one
`jax.lax.scan` over them. Why: compile time stays flat in depth (30-layer SmolLM2 and 64-layer Qwen2.5-32B compile one
layer body), and the KV cache [L, B, S, K, hd] is scanned along the same axis. The per-layer view inside the scan is an
ordinary `DecoderLayer` module (nnx.merge of the sliced state), so LoRA params added to its projections are
[num_slots, in..., rank] per layer ([L, num_slots, in..., rank] stacked).

Every parameter carries `logical_axes` metadata (names from models/sharding.py RULES); `param_shardings` turns them
into NamedShardings for a mesh.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from automem_jax.models import attention as attn_lib
from automem_jax.models.attention import attention, decode_attention  # the XLA paths
from automem_jax.models import decode_kernel, gemv_kernel, prefill_kernel
from automem_jax.models import decode_micro_batch as micro_batch
from automem_jax.models import sharding as shd
from automem_jax.models.config import ModelConfig
from automem_jax.models.rope import apply_rope, rope_angles

Array = jax.Array
_INIT_STD = 0.02


class LoRAScale(nnx.Variable):
    """Per-slot LoRA scale alpha/r (not trainable: not a Param/LoRAParam)."""


def _param(value: Array, axes: tuple[str | None, ...]) -> nnx.Param:
    return nnx.Param(value, logical_axes=axes)


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], dtype) -> Array:
    return (jax.random.normal(rngs.params(), shape, jnp.float32) * _INIT_STD).astype(dtype)


def rms_norm(x: Array, weight: Array, eps: float) -> Array:
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (weight.astype(jnp.float32) * xf).astype(x.dtype)


# ------------------------------------------------------------------------------------------------------ KV cache
@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """k, v: [L, B, S, num_kv_heads, head_dim]. The token at absolute position p sits at index p of its row."""
    k: Array
    v: Array

    LOGICAL_AXES = ("layers", "batch", "cache_seq", "kv_heads", "head_dim")

    @classmethod
    def init(cls, config: ModelConfig, batch: int, max_len: int, dtype=jnp.bfloat16, *,
             mesh: Mesh | None = None) -> "KVCache":
        shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)
        if mesh is None:
            return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
        sharding = shd.named_sharding(cls.LOGICAL_AXES, shape, mesh)
        zeros = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)
        return cls(zeros(), zeros())

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    def shardings(self, mesh: Mesh) -> "KVCache":
        s = shd.named_sharding(self.LOGICAL_AXES, self.k.shape, mesh)
        return KVCache(s, s)


# --------------------------------------------------------------------------------------------------- projections
class Proj(nnx.Module):
    """Dense map x[..., *in_shape] -> [..., *out_shape] with optional bias and optional multi-slot LoRA.

    LoRA (added by lora.apply_lora): `lora_a` [slots, *in_shape, r], `lora_b` [slots, r, *out_shape] (per layer).
    """

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], in_axes: tuple[str, ...],
                 out_axes: tuple[str, ...], *, num_layers: int, bias: bool, dtype, rngs: nnx.Rngs):
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.in_axes, self.out_axes = tuple(in_axes), tuple(out_axes)
        self.kernel = _param(_normal(rngs, (num_layers, *in_shape, *out_shape), dtype), ("layers", *in_axes, *out_axes))
        self.bias = _param(jnp.zeros((num_layers, *out_shape), dtype), ("layers", *out_axes)) if bias else None
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
        """Finish the fp32 output y [B, N] of a gemv_kernel projection of x [B, 1, *in_shape]: bias, then the
        LoRA term of x (x is only read with LoRA) -> fp32 [B, N]."""
        if self.bias is not None:
            y = y + self.bias[...].reshape(-1).astype(jnp.float32)
        delta = None if x is None else self.lora_delta(x, lora_rows)
        return y if delta is None else y + delta[:, 0].astype(jnp.float32)


# adapter_ids=None (all rows on slot 0, as in training) runs LoRA as plain GEMMs over all B*T rows instead of
# per-row batched GEMMs on gathered A/B copies; the bench flips it to time both.
UNIFORM_LORA = True


class DecoderLayer(nnx.Module):
    """All layers' parameters, stacked on a leading axis; `__call__` runs ONE layer (called on a per-layer slice)."""

    def __init__(self, config: ModelConfig, *, dtype, rngs: nnx.Rngs):
        c = config
        L, D, F, H, K, E = (c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads,
                            c.head_dim)
        kw = dict(num_layers=L, dtype=dtype, rngs=rngs)
        self.attn_norm = _param(jnp.ones((L, D), jnp.float32), ("layers", "embed"))
        self.q_proj = Proj((D,), (H, E), ("embed",), ("q_heads", "head_dim"), bias=c.attention_bias, **kw)
        self.k_proj = Proj((D,), (K, E), ("embed",), ("kv_heads", "head_dim"), bias=c.attention_bias, **kw)
        self.v_proj = Proj((D,), (K, E), ("embed",), ("kv_heads", "head_dim"), bias=c.attention_bias, **kw)
        self.o_proj = Proj((H, E), (D,), ("q_heads", "head_dim"), ("embed",), bias=False, **kw)
        self.mlp_norm = _param(jnp.ones((L, D), jnp.float32), ("layers", "embed"))
        self.gate_proj = Proj((D,), (F,), ("embed",), ("mlp",), bias=False, **kw)
        self.up_proj = Proj((D,), (F,), ("embed",), ("mlp",), bias=False, **kw)
        self.down_proj = Proj((F,), (D,), ("mlp",), ("embed",), bias=False, **kw)

    def __call__(self, x: Array, cos: Array, sin: Array, *, eps: float, mask: Array,
                 cache_kv: tuple[Array, Array] | None, layer_index: Array | None, write_index: Array | None,
                 lora_rows, kv_window: int | None = None, attn_fn=None, cache_rows: Array | None = None,
                 cache_row0: int = 0, prefill_bias: Array | None = None, rows_in_place: bool = False,
                 row_lengths: Array | None = None, first_block: Array | None = None
                 ) -> tuple[Array, tuple[Array, Array] | None]:
        """cache_row0 (decode over the full cache, static): batch row b is cache row cache_row0 + b (a micro-batch
        of the step's rows, models/decode_micro_batch.py). prefill_bias (prefill into cache rows): `mask` as cuDNN's
        additive bias, built once for all layers (attention.prefill_bias). rows_in_place (prefill into cache rows):
        `cache_kv` is the whole stacked cache, read in place by models/prefill_kernel.py (no window copies);
        row_lengths: each row's real token count there (the kernel skips the padding); first_block: packed rows
        (engine/packed_prefill.py), the first row of each row's request."""
        kernels = self._projection_kernels(x, cache_kv, cache_rows, lora_rows)
        if self._fused_qkv_attention(x, cache_kv, cache_rows, lora_rows, kernels):
            return self._decode_fused_qkv(x, cos, sin, eps, cache_kv, layer_index, write_index, kv_window, kernels,
                                          cache_row0)
        if kernels:
            q, k, v = self._qkv_kernels(x, cos, sin, eps, lora_rows)
        else:
            h = rms_norm(x, self.attn_norm[...], eps)
            q = apply_rope(self.q_proj(h, lora_rows), cos, sin)             # [B, T, H, E]
            k = apply_rope(self.k_proj(h, lora_rows), cos, sin)             # [B, T, K, E]
            v = self.v_proj(h, lora_rows)
        if rows_in_place:  # the rows' heads read in place; the new K/V go back to the caller, as below
            k, v = k.astype(cache_kv[0].dtype), v.astype(cache_kv[1].dtype)
            attn = prefill_kernel.prefill_attention_cache(q, k, v, *cache_kv, layer_index, cache_rows,
                                                          write_index[:, 0], row_lengths, first_block)
            return self._finish(x, attn, lora_rows, eps), (k, v)
        if cache_kv is not None and cache_rows is not None:
            # Prefill into some cache rows: `cache_kv` is this layer's window of those rows [n, W, K, E] (read by
            # the caller); the new tokens go into that copy only and are returned for the caller to write into
            # the cache once, after all layers (no loop carries or reads the whole cache).
            kw, vw = cache_kv
            k, v = k.astype(kw.dtype), v.astype(vw.dtype)
            r_idx = jnp.arange(x.shape[0])[:, None]
            keys = kw.at[r_idx, write_index].set(k, mode="drop")
            values = vw.at[r_idx, write_index].set(v, mode="drop")
            keys_, values_ = keys.astype(x.dtype), values.astype(x.dtype)
            if _cudnn_prefill(q, keys):
                attn = attn_lib.cudnn_prefill_attention(q, keys_, values_, mask, bias=prefill_bias)
            else:
                attn = attention(q, keys_, values_, mask)
            if PREFILL_ROWS_WRITE == "dus":  # T entries of the window copy from prefill_write_start (see there)
                t, s0 = x.shape[1], prefill_write_start(write_index, kw.shape[1])
                k, v = (jax.vmap(lambda a, s: jax.lax.dynamic_slice_in_dim(a, s, t, axis=0))(a, s0)
                        for a in (keys, values))
            return self._finish(x, attn, lora_rows, eps), (k, v)
        if cache_kv is not None:
            ck, cv = cache_kv                                               # [L, B, S, K, E] (full, carried)
            window = ck.shape[2] if kv_window is None else kv_window
            group = q.shape[2] // ck.shape[3]
            kernel = x.shape[1] == 1 and DECODE_KERNEL and decode_kernel.supported(q.dtype, ck.dtype, group,
                                                                                   q.shape[-1])
            if kernel and DECODE_KERNEL_WRITES_KV:  # the kernel writes the new K/V itself (no scatter kernels)
                attn, ck, cv = decode_kernel.decode_attention_cache(q, ck, cv, layer_index, write_index[:, 0],
                                                                    window=window, kv_new=(k, v), row0=cache_row0)
                return self._finish(x, attn, lora_rows, eps, kernels), (ck, cv)
            # Scatter only the new tokens into the carried cache (in place under donation); out-of-range writes
            # (padding past max_len) are dropped.
            rows = slice(cache_row0, cache_row0 + x.shape[0])
            b_idx = cache_row0 + jnp.arange(x.shape[0])[:, None]
            ck = ck.at[layer_index, b_idx, write_index].set(k.astype(ck.dtype), mode="drop")
            cv = cv.at[layer_index, b_idx, write_index].set(v.astype(cv.dtype), mode="drop")
            cache_kv = (ck, cv)
            keys, values = ck[layer_index, rows, :window], cv[layer_index, rows, :window]  # [B, W, K, E]
            if kernel:
                attn = decode_kernel.decode_attention_cache(q, ck, cv, layer_index, write_index[:, 0], window=window,
                                                            row0=cache_row0)
            elif x.shape[1] == 1 and _cudnn_decode(q, ck, window):
                # the decode mask is j <= position (and j < window): a per-row kv length of position + 1
                kv_len = jnp.clip(write_index[:, 0] + 1, 1, window)
                attn = attn_lib.cudnn_decode_attention(q, keys.astype(q.dtype), values.astype(q.dtype), kv_len)
            else:
                if x.shape[1] <= _DECODE_MAX_T:
                    attend = decode_attention
                elif _cudnn_prefill(q, keys):
                    attend = attn_lib.cudnn_prefill_attention
                else:
                    attend = attention
                attn = attend(q, keys.astype(x.dtype), values.astype(x.dtype), mask)
        elif attn_fn is not None:  # fused training kernel (models/attention.py)
            attn = attn_fn(q, k, v)
        else:
            attn = attention(q, k, v, mask)
        return self._finish(x, attn, lora_rows, eps, kernels), cache_kv

    def _finish(self, x: Array, attn: Array, lora_rows, eps: float, kernels: bool = False) -> Array:
        """Output projection + residual, then the MLP block."""
        if kernels:
            return self._finish_kernels(x, attn, lora_rows, eps)
        x = x + self.o_proj(attn, lora_rows)
        h = rms_norm(x, self.mlp_norm[...], eps)
        mlp = jax.nn.silu(self.gate_proj(h, lora_rows)) * self.up_proj(h, lora_rows)
        return x + self.down_proj(mlp, lora_rows)

    # Decode steps through gemv_kernel, per layer a q/k/v launch, the output projection, gate/up and the down
    # projection, RMSNorm fused in. Small batches: the input axis split over programs; bias, LoRA term (of XLA's
    # normalised x), RoPE, SiLU and residuals are the XLA fusions after them. Batches past gemv_kernel.MAX_BATCH
    # (no LoRA) and FINISH_IN_KERNEL: those finish in the kernels (bench/NOTES-generate.md has the timings).
    def _projection_kernels(self, x: Array, cache_kv, cache_rows, lora_rows) -> bool:
        return (DECODE_GEMV and cache_kv is not None and cache_rows is None and x.shape[1] == 1
                and self.q_proj.kernel[...].dtype == x.dtype
                and gemv_kernel.supported(x.dtype, x.shape[0], lora_rows is not None))

    # DECODE_QKV_FUSED: the decode attention kernel takes the q/k/v projection's output (gemv_kernel's partial
    # sums, or one XLA GEMM) and adds, rounds, rotates and slices q/k/v itself (decode_kernel.decode_attention_qkv).
    def _fused_qkv_attention(self, x: Array, cache_kv, cache_rows, lora_rows, kernels: bool) -> bool:
        if not (DECODE_QKV_FUSED and DECODE_KERNEL and DECODE_KERNEL_WRITES_KV and cache_kv is not None
                and cache_rows is None and x.shape[1] == 1 and lora_rows is None):
            return False
        if kernels and gemv_kernel.finished(x.shape[0], False):  # the projection kernel already rotates q/k
            return False
        group = self.q_proj.out_shape[0] // cache_kv[0].shape[3]
        return decode_kernel.supported(x.dtype, cache_kv[0].dtype, group, self.q_proj.out_shape[1])

    def _decode_fused_qkv(self, x, cos, sin, eps, cache_kv, layer_index, write_index, kv_window, kernels, row0):
        projs = (self.q_proj, self.k_proj, self.v_proj)
        d = x.shape[-1]
        ws = [p.kernel[...].reshape(d, -1) for p in projs]
        if kernels:
            sums = gemv_kernel.project_partials(x[:, 0], ws, norm=self.attn_norm[...], eps=eps)
        else:  # one GEMM (XLA reads the three weights in it as one concatenated operand), its input depth split
            # into QKV_SPLIT_K batched parts whose fp32 sums the kernel adds (XLA's own split-K needs a reduce kernel)
            h, w = rms_norm(x, self.attn_norm[...], eps)[:, 0], jnp.concatenate(ws, axis=1)
            sk = QKV_SPLIT_K if QKV_SPLIT_K > 1 and d % QKV_SPLIT_K == 0 else 1
            sums = jnp.einsum("bsd,sdn->sbn", h.reshape(x.shape[0], sk, d // sk), w.reshape(sk, d // sk, -1),
                              preferred_element_type=jnp.float32 if sk > 1 else None)
        ck, cv = cache_kv
        attn, ck, cv = decode_kernel.decode_attention_qkv(
            sums, ck, cv, layer_index, write_index[:, 0], window=ck.shape[2] if kv_window is None else kv_window,
            num_heads=self.q_proj.out_shape[0], cos=cos[:, 0], sin=sin[:, 0], dtype=x.dtype,
            biases=tuple(None if p.bias is None else p.bias[...].reshape(-1) for p in projs), row0=row0)
        return self._finish(x, attn, None, eps, kernels), (ck, cv)

    def _qkv_kernels(self, x: Array, cos: Array, sin: Array, eps: float, lora_rows):
        projs = (self.q_proj, self.k_proj, self.v_proj)
        b, d = x.shape[0], x.shape[-1]
        ws = [p.kernel[...].reshape(d, -1) for p in projs]
        if gemv_kernel.finished(b, lora_rows is not None):
            ys = gemv_kernel.qkv(x[:, 0], ws, [None if p.bias is None else p.bias[...].reshape(-1) for p in projs],
                                 norm=self.attn_norm[...], eps=eps, cos=cos[:, 0], sin=sin[:, 0],
                                 head_dim=self.q_proj.out_shape[-1])
            return tuple(y.reshape(b, 1, *p.out_shape) for y, p in zip(ys, projs))
        ys = gemv_kernel.project(x[:, 0], ws, norm=self.attn_norm[...], eps=eps)
        h = None if lora_rows is None else rms_norm(x, self.attn_norm[...], eps)
        q, k, v = (p.finish_sums(y, h, lora_rows).astype(x.dtype).reshape(b, 1, *p.out_shape)
                   for p, y in zip(projs, ys))
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def _finish_kernels(self, x: Array, attn: Array, lora_rows, eps: float) -> Array:
        b, d = x.shape[0], x.shape[-1]
        wo, wg, wu, wd = (p.kernel[...] for p in (self.o_proj, self.gate_proj, self.up_proj, self.down_proj))
        lora = lora_rows is not None
        if gemv_kernel.finished(b, lora):
            x = gemv_kernel.add_projection(attn.reshape(b, -1), wo.reshape(-1, d), x[:, 0])
            mlp = gemv_kernel.glu(x, wg, wu, norm=self.mlp_norm[...], eps=eps)
            if wd.size * wd.dtype.itemsize < gemv_kernel.SPLIT_BYTES:
                return gemv_kernel.add_projection(mlp, wd, x)[:, None]
            (down,) = gemv_kernel.project(mlp, [wd])
            return (x + down.astype(x.dtype))[:, None]
        (o,) = gemv_kernel.project(attn.reshape(b, -1), [wo.reshape(-1, d)])
        x = x + self.o_proj.finish_sums(o, attn if lora else None, lora_rows).astype(x.dtype)[:, None]
        gate, up = gemv_kernel.project(x[:, 0], [wg, wu], norm=self.mlp_norm[...], eps=eps)
        h = rms_norm(x, self.mlp_norm[...], eps) if lora else None
        mlp = (jax.nn.silu(self.gate_proj.finish_sums(gate, h, lora_rows))
               * self.up_proj.finish_sums(up, h, lora_rows)).astype(x.dtype)                    # [B, F]
        (down,) = gemv_kernel.project(mlp, [wd])
        return x + self.down_proj.finish_sums(down, mlp[:, None] if lora else None, lora_rows).astype(x.dtype)[:, None]


# Query lengths up to this use `decode_attention` over the cache (decode steps); longer ones (prefill) use `attention`.
_DECODE_MAX_T = 1
# Pallas decode attention (models/decode_kernel.py: reads the layer's KV window in place; GPU + bf16 only, after a
# one-time compile/accuracy probe, else a logged XLA fallback). On an H100 it cut the attention of a batch-256
# SmolLM2 decode step from 5.1 to 1.6 ms (bench/NOTES-generate.md); CPU/TPU and fp32 stay on the XLA path.
DECODE_KERNEL = True
# Decode steps run their projections through models/gemv_kernel.py (GPU + bf16, after a one-time probe; RMSNorm
# fused in; <= gemv_kernel.MAX_BATCH rows, or more without LoRA, see gemv_kernel.LARGE_BATCH) instead of XLA's
# batch-1 reduce fusions and its GEMMs plus elementwise fusions. Read at trace time.
DECODE_GEMV = True
# With the kernel, the step's new K/V are written by the kernel (in place, aliased) instead of two scatters per layer.
DECODE_KERNEL_WRITES_KV = True
# ... and it takes q/k/v as the projection's raw output (no LoRA): sum, bias, RoPE in the kernel (see
# DecoderLayer._fused_qkv_attention). Read at trace time.
DECODE_QKV_FUSED = True
# Past gemv_kernel.MAX_BATCH rows that q/k/v GEMM is a batched GEMM over QKV_SPLIT_K parts of the input depth (the
# kernel adds the fp32 parts): on an H100 2 beat 1, 4 and 8 by 1-8% at batch 64/256 (bench/NOTES-generate.md).
QKV_SPLIT_K = 2
# How a prefill into cache rows writes its new K/V: "dus" (one dynamic_update_slice per row, each row's span
# contiguous) or "scatter" (one scatter of all rows and positions). Both stay in place (bench.generate
# --parts=prefill_memory compiles both at the agent's scale); "dus" is the one timed end to end. Read at trace time.
PREFILL_ROWS_WRITE = "dus"
# Decode (query length 1) attention over the cache: "xla" (decode_attention below), "cudnn" (models/attention.py
# cudnn_decode_attention; shapes cuDNN rejects fall back to XLA with one warning) or "auto" (cudnn on GPU for
# bf16/fp16, xla elsewhere). Read at trace time.
DECODE_ATTENTION_IMPL = "xla"


# Prefill (query length > 1) attention: "kernel" (default): a prefill into cache rows (the engine's) runs
# models/prefill_kernel.py, which reads each row's cached head in place (no window copies, no bias, padding skipped;
# GPU + bf16 after a probe, else as "auto"), and lets the engine pack its prompts (engine/packed_prefill.py; agent
# benchmark 292 vs 176 decisions/s for "auto", H100); every other prefill as "auto": cuDNN flash attention on GPU for
# bf16/fp16 (attention.cudnn_prefill_attention; a shape cuDNN rejects falls back to XLA with one warning), its
# additive mask built once for all layers (attention.prefill_bias); "xla": `attention`, fp32 scores in HBM.
# Read at trace time.
PREFILL_ATTENTION_IMPL = "kernel"
PREFILL_BIAS_ONCE = True


def _cudnn_prefill(q: Array, keys: Array) -> bool:
    if PREFILL_ATTENTION_IMPL not in ("auto", "xla", "kernel"):
        raise ValueError(f"decoder.PREFILL_ATTENTION_IMPL={PREFILL_ATTENTION_IMPL!r}: use 'auto', 'xla' or 'kernel'")
    if PREFILL_ATTENTION_IMPL == "xla" or attn_lib.resolve_impl("auto", q.dtype) != "cudnn":
        return False
    return attn_lib.cudnn_prefill_supported(q.shape, keys.shape, q.dtype)


def _cudnn_decode(q: Array, cache_k: Array, window: int) -> bool:
    if attn_lib.resolve_decode_impl(DECODE_ATTENTION_IMPL, q.dtype) != "cudnn":
        return False
    b, _, k_heads, e = cache_k.shape[1:]
    return attn_lib.cudnn_decode_supported(q.shape, (b, window, k_heads, e), q.dtype)


# ------------------------------------------------------------------------------------------------------- decoder
class Decoder(nnx.Module):
    """`logits, cache = model(tokens, positions, cache=None, segment_ids=None, adapter_ids=None)`."""

    def __init__(self, config: ModelConfig, *, dtype=jnp.bfloat16, rngs: nnx.Rngs, remat: bool = False):
        self.config = config
        self.dtype = dtype
        self.remat = remat  # per-layer jax.checkpoint: bool or a mode of attention.REMAT_MODES (training)
        self.attention_impl = "xla"  # no-cache attention: attention.IMPLS (the trainer picks a fused kernel)
        self.embed = _param(_normal(rngs, (config.vocab_size, config.hidden_size), dtype), ("vocab", "embed"))
        self.layers = DecoderLayer(config, dtype=dtype, rngs=rngs)
        self.final_norm = _param(jnp.ones((config.hidden_size,), jnp.float32), ("embed",))
        self.unembed = None if config.tie_word_embeddings else _param(
            _normal(rngs, (config.hidden_size, config.vocab_size), dtype), ("embed", "vocab"))
        self.lora_scale: LoRAScale | None = nnx.data(None)  # [num_slots], set by lora.apply_lora
        self.lora_config = None  # LoRAConfig, set by lora.apply_lora

    # --------------------------------------------------------------------------------------------- public calls
    def __call__(self, tokens: Array, positions: Array, *, cache: KVCache | None = None,
                 segment_ids: Array | None = None, adapter_ids: Array | None = None, kv_window: int | None = None,
                 unroll: int | bool = 1, layer_params: Sequence[nnx.State] | None = None,
                 cache_rows: Array | None = None) -> tuple[Array, KVCache | None]:
        h, cache = self.hidden(tokens, positions, cache=cache, segment_ids=segment_ids, adapter_ids=adapter_ids,
                               kv_window=kv_window, unroll=unroll, layer_params=layer_params, cache_rows=cache_rows)
        return self.lm_head(h), cache

    def logits(self, ids: Array) -> Array:
        """Full-sequence logits [B, T, V] (positions = arange); jitted, so cheap to call eagerly."""
        return _jit_logits(self, jnp.asarray(ids, jnp.int32))

    def lm_head(self, h: Array) -> Array:
        if self.unembed is None:
            return jnp.einsum("btd,vd->btv", h, self.embed[...].astype(h.dtype), preferred_element_type=jnp.float32)
        return jnp.einsum("btd,dv->btv", h, self.unembed[...].astype(h.dtype), preferred_element_type=jnp.float32)

    def packed_rows_supported(self) -> bool:
        """Whether a prefill into cache rows reads the heads in place (models/prefill_kernel.py), which packed rows
        (`hidden(first_block=...)`) need. Read PREFILL_ATTENTION_IMPL at call time (trace time in a program)."""
        return PREFILL_ATTENTION_IMPL == "kernel" and prefill_kernel.supported(self.dtype, self.config.head_dim)

    def hidden(self, tokens: Array, positions: Array, *, cache: KVCache | None = None,
               segment_ids: Array | None = None, adapter_ids: Array | None = None, kv_window: int | None = None,
               unroll: int | bool = 1, layer_params: Sequence[nnx.State] | None = None,
               cache_rows: Array | None = None, row_lengths: Array | None = None,
               first_block: Array | None = None) -> tuple[Array, KVCache | None]:
        """kv_window (static, with a cache): attention reads only cache indices < kv_window, so a decode step costs
        the live context, not max_len; the caller guarantees every attended position is < kv_window.
        unroll: layers per scan iteration (`jax.lax.scan` unroll; True = straight-line code, slower to compile).
        layer_params: `unstack_layers(...)` of this model's layers (one State per layer, separate buffers): the
        layers then run as straight-line code on them and the stacked layer params are not read. Why: in the
        scan every layer's weights are dynamic slices, which XLA copies out before each library GEMM (a full
        extra read + write of the layer weights per forward; 0.6-0.8 ms of a batch-256 decode step on an H100).
        cache_rows: i32 [B], the cache row of each batch row (a prefill into some slots of a larger cache, read
        and written in place); None = batch row b is cache row b. row_lengths: i32 [B], each row's real (unpadded)
        token count there; only outputs before it are used (the in-place prefill kernel skips the rest).
        first_block: i32 [B], packed rows (engine/packed_prefill.py: a request's suffix as consecutive rows of one
        cache row); needs the in-place prefill kernel (`packed_rows_supported`)."""
        c = self.config
        tokens = jnp.asarray(tokens, jnp.int32)
        positions = jnp.asarray(positions, jnp.int32)
        if tokens.ndim != 2 or positions.shape != tokens.shape:
            raise ValueError(f"Decoder: tokens and positions must both be [B, T]; got {tokens.shape} and "
                             f"{positions.shape}")
        if segment_ids is not None and cache is not None:
            raise ValueError("Decoder: segment_ids (packed training) cannot be combined with a KV cache")
        x = self.embed[...][tokens].astype(self.dtype)
        cos, sin = rope_angles(c, positions)
        if kv_window is not None and (cache is None or not 0 < kv_window <= cache.max_len):
            raise ValueError(f"Decoder: kv_window={kv_window} needs a cache and must be in [1, cache max_len]")
        mask = self._mask(positions, cache, segment_ids, kv_window, cache_rows)
        rows_mode = cache is not None and cache_rows is not None
        # rows mode through the prefill kernel: the layers read the cache in place (no windows, no bias)
        in_place = rows_mode and self.packed_rows_supported()
        if first_block is not None and not in_place:
            raise ValueError("Decoder: packed rows (first_block) need a cache, cache_rows and the in-place prefill "
                             "kernel (decoder.PREFILL_ATTENTION_IMPL='kernel' on a GPU, bf16); use unpacked rows")
        # else the mask as cuDNN's additive bias, once for all layers (unused, so dropped by XLA, where the layers
        # take the XLA attention)
        bias = attn_lib.prefill_bias(mask, self.dtype) if PREFILL_BIAS_ONCE and rows_mode and not in_place else None
        lora_rows = self._lora_rows(adapter_ids, tokens.shape[0])
        attn_fn = None if cache is not None else attn_lib.no_cache_attention(
            getattr(self, "attention_impl", "xla"), segment_ids, self.dtype)

        graphdef, state = nnx.split(self.layers)
        whole = (cache.k, cache.v) if in_place else None
        window = None if cache is None else (cache.max_len if kv_window is None else kv_window)

        def body(carry, xs):
            x, cache_kv = carry
            layer_state, i, *win = xs
            layer = nnx.merge(graphdef, layer_state)
            x, kv_out = layer(x, cos, sin, eps=c.rms_norm_eps, mask=mask,
                              cache_kv=tuple(win) if win else (whole if in_place else cache_kv), layer_index=i,
                              write_index=positions, lora_rows=lora_rows, kv_window=kv_window, attn_fn=attn_fn,
                              cache_rows=cache_rows, prefill_bias=bias, rows_in_place=in_place,
                              row_lengths=row_lengths, first_block=first_block)
            if rows_mode:  # the layer read its rows' window (xs); its new K/V are outputs, the cache is untouched
                return (x, cache_kv), kv_out
            return (x, kv_out), None

        body = attn_lib.remat_body(body, self.remat)
        # rows mode carries no cache through the layers (it is written once, below)
        cache_kv = None if cache is None or rows_mode else (cache.k, cache.v)
        if layer_params is not None:
            if len(layer_params) != c.num_layers:
                raise ValueError(f"Decoder: layer_params has {len(layer_params)} layers, the model {c.num_layers}")
            parts = 1 if rows_mode or cache is None else micro_batch.parts(tokens.shape[0], tokens.shape[1])
            if parts > 1:  # decode as micro-batches (models/decode_micro_batch.py; off by default)
                x, cache_kv = micro_batch.layers(graphdef, layer_params, x, cos, sin, mask, positions, cache_kv,
                                                 lora_rows, kv_window, c.rms_norm_eps, parts)
                new_kv = None
            else:
                outs = []
                for i, layer_state in enumerate(layer_params):
                    # rows mode: each layer gathers its rows' window straight from the cache (no loop holds it)
                    win = ((cache.k[i, cache_rows, :window], cache.v[i, cache_rows, :window])
                           if rows_mode and not in_place else ())
                    (x, cache_kv), out = body((x, cache_kv), (layer_state, jnp.int32(i), *win))
                    outs.append(out)
                new_kv = jax.tree.map(lambda *a: jnp.stack(a), *outs) if rows_mode else None
        else:
            # rows mode: the rows' windows of all layers are gathered before the scan ([L, n, W, K, E], bounded by
            # the engine's max_prefill_window_tokens), so the loop never touches the cache
            win = ((cache.k[:, cache_rows, :window], cache.v[:, cache_rows, :window])
                   if rows_mode and not in_place else ())
            (x, cache_kv), new_kv = jax.lax.scan(body, (x, cache_kv), (state, jnp.arange(c.num_layers), *win),
                                                 unroll=unroll)
        if rows_mode:  # every layer's new K/V [L, n, T, K, E] into rows `cache_rows`, in place
            # The barrier orders the write after the last layer's cache reads (the last attention does not feed
            # new_kv), so XLA need not copy the cache to write it early.
            x, new_kv = jax.lax.optimization_barrier((x, new_kv))
            if PREFILL_ROWS_WRITE == "dus" and not in_place:  # (in place: T entries, not a window copy's span)
                s0 = prefill_write_start(positions, window)
                cache_kv = tuple(_write_rows(full, new, cache_rows, s0)
                                 for full, new in zip((cache.k, cache.v), new_kv))
            else:
                idx = (slice(None), cache_rows[:, None], positions)
                cache_kv = (cache.k.at[idx].set(new_kv[0], mode="drop"),
                            cache.v.at[idx].set(new_kv[1], mode="drop"))
        h = rms_norm(x, self.final_norm[...], c.rms_norm_eps)
        return h, (None if cache_kv is None else KVCache(*cache_kv))

    # ---------------------------------------------------------------------------------------------- internals
    def _mask(self, positions: Array, cache: KVCache | None, segment_ids: Array | None,
              kv_window: int | None = None, cache_rows: Array | None = None) -> Array:
        if cache is not None:
            if cache_rows is None and cache.batch != positions.shape[0]:
                raise ValueError(f"Decoder: cache batch {cache.batch} != tokens batch {positions.shape[0]}; pass "
                                 "cache_rows (the cache row of each batch row) to run on some rows of the cache")
            if cache_rows is not None and cache_rows.shape != (positions.shape[0],):
                raise ValueError(f"Decoder: cache_rows must be [B={positions.shape[0]}]; got {cache_rows.shape}")
            j = jnp.arange(cache.max_len if kv_window is None else kv_window, dtype=jnp.int32)
            return j[None, None, :] <= positions[:, :, None]                      # [B, T, S]
        t = positions.shape[1]
        idx = jnp.arange(t)
        mask = (idx[None, :, None] >= idx[None, None, :]) & (positions[:, None, :] <= positions[:, :, None])
        if segment_ids is not None:
            segment_ids = jnp.asarray(segment_ids)
            mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
        return mask

    def _lora_rows(self, adapter_ids: Array | None, batch: int):
        if self.lora_scale is None:
            return None
        scale = self.lora_scale[...]
        if adapter_ids is None:
            if UNIFORM_LORA:
                return None, scale[0]
            slots = jnp.zeros((batch,), jnp.int32)
            return slots, jnp.broadcast_to(scale[0], (batch,))
        adapter_ids = jnp.asarray(adapter_ids, jnp.int32)
        if adapter_ids.shape != (batch,):
            raise ValueError(f"Decoder: adapter_ids must be [B]={batch}, got shape {adapter_ids.shape}")
        slots = jnp.clip(adapter_ids, 0, scale.shape[0] - 1)
        return slots, jnp.where(adapter_ids >= 0, scale[slots], 0.0)


def prefill_write_start(positions: Array, window: int) -> Array:
    """Where a prefill row's T written entries start: its first position, moved back so that the T entries fit in
    the window (only when the padded bucket runs past the cache; the entries before the first position then come
    from the row's own window copy, i.e. are rewritten unchanged)."""
    return jnp.minimum(positions[:, 0], window - positions.shape[1])


def _write_rows(full: Array, new: Array, rows: Array, start: Array) -> Array:
    """full[:, rows[i], start[i]:start[i]+T] = new[:, i] for each row: one dynamic_update_slice per row (in place
    under donation)."""
    def body(i, full):
        upd = jax.lax.dynamic_slice_in_dim(new, i, 1, axis=1)
        return jax.lax.dynamic_update_slice(full, upd, (0, rows[i], start[i], 0, 0))
    return jax.lax.fori_loop(0, rows.shape[0], body, full, unroll=True)  # n is static: no device loop to sync on


def unstack_layers(model: Decoder) -> tuple[nnx.State, ...]:
    """The model's stacked layer params as one State per layer, each leaf its own buffer (for `layer_params`).

    Costs a second copy of the layer weights while both are alive (the engine keeps both: LoRA loads and
    training update the stacked ones, after which the engine re-unstacks)."""
    return _slice_layers(nnx.state(model.layers), model.config.num_layers)


@functools.partial(jax.jit, static_argnums=1)
def _slice_layers(state: nnx.State, num_layers: int) -> tuple[nnx.State, ...]:
    return tuple(jax.tree.map(lambda a: a[i], state) for i in range(num_layers))


@nnx.jit
def _jit_logits(model: Decoder, ids: Array) -> Array:
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape)
    return model(ids, positions)[0]
