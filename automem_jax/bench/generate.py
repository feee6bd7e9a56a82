"""Generation benchmark: decode tokens/s vs HBM/compute rooflines, batch-1 latency, prefill, prefix reuse.

`python -m automem_jax.bench.generate --json_out=bench/results/generate-<device>-<date>.json` (H100: ~5-8 min)
`python -m automem_jax.bench.generate --presets=qwen2p5_7b --context=1024 --parts=decode,prefill` (Qwen2.5-7B shapes)
`python -m automem_jax.bench.generate --small` (CPU smoke run with a tiny model, ~1-2 min)

Decode is timed on the engine's own fused k-step program with every slot active (steady state, no host work but
the one token read-back per call); the end-to-end figure includes scheduling. Rooflines per decode step:
HBM = (weight bytes + live KV bytes) / bandwidth, compute = (2 * params + attention flops) / peak flops; prefill
against the compute roofline. Every engine is built from an EngineConfig: the defaults, a variant's overrides.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from automem_jax.bench import common as bench_common
from automem_jax.bench import hlo, numerics
from automem_jax.engine.base import Request, SamplingParams
from automem_jax.engine.config import EngineConfig
from automem_jax.engine.jax_engine import JaxEngine
from automem_jax.models.config import PRESETS, tiny_config
from automem_jax.models.loader import random_model

FLAGS = flags.FLAGS
flags.DEFINE_bool("small", False, "tiny model and sizes (CPU smoke run)")
flags.DEFINE_list("presets", ["smollm2_135m", "qwen2p5_0p5b"], "model presets")
flags.DEFINE_list("batches", ["1", "64", "256"], "decode batch sizes")
flags.DEFINE_integer("context", 512, "prompt length of the decode benchmark")
flags.DEFINE_integer("decode_steps", 16, "tokens per fused decode call")
flags.DEFINE_integer("decode_calls", 8, "timed decode calls per batch size")
flags.DEFINE_integer("prefill_len", 2048, "prompt length of the prefill benchmark")
flags.DEFINE_integer("prefill_rows", 8, "prompts per prefill call of the prefill benchmark")
flags.DEFINE_integer("shared_head", 1024, "shared prompt head of the prefix-reuse benchmark")
flags.DEFINE_list("reuse_rows", ["16"], "requests per call of the prefix-reuse benchmark (each a 64-token suffix "
                  "on the shared head); the first keeps the plain key, others add _r<rows>")
flags.DEFINE_string("json_out", None, "write the JSON here too")
flags.DEFINE_list("decode_variants", ["default"], "decode variants to time side by side (VARIANTS: EngineConfig "
                  "overrides): default, xla, xla_attn, xla_proj, stacked, qkv_sk<n>, g_<gemv tiling>, "
                  "k_<decode attention tiling>")
flags.DEFINE_list("parts", ["decode", "e2e", "prefill", "reuse", "prefill_memory"],
                  "which benchmarks to run (prefill_memory: compile-only check of the prefill program at 1024 slots; "
                  "kernel_shapes: the decode kernels at head_dim 128, bench/numerics.check_kernel_shapes)")
flags.DEFINE_list("prefill_impls", ["auto"], "kernels.prefill_attention values to time the prefill and prefix-reuse "
                  "parts with: auto (the in-place kernel on a GPU), kernel, xla")
flags.DEFINE_list("mesh", [], "EngineConfig.mesh for every engine, as data,tensor (e.g. 1,2); empty = one device")
flags.DEFINE_string("profile_dir", None, "profile 2 decode calls per variant/batch here (perfetto trace) and add "
                    "the top 40 GPU kernels per decode step to the JSON")
flags.DEFINE_bool("host_profile", False, "prefix-reuse part: cProfile one call of each engine and add the top 25 "
                  "host functions (by own time) to the JSON")
flags.DEFINE_string("hlo_dir", None, "write each decode variant's optimized HLO text here (per batch size)")

_XLA = {"decode_attention": "xla", "prefill_attention": "xla", "projections": "xla"}
# Decode variants: EngineConfig overrides timed against the defaults (on a GPU: Pallas decode attention that writes
# the step's K/V, split-K projections up to 8 rows, straight-line layers, CUDA graphs per step)
VARIANTS: dict[str, dict] = {
    "default": {},
    "xla": {"kernels": _XLA},                                   # every op on XLA's path
    "xla_attn": {"kernels": {"decode_attention": "xla"}},       # XLA decode attention (scatter + multiply-reduce)
    "xla_proj": {"kernels": {"projections": "xla"}},            # batch <= 8: XLA's projections, not kernels/gemv.py
    "stacked": {"unstack_layers": "off"},                       # layer scan over the stacked weights (slice copies)
    # batches past 8: the fused q/k/v GEMM's depth split (1 = one plain GEMM)
    **{f"qkv_sk{n}": {"kernels": {"qkv_split_k": n}} for n in (1, 2, 4, 8)}}
# the small-batch projection kernel's tiling (kernels.config.GemvTiling)
VARIANTS.update({f"g_{name}": {"kernels": {"gemv": cfg}} for name, cfg in (
    ("n32", {"block_n": 32}), ("k64", {"block_k": 64}), ("k256", {"block_k": 256}), ("s2", {"num_stages": 2}),
    ("s4", {"num_stages": 4}), ("w2", {"num_warps": 2}), ("w8", {"num_warps": 8}),
    ("t528", {"target_programs": 528}), ("b16", {"max_batch": 16}))})
# the decode attention kernel's tiling (kernels.config.DecodeAttentionTiling); k_t<n>: window splits
VARIANTS.update({f"k_{name}": {"kernels": {"decode": dict(zip(("block_s", "num_warps", "num_stages"), cfg))}}
                 for name, cfg in (("bs32", (32, 4, 2)), ("bs128", (128, 4, 2)), ("s3", (64, 4, 3)),
                                   ("s4", (64, 4, 4)), ("w2", (64, 2, 2)), ("w8", (64, 8, 2)))})
VARIANTS.update({f"k_t{n}": {"kernels": {"decode": {"target_programs": n}}} for n in (1, 32, 1024)})

# HBM bytes/s and dense bf16 flop/s by jax device_kind (substring match, first hit)
DEVICE_PEAKS = [("H100 PCIe", 2.0e12, 756e12), ("H100", 3.35e12, 989e12), ("H200", 4.8e12, 989e12),
                ("A100", 2.0e12, 312e12), ("TPU v5 lite", 8.19e11, 197e12), ("TPU v5p", 2.765e12, 459e12),
                ("TPU v6", 1.64e12, 918e12), ("TPU v4", 1.2e12, 275e12)]


def device_peaks(kind: str) -> tuple[float | None, float | None]:
    for name, bw, flops in DEVICE_PEAKS:
        if name.lower() in kind.lower():
            return bw, flops
    return None, None


def _timed(fn, repeats: int) -> float:
    """Median seconds of fn() (fn must block until its work is done)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def copy_bandwidth(nbytes: int) -> float:
    """Measured device-to-device copy bandwidth (bytes read + written per second)."""
    x = jnp.ones((nbytes // 2,), jnp.bfloat16)
    copy = jax.jit(lambda a: a * jnp.bfloat16(1.0) + jnp.bfloat16(0.0))
    return 2 * x.nbytes / _timed(lambda: copy(x).block_until_ready(), 5)


def _prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(3, vocab, size=(n, length)).tolist()


def base_config() -> EngineConfig:
    """What every engine of this run starts from: the defaults, on --mesh."""
    return EngineConfig.of(**({"mesh": dict(zip(("data", "tensor"), map(int, FLAGS.mesh)))} if FLAGS.mesh else {}))


def bench_decode(model, batch: int, context: int, k: int, calls: int, bw, peak, variant: str = "default",
                 hlo_path: str | None = None) -> dict:
    cfg = model.config
    max_len = context + (calls + 2) * k + 8
    config = EngineConfig.of(base_config(), max_batch=batch, max_seq_len=max_len, decode_steps=k, stop_at_eos=False,
                             min_reuse_tokens=1 << 30, **VARIANTS[variant])
    eng = JaxEngine(model, config=config)
    huge = SamplingParams(temperature=0.0, max_new_tokens=max_len - context)
    eng.admit([Request(prompt_ids=p, sampling=huge) for p in _prompts(batch, context, cfg.vocab_size, 0)])
    window = eng.window_for(context + (calls + 2) * k)
    mode = eng.live_sampling_mode()  # what the engine's own decode round uses
    force = np.zeros((batch,), bool)

    def one_call():
        eng.runner.decode(force, num_steps=k, window=window, sampling_mode=mode).block_until_ready()

    t_compile = time.perf_counter()
    one_call()
    t_compile = time.perf_counter() - t_compile
    text = eng.runner.lower_decode(num_steps=k, window=window, sampling_mode=mode).compile().as_text()
    if hlo_path:
        Path(hlo_path).parent.mkdir(parents=True, exist_ok=True)
        Path(hlo_path).write_text(text)
    t0 = time.perf_counter()
    for _ in range(calls):
        one_call()
    dt = (time.perf_counter() - t0) / (calls * k)  # seconds per decode step
    kernels = None
    if FLAGS.profile_dir:
        try:
            kernels = bench_common.gpu_profile(one_call, Path(FLAGS.profile_dir) / f"{variant}-b{batch}", 2 * k)
        except Exception as e:  # noqa: BLE001 - profiling is best effort (needs CUPTI)
            kernels = {"error": repr(e)[:300]}
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(eng.runner.params))
    kv_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2  # k+v, bf16
    # entries attended per timed step, on average: the untimed first call decoded k tokens past the prompt
    live_ctx = context + k + calls * k / 2
    step_bytes = weight_bytes + batch * live_ctx * kv_per_token
    step_flops = batch * (2 * cfg.num_params + 4 * cfg.num_layers * live_ctx * cfg.num_heads * cfg.head_dim)
    out = {"variant": variant, "batch": batch, "context": context, "window": window, "step_ms": dt * 1e3,
           "first_call_s": t_compile, "tokens_per_s": batch / dt,
           "triton_calls_in_hlo": text.count("__gpu$xla.gpu.triton"),  # > 0: the Pallas kernels are in the program
           "cache_copies_in_hlo": hlo.count_copies(hlo.whole_cache_ops(text, eng.runner.cache.k.shape)),
           "weight_bytes": weight_bytes, "kv_bytes_per_step": batch * live_ctx * kv_per_token,
           "engine": _engine_record(eng)}
    if kernels is not None:
        out["gpu_kernels_per_step"] = kernels
    if bw:
        hbm_step = step_bytes / bw
        comp_step = step_flops / peak
        roof = max(hbm_step, comp_step)
        out.update(hbm_roofline_tokens_per_s=batch / hbm_step, compute_roofline_tokens_per_s=batch / comp_step,
                   roofline_tokens_per_s=batch / roof, fraction_of_roofline=roof / dt,
                   weights_over_bw_ms=weight_bytes / bw * 1e3, latency_over_weights_bound=dt / (weight_bytes / bw))
    eng.close()
    return out


def _engine_record(eng: JaxEngine) -> dict:
    """What ran: the resolved kernel paths, straight-line layers, the mesh."""
    r = eng.runner
    return {"kernels": dataclasses.asdict(r.kernels), "unstacked": r.unstacked, "packed_prefill": r.packed_prefill,
            "mesh": None if r.mesh is None else dict(r.mesh.shape)}


def bench_engine_e2e(model, batch: int, context: int, new_tokens: int, k: int) -> dict:
    eng = JaxEngine(model, config=EngineConfig.of(base_config(), max_batch=batch, max_seq_len=context + new_tokens + 8,
                                                  decode_steps=k, stop_at_eos=False, min_reuse_tokens=1 << 30))
    sp = SamplingParams(temperature=1.0, max_new_tokens=new_tokens, seed=0)
    reqs = lambda s: [Request(prompt_ids=p, sampling=sp)  # noqa: E731
                      for p in _prompts(batch, context, model.config.vocab_size, s)]
    eng.generate(reqs(1))
    t0 = time.perf_counter()
    out = eng.generate(reqs(2))
    dt = time.perf_counter() - t0
    n = sum(c.completion_tokens for c in out)
    return {"batch": batch, "context": context, "new_tokens": new_tokens, "seconds": dt, "output_tokens_per_s": n / dt}


def bench_prefill(model, length: int, rows: int, opts: dict, peak: float | None = None) -> dict:
    """Prompts of `length` new tokens, `rows` per call (one call), timed end to end through the engine; against the
    compute roofline (2 x params + causal attention flops per token)."""
    eng = JaxEngine(model, config=EngineConfig.of(base_config(), max_batch=rows, max_seq_len=length + 16,
                                                  stop_at_eos=False, min_reuse_tokens=1 << 30,
                                                  max_prefill_tokens=max(length * rows, 8192), **opts))
    sp = SamplingParams(temperature=0.0, max_new_tokens=1)
    seeds = iter(range(100))
    run = lambda: eng.generate([Request(prompt_ids=p, sampling=sp)  # noqa: E731
                                for p in _prompts(rows, length, model.config.vocab_size, next(seeds))])
    t_first = time.perf_counter()
    run()
    t_first = time.perf_counter() - t_first
    dt = _timed(run, 3)
    out = {"first_call_s": t_first, "length": length, "rows": rows, "seconds": dt, "tokens_per_s": rows * length / dt,
           "engine": _engine_record(eng)}
    eng.close()
    if peak:
        c = model.config
        flops = 2 * c.num_params + 2 * c.num_layers * length * c.num_heads * c.head_dim  # per token, causal mean
        out.update(compute_roofline_tokens_per_s=peak / flops, fraction_of_compute_roofline=out["tokens_per_s"] *
                   flops / peak)
    return out


def bench_prefix_reuse(model, head: int, suffix: int, rows: int, opts: dict) -> dict:
    vocab = model.config.vocab_size
    head_ids = _prompts(1, head, vocab, 7)[0]
    sp = SamplingParams(temperature=0.0, max_new_tokens=1)
    times = {}
    for name, min_reuse in (("no_reuse", 1 << 30), ("reuse", 16)):
        eng = JaxEngine(model, config=EngineConfig.of(base_config(), max_batch=rows + 1,
                                                      max_seq_len=head + suffix + 16, stop_at_eos=False,
                                                      min_reuse_tokens=min_reuse, **opts))
        eng.generate([Request(prompt_ids=head_ids + [5] * suffix, sampling=sp)])  # the head is now in a slot
        # every timed call's requests are built before the clock starts: the benchmark times the engine, not the
        # random prompt generator (about 1 ms of list building per 16-row call on the H100 host)
        batches = iter([[Request(prompt_ids=head_ids + p, sampling=sp) for p in _prompts(rows, suffix, vocab, seed)]
                        for seed in range(32)])
        run = lambda: eng.generate(next(batches))  # noqa: E731
        times[name] = _timed(run, 3)
        if FLAGS.profile_dir:  # GPU kernels of one generate() call (top 40)
            try:
                log_dir = Path(FLAGS.profile_dir) / f"reuse-{name}"
                times[name + "_gpu_kernels"] = bench_common.gpu_profile(run, log_dir, 2)
            except Exception as e:  # noqa: BLE001 - profiling is best effort (needs CUPTI)
                times[name + "_gpu_kernels"] = {"error": repr(e)[:300]}
        if FLAGS.host_profile:
            times[name + "_host_profile"] = bench_common.host_profile(run)[1]
        before = dict(eng.stats)
        out = run()
        times[name + "_cached_tokens"] = int(np.mean([c.cached_tokens for c in out]))
        for key in ("prepare_s", "prefill_host_s", "prefill_dispatch_s", "prefill_wait_s", "complete_s",
                    "generate_s"):  # where one call's wall time goes
            times[f"{name}_{key}"] = eng.stats[key] - before.get(key, 0.0)
        eng.close()
    return {"head": head, "suffix": suffix, "rows": rows, **times, "speedup": times["no_reuse"] / times["reuse"]}


def _record_check(r: dict, name: str, key: str, check) -> None:
    """r[key] = check(), or its error (a failed check is reported, the timings still run); printed as it lands."""
    try:
        r[key] = check()
    except Exception as e:  # noqa: BLE001
        r[key] = {"error": repr(e)[:2000]}
    print(json.dumps({name: {key: r[key]}}), flush=True)


def main(argv):
    del argv
    if not jax.config.jax_compilation_cache_dir:  # the HLO dump's second compile of each program is a cache hit
        jax.config.update("jax_compilation_cache_dir", "/tmp/automem_jax_bench_xla_cache")
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    for variant in FLAGS.decode_variants:
        if variant not in VARIANTS:
            raise app.UsageError(f"--decode_variants: unknown {variant!r}; choose from {sorted(VARIANTS)}")
    dev = jax.devices()[0]
    bw, peak = device_peaks(dev.device_kind)
    small = FLAGS.small
    presets = {"tiny": tiny_config(vocab_size=512, max_position_embeddings=4096)} if small else \
        {p: PRESETS[p] for p in FLAGS.presets}
    batches = [1, 4, 8] if small else [int(b) for b in FLAGS.batches]
    context = 64 if small else FLAGS.context
    k, calls = (4, 2) if small else (FLAGS.decode_steps, FLAGS.decode_calls)
    parts = set(FLAGS.parts)
    result = {**bench_common.header("generate"), "small": small, "hbm_bytes_per_s_table": bw,
              "peak_flops_table": peak, "engine_config": base_config().to_dict(),
              "copy_bytes_per_s_measured": copy_bandwidth((1 << 24) if small else (1 << 30)), "models": {}}
    if "kernel_shapes" in parts:
        _record_check(result, "all", "kernel_shapes", numerics.check_kernel_shapes)
    for name, cfg in presets.items():
        model = random_model(cfg, dtype=jnp.bfloat16, seed=0)
        r = {"params": cfg.num_params, "decode": []}
        if "decode" in parts:
            _record_check(r, name, "decode_numerics", lambda: numerics.check_decode_kernel_numerics(model))
            _record_check(r, name, "gemv_numerics", lambda: numerics.check_gemv_numerics(model))
        for variant in (FLAGS.decode_variants if "decode" in parts else []):
            for b in batches:
                path = str(Path(FLAGS.hlo_dir) / f"{name}-{variant}-b{b}.hlo.txt") if FLAGS.hlo_dir else None
                try:
                    r["decode"].append(bench_decode(model, b, context, k, calls, bw, peak, variant, path))
                except Exception as e:  # noqa: BLE001 - one failing variant must not lose the others
                    r["decode"].append({"variant": variant, "batch": b, "error": repr(e)[:2000]})
                print(json.dumps({name: r["decode"][-1]}), flush=True)
        if "prefill_memory" in parts:
            small_kw = {"max_batch": 8, "max_seq_len": 256, "shapes": ((4, 16, 128), (2, 64, 256))} if small else {}
            _record_check(r, name, "prefill_memory", lambda: hlo.check_prefill_memory(model, base_config(),
                                                                                       **small_kw))
        if "e2e" in parts:
            r["engine_e2e"] = bench_engine_e2e(model, batches[-1], context, 4 * k, k)
        if "prefill" in parts:
            _record_check(r, name, "prefill_numerics", lambda: numerics.check_prefill_numerics(model))
        for impl in FLAGS.prefill_impls:
            sfx = "" if impl == FLAGS.prefill_impls[0] else f"_{impl}"  # the first impl keeps the plain keys
            opts = {"kernels": {"prefill_attention": impl}}
            try:
                if "prefill" in parts:
                    r["prefill" + sfx] = {"impl": impl, **bench_prefill(
                        model, 128 if small else FLAGS.prefill_len, 2 if small else FLAGS.prefill_rows, opts, peak)}
                for i, rows in enumerate(([4] if small else [int(x) for x in FLAGS.reuse_rows])
                                         if "reuse" in parts else []):
                    r["prefix_reuse" + sfx + ("" if i == 0 else f"_r{rows}")] = {"impl": impl, **bench_prefix_reuse(
                        model, 64 if small else FLAGS.shared_head, 16 if small else 64, rows, opts)}
            except Exception as e:  # noqa: BLE001 - one failing impl must not lose the others
                r["prefill" + sfx + "_error"] = {"impl": impl, "error": repr(e)[:2000]}
        print(json.dumps({name: {k2: v for k2, v in r.items() if k2.startswith(("engine_e2e", "prefill", "prefix"))}}),
              flush=True)
        result["models"][name] = r
    bench_common.emit(result, FLAGS.json_out)


if __name__ == "__main__":
    app.run(main)
