"""ModelRunner: the device side of the JAX engine. It holds the parameters, the KV cache and the per-slot decode
state, and runs the engine's compiled programs (prefill, packed prefill, head copy, fused decode) over a mesh of this
host's devices. The scheduler (engine/scheduler.py) decides what to run; this module knows nothing of requests.

Mesh (EngineConfig.mesh, axes `data` x `tensor`): tensor parallelism shards the weights and the KV heads of each
replica (GSPMD; the Pallas kernels run per shard of the heads, kernels/shard.py). Data parallelism gives each of the
`data` replicas max_batch / data slots: every program runs inside a shard_map over `data`, each replica on its own
cache rows and decode state. The row arrays of a prefill or copy call are therefore `replicas` equal blocks, block r
holding replica r's rows (global slot ids; -1 = a null row, which writes nothing). One device: no mesh at all.
"""
from __future__ import annotations

import collections
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from automem_jax.engine import programs, steps
from automem_jax.engine.config import EngineConfig
from automem_jax.kernels import probe
from automem_jax.kernels.config import KERNEL
from automem_jax.kernels.shard import TENSOR
from automem_jax.models.kv_cache import KVCache
from automem_jax.models.sharding import param_shardings

NUM_STOP_IDS = 8  # stop ids per row held on the device (the request's own plus EOS)
DATA = "data"  # the mesh axis of replicas; the heads axis is kernels.shard.TENSOR (one name for kernels and mesh)
_ROWS = P(DATA)
_CACHE = KVCache(P(None, DATA), P(None, DATA))


def make_mesh(config: EngineConfig, devices: list | None = None) -> Mesh | None:
    """The engine's (data, tensor) mesh over this host's local devices; None for one device."""
    devices = list(jax.local_devices() if devices is None else devices)
    data, tensor = config.mesh.sizes(len(devices))
    if config.max_batch % data:
        raise ValueError(f"engine.mesh.data={data} must divide engine.max_batch={config.max_batch} (each replica "
                         "holds max_batch / data slots)")
    if data * tensor == 1:
        return None
    return Mesh(np.asarray(devices[:data * tensor]).reshape(data, tensor), (DATA, TENSOR))


class ModelRunner:
    def __init__(self, model: Any, config: EngineConfig, mesh: Mesh | None = None):
        self.config, self.model, self.model_config = config, model, model.config
        self.mesh = mesh
        self.replicas = 1 if mesh is None else mesh.shape[DATA]
        tensor = 1 if mesh is None else mesh.shape[TENSOR]
        self.slots_per_replica = config.max_batch // self.replicas
        c = model.config
        cache_dtype = jnp.dtype(config.cache_dtype_name)
        self.kernels = probe.resolve(config.kernels, probe.ModelShape(
            model.dtype, cache_dtype, c.head_dim, c.num_heads // c.num_kv_heads, c.num_kv_heads, tensor))
        in_place = self.kernels.prefill_attention == KERNEL
        self.packed_prefill = in_place if config.packed_prefill == "auto" else config.packed_prefill == "on"
        if self.packed_prefill and not in_place:
            raise ValueError("engine.packed_prefill='on' needs the in-place prefill kernel, which does not run here "
                             "(kernels.prefill_attention resolved to 'xla'); set it to 'auto' or 'off'")
        self.unstacked = (programs.default_unstack(model, tensor) if config.unstack_layers == "auto"
                          else config.unstack_layers == "on")
        # decode steps only the live slots (rows bucketed to powers of two) where compute is the bound: on a CPU a
        # step's work is then the live rows', not max_batch's; on a GPU done rows cost the kernels almost nothing
        self.live_rows = (jax.default_backend() == "cpu" if config.decode_rows == "auto"
                          else config.decode_rows == "live")
        self._cache_dtype = cache_dtype
        self.cache, self.state = self._fresh_cache_and_state()
        self._graphdef, self._params, self._layer_params = None, None, None
        self.refresh_params()
        self.compile_counts: collections.Counter[str] = collections.Counter()
        # the grammar tables (constrained decoding, engine/grammar) are replicated: the last P() of each program
        self._prefill = self._jit("prefill", steps.prefill, (P(), _CACHE, _ROWS) + (_ROWS,) * 5 + (P(),),
                                  ("window", "kernels", "sampling_mode"))
        self._prefill_packed = self._jit("prefill", steps.prefill_packed,
                                         (P(), _CACHE, _ROWS) + (_ROWS,) * 5 + (P(),), ("kernels", "sampling_mode"))
        self._copy = self._jit("copy", steps.copy_rows, (_CACHE, _ROWS, _ROWS), ("window",), graph=False)
        self._decode = self._jit("decode", steps.decode, (P(), _CACHE, _ROWS, _ROWS, _ROWS, P(), P()),
                                 ("num_steps", "window", "kernels", "sampling_mode"),
                                 compiler_options=programs.decode_options(self.unstacked))

    # ------------------------------------------------------------------------------------------- public API
    def refresh_params(self) -> None:
        """Take the model's current parameters (after a LoRA load changed them), placed on the mesh."""
        self._layer_params = None  # drop the old per-layer copy before making the new one
        graphdef, params = nnx.split(self.model)
        if self.mesh is not None:
            params = jax.device_put(params, param_shardings(params, self.mesh))
            nnx.update(self.model, params)
        self._graphdef, self._params = graphdef, params
        if self.unstacked and hasattr(self.model, "layers"):
            from automem_jax.models.decoder import unstack_layers
            self._layer_params = unstack_layers(self.model)

    @property
    def params(self) -> nnx.State:
        return self._params

    @property
    def graphdef(self) -> nnx.GraphDef:
        return self._graphdef

    def prefill(self, dst: np.ndarray, tokens: np.ndarray, start: np.ndarray, length: np.ndarray,
                rows: steps.NewRows, *, window: int, sampling_mode: str, grammar: Any = None) -> jax.Array:
        """steps.prefill of rows laid out per replica (module docstring); -> each row's first token [n]. grammar:
        the grammar tables when a row is constrained (engine/grammar), else None."""
        n = len(dst)
        args = self._rows((self._local(dst), tokens, start, length, rows), n)
        with self._mesh_context():
            self.cache, self.state, first = self._prefill(
                self._graphdef, self._params, self.cache, self.state, *args, grammar, window=window,
                kernels=self.kernels, sampling_mode=sampling_mode)
        return first

    def prefill_packed(self, dst: np.ndarray, start: np.ndarray, length: np.ndarray, blocks: Any,
                       rows: steps.NewRows, *, sampling_mode: str, grammar: Any = None) -> jax.Array:
        """steps.prefill_packed; dst/start/length/rows per request and `blocks` per packed row, both laid out per
        replica (each block's requests padded to its row count). -> each request's first token."""
        blocks = type(blocks)(**{**vars(blocks), "rows": self._local(blocks.rows)})
        args = self._rows((self._local(dst), start, length, blocks, rows), len(dst))
        with self._mesh_context():
            self.cache, self.state, first = self._prefill_packed(
                self._graphdef, self._params, self.cache, self.state, *args, grammar, kernels=self.kernels,
                sampling_mode=sampling_mode)
        return first

    def copy_rows(self, src: np.ndarray, dst: np.ndarray, *, window: int) -> None:
        """The first `window` entries of slot src[i] into slot dst[i] (pairs laid out per replica, each pair inside
        one replica; null pairs -1)."""
        args = self._rows((self._local(src), self._local(dst)), len(src))
        with self._mesh_context():
            self.cache = self._copy(self.cache, *args, window=window)

    def decode(self, force_done: np.ndarray, *, num_steps: int, window: int, sampling_mode: str,
               rows: np.ndarray | None = None, grammar: Any = None) -> jax.Array:
        """One fused call of `num_steps` decode steps over the slots `rows` (laid out per replica, each slot once;
        None: every slot); tokens [rows, num_steps] (-1: done). force_done [rows]: rows to finish first."""
        args = self._rows((None if rows is None else self._local(rows), force_done), len(force_done))
        with self._mesh_context():
            self.cache, self.state, out = self._decode(
                self._graphdef, self._params, self.cache, self.state, *args, self._layer_params, grammar,
                num_steps=num_steps, window=window, kernels=self.kernels, sampling_mode=sampling_mode)
        return out

    def lower_decode(self, *, num_steps: int, window: int, sampling_mode: str) -> jax.stages.Lowered:
        """The decode program over every slot as `decode` runs it, lowered (its HLO, memory analysis, ...)."""
        force = self._rows(np.zeros((self.config.max_batch,), bool), self.config.max_batch)
        with self._mesh_context():
            return self._decode.lower(self._graphdef, self._params, self.cache, self.state, None, force,
                                      self._layer_params, None, num_steps=num_steps, window=window,
                                      kernels=self.kernels, sampling_mode=sampling_mode)

    def lower_prefill(self, cache: Any, state: Any, dst: Any, tokens: Any, start: Any, length: Any, rows: Any, *,
                      window: int, sampling_mode: str) -> jax.stages.Lowered:
        """The prefill program for any (e.g. abstract, larger) cache and state: what it would compile to."""
        with self._mesh_context():
            return self._prefill.lower(self._graphdef, self._params, cache, state, dst, tokens, start, length,
                                       rows, None, window=window, kernels=self.kernels,
                                       sampling_mode=sampling_mode)

    def lower_copy(self, cache: Any, src: Any, dst: Any, *, window: int) -> jax.stages.Lowered:
        with self._mesh_context():
            return self._copy.lower(cache, src, dst, window=window)

    def rebuild_if_consumed(self) -> bool:
        """After a program failed: a fresh (empty) cache and decode state if it consumed them (a program that fails
        while running has deleted its donated inputs); whether it did."""
        if not any(x.is_deleted() for x in jax.tree.leaves((self.cache, self.state)) if isinstance(x, jax.Array)):
            return False
        self.cache = self.state = None  # the old ones' memory first
        self.cache, self.state = self._fresh_cache_and_state()
        return True

    def close(self) -> None:
        self.cache = self.state = None

    def ensure_cache(self) -> None:
        """A fresh (empty) cache and decode state if release_memory dropped them."""
        if self.cache is None:
            self.cache, self.state = self._fresh_cache_and_state()

    # -------------------------------------------------------------------------------------------- internals
    def _fresh_cache_and_state(self) -> tuple[KVCache, steps.DecodeState]:
        cache = KVCache.init(self.model_config, self.config.max_batch, self.config.max_seq_len, self._cache_dtype,
                             mesh=self.mesh)
        return cache, self._rows(steps.DecodeState.init(self.config.max_batch, NUM_STOP_IDS))

    def _jit(self, name: str, fn, specs: tuple, static: tuple[str, ...], graph: bool = True,
             compiler_options: dict | None = None):
        """fn jitted (cache and state donated), per replica inside a shard_map over `data` when there are
        replicas; `graph`: fn's first argument is the (static) model graphdef."""
        out_specs = (_CACHE, _ROWS, _ROWS) if graph else _CACHE

        @functools.wraps(fn)  # fn's signature: the argument names below resolve against it
        def counted(*args, **kw):
            self.compile_counts[name] += 1  # runs at trace time only: counts compiled programs
            if self.replicas == 1:
                return fn(*args, **kw)
            head, arrays = (args[:1], args[1:]) if graph else ((), args)
            local = functools.partial(fn, *head, **kw)
            return jax.shard_map(local, mesh=self.mesh, in_specs=specs, out_specs=out_specs, axis_names={DATA},
                                 check_vma=False)(*arrays)

        donate = ("cache", "state") if graph else ("cache",)
        return jax.jit(counted, static_argnums=(0,) if graph else (), static_argnames=static,
                       donate_argnames=donate, compiler_options=compiler_options)

    def _local(self, slots: np.ndarray) -> np.ndarray:
        """Global slot ids of rows laid out per replica -> each replica's own slot ids; a null row (-1) -> one past
        the replica's slots (its writes are dropped)."""
        slots = np.asarray(slots, np.int32)
        if self.replicas == 1:
            return slots
        spr = self.slots_per_replica
        base = np.repeat(np.arange(self.replicas, dtype=np.int32) * spr, len(slots) // self.replicas)
        return np.where(slots < 0, spr, slots - base).astype(np.int32)

    def _rows(self, tree: Any, n: int | None = None) -> Any:
        """Host arrays whose leading axis is rows, placed split over the replicas (as is; one device)."""
        if self.mesh is None:
            return tree
        if n is not None and n % self.replicas:
            raise ValueError(f"engine: {n} rows do not split over {self.replicas} replicas")
        return jax.device_put(tree, NamedSharding(self.mesh, _ROWS))

    def _mesh_context(self):
        """Programs are traced under the mesh, so the kernels can find its `tensor` axis."""
        import contextlib
        return contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh)


def load(path: str, config: EngineConfig, mesh: Mesh | None) -> tuple[Any, Any]:
    """(model, tokenizer or None) from an HF directory or a preset name, with config.max_loras LoRA slots."""
    from pathlib import Path

    from absl import logging

    from automem_jax.models import loader
    lora = None
    if config.max_loras > 0:
        from automem_jax.models.lora import LoRAConfig
        lora = LoRAConfig(rank=config.max_lora_rank, alpha=config.alpha, num_slots=config.max_loras,
                          target_modules=tuple(config.lora_target_modules))
    # onto the mesh directly: a model larger than one device is only ever held sharded
    model = loader.load_model(path, dtype=jnp.dtype(config.dtype), lora=lora, seed=config.seed, mesh=mesh)
    tokenizer = None
    if Path(path).is_dir():
        from automem_jax.models.tokenizer import load_tokenizer
        tokenizer = load_tokenizer(path)
    else:
        logging.info("engine: %s is a preset (random weights, no tokenizer); send prompt_ids", path)
    return model, tokenizer
