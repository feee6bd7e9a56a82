"""One logical-axis rules table for the whole project (model loading, engine, trainer).

Parameters and activations are annotated with logical axis names; `RULES` maps each to mesh axes of a
('data', 'fsdp', 'tensor') mesh. A dimension that the mapped mesh axes do not divide is replicated instead
(e.g. SmolLM2's 3 KV heads on tensor=2), so every preset runs on every mesh.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "seq": None,
    "vocab": "tensor",
    "embed": "fsdp",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "layers": None,
    "lora_rank": None,
    "adapters": None,
    "cache_seq": None,
}


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh with axes ('data', 'fsdp', 'tensor'); one size may be -1 (takes the remaining devices)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh: {len(devices)} devices not divisible by data*fsdp*tensor={known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh: data*fsdp*tensor={math.prod(sizes)} but {len(devices)} devices are visible; "
                         "set mesh sizes that multiply to the device count (use -1 for one axis)")
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: dict[str, str | tuple[str, ...] | None] = RULES) -> P:
    """PartitionSpec for a tensor of `shape` with `logical_axes`; replicate dims the mesh axes don't divide."""
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for name, dim in zip(logical_axes, shape):
        target = rules.get(name) if name is not None else None
        axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        axes = tuple(a for a in axes if a in mesh.shape and mesh.shape[a] > 1 and a not in used)
        size = math.prod(mesh.shape[a] for a in axes) if axes else 1
        if not axes or dim % size:
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return P(*spec)


def named_sharding(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                   rules: dict[str, str | tuple[str, ...] | None] = RULES) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, shape, mesh, rules))


# ------------------------------------------------------------------------------------------ model parameters
def logical_axes_of(variable: nnx.Variable) -> tuple[str | None, ...]:
    axes = variable.get_metadata().get("logical_axes")
    if axes is None:
        return (None,) * len(variable.get_value().shape)
    return tuple(axes)


def param_shardings(state_or_model, mesh: Mesh):
    """Same pytree as `nnx.state(model)` (or the given State), with a NamedSharding per variable."""
    state = nnx.state(state_or_model) if isinstance(state_or_model, nnx.Module) else state_or_model

    def one(v):
        if not isinstance(v, nnx.Variable):
            return v
        shape = tuple(v.get_value().shape)
        return v.replace(named_sharding(logical_axes_of(v), shape, mesh))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh) -> nnx.Module:
    """Move every parameter of an existing model onto its NamedSharding (in place; returns the model)."""
    state = nnx.state(model)
    shardings = param_shardings(state, mesh)
    nnx.update(model, jax.device_put(state, shardings))
    return model
