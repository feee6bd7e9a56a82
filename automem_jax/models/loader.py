"""Load a Decoder from a Hugging Face directory (or a preset with random weights), placing every tensor directly onto
its NamedSharding.

Memory: each HF tensor is read on its own (st_io, one positioned read), converted to our layout in numpy and handed to
`jax.make_array_from_callback`, which copies only each device's shard. Stacked [L, ...] params are preallocated on the
devices and filled layer by layer with a donated in-place update, so neither host nor device ever holds a second copy
of a stacked param. Peak host overhead ~ 2 x the largest single tensor (read + transpose), never a whole file.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P, SingleDeviceSharding

from automem_jax.models import sharding as shd
from automem_jax.models import st_io
from automem_jax.models.config import ConfigError, ModelConfig, PRESETS
from automem_jax.models.decoder import Decoder, LoRAScale
from automem_jax.models.sharding import logical_axes_of, param_shardings
from automem_jax.models.lora import LoRAConfig, apply_lora
from automem_jax.models.tokenizer import load_tokenizer  # noqa: F401 (contract: loader.load_tokenizer)
from automem_jax.models.weights import TensorMap, tensor_maps

INDEX_FILE = "model.safetensors.index.json"


class LoadError(ValueError):
    """A model directory that cannot be loaded (names the file/field and the fix)."""


def read_config(model_dir: str | os.PathLike) -> ModelConfig:
    model_dir = Path(model_dir)
    path = model_dir / "config.json"
    if not path.is_file():
        raise LoadError(f"{model_dir}: config.json not found (a Hugging Face model dir needs config.json and "
                        f"*.safetensors); presets: {sorted(PRESETS)}")
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise LoadError(f"{path}: invalid JSON ({e})") from None
    return ModelConfig.from_hf(hf)


def weight_files(model_dir: Path) -> dict[str, Path]:
    """HF tensor name -> file, from model.safetensors.index.json or the headers of *.safetensors."""
    index = model_dir / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise LoadError(f"{index}: missing 'weight_map'")
        out = {name: model_dir / fname for name, fname in weight_map.items()}
        for f in sorted(set(out.values())):
            if not f.is_file():
                raise LoadError(f"{index} lists {f.name}, which is missing from {model_dir}")
        return out
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        others = [p.name for p in model_dir.iterdir() if p.suffix in (".bin", ".pt", ".gguf", ".pth")]
        raise LoadError(f"{model_dir}: no *.safetensors weights found" +
                        (f" (found {others}: only safetensors are supported; re-save with "
                         f"save_pretrained(safe_serialization=True))" if others else ""))
    out = {}
    for f in files:
        for name in st_io.read_header(f)[0]:
            out[name] = f
    return out


class _Reader:
    """Caches parsed headers per file; reads one tensor at a time."""

    def __init__(self, files: dict[str, Path]):
        self.files = files
        self._open: dict[Path, st_io.SafetensorsFile] = {}

    def file(self, name: str) -> st_io.SafetensorsFile:
        path = self.files[name]
        if path not in self._open:
            self._open[path] = st_io.SafetensorsFile(path)
        return self._open[path]

    def check(self, name: str, shape: tuple[int, ...]) -> None:
        if name not in self.files:
            raise LoadError(f"weights: tensor {name!r} is missing (looked in {sorted({p.name for p in self.files.values()})})")
        f = self.file(name)
        if name not in f.header:
            raise LoadError(f"{f.path}: tensor {name!r} listed in the index but absent from the file")
        if f.shape(name) != shape:
            raise LoadError(f"{f.path}: tensor {name!r} has shape {f.shape(name)}, config.json implies {shape}")

    def read(self, name: str) -> np.ndarray:
        return self.file(name).read(name)


def _sharding(var: nnx.Variable, shape: tuple[int, ...], mesh: Mesh | None):
    if mesh is None:
        return SingleDeviceSharding(jax.devices()[0])
    return shd.named_sharding(logical_axes_of(var), shape, mesh)


@functools.lru_cache(maxsize=64)
def _zeros_fn(shape: tuple[int, ...], dtype, sharding):
    return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)


def _zeros(shape: tuple[int, ...], dtype, sharding) -> jax.Array:
    """Zeros created directly on their sharding (no host buffer); compiled once per (shape, dtype, sharding)."""
    return _zeros_fn(shape, dtype, sharding)()


@functools.partial(jax.jit, donate_argnums=0)
def _set_layer(full: jax.Array, piece: jax.Array, i: jax.Array) -> jax.Array:
    return jax.lax.dynamic_update_index_in_dim(full, piece.astype(full.dtype), i, 0)


def _place(host: np.ndarray, shape: tuple[int, ...], dtype, sharding) -> jax.Array:
    host = host.astype(dtype, copy=False)
    if host.shape != shape:
        raise LoadError(f"internal: converted tensor shape {host.shape} != param shape {shape}")
    # One device at a time (make_array_from_callback would first gather every device's host slice): the host
    # transient is the tensor plus one shard.
    pieces = [jax.device_put(np.ascontiguousarray(host[idx]), device)
              for device, idx in sharding.addressable_devices_indices_map(shape).items()]
    return jax.make_array_from_single_device_arrays(shape, sharding, pieces)


def _load_param(var: nnx.Variable, tmap: TensorMap, reader: _Reader, num_layers: int, mesh: Mesh | None):
    abstract = var.get_value()
    shape, dtype = tuple(abstract.shape), abstract.dtype
    sharding = _sharding(var, shape, mesh)
    if not tmap.stacked:
        return _place(tmap.to_ours(reader.read(tmap.hf_name)), shape, dtype, sharding)
    if isinstance(sharding, NamedSharding):
        spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
        if spec[0] is not None:
            raise LoadError("sharding RULES map 'layers' to a mesh axis; the loader places stacked params layer by "
                            "layer and needs 'layers' replicated")
        layer_sharding = NamedSharding(sharding.mesh, P(*spec[1:]))
    else:
        layer_sharding = sharding
    full = _zeros(shape, jnp.dtype(dtype), sharding)
    for i, name in enumerate(tmap.names(num_layers)):
        piece = _place(tmap.to_ours(reader.read(name)), shape[1:], dtype, layer_sharding)
        full = _set_layer(full, piece, jnp.int32(i))
    return full


def _get_var(module: nnx.Module, path: tuple[str, ...]) -> nnx.Variable:
    obj = module
    for p in path:
        obj = getattr(obj, p)
    return obj


def load_weights(config: ModelConfig, files: dict[str, Path], *, dtype=jnp.bfloat16, mesh: Mesh | None = None,
                 seed: int = 0) -> Decoder:
    """Build a Decoder whose params come from HF-named safetensors `files` (name -> path)."""
    model = nnx.eval_shape(lambda: Decoder(config, dtype=dtype, rngs=nnx.Rngs(seed)))
    reader = _Reader(files)
    maps = tensor_maps(config)
    for tmap in maps:  # validate everything before placing anything
        for name in tmap.names(config.num_layers):
            reader.check(name, tmap.hf_shape)
    for tmap in maps:
        var = _get_var(model, tmap.path)
        var.set_value(_load_param(var, tmap, reader, config.num_layers, mesh))
    leftover = [jax.tree_util.keystr(p) for p, v in jax.tree_util.tree_flatten_with_path(nnx.state(model))[0]
                if isinstance(v, jax.ShapeDtypeStruct)]
    if leftover:
        raise LoadError(f"internal: params not loaded: {leftover}")
    return model


def random_model(config: ModelConfig, *, dtype=jnp.bfloat16, mesh: Mesh | None = None, seed: int = 0) -> Decoder:
    """Random weights; with a mesh, created by one jitted init directly onto their shardings."""
    if mesh is None:  # eager: per-shape init kernels are cached across calls (a jitted closure would recompile)
        return Decoder(config, dtype=dtype, rngs=nnx.Rngs(seed))
    abstract = nnx.eval_shape(lambda: Decoder(config, dtype=dtype, rngs=nnx.Rngs(seed)))
    graphdef, abs_state = nnx.split(abstract)
    shardings = param_shardings(abs_state, mesh)
    state = jax.jit(lambda: nnx.split(Decoder(config, dtype=dtype, rngs=nnx.Rngs(seed)))[1],
                    out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def _add_lora(model: Decoder, lora: LoRAConfig, mesh: Mesh | None, seed: int) -> Decoder:
    apply_lora(model, lora, nnx.Rngs(seed + 1))
    if mesh is not None:
        state = nnx.state(model, nnx.Any(nnx.LoRAParam, LoRAScale))
        nnx.update(model, jax.device_put(state, param_shardings(state, mesh)))
    return model


def load_model(path_or_preset: str | os.PathLike, *, dtype=jnp.bfloat16, mesh: Mesh | None = None,
               lora: LoRAConfig | None = None, seed: int = 0) -> Decoder:
    """A Decoder from a HF directory (config.json + *.safetensors [+ index]) or a preset name (random weights)."""
    p = Path(path_or_preset)
    if not p.exists() and str(path_or_preset) in PRESETS:
        model = random_model(PRESETS[str(path_or_preset)], dtype=dtype, mesh=mesh, seed=seed)
    else:
        if not p.is_dir():
            raise LoadError(f"load_model: {str(path_or_preset)!r} is neither a model directory nor a preset; "
                            f"presets: {sorted(PRESETS)}")
        try:
            config = read_config(p)
        except ConfigError as e:
            raise LoadError(f"{p / 'config.json'}: {e}") from None
        config = _merge_generation_eos(p, config)
        model = load_weights(config, weight_files(p), dtype=dtype, mesh=mesh, seed=seed)
    if lora is not None:
        _add_lora(model, lora, mesh, seed)
    return model


def _merge_generation_eos(model_dir: Path, config: ModelConfig) -> ModelConfig:
    """generation_config.json's eos ids (e.g. Qwen's <|im_end|>) join config.json's."""
    gen = model_dir / "generation_config.json"
    if not gen.is_file():
        return config
    try:
        eos = json.loads(gen.read_text()).get("eos_token_id")
    except json.JSONDecodeError:
        return config
    if eos is None:
        return config
    eos = [eos] if isinstance(eos, int) else list(eos)
    merged = tuple(dict.fromkeys(list(config.eos_token_ids) + [int(e) for e in eos]))
    return config.replace(eos_token_ids=merged)
