"""Training attention kernels and remat modes (models/attention.py) against the decoder's XLA reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from automem_jax.models import attention as attn_lib
from automem_jax.models import tiny_config
from automem_jax.models.attention import attention
from automem_jax.models.decoder import Decoder
from automem_jax.models.lora import LoRAConfig, apply_lora


def _packed(b=2, t=32, seg_len=(12, 20)):
    seg = np.concatenate([np.full(n, i + 1) for i, n in enumerate(seg_len)]).astype(np.int32)
    pos = np.concatenate([np.arange(n) for n in seg_len]).astype(np.int32)
    return np.broadcast_to(seg, (b, t)).copy(), np.broadcast_to(pos, (b, t)).copy()


def _reference_mask(seg, pos):
    t = seg.shape[1]
    idx = np.arange(t)
    return ((idx[None, :, None] >= idx[None, None, :]) & (pos[:, None, :] <= pos[:, :, None])
            & (seg[:, :, None] == seg[:, None, :]))


def test_pallas_kernel_matches_reference_with_segments_and_gqa():
    seg, pos = _packed()
    q, k, v = (jax.random.normal(key, (2, 32, h, 16), jnp.float32)
               for key, h in zip(jax.random.split(jax.random.key(0), 3), (4, 2, 2)))
    ref = attention(q, k, v, jnp.asarray(_reference_mask(seg, pos)))
    out = attn_lib.pallas_attention(q, k, v, jnp.asarray(seg), interpret=True)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-5)


def test_segment_mask_shape_and_values():
    seg, _ = _packed(b=1, t=4, seg_len=(1, 3))
    m = np.asarray(attn_lib.segment_mask(jnp.asarray(seg)))
    assert m.shape == (1, 1, 4, 4)
    assert m[0, 0, 0].tolist() == [True, False, False, False] and m[0, 0, 3].tolist() == [False, True, True, True]


def _grads(remat, impl="xla"):
    cfg = tiny_config()
    model = apply_lora(Decoder(cfg, dtype=jnp.float32, rngs=nnx.Rngs(0)), LoRAConfig(rank=4, alpha=8.0), nnx.Rngs(1))
    # non-zero B so every LoRA factor gets a gradient
    for name in ("q_proj", "down_proj"):
        p = getattr(model.layers, name)
        p.lora_b[...] = jax.random.normal(jax.random.key(2), p.lora_b[...].shape) * 0.1
    model.remat, model.attention_impl = remat, impl
    seg, pos = _packed()
    tokens = jax.random.randint(jax.random.key(3), seg.shape, 0, cfg.vocab_size)
    graphdef, lora, rest = nnx.split(model, nnx.LoRAParam, ...)

    def loss(lora):
        m = nnx.merge(graphdef, lora, rest)
        logits, _ = m(tokens, jnp.asarray(pos), segment_ids=jnp.asarray(seg))
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1))

    return jax.jit(jax.value_and_grad(loss))(lora)


@pytest.mark.parametrize("remat", ["full", "dots", "dots_attn", True])
def test_remat_modes_give_the_same_gradients(remat):
    l0, g0 = _grads("none")
    l1, g1 = _grads(remat)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)


def test_bad_options_name_the_field():
    with pytest.raises(ValueError, match="remat="):
        attn_lib.remat_mode("some")
    with pytest.raises(ValueError, match="attention_impl="):
        attn_lib.resolve_impl("flash", jnp.bfloat16)
    assert attn_lib.resolve_impl("auto", jnp.float32) == "xla"  # CPU / fp32: exact reference path
