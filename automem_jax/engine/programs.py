"""XLA options of the engine's programs: CUDA graphs (command buffers), per-program debug options, and whether
decode runs straight-line layers on per-layer weight copies."""
from __future__ import annotations

from typing import Any

import jax
from absl import logging
from flax import nnx

# On GPU, XLA launches every fusion/GEMM of the decode loop as its own kernel (30 layers x ~15 kernels per token),
# which makes small-batch decode launch-bound. Command buffers record them as CUDA graphs, and with WHILE and
# CONDITIONAL the whole fused k-step loop (fori_loop over steps, scan over layers) becomes one graph launch.
GPU_COMMAND_BUFFER = "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"
# Without WHILE/CONDITIONAL: the kernels of one decode step (straight-line layers) become graphs, the step loop
# stays a host-driven while loop. This measured better than whole-loop graphs (bench/NOTES-generate.md).
GPU_KERNEL_COMMAND_BUFFER = "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN"


def default_unstack(model: Any) -> bool:
    """Per-layer weight copies by default on GPU, unless they would take over a quarter of the device's memory."""
    if jax.default_backend() != "gpu" or not hasattr(model, "layers"):
        return False
    layer_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model.layers)))
    limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    if limit and layer_bytes > limit // 4:
        logging.info("engine: layer weights (%.1f GB) > 1/4 of device memory: decode keeps the layer scan "
                     "(no per-layer copy; about 20-30%% slower decode)", layer_bytes / 1e9)
        return False
    return True


def program_options(command_buffer: bool | str, extra: dict[str, Any] | None) -> dict[str, Any] | None:
    """Per-program XLA options of the decode or prefill program: `extra` (engine option `decode_xla_options`, XLA
    debug-option names) plus command buffers if asked (GPU only; True = GPU_COMMAND_BUFFER, a string = those
    command types)."""
    opts = dict(extra or {})
    if command_buffer and jax.default_backend() == "gpu":
        kinds = GPU_COMMAND_BUFFER if command_buffer is True else command_buffer
        opts.update(xla_gpu_enable_command_buffer=kinds, xla_gpu_graph_min_graph_size=1)
    return opts or None
