"""bench.generate and its helpers that read compiled programs (run on CPU here, on the GPU in the benchmark)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from automem_jax.bench.hlo import hlo_thunks


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


def test_prefix_reuse_bench_reuses_the_head_and_reports_where_the_time_goes():
    from absl import flags

    from automem_jax.bench import generate as bench
    from automem_jax.models.config import tiny_config
    from automem_jax.models.loader import random_model
    if not flags.FLAGS.is_parsed():
        flags.FLAGS(["bench"], known_only=True)
    model = random_model(tiny_config(vocab_size=512, max_position_embeddings=1024), dtype=jnp.bfloat16, seed=0)
    out = bench.bench_prefix_reuse(model, head=64, suffix=16, rows=3, opts={})
    assert (out["head"], out["suffix"], out["rows"]) == (64, 16, 3)
    assert out["no_reuse_cached_tokens"] == 0 and out["reuse_cached_tokens"] == 64  # every request reused the head
    for name in ("no_reuse", "reuse"):
        assert out[name] > 0 and out[f"{name}_generate_s"] > 0
        assert 0 < out[f"{name}_prefill_host_s"] <= out[f"{name}_generate_s"]
    assert out["speedup"] == out["no_reuse"] / out["reuse"]


def test_decode_bench_times_the_engines_program_through_public_apis():
    """bench_decode builds its engine from an EngineConfig variant, admits the rows, times runner.decode and reads
    the program's HLO; the record says which paths ran."""
    from absl import flags

    from automem_jax.bench import generate as bench
    from automem_jax.models.config import tiny_config
    from automem_jax.models.loader import random_model
    if not flags.FLAGS.is_parsed():
        flags.FLAGS(["bench"], known_only=True)
    model = random_model(tiny_config(vocab_size=512, max_position_embeddings=1024), dtype=jnp.bfloat16, seed=0)
    out = bench.bench_decode(model, batch=2, context=16, k=2, calls=1, bw=1e12, peak=1e14, variant="stacked")
    assert out["batch"] == 2 and out["step_ms"] > 0 and out["cache_copies_in_hlo"] == 0
    assert out["engine"]["unstacked"] is False and out["engine"]["kernels"]["decode_attention"] == "xla"
    assert 0 < out["fraction_of_roofline"] and out["window"] >= 16 + 3 * 2


def test_numerics_checks_pass_the_weights_as_arguments_not_as_captured_constants():
    """A check that closes over the model makes XLA embed every weight as a constant: for Qwen2.5-7B's fp32
    reference that was 30 GB, and the compile outlasted the benchmark. Each check must lower without captures."""
    import warnings

    from automem_jax.bench import numerics
    from automem_jax.models.config import tiny_config
    from automem_jax.models.loader import random_model
    model = random_model(tiny_config(vocab_size=512, max_position_embeddings=1024), dtype=jnp.bfloat16, seed=0)
    saved = jax.config.jax_captured_constants_warn_bytes
    jax.config.update("jax_captured_constants_warn_bytes", 4096)  # the tiny model's embedding alone is 64 KB
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            decode = numerics.check_decode_kernel_numerics(model, batch=2, window=32, max_len=48)
            prefill = numerics.check_prefill_numerics(model, batch=2, length=16, window=64)
    finally:
        jax.config.update("jax_captured_constants_warn_bytes", saved)
    captured = [str(w.message) for w in caught if "constants were captured" in str(w.message)]
    assert not captured, captured
    assert decode["xla_bf16_vs_fp32"]["rel_l2_err"] < 0.05 and prefill["xla_bf16_vs_fp32"]["rel_l2_err"] < 0.05


def test_prefill_memory_check_compiles_every_program_it_reports():
    """Errors are reported per program (the other shapes still run), so a stale call would pass unseen: each
    program must compile and report its temp memory."""
    from automem_jax.bench import hlo
    from automem_jax.engine.config import EngineConfig
    from automem_jax.models.config import tiny_config
    from automem_jax.models.loader import random_model
    model = random_model(tiny_config(vocab_size=512, max_position_embeddings=1024), dtype=jnp.bfloat16, seed=0)
    out = hlo.check_prefill_memory(model, EngineConfig(), max_batch=8, max_seq_len=256,
                                   shapes=((4, 16, 128), (2, 64, 256)))
    assert [(p["rows"], p["tokens"]) for p in out["programs"]] == [(4, 16), (2, 64)]
    for p in out["programs"]:
        assert "error" not in p, p
        assert p["temp_bytes"] >= 0
