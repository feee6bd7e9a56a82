"""Pallas flash-decoding kernel (models/decode_kernel.py), run in Pallas interpret mode on CPU."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from automem_jax.models import decode_kernel


@pytest.mark.parametrize("splits,heads,block_s", [(1, 1, 32), (4, 1, 16), (1, 2, 32), (3, 2, 16)])
def test_kernel_matches_fp32_reference(splits, heads, block_s):
    L, B, S, K, E, H, W = 3, 4, 96, 2, 64, 6, 80
    rng = np.random.default_rng(splits * 10 + heads)
    ck = jnp.asarray(rng.standard_normal((L, B, S, K, E)), jnp.bfloat16)
    cv = jnp.asarray(rng.standard_normal((L, B, S, K, E)), jnp.bfloat16)
    q = jnp.asarray(rng.standard_normal((B, 1, H, E)), jnp.bfloat16)
    pos = jnp.asarray([0, 17, 50, W - 1], jnp.int32)  # first entry only, mid-block, last entry of the window
    # entries past each row's position hold huge values: any read of them would show in the output
    beyond = jnp.arange(S)[None, :, None, None] > pos[:, None, None, None]
    ck = ck.at[2].set(jnp.where(beyond, 1e4, ck[2]).astype(ck.dtype))
    cv = cv.at[2].set(jnp.where(beyond, 1e4, cv[2]).astype(cv.dtype))
    out = decode_kernel.decode_attention_cache(q, ck, cv, jnp.int32(2), pos, window=W, block_s=block_s,
                                               splits=splits, heads=heads, interpret=True)
    ref = decode_kernel.reference(q, ck, cv, 2, pos, W)
    assert out.shape == (B, 1, H, E) and out.dtype == jnp.bfloat16
    err = float(jnp.linalg.norm(out.astype(jnp.float32) - ref) / jnp.linalg.norm(ref))
    assert err < 1e-2, err


def test_num_splits_fills_the_gpu_but_keeps_a_block_per_split():
    assert decode_kernel.num_splits(256, 3, 680, 64) == 1       # 768 programs already
    assert decode_kernel.num_splits(1, 2, 680, 64) == 11         # one row: one 64-entry block per split
    assert decode_kernel.num_splits(64, 2, 680, 64) == 4


def test_bad_shapes_are_refused_with_the_reason():
    q = jnp.zeros((1, 1, 40, 64), jnp.bfloat16)  # 40 query heads on 2 kv heads: G=20 > the 16-row tile
    ck = jnp.zeros((1, 1, 8, 2, 64), jnp.bfloat16)
    with pytest.raises(ValueError, match="heads/kv_heads <= 16"):
        decode_kernel.decode_attention_cache(q, ck, ck, jnp.int32(0), jnp.zeros((1,), jnp.int32), window=8,
                                             interpret=True)
    assert not decode_kernel.supported(jnp.bfloat16, jnp.bfloat16, 4) or jax.default_backend() == "gpu"
