"""Running a kernel per shard of the heads: a Pallas call sees whole arrays, so under tensor parallelism it runs
inside a shard_map over the `tensor` axis of the mesh the program is traced under, on its own shard's heads."""
from __future__ import annotations

from typing import Callable, Sequence

import jax
from jax.sharding import PartitionSpec as P

TENSOR = "tensor"


def tensor_size() -> int:
    """The size of the `tensor` axis of the mesh being traced under (1 without one, or when it is manual)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or TENSOR not in mesh.axis_names or TENSOR in getattr(mesh, "manual_axes", ()):
        return 1
    return mesh.shape[TENSOR]


def heads_spec(ndim: int, head_axis: int) -> P:
    """A PartitionSpec sharding axis `head_axis` of an ndim array over `tensor`, the others whole."""
    return P(*[TENSOR if i == head_axis else None for i in range(ndim)])


def per_shard(fn: Callable, in_specs: Sequence, out_specs) -> Callable:
    """fn itself without tensor parallelism, else fn inside a shard_map over `tensor` (the other mesh axes stay as
    the caller has them: manual inside the engine's data-parallel shard_map)."""
    if tensor_size() == 1:
        return fn
    return jax.shard_map(fn, mesh=jax.sharding.get_abstract_mesh(), in_specs=tuple(in_specs), out_specs=out_specs,
                         axis_names={TENSOR}, check_vma=False)
