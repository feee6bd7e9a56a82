"""Decode attention alone: the Pallas flash-decoding kernel vs the XLA path (scatter + multiply-reduce), per layer
call, each writing the step's K/V as the model's decode step does.

`python -m automem_jax.bench.decode_attention --json_out=bench/results/decode-attention-<device>-<date>.json`

Each timing runs one jitted program that calls the path once per layer of a stacked cache (straight-line, as the
model's decode step does), so the cache is read from HBM, not L2. Per shape: relative L2 error of each path vs an
fp32 reference, microseconds per layer call, and the live K/V bytes read per call over that time (GB/s).

Ceiling beside them: `xla_sum`, an XLA reduction of a whole layer (what a plain read reaches on this device).
"""
from __future__ import annotations

import functools
import re
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from automem_jax.bench import common as bench_common
from automem_jax.kernels import decode_attention as kernel
from automem_jax.kernels.config import DecodeAttentionTiling
from automem_jax.models.attention import decode_attention

FLAGS = flags.FLAGS
flags.DEFINE_list("shapes", ["smollm2:3:9", "qwen0.5b:2:14"], "name:kv_heads:q_heads (head_dim 64)")
flags.DEFINE_list("batches", ["1", "64", "256"], "batch sizes")
flags.DEFINE_integer("window", 680, "attention window (cache entries read per row)")
flags.DEFINE_integer("layers", 24, "layers in the stacked cache (one timed program calls each once)")
flags.DEFINE_list("kernels", ["bs64"], "kernel variants bs<block>[_w<warps>][_s<stages>][_p<window splits>]")
flags.DEFINE_string("json_out", None, "write the JSON here too")
flags.DEFINE_bool("interpret", False, "run the kernel in Pallas interpret mode (CPU smoke run)")


def _loop(attend, layers: int):
    @functools.partial(jax.jit, donate_argnums=(3, 4))  # the cache written in place, as in the model's step
    def run(q, kn, vn, ck, cv, pos):  # one call per layer, the cache carried through
        outs = []
        for i in range(layers):
            out, ck, cv = attend(q, kn, vn, ck, cv, jnp.int32(i), pos)
            outs.append(out)
        return outs, ck, cv
    return run


def _time_carried(run, q, kn, vn, ck, cv, pos, repeats: int = 20) -> float:
    """Median seconds of run(...), each call taking the cache the last one returned (donated buffers)."""
    _, ck, cv = jax.block_until_ready(run(q, kn, vn, ck, cv, pos))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, ck, cv = jax.block_until_ready(run(q, kn, vn, ck, cv, pos))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _time(fn, args, repeats: int = 20) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


_OPTIONS = [(re.compile(r"bs(\d+)"), "block_s"), (re.compile(r"w(\d+)"), "num_warps"),
            (re.compile(r"s(\d+)"), "num_stages"), (re.compile(r"p(\d+)"), "splits")]


def kernel_options(variant: str) -> tuple[DecodeAttentionTiling, int | None]:
    """'bs64_w8_p2' -> (DecodeAttentionTiling(block_s=64, num_warps=8), splits 2)."""
    opts = {}
    for part in variant.split("_"):
        for pattern, name in _OPTIONS:
            if m := pattern.fullmatch(part):
                opts[name] = int(m[1])
                break
        else:
            raise app.UsageError(f"--kernels: cannot parse {part!r} of {variant!r}")
    splits = opts.pop("splits", None)
    return DecodeAttentionTiling(**opts), splits


def bench_shape(kv: int, h: int, batch: int, window: int, layers: int, kernels: list[str]) -> dict:
    e = 64
    s = window + 40
    keys = jax.random.split(jax.random.key(batch), 5)
    ck = jax.random.normal(keys[0], (layers, batch, s, kv, e), jnp.bfloat16)
    cv = jax.random.normal(keys[1], (layers, batch, s, kv, e), jnp.bfloat16)
    q = jax.random.normal(keys[2], (batch, 1, h, e), jnp.bfloat16)
    kn, vn = (jax.random.normal(k, (batch, 1, kv, e), jnp.bfloat16) for k in keys[3:])
    pos = jnp.asarray(np.random.default_rng(batch).integers(window // 2, window, size=batch), jnp.int32)
    pos = pos.at[0].set(window - 1)
    live = float(jnp.sum(pos + 1)) * kv * e * 2 * 2  # K and V bytes a row must read
    rows = jnp.arange(batch)
    ref = kernel.reference(q, ck.at[-1, rows, pos].set(kn[:, 0]), cv.at[-1, rows, pos].set(vn[:, 0]), layers - 1,
                           pos, window)

    def xla(q, kn, vn, ck, cv, i, pos):
        ck, cv = ck.at[i, rows, pos].set(kn[:, 0]), cv.at[i, rows, pos].set(vn[:, 0])
        mask = (jnp.arange(window)[None, None, :] <= pos[:, None, None])
        return decode_attention(q, ck[i, :, :window], cv[i, :, :window], mask), ck, cv

    variants = {"xla": xla}
    for name in kernels:
        tiling, splits = kernel_options(name)
        variants[f"pallas_{name}"] = functools.partial(kernel.decode_attention, window=window, tiling=tiling,
                                                       splits=splits, interpret=FLAGS.interpret)
    out = {"batch": batch, "kv_heads": kv, "q_heads": h, "window": window, "live_kv_bytes_per_layer": live,
           "splits_bs64": kernel.num_splits(batch, kv, window, DecodeAttentionTiling())}
    for name, fn in variants.items():
        try:
            args = (q, kn, vn, ck, cv, pos)
            got = jax.jit(lambda *a, fn=fn: fn(*a[:5], layers - 1, a[5])[0])(*args).astype(jnp.float32)
            run = _loop(fn, layers)
            hlo = run.lower(*args).compile().as_text()
            dt = _time_carried(run, q, kn, vn, jnp.copy(ck), jnp.copy(cv), pos) / layers
            out[name] = {"rel_err": float(jnp.linalg.norm(got - ref) / jnp.linalg.norm(ref)),
                         "us_per_layer": dt * 1e6, "gb_per_s": live / dt / 1e9,
                         "triton_calls_in_hlo": hlo.count("__gpu$xla.gpu.triton")}
        except Exception as e:  # noqa: BLE001 - report, keep the other variants
            out[name] = {"error": repr(e)[:1500], "trace": traceback.format_exc()[-3000:]}
    try:  # a plain XLA read of one whole layer (every entry, live or not)
        whole = jax.jit(lambda ck, cv: [jnp.sum(ck[i].astype(jnp.float32)) + jnp.sum(cv[i].astype(jnp.float32))
                                        for i in range(layers)])
        dt = _time(whole, (ck, cv)) / layers
        out["xla_sum"] = {"us_per_layer": dt * 1e6, "gb_per_s": 2 * ck[0].nbytes / dt / 1e9}
    except Exception as e:  # noqa: BLE001
        out["xla_sum"] = {"error": repr(e)[:1500]}
    return out


def main(argv):
    del argv
    result = {**bench_common.header("decode_attention"), "window": FLAGS.window, "layers": FLAGS.layers,
              "rows": []}
    try:
        result["probe_rel_err"] = kernel.probe_error(interpret=FLAGS.interpret)
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
