"""Turning a KernelConfig's "auto" into a path: each kernel where it applies, after a one-time probe on this device.

A probe compiles and runs the kernel on small random data against its fp32 reference (`probe_error` of each kernel
module). It runs once per (kernel, tiling, head_dim) per process, in a fresh thread (JAX trace state is
thread-local, so a probe started while a program is being traced still compiles for real). A kernel that fails to
lower or compile on this jax/GPU, or whose error is not small, is replaced by its XLA fallback with one warning.
"""
from __future__ import annotations

import dataclasses
import functools
import threading
from typing import Callable

import jax

from automem_jax.kernels.config import KERNEL, XLA, KernelConfig

_TOL = 2e-2


def passes(name: str, probe_error: Callable[[], float], fallback: str, tol: float = _TOL) -> bool:
    """Run `probe_error()` in a fresh thread; False, with one logged warning naming `fallback`, if it raises or its
    error is not < tol."""
    from absl import logging
    result: list = []

    def run():
        try:
            result.append(probe_error())
        except Exception as e:  # noqa: BLE001 - any failure means: use the fallback
            result.append(e)

    thread = threading.Thread(target=run, name=f"{name}_probe")
    thread.start()
    thread.join()
    err = result[0]
    if isinstance(err, Exception):
        logging.warning("%s: Pallas kernel unavailable (%r); using %s", name, err, fallback)
        return False
    if not err < tol:
        logging.warning("%s: probe mismatch (rel err %.3g); using %s", name, err, fallback)
        return False
    return True


@functools.cache
def _probed(kernel: str, tiling, head_dim: int) -> bool:
    from automem_jax.kernels import decode_attention, gemv, prefill_attention
    if kernel == "decode_attention":
        fn = functools.partial(decode_attention.probe_error, tiling, head_dim)
    elif kernel == "prefill_attention":
        fn = functools.partial(prefill_attention.probe_error, tiling, head_dim)
    else:
        fn = functools.partial(gemv.probe_error, tiling)
    return passes(f"{kernel}(head_dim={head_dim})", fn, "the XLA path")


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """What decides whether a kernel applies: dtypes, head_dim, query heads per kv head, kv heads, and the tensor
    parallel size the engine shards heads over."""
    dtype: object
    cache_dtype: object
    head_dim: int
    group: int
    kv_heads: int
    tensor: int = 1


def resolve(config: KernelConfig, shape: ModelShape, platform: str | None = None) -> KernelConfig:
    """The config with every "auto" made "kernel" or "xla" for this model on this platform (probing GPU kernels
    once). An explicit "kernel" that cannot run raises ValueError naming the field, the reason and the fix."""
    from automem_jax.kernels import decode_attention, gemv, prefill_attention
    platform = platform or jax.default_backend()
    sharded = shape.tensor > 1 and shape.kv_heads % shape.tensor
    reasons = {
        "decode_attention": decode_attention.supports(shape.dtype, shape.cache_dtype, shape.group, shape.head_dim)
        or (f"kv heads ({shape.kv_heads}) not divisible by the tensor axis ({shape.tensor})" if sharded else None),
        "prefill_attention": prefill_attention.supports(shape.dtype, shape.head_dim)
        or (f"kv heads ({shape.kv_heads}) not divisible by the tensor axis ({shape.tensor})" if sharded else None),
        "projections": gemv.supports(shape.dtype, 1, config.gemv)
        or ("not with tensor parallelism (the kernel reads whole weights)" if shape.tensor > 1 else None)}
    tilings = {"decode_attention": config.decode, "prefill_attention": config.prefill, "projections": config.gemv}
    out = {}
    for field, reason in reasons.items():
        choice = getattr(config, field)
        if choice == XLA:
            out[field] = XLA
            continue
        if reason is None and platform != "gpu" and not config.interpret:
            reason = f"Pallas GPU kernel, this platform is {platform} (kernels.interpret=True runs it interpreted)"
        if reason is not None:
            if choice == KERNEL:
                raise ValueError(f"kernels.{field}='kernel': {reason}; set it to 'auto' or 'xla'")
            out[field] = XLA
            continue
        ok = config.interpret or _probed(field, tilings[field], shape.head_dim)
        if not ok and choice == KERNEL:
            raise ValueError(f"kernels.{field}='kernel': its probe failed on this device (see the warning above); "
                             "set it to 'auto' or 'xla'")
        out[field] = KERNEL if ok else XLA
    return dataclasses.replace(config, **out)

