"""bench.generate helpers that read compiled programs (run on CPU here, on the GPU in the benchmark)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from automem_jax.bench.generate import hlo_thunks


def test_hlo_thunks_counts_entry_and_loop_body():
    def f(x, w):
        def body(i, x):
            return jnp.tanh(x @ w[i]) + 1.0
        return jax.lax.fori_loop(0, w.shape[0], body, x * 2.0)  # not unrolled: a while loop in the program

    text = jax.jit(f).lower(jnp.ones((4, 8)), jnp.ones((3, 8, 8))).compile().as_text()
    thunks = hlo_thunks(text)
    entry = next(iter(thunks))
    assert "while" in thunks[entry]
    bodies = [name for name in thunks if name != entry]
    assert len(bodies) == 1, thunks
    body = thunks[bodies[0]]
    assert sum(body.values()) >= 1 and not any(k in body for k in ("parameter", "get-tuple-element", "tuple"))
    assert hlo_thunks("no computations here") == {}
