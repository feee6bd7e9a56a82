"""The KV cache: one dense row per sequence slot, all layers stacked."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from automem_jax.models import sharding as shd
from automem_jax.models.config import ModelConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """k, v: [L, B, S, num_kv_heads, head_dim]. The token at absolute position p sits at index p of its row."""
    k: jax.Array
    v: jax.Array

    LOGICAL_AXES = ("layers", "batch", "cache_seq", "kv_heads", "head_dim")

    @classmethod
    def init(cls, config: ModelConfig, batch: int, max_len: int, dtype=jnp.bfloat16, *,
             mesh: Mesh | None = None) -> "KVCache":
        """Zeros; with a mesh, created directly on their sharding (rows over `data`, kv heads over `tensor`)."""
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

    def replace(self, k: jax.Array, v: jax.Array) -> "KVCache":
        return dataclasses.replace(self, k=k, v=v)
