"""One-time self-check of a Pallas kernel before the model uses it (decode_kernel, gemv_kernel)."""
from __future__ import annotations

import threading
from typing import Callable


def passes(name: str, probe_error: Callable[[], float], fallback: str, tol: float = 2e-2) -> bool:
    """Compile and run `probe_error()` (the kernel's error vs an fp32 reference); False, with one logged warning
    naming `fallback`, if it raises (lowering/compile failure on this jax/GPU) or its error is not < tol.

    It runs in a fresh thread: JAX trace state is thread-local, so the kernel compiles and runs for real even when
    the caller is in the middle of tracing the model."""
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
