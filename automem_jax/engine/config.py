"""EngineConfig: every option of the in-process JAX engine, with the one set of defaults that the experiment config
(orchestrate/config.py's engine section), the engine server's flags and the benchmarks start from.

Frozen and hashable (a program's static argument can hold it); no JAX import (engine/__init__ exports it, and
what imports engine.base loads no JAX). `from_dict` / `to_dict` for ml_collections, `define_flags` / `from_flags`
for absl programs.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from automem_jax.kernels.config import KernelConfig

DTYPES = ("bfloat16", "float32", "float16")
SWITCH = ("auto", "on", "off")  # an option the engine decides per platform ("auto") unless told
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # models.weights'


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """The engine's device mesh over this host's local devices: `data` replicas, each holding max_batch / data
    slots, times `tensor` devices sharding the weights and KV heads of each replica. One size may be -1 (the rest
    of the local devices). Multi-host runs keep one engine per host over its local devices."""
    data: int = 1
    tensor: int = 1

    def __post_init__(self):
        if (self.data, self.tensor).count(-1) > 1 or min(self.data, self.tensor) < -1 or 0 in (self.data,
                                                                                              self.tensor):
            raise ValueError(f"engine.mesh: data={self.data}, tensor={self.tensor}: sizes must be >= 1, one of them "
                             "may be -1 (the remaining local devices)")

    def sizes(self, num_devices: int) -> tuple[int, int]:
        """(data, tensor) with -1 resolved; a ValueError unless they multiply to at most `num_devices`."""
        data, tensor = self.data, self.tensor
        if -1 in (data, tensor):
            known = tensor if data == -1 else data
            if num_devices % known:
                raise ValueError(f"engine.mesh: {num_devices} local devices are not divisible by {known}")
            data, tensor = (num_devices // known, tensor) if data == -1 else (data, num_devices // known)
        if data * tensor > num_devices:
            raise ValueError(f"engine.mesh: data={data} x tensor={tensor} needs {data * tensor} devices, this host "
                             f"has {num_devices}; lower the sizes")
        return data, tensor


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    max_batch: int = 32                   # KV-cache slots (sequences decoded at once)
    max_seq_len: int = 4096               # prompt + reply tokens per slot
    decode_steps: int = 8                 # tokens per fused decode call (one host sync per call)
    max_loras: int = 4                    # LoRA adapter slots (a model loaded by the engine gets them)
    max_lora_rank: int = 256              # adapters of lower rank are zero-padded
    lora_alpha: float = 0.0               # 0: 2 x rank
    lora_target_modules: tuple[str, ...] = LORA_TARGETS
    dtype: str = "bfloat16"               # weights and compute
    cache_dtype: str = ""                 # "": dtype
    # new tokens (rows x prompt bucket) per prefill call: each call carries fixed host work whatever its size, so
    # fewer, larger calls win (agent benchmark, H100: 32k ran 212 calls instead of 676 at 8k, 201 vs 177 decisions/s)
    max_prefill_tokens: int = 1 << 15
    max_prefill_window_tokens: int = 1 << 18  # rows x attention window per prefill call (XLA path's window copies)
    min_prefill_bucket: int = 16          # smallest prompt bucket (fewer buckets, fewer programs)
    min_window: int = 128                 # smallest decode attention window bucket
    packed_prefill: str = "auto"          # prompts end to end as rows; auto: wherever the prefill kernel runs
    packed_prefill_block: int = 64        # tokens per packed row
    prefix_block: int = 16                # prefix-reuse hash granularity
    min_reuse_tokens: int = 16            # shortest cached head worth reusing
    stop_at_eos: bool = True
    # decode on straight-line layers over a second, per-layer copy of the layer weights; auto: on a GPU unless the
    # copy would take over a quarter of a device's memory (the layer scan is 20-30% slower there)
    unstack_layers: str = "auto"
    # decode steps only the live slots ("live", rows bucketed to powers of two) or every slot ("all"); auto: live
    # on a CPU, where a step's work is its rows', all on a GPU (done rows cost its kernels almost nothing)
    decode_rows: str = "auto"
    seed: int = 0
    mesh: MeshConfig = MeshConfig()
    kernels: KernelConfig = KernelConfig()

    def __post_init__(self):
        checks = [("max_batch", self.max_batch >= 1, ">= 1"), ("max_seq_len", self.max_seq_len >= 2, ">= 2"),
                  ("decode_steps", self.decode_steps >= 1, ">= 1"), ("max_loras", self.max_loras >= 0, ">= 0"),
                  ("max_lora_rank", self.max_lora_rank >= 1, ">= 1"),
                  ("max_prefill_tokens", self.max_prefill_tokens >= 1, ">= 1"),
                  ("max_prefill_window_tokens", self.max_prefill_window_tokens >= 1, ">= 1"),
                  ("min_prefill_bucket", self.min_prefill_bucket >= 1, ">= 1"),
                  ("min_window", self.min_window >= 1, ">= 1"), ("prefix_block", self.prefix_block >= 1, ">= 1"),
                  ("packed_prefill_block", self.packed_prefill_block >= 16 and self.packed_prefill_block % 16 == 0,
                   "a multiple of 16 (the kernel's tiles)"),
                  ("dtype", self.dtype in DTYPES, f"one of {DTYPES}"),
                  ("cache_dtype", self.cache_dtype in ("", *DTYPES), f"'' (= dtype) or one of {DTYPES}"),
                  ("lora_alpha", self.lora_alpha >= 0, ">= 0 (0 = 2 x rank)"),
                  ("packed_prefill", self.packed_prefill in SWITCH, f"one of {SWITCH}"),
                  ("unstack_layers", self.unstack_layers in SWITCH, f"one of {SWITCH}"),
                  ("decode_rows", self.decode_rows in ("auto", "live", "all"), "one of ('auto', 'live', 'all')")]
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"engine.{name}={getattr(self, name)!r}: must be {want}")
        unknown = sorted(set(self.lora_target_modules) - set(LORA_TARGETS))
        if unknown:
            raise ValueError(f"engine.lora_target_modules: unknown {unknown}; choose from {LORA_TARGETS}")

    @property
    def cache_dtype_name(self) -> str:
        return self.cache_dtype or self.dtype

    @property
    def alpha(self) -> float:
        return self.lora_alpha or 2.0 * self.max_lora_rank

    @classmethod
    def of(cls, base: "EngineConfig | None" = None, **overrides: Any) -> "EngineConfig":
        """`base` (default: the defaults) with some fields replaced; dtypes may be given as dtype objects, the
        auto/on/off switches as None/True/False, mesh and kernels as dicts. Unknown names are errors that list the
        known ones."""
        base = base or cls()
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"engine options: unknown {unknown}; known: {sorted(names)}")
        kw = dict(overrides)
        if "lora_target_modules" in kw and kw["lora_target_modules"] is None:  # None: every projection
            del kw["lora_target_modules"]
        for key in ("dtype", "cache_dtype"):
            if kw.get(key) is not None:
                kw[key] = dtype_name(kw[key])
        for key in ("packed_prefill", "unstack_layers"):
            if key in kw and not isinstance(kw[key], str):
                kw[key] = {None: "auto", True: "on", False: "off"}[kw[key]]
        if kw.get("lora_alpha", 0) is None:
            kw["lora_alpha"] = 0.0
        if isinstance(kw.get("mesh"), dict):
            kw["mesh"] = MeshConfig(**kw["mesh"])
        if isinstance(kw.get("kernels"), dict):
            kw["kernels"] = KernelConfig.from_dict(kw["kernels"])
        if kw.get("lora_target_modules") is not None:
            kw["lora_target_modules"] = tuple(kw["lora_target_modules"])
        return dataclasses.replace(base, **kw)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EngineConfig":
        """From the experiment config's engine section (its other keys, such as backend or url, are skipped)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls.of(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def dtype_name(dtype: Any) -> str:
    """'bfloat16' from 'bfloat16', jnp.bfloat16 or np.dtype('bfloat16')."""
    if isinstance(dtype, str):
        return dtype
    name = getattr(dtype, "name", None)
    return name if isinstance(name, str) else getattr(dtype, "__name__", str(dtype))


# What each option means, for the experiment config's --config_help (orchestrate/config_help.py) and the flags.
_HELP = {
    "max_batch": "KV-cache slots of the JAX engine (concurrent sequences; split over mesh.data replicas)",
    "max_seq_len": "prompt + reply tokens per sequence (a slot reserves them all)",
    "decode_steps": "tokens per fused decode call (one host sync per call)",
    "max_loras": "LoRA adapter slots (adapters loaded at once)",
    "max_lora_rank": "rank of a LoRA slot (adapters of lower rank are zero-padded)",
    "lora_alpha": "LoRA alpha of the slots (0 = 2 x max_lora_rank)",
    "lora_target_modules": "projections that can carry LoRA in the engine",
    "dtype": "weights / compute dtype of the JAX engine (float32 on CPU: bfloat16 is emulated there)",
    "cache_dtype": "KV-cache dtype ('' = dtype)",
    "max_prefill_tokens": "new tokens (rows x prompt bucket) per prefill call (fewer, larger calls win)",
    "max_prefill_window_tokens": "rows x attention window per prefill call (the XLA path's window copies)",
    "min_prefill_bucket": "smallest prompt bucket (fewer buckets = fewer compiled prefill programs)",
    "min_window": "smallest decode attention-window bucket",
    "packed_prefill": "prompts end to end as rows of packed_prefill_block tokens: auto | on | off (auto: wherever "
                      "the prefill kernel runs)",
    "packed_prefill_block": "tokens per packed prefill row (a multiple of 16)",
    "prefix_block": "prefix-reuse hash granularity (tokens)",
    "min_reuse_tokens": "shortest cached prompt head worth reusing",
    "stop_at_eos": "stop replies at the model's EOS ids",
    "unstack_layers": "decode on straight-line layers over a per-layer weight copy: auto | on | off (auto: on a GPU "
                      "unless the copy takes over a quarter of its memory)",
    "decode_rows": "rows a decode call steps: auto | live (the live slots) | all (auto: live on a CPU)",
    "seed": "seed of requests that set none",
    "mesh.data": "data-parallel engine replicas over this host's devices (each max_batch / data slots; -1 = the rest)",
    "mesh.tensor": "tensor-parallel devices per replica (weights and KV heads sharded; -1 = the rest)",
    "kernels.decode_attention": "decode attention path: auto (the Pallas kernel on a GPU) | kernel | xla",
    "kernels.prefill_attention": "prefill attention path: auto (the in-place Pallas kernel on a GPU) | kernel | xla",
    "kernels.projections": "projections of small decode batches: auto (the Pallas GEMV on a GPU) | kernel | xla",
    "kernels.qkv_split_k": "decode batches past kernels.gemv.max_batch: depth parts of the fused q/k/v projection",
    "kernels.interpret": "run the Pallas kernels in interpret mode (CPU tests)",
}
_TILING_HELP = {"decode": "decode attention kernel", "prefill": "prefill attention kernel",
                "gemv": "small-batch projection kernel"}


def field_help() -> dict[str, str]:
    """Dotted EngineConfig field (e.g. "mesh.data", "kernels.decode.block_s") -> what it sets."""
    out = dict(_HELP)
    for part, what in _TILING_HELP.items():
        for f in dataclasses.fields(getattr(KernelConfig, part)):
            out[f"kernels.{part}.{f.name}"] = f"{what} tiling: {f.name} (kernels/config.py)"
    return out


# ------------------------------------------------------------------------------------------------- absl flags
_FLAG_FIELDS = ("max_batch", "max_seq_len", "decode_steps", "max_loras", "max_lora_rank", "lora_target_modules",
                "max_prefill_tokens", "max_prefill_window_tokens", "min_prefill_bucket", "packed_prefill_block",
                "min_reuse_tokens", "dtype", "packed_prefill", "unstack_layers")


def define_flags(defaults: dict[str, Any] | None = None, flag_values=None, skip: tuple[str, ...] = ()) -> None:
    """absl flags for the options a user sets on a command line, defaulting to EngineConfig's (or to `defaults`,
    a program's own scenario values): the scalar fields above, --mesh_data / --mesh_tensor, and the kernel choices
    --decode_attention / --prefill_attention / --projections; `skip`: names the program defines itself."""
    from absl import flags
    fv = flags.FLAGS if flag_values is None else flag_values
    base = EngineConfig.of(**(defaults or {}))
    for name in (n for n in _FLAG_FIELDS if n not in skip):
        value = getattr(base, name)
        help_ = _HELP[name]
        if isinstance(value, str):
            flags.DEFINE_enum(name, value, list(DTYPES if name == "dtype" else SWITCH), help_, flag_values=fv)
        elif isinstance(value, tuple):
            flags.DEFINE_list(name, list(value), help_, flag_values=fv)
        else:
            flags.DEFINE_integer(name, value, help_, flag_values=fv)
    flags.DEFINE_integer("mesh_data", base.mesh.data, "data-parallel replicas over this host's devices (-1: all)",
                         flag_values=fv)
    flags.DEFINE_integer("mesh_tensor", base.mesh.tensor, "tensor-parallel devices per replica (-1: all)",
                         flag_values=fv)
    for name in ("decode_attention", "prefill_attention", "projections"):
        flags.DEFINE_enum(name, getattr(base.kernels, name), ["auto", "kernel", "xla"],
                          f"engine kernels.{name}", flag_values=fv)


def from_flags(flag_values=None, **overrides: Any) -> EngineConfig:
    """The EngineConfig the flags of `define_flags` describe (plus `overrides`)."""
    from absl import flags
    fv = flags.FLAGS if flag_values is None else flag_values
    kw: dict[str, Any] = {name: fv[name].value for name in _FLAG_FIELDS if name in fv}
    kw["mesh"] = MeshConfig(fv["mesh_data"].value, fv["mesh_tensor"].value)
    kw["kernels"] = KernelConfig(**{n: fv[n].value for n in ("decode_attention", "prefill_attention",
                                                             "projections")})
    return EngineConfig.of(**(kw | overrides))
