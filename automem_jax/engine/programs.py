"""Per-program choices of the engine that are not the model's: whether decode runs straight-line layers on
per-layer weight copies, and the decode program's CUDA graphs."""
from __future__ import annotations

from typing import Any

import jax
from absl import logging
from flax import nnx

# On a GPU the kernels of one decode step (straight-line layers) run as CUDA graphs; the step loop stays a
# host-driven while loop. Measured on an H100: b64 -4..12%, b1/b256 within noise; whole-loop graphs (WHILE,
# CONDITIONAL too) were no better (docs/PERFORMANCE.md).
GPU_KERNEL_COMMAND_BUFFER = "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN"


def default_unstack(model: Any, tensor: int = 1) -> bool:
    """Per-layer weight copies by default on GPU, unless they would take over a quarter of a device's memory (the
    layer weights are split over `tensor` devices)."""
    if jax.default_backend() != "gpu" or not hasattr(model, "layers"):
        return False
    layer_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model.layers))) / tensor
    limit = (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
    if limit and layer_bytes > limit // 4:
        logging.info("engine: layer weights (%.1f GB per device) > 1/4 of device memory: decode keeps the layer "
                     "scan (no per-layer copy; about 20-30%% slower decode)", layer_bytes / 1e9)
        return False
    return True


def decode_options(unstacked: bool) -> dict[str, Any] | None:
    """XLA options of the decode program: the step's kernels as CUDA graphs on a GPU with straight-line layers."""
    if not unstacked or jax.default_backend() != "gpu":
        return None
    return {"xla_gpu_enable_command_buffer": GPU_KERNEL_COMMAND_BUFFER, "xla_gpu_graph_min_graph_size": 1}
