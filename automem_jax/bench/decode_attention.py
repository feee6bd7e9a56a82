"""Decode attention alone: the Pallas flash-decoding kernel vs the XLA multiply-reduce path, per layer call.

`python -m automem_jax.bench.decode_attention --json_out=bench/results/decode-attention-<device>-<date>.json`

Each timing runs one jitted loop over all L layers of a stacked cache (as the model's layer scan does), so the
cache is read from HBM, not L2. Per shape: relative L2 error of each path vs an fp32 reference, microseconds per
layer call, and the live K/V bytes read per call over that time (GB/s) beside the table HBM bandwidth.
"""
from __future__ import annotations

import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from automem_jax.bench import common as bench_common
from automem_jax.models import decode_kernel
from automem_jax.models.decoder import decode_attention

FLAGS = flags.FLAGS
flags.DEFINE_list("shapes", ["smollm2:3:9", "qwen0.5b:2:14"], "name:kv_heads:q_heads (head_dim 64)")
flags.DEFINE_list("batches", ["1", "64", "256"], "batch sizes")
flags.DEFINE_integer("window", 680, "attention window (cache entries read per row)")
flags.DEFINE_integer("layers", 8, "layers in the stacked cache (one timed call loops over all)")
flags.DEFINE_list("kernels", ["bs64_h1", "bs64_hK"], "kernel variants bs<block>_h<heads per program: 1 or K "
                  "(all)>[_w<warps>][_s<stages>]")
flags.DEFINE_string("json_out", None, "write the JSON here too")
flags.DEFINE_bool("interpret", False, "run the kernel in Pallas interpret mode (CPU smoke run)")


def _loop(attend, layers: int):
    @jax.jit
    def run(q, ck, cv, pos):
        def body(i, acc):
            return acc + attend(q, ck, cv, i, pos).astype(jnp.float32)
        return jax.lax.fori_loop(0, layers, body, jnp.zeros(q.shape, jnp.float32))
    return run


def _time(fn, args, repeats: int = 20) -> float:
    fn(*args).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args).block_until_ready()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def kernel_options(variant: str, kv: int) -> dict:
    """'bs64_hK_w8' -> dict(block_s=64, heads=kv, num_warps=8)."""
    opts = {}
    for part in variant.split("_"):
        key, val = part[0] if part[0] in "hws" and not part.startswith("bs") else part[:2], part.lstrip("bshw")
        if key == "bs":
            opts["block_s"] = int(val)
        elif key == "h":
            opts["heads"] = kv if val == "K" else int(val)
        elif key == "w":
            opts["num_warps"] = int(val)
        elif key == "s":
            opts["num_stages"] = int(val)
        else:
            raise app.UsageError(f"--kernels: cannot parse {part!r} of {variant!r}")
    return opts


def bench_shape(kv: int, h: int, batch: int, window: int, layers: int, kernels: list[str]) -> dict:
    e = 64
    s = window + 40
    keys = jax.random.split(jax.random.key(batch), 3)
    ck = jax.random.normal(keys[0], (layers, batch, s, kv, e), jnp.bfloat16)
    cv = jax.random.normal(keys[1], (layers, batch, s, kv, e), jnp.bfloat16)
    q = jax.random.normal(keys[2], (batch, 1, h, e), jnp.bfloat16)
    pos = jnp.asarray(np.random.default_rng(batch).integers(window // 2, window, size=batch), jnp.int32)
    pos = pos.at[0].set(window - 1)
    live = float(jnp.sum(pos + 1)) * kv * e * 2 * 2  # K and V bytes a row must read
    ref = decode_kernel.reference(q, ck, cv, layers - 1, pos, window)

    def xla(q, ck, cv, i, pos):
        mask = (jnp.arange(window)[None, None, :] <= pos[:, None, None])
        return decode_attention(q, ck[i, :, :window], cv[i, :, :window], mask)

    variants = {"xla": xla}
    for name in kernels:
        variants[f"pallas_{name}"] = (lambda o: lambda q, ck, cv, i, pos: decode_kernel.decode_attention_cache(
            q, ck, cv, i, pos, window=window, interpret=FLAGS.interpret, **o))(kernel_options(name, kv))
    out = {"batch": batch, "kv_heads": kv, "q_heads": h, "window": window, "live_kv_bytes_per_layer": live,
           "splits_bs64": decode_kernel.num_splits(batch, kv, window, 64)}
    for name, fn in variants.items():
        try:
            one = jax.jit(lambda q, ck, cv, pos, fn=fn: fn(q, ck, cv, layers - 1, pos))
            got = one(q, ck, cv, pos).astype(jnp.float32)
            err = float(jnp.linalg.norm(got - ref) / jnp.linalg.norm(ref))
            run = _loop(fn, layers)
            hlo = run.lower(q, ck, cv, pos).compile().as_text()
            dt = _time(run, (q, ck, cv, pos)) / layers
            out[name] = {"rel_err": err, "us_per_layer": dt * 1e6, "gb_per_s": live / dt / 1e9,
                         "triton_calls_in_hlo": hlo.count("__gpu$xla.gpu.triton")}
        except Exception as e:  # noqa: BLE001 - report, keep the other variants
            out[name] = {"error": repr(e)[:1500], "trace": traceback.format_exc()[-3000:]}
    return out


def main(argv):
    del argv
    result = {**bench_common.header("decode_attention"), "window": FLAGS.window, "layers": FLAGS.layers,
              "rows": []}
    try:
        result["probe_rel_err"] = decode_kernel.probe_error(interpret=FLAGS.interpret)
    except Exception as e:  # noqa: BLE001
        result["probe_error"] = repr(e)[:1500]
    for spec in FLAGS.shapes:
        name, kv, h = spec.split(":")
        for b in FLAGS.batches:
            row = {"shape": name, **bench_shape(int(kv), int(h), int(b), FLAGS.window, FLAGS.layers,
                                                FLAGS.kernels)}
            print(row, flush=True)
            result["rows"].append(row)
    bench_common.emit(result, FLAGS.json_out)


if __name__ == "__main__":
    app.run(main)
