"""Sharded LoRA trainer: only LoRA params (fp32 master) and their optimizer state train; the bf16 base is frozen.

`LoRATrainer` splits an NNX model into (graphdef, LoRA state, frozen state) and jit-compiles one pure step
`train_step(lora, opt_state, frozen, batch) -> (lora, opt_state, metrics)` with NamedSharding in/out shardings
(params by the one logical-axis rules table, batch over ('data', 'fsdp')) and donated LoRA/optimizer buffers.
Gradient accumulation is a `lax.scan` over micro-batches inside the step (one optimizer update per step, the
loss is the token-weighted mean over all micro-batches, so it does not depend on how a batch is split).
`train_lora` is the resumable driver: data stream + orbax checkpoints + PEFT export.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from automem_jax.models import attention as attn_lib
from automem_jax.models import sharding as shd
from automem_jax.train import flops as flops_lib
from automem_jax.train.loss import chunked_cross_entropy, fused_cross_entropy

DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32, "float16": jnp.float16}
BATCH_FIELDS = ("tokens", "targets", "loss_mask", "segment_ids", "positions")


def dtype_of(name: str):
    if name not in DTYPES:
        raise ValueError(f"train: dtype {name!r} is not one of {sorted(DTYPES)}")
    return DTYPES[name]


def make_optimizer(optim: Any, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """clip_by_global_norm -> AdamW with linear warmup + cosine (or constant) decay."""
    warmup = int(round(optim.warmup_ratio * total_steps))
    if optim.schedule == "cosine" and warmup == 0:
        schedule = optax.cosine_decay_schedule(optim.learning_rate, max(total_steps, 1), alpha=optim.min_lr_ratio)
    elif optim.schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, optim.learning_rate, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
            end_value=optim.learning_rate * optim.min_lr_ratio)
    elif optim.schedule == "constant":
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, optim.learning_rate, max(warmup, 1)), optax.constant_schedule(
                optim.learning_rate)], [max(warmup, 1)])
    else:
        raise ValueError(f"train.optim.schedule must be 'cosine' or 'constant', got {optim.schedule!r}")
    tx = optax.chain(
        optax.clip_by_global_norm(optim.clip_norm) if optim.clip_norm else optax.identity(),
        optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay),
    )
    return tx, schedule


def _global_norm(tree) -> jax.Array:
    """L2 norm over all leaves (spelled out: optax renamed global_norm -> tree.norm across versions)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def _frozen_head(model) -> tuple[jax.Array, bool] | None:
    """(LM head weight, vocab_major) of a Decoder (tied: embed [V, D]; else unembed [D, V]); None if unknown."""
    unembed, embed = getattr(model, "unembed", None), getattr(model, "embed", None)
    if unembed is not None:
        return unembed[...], False
    return None if embed is None else (embed[...], True)


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def state_shardings(state: nnx.State, mesh: Mesh) -> nnx.State:
    """NamedSharding per variable from its `logical_axes` metadata (the one rules table); replicated if none."""
    def one(v):
        axes = v.get_metadata().get("logical_axes")
        shape = np.shape(v[...])
        spec = shd.logical_to_spec(tuple(axes), shape, mesh) if axes is not None else P()
        return v.replace(NamedSharding(mesh, spec))
    return jax.tree.map(one, state, is_leaf=_is_var)


def batch_sharding(mesh: Mesh, shape: tuple[int, ...]) -> NamedSharding:
    """[accum, micro, T]: micro-batch rows over ('data', 'fsdp')."""
    return shd.named_sharding((None, "batch", "seq"), shape, mesh)


class LoRATrainer:
    """Holds the split model, the optimizer and the compiled step. See module docstring."""

    def __init__(self, model: nnx.Module, cfg: Any, mesh: Mesh, total_steps: int):
        self.cfg, self.mesh, self.total_steps = cfg, mesh, total_steps
        if hasattr(model, "remat"):  # per-layer jax.checkpoint mode inside the decoder's layer scan
            model.remat = attn_lib.remat_mode(cfg.remat)
        if hasattr(model, "attention_impl"):  # fused flash attention for packed training rows
            model.attention_impl = attn_lib.resolve_impl(cfg.get("attention_impl", "auto"), dtype_of(cfg.dtype))
        self.model = model
        self.graphdef, lora, frozen = nnx.split(model, nnx.LoRAParam, ...)
        if not jax.tree.leaves(lora):
            raise ValueError("train: the model has no nnx.LoRAParam; load it with lora=LoRAConfig(...)")
        self.compute_dtype = dtype_of(cfg.dtype)
        self.lora_model_dtypes = jax.tree.map(lambda x: x.dtype, lora)
        master = dtype_of(cfg.lora_dtype)
        self.lora_shardings = state_shardings(lora, mesh)
        self.frozen_shardings = state_shardings(frozen, mesh)
        self.lora = jax.device_put(jax.tree.map(lambda x: jnp.asarray(x, master), lora), self.lora_shardings)
        self.frozen = jax.device_put(frozen, self.frozen_shardings)
        self.tx, self.schedule = make_optimizer(cfg.optim, total_steps)
        replicated = NamedSharding(mesh, P())
        opt_shapes = jax.eval_shape(self.tx.init, self.lora)
        self.opt_shardings = optax.tree_map_params(
            self.tx, lambda _, s: s, opt_shapes, self.lora_shardings,
            transform_non_params=lambda _: replicated, is_leaf=lambda x: isinstance(x, NamedSharding))
        self.opt_state = jax.jit(self.tx.init, out_shardings=self.opt_shardings)(self.lora)
        self._step_fn = None
        self._step_shape = None

    # ----------------------------------------------------------------------------------------------- the step
    def loss_sums(self, lora: nnx.State, frozen: nnx.State, batch: dict[str, jax.Array]):
        """(masked loss sum, masked token count) of one micro-batch [B, T]."""
        lora_c = jax.tree.map(lambda x: x.astype(self.compute_dtype), lora)
        model = nnx.merge(self.graphdef, lora_c, frozen)
        h = model.hidden(batch["tokens"], batch["positions"], segment_ids=batch["segment_ids"])
        head = _frozen_head(model)
        if self.cfg.get("loss_impl", "fused") == "fused" and head is not None:
            return fused_cross_entropy(h, head[0], batch["targets"], batch["loss_mask"], self.cfg.loss_chunk,
                                       vocab_major=head[1])
        return chunked_cross_entropy(h, model.lm_head, batch["targets"], batch["loss_mask"], self.cfg.loss_chunk)

    def train_step(self, lora, opt_state, frozen, batch):
        grad_fn = jax.value_and_grad(self.loss_sums, has_aux=True)

        def micro(carry, mb):
            g_acc, l_acc, n_acc = carry
            (l, n), g = grad_fn(lora, frozen, mb)
            return (jax.tree.map(jnp.add, g_acc, g), l_acc + l, n_acc + n), None

        zeros = jax.tree.map(jnp.zeros_like, lora)
        (g, loss_sum, n), _ = jax.lax.scan(micro, (zeros, jnp.zeros(()), jnp.zeros(())), batch)
        denom = jnp.maximum(n, 1.0)
        g = jax.tree.map(lambda x: x / denom, g)
        updates, opt_state = self.tx.update(g, opt_state, lora)
        lora = optax.apply_updates(lora, updates)
        metrics = {"loss": loss_sum / denom, "grad_norm": _global_norm(g), "loss_tokens": n}
        return lora, opt_state, metrics

    def _compiled(self, shape: tuple[int, ...]):
        if self._step_fn is None or self._step_shape != shape:
            bsh = {k: batch_sharding(self.mesh, shape) for k in BATCH_FIELDS}
            replicated = NamedSharding(self.mesh, P())
            self._step_fn = jax.jit(
                self.train_step,
                in_shardings=(self.lora_shardings, self.opt_shardings, self.frozen_shardings, bsh),
                out_shardings=(self.lora_shardings, self.opt_shardings, replicated),
                donate_argnums=(0, 1))
            self._step_shape = shape
        return self._step_fn

    def put_batch(self, host_batch: dict[str, np.ndarray], accum: int) -> dict[str, jax.Array]:
        """Host rows [accum * micro_local, T] -> global arrays [accum, micro, T] on the mesh."""
        out = {}
        for k in BATCH_FIELDS:
            x = np.asarray(host_batch[k])
            x = x.reshape(accum, x.shape[0] // accum, x.shape[1])
            global_shape = (accum, x.shape[1] * jax.process_count(), x.shape[2])
            out[k] = jax.make_array_from_process_local_data(batch_sharding(self.mesh, global_shape), x, global_shape)
        return out

    def step(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        fn = self._compiled(batch["tokens"].shape)
        self.lora, self.opt_state, metrics = fn(self.lora, self.opt_state, self.frozen, batch)
        return metrics

    def eval_loss(self, batch: dict[str, jax.Array]) -> float:
        """Token-weighted mean loss of a [accum, micro, T] batch with the current params (no update)."""
        f = jax.jit(lambda lora, frozen, b: jax.lax.scan(
            lambda c, mb: (tuple(a + x for a, x in zip(c, self.loss_sums(lora, frozen, mb))), None),
            (jnp.zeros(()), jnp.zeros(())), b)[0])
        s, n = f(self.lora, self.frozen, batch)
        return float(s / max(float(n), 1.0))

    # ------------------------------------------------------------------------------------------------ state io
    def train_state(self, rng: jax.Array) -> dict[str, Any]:
        return {"lora": self.lora, "opt": self.opt_state, "rng": jax.random.key_data(rng)}

    def train_state_shardings(self) -> dict[str, Any]:
        replicated = NamedSharding(self.mesh, P())
        return {"lora": self.lora_shardings, "opt": self.opt_shardings, "rng": replicated}

    def load_train_state(self, state: dict[str, Any]) -> jax.Array:
        self.lora, self.opt_state = state["lora"], state["opt"]
        return jax.random.wrap_key_data(state["rng"])

    def updated_model(self) -> nnx.Module:
        """The model with the trained LoRA values (cast back to the model's own LoRA dtype)."""
        lora = jax.tree.map(lambda x, d: x.astype(d), self.lora, self.lora_model_dtypes)
        nnx.update(self.model, lora)
        return self.model


# --------------------------------------------------------------------------------------------------- driver
@dataclasses.dataclass
class TrainResult:
    adapter_dir: str | None
    final_loss: float
    steps: int
    losses: dict[int, float]  # step (1-based) -> loss, this session's steps
    tokens_per_s: float
    mfu: float | None
    workdir: str
    resumed_from: int | None = None


def _model_flops(model: nnx.Module, cfg: Any) -> float | None:
    mcfg = getattr(model, "config", None)
    if mcfg is None or not hasattr(mcfg, "head_dim"):
        return None
    return flops_lib.train_flops_per_token(mcfg, cfg.seq_len, cfg.lora.rank, tuple(cfg.lora.target_modules))[
        "lora_train"]


def _drop_metrics_after(path: Path, step: int) -> None:
    if not path.exists() or jax.process_index() != 0:
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):  # a torn line from the kill
            continue
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(l + "\n" for l in keep))
    tmp.replace(path)


def _append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def train_lora(cfg: Any, model_dir: str | Callable[[Mesh], nnx.Module], dataset_dir: str | Path,
               workdir: str | Path, *, stop_after_steps: int | None = None, engine: Any = None,
               adapter_name: str | None = None, mesh: Mesh | None = None) -> TrainResult:
    """Train a LoRA adapter on a built dataset; resumes from the latest checkpoint in `workdir/checkpoints`.

    `model_dir`: HF directory or preset name (loaded with `load_model(..., mesh, lora)`), or a factory
    `mesh -> model with LoRA` (tests). `stop_after_steps` ends this session early (as a kill would) without
    exporting. At the end the adapter is exported to `workdir/adapter` (PEFT) and, if `engine` is given,
    loaded into it as `adapter_name`. `mesh` overrides `cfg.mesh` (e.g. a mesh over a subset of devices).
    """
    from automem_jax.train.checkpoint import TrainCheckpointer
    from automem_jax.train.data import BatchStream, PackedDataset

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = mesh or shd.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    dataset = PackedDataset(dataset_dir)
    if dataset.seq_len != cfg.seq_len:
        raise ValueError(f"train.seq_len={cfg.seq_len} but the dataset at {dataset_dir} was packed to "
                         f"{dataset.seq_len}; rebuild it or set train.seq_len={dataset.seq_len}")
    global_batch = cfg.micro_batch_size * cfg.grad_accum
    total_steps = cfg.max_steps if cfg.max_steps > 0 else max(
        1, math.ceil(cfg.num_epochs * len(dataset) / global_batch))

    if callable(model_dir):
        model = model_dir(mesh)
    else:
        from automem_jax.models.loader import load_model
        from automem_jax.models.lora import LoRAConfig
        model = load_model(model_dir, dtype=dtype_of(cfg.dtype), mesh=mesh, seed=cfg.seed,
                           lora=LoRAConfig(rank=cfg.lora.rank, alpha=cfg.lora.alpha,
                                           target_modules=tuple(cfg.lora.target_modules)))
    trainer = LoRATrainer(model, cfg, mesh, total_steps)
    ckpt = TrainCheckpointer(workdir / "checkpoints", save_every=cfg.checkpoint_every,
                             max_to_keep=cfg.max_to_keep)
    rng = jax.random.key(cfg.seed)
    start, position, resumed = 0, 0, None
    latest = ckpt.latest_step()
    if latest is not None:
        state, meta = ckpt.restore(latest, trainer.train_state(rng), trainer.train_state_shardings())
        rng = trainer.load_train_state(state)
        start, position, resumed = int(meta["step"]), int(meta["data_position"]), latest
        _drop_metrics_after(workdir / "metrics.jsonl", start)  # steps logged after the checkpoint get redone
        if meta.get("total_steps") != total_steps:
            raise ValueError(f"train: checkpoint in {workdir} was made for {meta.get('total_steps')} total steps, "
                             f"this config gives {total_steps}; use a fresh workdir")
    stream = BatchStream(dataset, global_batch, cfg.seed, position, shard_index=jax.process_index(),
                         num_shards=jax.process_count())
    flops_per_token = _model_flops(model, cfg)
    peak = flops_lib.peak_flops()
    losses: dict[int, float] = {}
    tokens_per_s, t_total, tok_total = 0.0, 0.0, 0
    metrics_path = workdir / "metrics.jsonl"
    step = start
    for step in range(start + 1, total_steps + 1):
        if stop_after_steps is not None and step - start > stop_after_steps:
            step -= 1
            break
        host = stream.next()
        batch = trainer.put_batch(host, cfg.grad_accum)
        t0 = time.perf_counter()
        m = jax.device_get(trainer.step(batch))
        dt = time.perf_counter() - t0
        tokens = int((host["segment_ids"] > 0).sum()) * jax.process_count()
        if step > start + 1:  # the first step includes compilation
            t_total, tok_total = t_total + dt, tok_total + tokens
        tokens_per_s = tokens / dt
        losses[step] = float(m["loss"])
        row = {"step": step, "loss": losses[step], "grad_norm": float(m["grad_norm"]),
               "lr": float(trainer.schedule(step - 1)), "loss_tokens": int(m["loss_tokens"]), "tokens": tokens,
               "tokens_per_s": tokens_per_s, "epoch": stream.epoch(),
               "mfu": flops_lib.mfu(flops_per_token, tokens_per_s / jax.device_count(), peak)
               if flops_per_token else None}
        if jax.process_index() == 0 and (step % cfg.log_every == 0 or step == total_steps):
            _append_jsonl(metrics_path, row)
        ckpt.maybe_save(step, trainer.train_state(rng),
                        {"step": step, "data_position": stream.position, "total_steps": total_steps,
                         "loss": losses[step]}, force=step == total_steps)
    ckpt.close()
    mean_tps = tok_total / t_total if t_total else tokens_per_s
    final_loss = losses[max(losses)] if losses else float("nan")
    adapter_dir = None
    if step >= total_steps:  # finished (also when a resumed run had nothing left to do)
        adapter_dir = str(export_adapter(trainer, workdir / "adapter", cfg))
        if engine is not None:
            load_adapter_into_engine(engine, adapter_name or cfg.adapter_name, adapter_dir)
    return TrainResult(adapter_dir=adapter_dir, final_loss=final_loss, steps=step, losses=losses,
                       tokens_per_s=mean_tps,
                       mfu=flops_lib.mfu(flops_per_token, mean_tps / jax.device_count(), peak)
                       if flops_per_token else None, workdir=str(workdir), resumed_from=resumed)


def export_adapter(trainer: LoRATrainer, out_dir: str | Path, cfg: Any) -> Path:
    """PEFT adapter (adapter_config.json + adapter_model.safetensors) of the trained LoRA, written atomically
    by models.lora.export_peft."""
    from automem_jax.models.lora import export_peft

    out_dir = Path(out_dir)
    if jax.process_index() == 0:
        export_peft(trainer.updated_model(), out_dir, slot=0,
                    base_model_name_or_path=cfg.get("base_model_name_or_path", "") or "")
    return out_dir


def load_adapter_into_engine(engine: Any, name: str, adapter_dir: str | Path) -> str:
    """Hot-load a PEFT adapter into an Engine under `name` (use a fresh name per round: SGLang caches names)."""
    if not name:
        raise ValueError("train: adapter name is empty; set train.adapter_name or pass adapter_name")
    engine.load_adapter(name, str(adapter_dir))
    return name
