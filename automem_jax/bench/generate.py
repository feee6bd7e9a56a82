"""Generation benchmark: decode tokens/s vs HBM/compute rooflines, batch-1 latency, prefill, prefix reuse.

`python -m automem_jax.bench.generate --json_out=bench/results/generate-<device>-<date>.json` (H100: ~5-8 min)
`python -m automem_jax.bench.generate --small` (CPU smoke run with a tiny model, ~1-2 min)

Decode is timed on the engine's own fused k-step program with every slot active (steady state, no host work but
the one token read-back per call); the end-to-end figure includes scheduling. Rooflines per decode step:
HBM = (weight bytes + live KV bytes) / bandwidth, compute = (2 * params + attention flops) / peak flops.
"""
from __future__ import annotations

import collections
import json
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from automem_jax.bench import common as bench_common
from automem_jax.bench import numerics
from automem_jax.engine.base import Request, SamplingParams
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
flags.DEFINE_integer("shared_head", 1024, "shared prompt head of the prefix-reuse benchmark")
flags.DEFINE_list("reuse_rows", ["16"], "requests per call of the prefix-reuse benchmark (each a 64-token suffix "
                  "on the shared head); the first keeps the plain key, others add _r<rows>")
flags.DEFINE_string("json_out", None, "write the JSON here too")
flags.DEFINE_list("decode_variants", ["default"],
                  "decode program variants to time side by side (VARIANTS): default (engine defaults), xla_attn, "
                  "cudnn, einsum, stacked, cb_all, no_cb, scatter, cublas, pdl, no_pdl, pdl_no_cb, exhaustive, "
                  "triton_ws, k_<tiling> (Pallas kernel tilings)")
flags.DEFINE_list("parts", ["decode", "e2e", "prefill", "reuse", "prefill_memory"],
                  "which benchmarks to run (prefill_memory: compile-only check of the prefill program at 1024 slots; "
                  "kernel_shapes: the decode kernels at head_dim 128, bench/numerics.check_kernel_shapes)")
flags.DEFINE_list("prefill_variants", ["default"], "prefill program variants (PREFILL_VARIANTS) to time the prefill "
                  "and prefix-reuse parts with: default, cb (CUDA graphs of the program's kernels), scan (layer "
                  "scan, the default), unstacked (straight-line layers on per-layer weights), unstacked_cb")
flags.DEFINE_list("prefill_impls", ["kernel"], "prefill attention impls (decoder.PREFILL_ATTENTION_IMPL) to time the "
                  "prefill and prefix-reuse parts with: auto (cuDNN flash on GPU), xla, kernel (the engine's prefill "
                  "into cache rows through models/prefill_kernel.py, heads read in place)")
flags.DEFINE_string("profile_dir", None, "profile 2 decode calls per variant/batch here (perfetto trace) and add "
                    "the top 40 GPU kernels per decode step to the JSON")
flags.DEFINE_bool("host_profile", False, "prefix-reuse part: cProfile one call of each engine and add the top 25 "
                  "host functions (by own time) to the JSON")
flags.DEFINE_string("hlo_dir", None, "write each decode variant's optimized HLO text here (per batch size)")

# Decode program variants, timed side by side against the engine defaults (on GPU: Pallas decode attention,
# straight-line layers on per-layer weights, static sampling mode, command buffers for the kernels of a step).
VARIANTS = {"default": {},
            "xla_attn": {"xla_attn": True},           # XLA multiply-reduce decode attention instead of the kernel
            "cudnn": {"cudnn": True},                 # cuDNN flash attention (decoder.DECODE_ATTENTION_IMPL)
            "einsum": {"einsum": True},               # prefill-style dot attention in decode
            "stacked": {"unstack_layers": False},     # layer scan over the stacked weights (slice copies)
            "cb_all": {"command_buffer": True},       # command buffers incl. WHILE/CONDITIONAL (the step loop)
            "no_cb": {"command_buffer": False},
            "scatter": {"scatter": True},             # two scatters write the new K/V, the kernel only reads
            "xla_proj": {"gemv": False},              # batch <= 8: XLA's projections, not models/gemv_kernel.py
            "qkv_unfused": {"qkv_fused": False},      # q/k/v summed, biased and rotated by XLA before the kernel
            # batches past 8: the fused q/k/v GEMM's depth split (decoder.QKV_SPLIT_K; 1 = one plain GEMM)
            **{f"qkv_sk{n}": {"qkv_split_k": n} for n in (1, 2, 8)}}
# the small-batch projection kernel's tiling and split rule (gemv_kernel module constants)
VARIANTS.update({f"g_{name}": {"gemv_tiling": cfg} for name, cfg in (
    ("n32", {"BLOCK_N": 32}), ("k64", {"BLOCK_K": 64}), ("k256", {"BLOCK_K": 256}), ("s2", {"NUM_STAGES": 2}),
    ("s4", {"NUM_STAGES": 4}), ("w2", {"NUM_WARPS": 2}), ("w8", {"NUM_WARPS": 8}), ("t528", {"TARGET_PROGRAMS": 528}),
    ("finish", {"FINISH_IN_KERNEL": True}), ("finish_w2", {"FINISH_IN_KERNEL": True, "NUM_WARPS": 2}),
    ("b16", {"MAX_BATCH": 16}))})
# batches past gemv_kernel.ROWS: the finished launches over row tiles (LARGE_BATCH, off by default) and their tiling
VARIANTS.update({f"g_lg_{name}": {"gemv_tiling": {"LARGE_BATCH": True, **cfg}} for name, cfg in (
    ("on", {}), ("r32", {"LARGE_ROWS": 32}), ("r128", {"LARGE_ROWS": 128}), ("w8", {"NUM_WARPS": 8}),
    ("k32", {"LARGE_BLOCK_K": 32}), ("k128", {"LARGE_BLOCK_K": 128}), ("s1", {"LARGE_STAGES": 1}),
    ("s3", {"LARGE_STAGES": 3}), ("t528", {"TARGET_PROGRAMS": 528}), ("split_all", {"SPLIT_BYTES": 0}))})
# the Pallas decode attention's tiling (decode_kernel BLOCK_S / NUM_WARPS / NUM_STAGES)
VARIANTS.update({f"k_{name}": {"kernel": dict(zip(("BLOCK_S", "NUM_WARPS", "NUM_STAGES"), cfg))}
                 for name, cfg in (("bs32", (32, 4, 2)), ("bs128", (128, 4, 2)), ("s3", (64, 4, 3)),
                                   ("s4", (64, 4, 4)), ("w2", (64, 2, 2)), ("w8", (64, 8, 2)),
                                   ("bs128_s3", (128, 4, 3)), ("bs32_s4", (32, 4, 4)))})
# more window splits (decode_kernel.TARGET_PROGRAMS): at batch 256 the default runs one program per (row, kv head)
# fewer (k_t1: one split, no merge kernels at batch 1)
VARIANTS.update({f"k_t{n}": {"kernel": {"TARGET_PROGRAMS": n}} for n in (1, 8, 32, 1024, 2048, 4096)})
# every GEMM through cuBLAS (XLA's Triton GEMM fusions run the small decode GEMMs and Qwen's LM head slowly)
VARIANTS["cublas"] = {"decode_xla_options": {"xla_gpu_enable_triton_gemm": False}}
# batch-1 projections as GEMMs (cuBLAS/Triton) instead of the multiply-reduce fusions XLA's dot strength reduction
# makes of them (profiled at 0.4-1.1 TB/s)
VARIANTS["no_dsr"] = {"decode_xla_options": {"xla_gpu_enable_dot_strength_reduction": False}}
# programmatic dependent launch (Hopper+: a kernel's prologue overlaps its predecessor's tail; XLA's own fusions
# only, not the Pallas custom calls), on and off whatever the installed XLA's default is; with and without graphs
VARIANTS["pdl"] = {"decode_xla_options": {"xla_gpu_enable_pdl": True}}
VARIANTS["no_pdl"] = {"decode_xla_options": {"xla_gpu_enable_pdl": False}}
VARIANTS["pdl_no_cb"] = {"decode_xla_options": {"xla_gpu_enable_pdl": True}, "command_buffer": False}
# XLA's GEMM autotuner over every Triton tiling (not its pruned list), and its warp-specialised Triton GEMMs
VARIANTS["exhaustive"] = {"decode_xla_options": {"xla_gpu_exhaustive_tiling_search": True}}
VARIANTS["triton_ws"] = {"decode_xla_options": {"xla_gpu_experimental_enable_triton_warp_specialization": True}}
# the decode step's CUDA graph with XLA's CONCURRENT command-buffer scheduling (independent kernels as parallel
# graph branches; the default orders every kernel after the last), alone and with the step's rows as n
# micro-batches of >= 16 rows (models/decode_micro_batch.py: one's attention overlaps another's GEMMs); `_serial`:
# the micro-batches under the default scheduling (their cost without the overlap)
_CONCURRENT = {"xla_gpu_command_buffer_scheduling_mode": "CONCURRENT"}
VARIANTS["conc"] = {"decode_xla_options": _CONCURRENT}
VARIANTS.update({f"mb{n}": {"micro_batches": (n, 16), "decode_xla_options": _CONCURRENT} for n in (2, 4, 8)})
VARIANTS.update({f"mb{n}_serial": {"micro_batches": (n, 16)} for n in (2, 4)})
# ... with one attention program per (row, kv head) (no window splits): fewer, lighter attention programs per SM, so
# the other micro-batches' GEMM blocks fit beside them (registers, shared memory) instead of waiting for them
VARIANTS.update({f"mb{n}_t1": {"micro_batches": (n, 16), "decode_xla_options": _CONCURRENT,
                               "kernel": {"TARGET_PROGRAMS": 1}} for n in (2, 4, 8)})

# Prefill program variants: JaxEngine options (see its comment on the prefill program's host time).
PREFILL_VARIANTS = {"default": {}, "cb": {"prefill_command_buffer": True},
                    "scan": {"prefill_unstacked": False}, "unstacked": {"prefill_unstacked": True},
                    "unstacked_cb": {"prefill_unstacked": True, "prefill_command_buffer": True}}

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


def bench_decode(model, batch: int, context: int, k: int, calls: int, bw, peak, variant: str = "default",
                 hlo_path: str | None = None) -> dict:
    from automem_jax.models import decoder as decoder_lib
    cfg = model.config
    max_len = context + (calls + 2) * k + 8
    from automem_jax.models import decode_kernel, gemv_kernel
    from automem_jax.models import decode_micro_batch as micro_batch
    opts = dict(VARIANTS[variant])
    einsum = opts.pop("einsum", False)
    xla_attn = opts.pop("xla_attn", einsum)
    cudnn = opts.pop("cudnn", False)
    tiling = opts.pop("kernel", {})
    scatter = opts.pop("scatter", False)
    gemv = opts.pop("gemv", True)
    qkv_fused = opts.pop("qkv_fused", True)
    qkv_split_k = opts.pop("qkv_split_k", None)
    micro = opts.pop("micro_batches", (micro_batch.MICRO_BATCHES, micro_batch.MIN_ROWS))
    gemv_tiling = opts.pop("gemv_tiling", {})
    d = decoder_lib  # short name for the flag table below
    # all read at trace time; flipped here only to time the alternatives side by side
    flags = {"_DECODE_MAX_T": 0 if einsum else d._DECODE_MAX_T,
             "DECODE_KERNEL": d.DECODE_KERNEL and not xla_attn and not cudnn,
             "DECODE_ATTENTION_IMPL": "cudnn" if cudnn else ("xla" if xla_attn else d.DECODE_ATTENTION_IMPL),
             "DECODE_KERNEL_WRITES_KV": d.DECODE_KERNEL_WRITES_KV and not scatter,
             "DECODE_GEMV": d.DECODE_GEMV and gemv, "DECODE_QKV_FUSED": d.DECODE_QKV_FUSED and qkv_fused,
             "QKV_SPLIT_K": d.QKV_SPLIT_K if qkv_split_k is None else qkv_split_k}
    patches = [(decoder_lib, flags), (decode_kernel, tiling), (gemv_kernel, gemv_tiling),
               (micro_batch, {"MICRO_BATCHES": micro[0], "MIN_ROWS": micro[1]})]
    saved = [(mod, {name: getattr(mod, name) for name in values}) for mod, values in patches]
    for mod, values in patches:
        for name, value in values.items():
            setattr(mod, name, value)
    try:
        out = _bench_decode(model, cfg, batch, context, k, calls, bw, peak, max_len, opts, variant, hlo_path)
        out["decode_attention_impl"] = d.DECODE_ATTENTION_IMPL
        out["decode_qkv_fused"] = d.DECODE_QKV_FUSED
        out["qkv_split_k"] = d.QKV_SPLIT_K
        out["micro_batches"] = micro_batch.parts(batch, 1)
        out["decode_kernel_tiling"] = {n: getattr(decode_kernel, n)
                                       for n in ("BLOCK_S", "NUM_WARPS", "NUM_STAGES", "TARGET_PROGRAMS")}
        out["gemv_kernel"] = {"on": d.DECODE_GEMV and gemv_kernel.supported(model.dtype, batch), **{
            n: getattr(gemv_kernel, n) for n in ("BLOCK_N", "BLOCK_K", "NUM_WARPS", "NUM_STAGES", "TARGET_PROGRAMS",
                                                 "FINISH_IN_KERNEL", "MAX_BATCH", "LARGE_BATCH", "LARGE_ROWS",
                                                 "LARGE_BLOCK_K", "LARGE_STAGES", "SPLIT_BYTES")}}
        return out
    finally:
        for mod, values in saved:
            for name, value in values.items():
                setattr(mod, name, value)


def _bench_decode(model, cfg, batch, context, k, calls, bw, peak, max_len, opts, variant, hlo_path) -> dict:
    eng = JaxEngine(model, max_batch=batch, max_seq_len=max_len, decode_steps=k, stop_at_eos=False,
                    min_reuse_tokens=1 << 30, **opts)
    huge = SamplingParams(temperature=0.0, max_new_tokens=max_len - context)
    eng._admit(collections.deque(eng._prepare(i, Request(prompt_ids=p, sampling=huge))
                                 for i, p in enumerate(_prompts(batch, context, cfg.vocab_size, 0))))
    window = eng.window_buckets[-1]
    for w in eng.window_buckets:
        if w >= context + (calls + 2) * k:
            window = w
            break
    force = jnp.zeros((batch,), bool)

    from automem_jax.engine.jax_engine import _sampling_mode
    mode = _sampling_mode([s for s in eng._slot_seq if s is not None])  # what the engine's own decode round uses

    def one_call():
        eng._run_decode(force, k, window, mode).block_until_ready()

    t_compile = time.perf_counter()
    one_call()
    t_compile = time.perf_counter() - t_compile
    text = eng._decode.lower(eng._graphdef, eng._params, eng.cache, eng.state, force, num_steps=k,
                             window=window, sampling_mode=mode, layer_params=eng._layer_params).compile().as_text()
    cudnn_calls = text.count("__cudnn$fmha")  # > 0 proves the cuDNN kernel is in the program (no silent fallback)
    triton_calls = text.count("__gpu$xla.gpu.triton")  # the same for the Pallas kernel
    cache_copies = _count_copies(_whole_cache_ops(text, eng.cache.k.shape))
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
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(eng._params))
    kv_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2  # k+v, bf16
    # entries attended per timed step, on average: the untimed first call decoded k tokens past the prompt
    live_ctx = context + k + calls * k / 2
    step_bytes = weight_bytes + batch * live_ctx * kv_per_token
    step_flops = batch * (2 * cfg.num_params + 4 * cfg.num_layers * live_ctx * cfg.num_heads * cfg.head_dim)
    out = {"variant": variant, "batch": batch, "context": context, "window": window, "step_ms": dt * 1e3,
           "first_call_s": t_compile, "tokens_per_s": batch / dt, "cudnn_fmha_calls_in_hlo": cudnn_calls,
           "triton_calls_in_hlo": triton_calls, "cache_copies_in_hlo": cache_copies,
           "weight_bytes": weight_bytes, "kv_bytes_per_step": batch * live_ctx * kv_per_token}
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


# (rows, prompt bucket, window) of the prefill programs the memory check compiles: a reuse call, the agent's
# first-turn prompts, and many short suffixes over long cached heads
PREFILL_MEMORY_SHAPES = ((16, 64, 2048), (8, 1024, 2048), (1, 1024, 1024), (1, 2048, 2048), (4, 2048, 2048),
                         (64, 128, 2048), (128, 16, 2048), (1, 16, 2048))


def check_prefill_memory(model, max_batch: int = 1024, max_seq_len: int = 2048,
                         shapes=PREFILL_MEMORY_SHAPES) -> dict:
    """Compile (not run) the prefill programs at the agent benchmark's scale from shapes only: XLA's temp memory,
    every op whose result is a whole cache buffer (in place, that is the one write per k/v; a `copy` means XLA
    duplicated the cache) and the program's thunks (`hlo_thunks`: what one call launches)."""
    return {"max_batch": max_batch, "max_seq_len": max_seq_len,
            "programs": [_prefill_memory(model, max_batch, max_seq_len, *shape) for shape in shapes],
            "copy_rows": _copy_memory(model, max_batch, max_seq_len, rows=min(64, max_batch // 2),
                                      window=min(1024, max_seq_len))}


def _copy_memory(model, max_batch: int, max_seq_len: int, rows: int, window: int) -> dict:
    """The same check for the head-copy program (steps.copy_rows) of `rows` rows."""
    from automem_jax.models import decoder as decoder_lib
    cfg = model.config
    kv = jax.ShapeDtypeStruct((cfg.num_layers, max_batch, max_seq_len, cfg.num_kv_heads, cfg.head_dim), jnp.bfloat16)
    eng = JaxEngine(model, max_batch=2, max_seq_len=32, stop_at_eos=False)
    try:
        idx = np.arange(rows, dtype=np.int32)
        compiled = eng._copy.lower(decoder_lib.KVCache(kv, kv), idx, idx + rows, window=window).compile()
        mem = compiled.memory_analysis()
        return {"rows": rows, "window": window, "temp_bytes": mem.temp_size_in_bytes,
                "alias_bytes": mem.alias_size_in_bytes,
                "cache_copies": _count_copies(_whole_cache_ops(compiled.as_text(), kv.shape))}
    except Exception as e:  # noqa: BLE001 - reported
        return {"error": repr(e)[:1000]}
    finally:
        eng.close()


def _prefill_memory(model, max_batch: int, max_seq_len: int, rows: int, tb: int, window: int) -> dict:
    from automem_jax.engine import steps
    from automem_jax.engine.jax_engine import _NUM_STOP_IDS
    from automem_jax.models import decoder as decoder_lib
    out = {"rows": rows, "tokens": tb, "window": window}
    eng = JaxEngine(model, max_batch=rows, max_seq_len=tb + 16, stop_at_eos=False)  # small: only its programs
    cfg = model.config
    spec = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt)  # noqa: E731
    kv = spec((cfg.num_layers, max_batch, max_seq_len, cfg.num_kv_heads, cfg.head_dim), jnp.bfloat16)
    cache = decoder_lib.KVCache(kv, kv)
    state = jax.eval_shape(lambda: steps.DecodeState.init(max_batch, _NUM_STOP_IDS))
    seqs = [eng._prepare(i, Request(prompt_ids=[5] * 8, sampling=SamplingParams(max_new_tokens=2)))
            for i in range(rows)]
    i32 = np.zeros((rows,), np.int32)
    saved = decoder_lib.PREFILL_ROWS_WRITE
    for name, unstacked, write in (("scan", False, saved), ("unstacked", True, saved),
                                   ("unstacked_scatter", True, "scatter")):
        decoder_lib.PREFILL_ROWS_WRITE = write  # read at trace time
        try:
            compiled = eng._prefill.lower(
                eng._graphdef, eng._params, cache, state, i32, np.zeros((rows, tb), np.int32), i32, i32,
                eng._new_rows(seqs), window=window, sampling_mode="greedy",
                layer_params=eng._layer_params if unstacked and eng._layer_params else None).compile()
            mem = compiled.memory_analysis()
            ops = _whole_cache_ops(compiled.as_text(), kv.shape)
            out[name] = {"temp_bytes": getattr(mem, "temp_size_in_bytes", None),
                         "alias_bytes": getattr(mem, "alias_size_in_bytes", None),
                         "cache_copies": _count_copies(ops),
                         "whole_cache_ops": ops[:12], "thunks": hlo_thunks(compiled.as_text())}
        except Exception as e:  # noqa: BLE001 - reported, the other variant still runs
            out[name] = {"error": repr(e)[:1000]}
        finally:
            decoder_lib.PREFILL_ROWS_WRITE = saved
    eng.close()
    return out


def bench_engine_e2e(model, batch: int, context: int, new_tokens: int, k: int) -> dict:
    eng = JaxEngine(model, max_batch=batch, max_seq_len=context + new_tokens + 8, decode_steps=k, stop_at_eos=False,
                    min_reuse_tokens=1 << 30)
    sp = SamplingParams(temperature=1.0, max_new_tokens=new_tokens, seed=0)
    reqs = lambda s: [Request(prompt_ids=p, sampling=sp)  # noqa: E731
                      for p in _prompts(batch, context, model.config.vocab_size, s)]
    eng.generate(reqs(1))
    t0 = time.perf_counter()
    out = eng.generate(reqs(2))
    dt = time.perf_counter() - t0
    n = sum(c.completion_tokens for c in out)
    return {"batch": batch, "context": context, "new_tokens": new_tokens, "seconds": dt, "output_tokens_per_s": n / dt}


def bench_prefill(model, length: int, rows: int, opts: dict) -> dict:
    eng = JaxEngine(model, max_batch=rows, max_seq_len=length + 16, stop_at_eos=False, min_reuse_tokens=1 << 30,
                    max_prefill_tokens=max(length * rows, 8192), **opts)
    sp = SamplingParams(temperature=0.0, max_new_tokens=1)
    seeds = iter(range(100))
    run = lambda: eng.generate([Request(prompt_ids=p, sampling=sp)  # noqa: E731
                                for p in _prompts(rows, length, model.config.vocab_size, next(seeds))])
    t_first = time.perf_counter()
    run()
    t_first = time.perf_counter() - t_first
    dt = _timed(run, 3)
    eng.close()
    return {"first_call_s": t_first, "length": length, "rows": rows, "seconds": dt, "tokens_per_s": rows * length / dt}


def bench_prefix_reuse(model, head: int, suffix: int, rows: int, opts: dict) -> dict:
    vocab = model.config.vocab_size
    head_ids = _prompts(1, head, vocab, 7)[0]
    sp = SamplingParams(temperature=0.0, max_new_tokens=1)
    times = {}
    for name, min_reuse in (("no_reuse", 1 << 30), ("reuse", 16)):
        eng = JaxEngine(model, max_batch=rows + 1, max_seq_len=head + suffix + 16, stop_at_eos=False,
                        min_reuse_tokens=min_reuse, **opts)
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


def _whole_cache_ops(hlo_text: str, shape: tuple[int, ...]) -> list[str]:
    """The ops of a compiled program whose result is a whole bf16 cache buffer (parameters excluded), one line each:
    in place, that is the one write per k/v; a `copy` means XLA duplicated the cache."""
    result = "= bf16[" + ",".join(map(str, shape)) + "]"
    return [re.sub(r"\s+", " ", line.strip())[:200] for line in hlo_text.splitlines()
            if result in line and "parameter(" not in line]


def _count_copies(ops: list[str]) -> int:
    return sum(" copy(" in o or " copy-start(" in o for o in ops)


_HLO_OP = re.compile(r"^\s+(?:ROOT )?\S+ = .*?\s([a-z][a-z0-9\-]*)\(")
_NO_THUNK = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all", "opt-barrier"}


def hlo_thunks(hlo_text: str) -> dict[str, dict[str, int]]:
    """Per computation run from the host (the entry and the bodies of the entry's while loops; deeper nesting is
    not followed), its instructions that become runtime thunks, by kind (fusion kind, custom-call target, copy,
    async start/done...): what a call launches, a loop body once per iteration. Computations are found by their
    unindented `name (...) -> ... {` header lines."""
    comps: dict[str, list[str]] = {}
    entry, lines = None, None
    for line in hlo_text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            head = line.split()
            name = head[1] if head[0] == "ENTRY" else head[0]
            entry = name if head[0] == "ENTRY" else entry
            comps[name] = lines = []
        elif lines is not None and line[:1].isspace():
            lines.append(line)
    if entry is None:
        return {}
    bodies = {m.group(1) for line in comps[entry] for m in [re.search(r"body=(%?[\w.\-]+)", line)] if m}
    out = {}
    for name in [entry] + [b for b in comps if b in bodies]:
        kinds: collections.Counter[str] = collections.Counter()
        for line in comps[name]:
            m = _HLO_OP.match(line)
            if not m or m.group(1) in _NO_THUNK:
                continue
            op = m.group(1)
            if op == "custom-call":
                t = re.search(r'custom_call_target="([^"]+)"', line)
                op = "custom-call:" + (t.group(1) if t else "?")
            elif op == "fusion":
                k = re.search(r"kind=(k\w+)", line)
                op = "fusion:" + (k.group(1) if k else "?")
            kinds[op] += 1
        out[name] = dict(kinds.most_common())
    return out


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
    dev = jax.devices()[0]
    kind = dev.device_kind
    bw, peak = device_peaks(kind)
    small = FLAGS.small
    presets = {"tiny": tiny_config(vocab_size=512, max_position_embeddings=4096)} if small else \
        {p: PRESETS[p] for p in FLAGS.presets}
    batches = [1, 4, 8] if small else [int(b) for b in FLAGS.batches]
    context = 64 if small else FLAGS.context
    k, calls = (4, 2) if small else (FLAGS.decode_steps, FLAGS.decode_calls)
    result = {**bench_common.header("generate"), "small": small,
              "hbm_bytes_per_s_table": bw, "peak_flops_table": peak,
              "copy_bytes_per_s_measured": copy_bandwidth((1 << 24) if small else (1 << 30)), "models": {}}
    if "kernel_shapes" in FLAGS.parts:
        _record_check(result, "all", "kernel_shapes", numerics.check_kernel_shapes)
    for name, cfg in presets.items():
        model = random_model(cfg, dtype=jnp.bfloat16, seed=0)
        r = {"params": cfg.num_params, "decode": []}
        parts = set(FLAGS.parts)
        if "decode" in parts:
            _record_check(r, name, "decode_numerics", lambda: numerics.check_decode_kernel_numerics(model))
            _record_check(r, name, "gemv_numerics", lambda: numerics.check_gemv_numerics(model))
        if "decode" in parts and "cudnn" in FLAGS.decode_variants:
            _record_check(r, name, "decode_numerics_cudnn_vs_xla", lambda: numerics.check_decode_numerics(model))
        for variant in (FLAGS.decode_variants if "decode" in parts else []):
            if variant not in VARIANTS:
                raise app.UsageError(f"--decode_variants: unknown {variant!r}; choose from {sorted(VARIANTS)}")
            for b in batches:
                hlo = (str(Path(FLAGS.hlo_dir) / f"{name}-{variant}-b{b}.hlo.txt")
                       if FLAGS.hlo_dir else None)
                try:
                    r["decode"].append(bench_decode(model, b, context, k, calls, bw, peak, variant, hlo))
                except Exception as e:  # noqa: BLE001 - one failing variant must not lose the others
                    r["decode"].append({"variant": variant, "batch": b, "error": repr(e)[:2000]})
                print(json.dumps({name: r["decode"][-1]}), flush=True)
        if "prefill_memory" in parts:
            small_kw = {"max_batch": 8, "max_seq_len": 256, "shapes": ((4, 16, 128), (2, 64, 256))} if small else {}
            _record_check(r, name, "prefill_memory", lambda: check_prefill_memory(model, **small_kw))
        if "e2e" in parts:
            r["engine_e2e"] = bench_engine_e2e(model, batches[-1], context, 4 * k, k)
        from automem_jax.models import decoder as decoder_lib
        if "prefill" in parts:
            _record_check(r, name, "prefill_numerics", lambda: numerics.check_prefill_numerics(model))
        for pv in FLAGS.prefill_variants:
            if pv not in PREFILL_VARIANTS:
                raise app.UsageError(f"--prefill_variants: unknown {pv!r}; choose from {sorted(PREFILL_VARIANTS)}")
        for impl in FLAGS.prefill_impls:
            for pv in FLAGS.prefill_variants:
                saved, decoder_lib.PREFILL_ATTENTION_IMPL = decoder_lib.PREFILL_ATTENTION_IMPL, impl
                # the first impl and variant keep the plain keys
                sfx = ("" if impl == FLAGS.prefill_impls[0] else f"_{impl}") + \
                    ("" if pv == FLAGS.prefill_variants[0] else f"_{pv}")
                opts = PREFILL_VARIANTS[pv]
                try:
                    if "prefill" in parts:
                        r["prefill" + sfx] = {"impl": impl, "variant": pv, **bench_prefill(
                            model, 128 if small else FLAGS.prefill_len, 2 if small else 8, opts)}
                    for i, rows in enumerate(([4] if small else [int(x) for x in FLAGS.reuse_rows])
                                             if "reuse" in parts else []):
                        r["prefix_reuse" + sfx + ("" if i == 0 else f"_r{rows}")] = {
                            "impl": impl, "variant": pv, **bench_prefix_reuse(
                                model, 64 if small else FLAGS.shared_head, 16 if small else 64, rows, opts)}
                except Exception as e:  # noqa: BLE001 - one failing variant must not lose the others
                    r["prefill" + sfx + "_error"] = {"impl": impl, "variant": pv, "error": repr(e)[:2000]}
                finally:
                    decoder_lib.PREFILL_ATTENTION_IMPL = saved
        print(json.dumps({name: {k2: v for k2, v in r.items() if k2.startswith(("engine_e2e", "prefill", "prefix"))}}),
              flush=True)
        result["models"][name] = r
    bench_common.emit(result, FLAGS.json_out)


if __name__ == "__main__":
    app.run(main)
