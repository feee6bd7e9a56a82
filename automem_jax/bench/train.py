"""LoRA training throughput and MFU (frozen bf16 base, fp32 LoRA master), random weights, synthetic full rows.

  python -m automem_jax.bench.train --models=qwen2p5_0p5b,qwen2p5_1p5b --seq_len=2048 --rank=64 \
      --batch_sizes=8,16 --json_out=bench/results/train-h100.json                       # one GPU
  python -m automem_jax.bench.train --remat_modes=full,dots,dots_attn,none --batch_sizes=4,8,16 ...  # remat
  python -m automem_jax.bench.train --attention_impls=xla,cudnn,pallas ...                # attention kernels
  python -m automem_jax.bench.train --mesh_fsdp=-1 ...                                    # all GPUs, FSDP
  python -m automem_jax.bench.train --small                                               # quick CPU check

Per (model, batch size) row: tokens/s (global and per device), step time, compile seconds, peak memory per
device (`step_memory_gb_per_device`: XLA's memory analysis of the compiled step; `peak_memory_gb_per_device`
is the device's running peak over all rows so far), and two MFUs (train/flops.py): `mfu` counts the work a LoRA
step must do (base forward + activation gradient + LoRA forward/backward + causal attention; the frozen base has
no weight gradient) and `mfu_6n` the conventional 6 * N_matmul + attention of full fine-tuning, for comparison
with published numbers.
A batch size that does not fit is reported as {"error": "OOM ..."} and the sweep goes on.
"""
from __future__ import annotations

import gc
import itertools
import json
import time
import traceback

import numpy as np
from absl import app, flags
from automem_jax.bench import common as bench_common

flags.DEFINE_list("models", ["qwen2p5_0p5b", "qwen2p5_1p5b"], "model presets (random weights)")
flags.DEFINE_integer("seq_len", 2048, "tokens per row")
flags.DEFINE_list("batch_sizes", ["8", "16"], "global rows per micro-step to sweep")
flags.DEFINE_integer("grad_accum", 1, "micro-steps per optimizer step")
flags.DEFINE_integer("rank", 64, "LoRA rank")
flags.DEFINE_float("alpha", 128.0, "LoRA alpha")
flags.DEFINE_list("targets", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                  "LoRA target modules")
flags.DEFINE_list("remat_modes", ["dots_attn"], "per-layer rematerialization modes to sweep (models/attention.py): "
                  "full (recompute each layer), dots (keep projection outputs), dots_attn (also the flash "
                  "attention outputs), none (keep everything)")
flags.DEFINE_list("loss_impls", ["fused"], "cross-entropy implementations to sweep: fused, chunked")
flags.DEFINE_list("attention_impls", ["auto"], "no-cache attention kernels to sweep: auto, xla, cudnn, pallas")
flags.DEFINE_integer("loss_chunk", 512, "tokens per cross-entropy chunk")
flags.DEFINE_integer("segments", 4, "packed segments per row (segment-masked attention, as in training)")
flags.DEFINE_integer("steps", 10, "timed steps")
flags.DEFINE_integer("warmup", 2, "untimed steps after compilation")
flags.DEFINE_integer("mesh_data", 1, "mesh axis 'data' (-1: all remaining devices)")
flags.DEFINE_integer("mesh_fsdp", 1, "mesh axis 'fsdp'")
flags.DEFINE_integer("mesh_tensor", 1, "mesh axis 'tensor'")
flags.DEFINE_bool("all_devices", False, "mesh over every visible device (else the first data*fsdp*tensor)")
flags.DEFINE_bool("small", False, "quick CPU check: tiny model, seq 128, batch 4, 3 steps")
flags.DEFINE_string("json_out", None, "also write the JSON here (atomically)")
FLAGS = flags.FLAGS


def _config(batch: int, remat: str, attention_impl: str, loss_impl: str):
    from automem_jax.train import recipes

    c = recipes.base()
    c.seq_len, c.micro_batch_size, c.grad_accum = FLAGS.seq_len, batch, FLAGS.grad_accum
    c.lora.rank, c.lora.alpha, c.lora.target_modules = FLAGS.rank, float(FLAGS.alpha), tuple(FLAGS.targets)
    c.remat, c.loss_chunk, c.dtype, c.lora_dtype = remat, FLAGS.loss_chunk, "bfloat16", "float32"
    c.attention_impl, c.loss_impl = attention_impl, loss_impl
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = FLAGS.mesh_data, FLAGS.mesh_fsdp, FLAGS.mesh_tensor
    return c


def _mesh():
    import jax
    from automem_jax.models.sharding import make_mesh

    sizes = [FLAGS.mesh_data, FLAGS.mesh_fsdp, FLAGS.mesh_tensor]
    if FLAGS.all_devices or -1 in sizes:
        return make_mesh(*sizes)
    n = int(np.prod(sizes))
    return make_mesh(*sizes, devices=jax.devices()[:n])


def synthetic_rows(rows: int, seq_len: int, vocab: int, segments: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Full rows of `segments` packed examples each, loss on the second half of every segment."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (rows, seq_len), dtype=np.int32)
    seg_len = -(-seq_len // segments)
    idx = np.arange(seq_len)
    seg = (idx // seg_len + 1).astype(np.int32)
    pos = (idx % seg_len).astype(np.int32)
    targets = np.roll(tokens, -1, axis=1)
    mask = ((pos >= seg_len // 2) & (np.roll(seg, -1) == seg)).astype(np.uint8)
    return {"tokens": tokens, "targets": targets, "loss_mask": np.broadcast_to(mask, (rows, seq_len)).copy(),
            "segment_ids": np.broadcast_to(seg, (rows, seq_len)).copy(),
            "positions": np.broadcast_to(pos, (rows, seq_len)).copy()}


def _peak_memory_gb(devices) -> float | None:
    peaks = []
    for d in devices:
        try:
            stats = d.memory_stats() or {}
        except Exception:  # CPU backends may not implement it
            stats = {}
        if "peak_bytes_in_use" in stats:
            peaks.append(stats["peak_bytes_in_use"] / 2 ** 30)
    return max(peaks) if peaks else None


def _step_memory_gb(trainer, batch) -> float | None:
    """Arguments + outputs + temporaries of the compiled step (XLA's memory analysis; per device). Unlike the
    device's peak_bytes_in_use this is per configuration, not the maximum over every row run so far."""
    try:
        fn = trainer._compiled(batch["tokens"].shape)
        m = fn.lower(trainer.lora, trainer.opt_state, trainer.frozen, batch).compile().memory_analysis()
        total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
        return total / 2 ** 30
    except Exception:  # noqa: BLE001 -- not every backend reports it
        return None


def bench_one(model_name: str, batch: int, remat: str, attention_impl: str, loss_impl: str, mesh) -> dict:
    import jax
    import jax.numpy as jnp
    from automem_jax.models import LoRAConfig, load_model, tiny_config
    from automem_jax.models.decoder import Decoder
    from automem_jax.models.lora import apply_lora
    from automem_jax.train import flops as flops_lib
    from automem_jax.train.trainer import LoRATrainer

    cfg = _config(batch, remat, attention_impl, loss_impl)
    lora = LoRAConfig(rank=cfg.lora.rank, alpha=cfg.lora.alpha, target_modules=tuple(cfg.lora.target_modules))
    if model_name == "tiny":
        from flax import nnx
        model = apply_lora(Decoder(tiny_config(), dtype=jnp.bfloat16, rngs=nnx.Rngs(0)), lora, nnx.Rngs(1))
    else:
        model = load_model(model_name, dtype=jnp.bfloat16, mesh=mesh, lora=lora, seed=0)
    mcfg = model.config
    total_steps = FLAGS.warmup + FLAGS.steps + 1
    trainer = LoRATrainer(model, cfg, mesh, total_steps)
    rows = synthetic_rows(batch * cfg.grad_accum, cfg.seq_len, mcfg.vocab_size, FLAGS.segments)
    step_batch = trainer.put_batch(rows, cfg.grad_accum)
    t0 = time.perf_counter()
    m = jax.block_until_ready(trainer.step(step_batch))
    compile_s = time.perf_counter() - t0
    step_memory_gb = _step_memory_gb(trainer, step_batch)
    for _ in range(FLAGS.warmup):
        m = trainer.step(step_batch)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(FLAGS.steps):
        m = trainer.step(step_batch)
    m = jax.device_get(m)
    step_s = (time.perf_counter() - t0) / FLAGS.steps
    tokens = batch * cfg.grad_accum * cfg.seq_len
    tps = tokens / step_s
    f = flops_lib.train_flops_per_token(mcfg, cfg.seq_len, cfg.lora.rank, tuple(cfg.lora.target_modules))
    peak = flops_lib.peak_flops(mesh.devices.flat[0])
    per_dev = tps / mesh.size
    row = {"model": model_name, "batch_size": batch, "grad_accum": cfg.grad_accum, "seq_len": cfg.seq_len,
           "segments_per_row": FLAGS.segments, "lora_rank": cfg.lora.rank,
           "lora_targets": list(cfg.lora.target_modules), "remat": cfg.remat, "attention_impl": model.attention_impl,
           "loss_impl": loss_impl, "mesh": dict(mesh.shape),
           "base_params": flops_lib.total_params(mcfg),
           "lora_params": int(f["lora_params"]), "tokens_per_step": tokens, "step_s": step_s,
           "tokens_per_s": tps, "tokens_per_s_per_device": per_dev, "compile_s": compile_s,
           "flops_per_token": f["lora_train"], "flops_per_token_6n": f["full_6n"],
           "tflops_per_s_per_device": f["lora_train"] * per_dev / 1e12,
           "mfu": flops_lib.mfu(f["lora_train"], per_dev, peak), "mfu_6n": flops_lib.mfu(f["full_6n"], per_dev, peak),
           "peak_flops_per_device": peak, "peak_memory_gb_per_device": _peak_memory_gb(mesh.devices.flat),
           "step_memory_gb_per_device": step_memory_gb,
           "final_loss": float(m["loss"])}
    del trainer, model, step_batch
    gc.collect()
    return row


def main(argv):
    del argv
    if FLAGS.small:
        FLAGS.models, FLAGS.seq_len, FLAGS.batch_sizes = ["tiny"], 128, ["4"]
        FLAGS.steps, FLAGS.warmup, FLAGS.rank, FLAGS.loss_chunk, FLAGS.segments = 3, 1, 8, 64, 2
        FLAGS.alpha = 16.0
    mesh = _mesh()
    from automem_jax.models.attention import IMPLS, REMAT_MODES

    bad = set(FLAGS.remat_modes) - set(REMAT_MODES)
    if bad:
        raise app.UsageError(f"--remat_modes: unknown {sorted(bad)}; use some of {list(REMAT_MODES)}")
    bad = set(FLAGS.attention_impls) - set(IMPLS)
    if bad:
        raise app.UsageError(f"--attention_impls: unknown {sorted(bad)}; use some of {list(IMPLS)}")
    rows = []
    for name, impl, loss, mode, b in itertools.product(FLAGS.models, FLAGS.attention_impls, FLAGS.loss_impls,
                                                       FLAGS.remat_modes, map(int, FLAGS.batch_sizes)):
        try:
            rows.append(bench_one(name, b, mode, impl, loss, mesh))
        except Exception as e:  # noqa: BLE001 -- an OOM at one size must not lose the others
            traceback.print_exc()
            msg = str(e)
            kind = "OOM" if "RESOURCE_EXHAUSTED" in msg or "out of memory" in msg.lower() else type(e).__name__
            rows.append({"model": name, "batch_size": b, "remat": mode, "attention_impl": impl, "loss_impl": loss,
                         "error": f"{kind}: {msg[:300]}"})
            gc.collect()
        print(json.dumps(rows[-1]), flush=True)
    ok = [r for r in rows if "error" not in r]
    best = {}
    for r in ok:
        if r["model"] not in best or r["tokens_per_s"] > best[r["model"]]["tokens_per_s"]:
            best[r["model"]] = r
    out = {**bench_common.header("train"), "num_devices": mesh.size,
           "figures": {"rows": rows, "best": {k: {f: v[f] for f in (
               "batch_size", "remat", "attention_impl", "loss_impl", "tokens_per_s", "mfu", "mfu_6n",
               "step_memory_gb_per_device")}
               for k, v in best.items()}}}
    bench_common.emit(out, FLAGS.json_out)


if __name__ == "__main__":
    app.run(main)
