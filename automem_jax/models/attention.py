"""Attention without a cache (the XLA reference and the training kernels), the XLA decode attention, remat policies.

Why a separate module: the decoder's reference `attention` materialises a [B, K, G, T, T] fp32 score matrix (and
its softmax and gradient) per layer: at T=2048 that is gigabytes of HBM traffic per layer, and it computes the
masked upper triangle too. For training we swap in a fused flash-attention kernel that keeps scores on chip:

  impl="xla"     the decoder's reference path (exact; CPU tests and fp32 parity use it).
  impl="cudnn"   `jax.nn.dot_product_attention(implementation="cudnn")`, causal; packed segments are expressed as
                 a boolean [B, 1, T, T] mask (cuDNN adds it as a bias; broadcast over heads). GQA native.
  impl="pallas"  `jax.experimental.pallas.ops.gpu.attention.mha` (Triton), causal + `segment_ids` natively;
                 K/V heads are repeated to the query heads (it has no GQA).
  impl="auto"    cudnn on GPU for bf16/fp16 inputs, else xla.

All three give causal-by-index attention within a segment, which equals the decoder's mask (index causal AND
positions causal AND same segment) for packed rows, whose positions increase within each segment.

The XLA attention over the KV cache (`decode_attention`, `attention`) is the engine's path wherever its Pallas
kernels (automem_jax/kernels/) do not run.

Remat modes for the layer scan body (`remat_body`):
  "none"       keep every activation (fastest; memory grows with B*T*L);
  "full"       save nothing, recompute the whole layer in the backward pass (least memory; +1 forward);
  "dots"       save the outputs of matmuls without batch dims (the frozen q/k/v/o/gate/up/down projections and
               LoRA's x@A), recompute norms, RoPE, activations, LoRA's up-projection and attention;
  "dots_attn"  "dots" plus the fused attention kernel's outputs (output + log-sum-exp), so attention is not
               re-run in the backward pass.
`True`/`False` (the older bool option) mean "full"/"none".
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
IMPLS = ("auto", "xla", "cudnn", "pallas")
REMAT_MODES = ("none", "full", "dots", "dots_attn")
_ATTN_PRIMS = ("dot_product_attention_fwd", "pallas_call")


# ----------------------------------------------------------------------------------------------- remat policy
# Dots contracting over fewer elements than this are not saved: LoRA's up-projection (x@A)@B contracts over the
# rank, and its output is as large as the frozen projection's; it is recomputed from the small saved x@A instead.
_MIN_SAVED_CONTRACTION = 512


def _dots_no_batch(prim, *avals, **params) -> bool:
    if prim.name != "dot_general":
        return False
    (lhs_contract, _), (lhs_batch, rhs_batch) = params["dimension_numbers"]
    if lhs_batch or rhs_batch:
        return False
    contraction = 1
    for d in lhs_contract:
        contraction *= avals[0].shape[d]
    return contraction >= _MIN_SAVED_CONTRACTION


def _dots_and_attention(prim, *args, **params) -> bool:
    return _dots_no_batch(prim, *args, **params) or any(p in prim.name for p in _ATTN_PRIMS)


def remat_mode(remat: bool | str | None) -> str:
    if remat is None or remat is False:
        return "none"
    if remat is True:
        return "full"
    if remat not in REMAT_MODES:
        raise ValueError(f"remat={remat!r}: use one of {list(REMAT_MODES)} (or True/False)")
    return remat


def remat_body(body: Callable, remat: bool | str | None) -> Callable:
    """Wrap a layer-scan body in jax.checkpoint according to the mode (see module docstring)."""
    mode = remat_mode(remat)
    if mode == "none":
        return body
    policy = {"full": None, "dots": _dots_no_batch, "dots_attn": _dots_and_attention}[mode]
    return jax.checkpoint(body, prevent_cse=False, policy=policy)


# -------------------------------------------------------------------------------------------------- attention
def resolve_impl(impl: str, dtype) -> str:
    if impl not in IMPLS:
        raise ValueError(f"attention_impl={impl!r}: use one of {list(IMPLS)}")
    if impl == "auto":
        gpu = jax.default_backend() == "gpu"
        return "cudnn" if gpu and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)) else "xla"
    return impl


def no_cache_attention(impl: str, segment_ids: Array | None, dtype, *, interpret: bool = False
                       ) -> Callable[[Array, Array, Array], Array] | None:
    """attn(q [B,T,H,E], k/v [B,T,K,E]) -> [B,T,H,E] for the fused impls; None means "use the XLA reference"."""
    impl = resolve_impl(impl, dtype)
    if impl == "xla":
        return None
    if impl == "cudnn":
        return lambda q, k, v: cudnn_attention(q, k, v, segment_ids)
    return lambda q, k, v: pallas_attention(q, k, v, segment_ids, interpret=interpret)


def segment_mask(segment_ids: Array) -> Array:
    """[B, T] -> bool [B, 1, T, T]: query i may see key j iff same segment (causality comes from the kernel)."""
    return (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]


def cudnn_attention(q: Array, k: Array, v: Array, segment_ids: Array | None) -> Array:
    mask = None if segment_ids is None else segment_mask(jnp.asarray(segment_ids))
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation="cudnn")


def pallas_attention(q: Array, k: Array, v: Array, segment_ids: Array | None, *, interpret: bool = False) -> Array:
    from jax.experimental.pallas.ops.gpu import attention as pallas_mha

    g = q.shape[2] // k.shape[2]
    if g > 1:  # the kernel has no GQA: give every query head its own K/V copy
        k, v = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)
    seg = None if segment_ids is None else jnp.asarray(segment_ids, jnp.int32)
    return pallas_mha.mha(q, k, v, seg, sm_scale=q.shape[-1] ** -0.5, causal=True, interpret=interpret)


# ----------------------------------------------------------------------------------- XLA reference paths
def decode_attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
    """Same maths as `attention` for few queries, written as fused multiply-reduce instead of two dots.

    Why: a decode step is bound by reading the cache window. As dots, XLA first materialises the layer's K/V slice of
    the scanned cache and a [B, K, S, E] transpose of it for the batched GEMM (3x the bytes); as elementwise products
    reduced over head_dim / the window, the cache slice fuses into the reductions and every K/V byte is read once.
    """
    b, t, h, e = q.shape
    kv = k.shape[2]
    qg = (q.astype(jnp.float32) * (e ** -0.5)).reshape(b, t, 1, kv, h // kv, e)
    scores = jnp.sum(qg * k.astype(jnp.float32)[:, None, :, :, None, :], axis=-1)          # [B, T, S, K, G]
    scores = jnp.where(mask[:, :, :, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=2)
    out = jnp.sum(probs[..., None] * v.astype(jnp.float32)[:, None, :, :, None, :], axis=2)  # [B, T, K, G, E]
    return out.reshape(b, t, h, e).astype(q.dtype)


def attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
    """q [B,T,H,E], k/v [B,S,K,E], mask [B,T,S] bool -> [B,T,H,E]; GQA by grouping heads, fp32 softmax."""
    b, t, h, e = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, t, kv, h // kv, e)
    scores = jnp.einsum("btkge,bske->bkgts", qg, k, preferred_element_type=jnp.float32) * (e ** -0.5)
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bske->btkge", probs, v)
    return out.reshape(b, t, h, e)
