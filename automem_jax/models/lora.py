"""Multi-slot LoRA on the Decoder's projections, with PEFT adapter export/import.

Each targeted projection gets `lora_a` [L, S, *in, r] (PEFT's kaiming-uniform init) and `lora_b` [L, S, r, *out]
(zeros) as `nnx.LoRAParam`, S = num_slots. Per layer (inside the scan) that is the contract's [S, in, r] / [S, r, out].
The per-slot scale alpha/r lives in `model.lora_scale` (LoRAScale, not trainable). Rows pick a slot with
`adapter_ids` (None -> slot 0; id < 0 -> base model only).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from automem_jax.models import st_io
from automem_jax.models.decoder import Decoder, LoRAScale
from automem_jax.models.weights import PROJ_NAMES, peft_key

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class LoRAError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    rank: int
    alpha: float
    target_modules: tuple[str, ...] = PROJ_NAMES
    num_slots: int = 1

    def __post_init__(self):
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if self.rank <= 0:
            raise LoRAError(f"LoRAConfig.rank must be positive, got {self.rank}")
        if self.num_slots <= 0:
            raise LoRAError(f"LoRAConfig.num_slots must be positive, got {self.num_slots}")
        bad = [t for t in self.target_modules if t not in PROJ_NAMES]
        if bad or not self.target_modules:
            raise LoRAError(f"LoRAConfig.target_modules: unknown {bad or '(empty)'}; supported: {list(PROJ_NAMES)}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def apply_lora(model: Decoder, cfg: LoRAConfig, rngs: nnx.Rngs) -> Decoder:
    """Add LoRA params to every targeted projection (in place; returns the model)."""
    if model.lora_scale is not None:
        raise LoRAError("apply_lora: the model already has LoRA params")
    L, S, r = model.config.num_layers, cfg.num_slots, cfg.rank
    projs = {name: getattr(model.layers, name) for name in cfg.target_modules}
    shapes = tuple((name, (L, S, *p.in_shape, r), (L, S, r, *p.out_shape)) for name, p in projs.items())
    inits = _lora_init(rngs.params(), shapes)
    for name, proj in projs.items():
        a, b = inits[name]
        proj.lora_a = nnx.LoRAParam(a, logical_axes=("layers", "adapters", *proj.in_axes, "lora_rank"))
        proj.lora_b = nnx.LoRAParam(b, logical_axes=("layers", "adapters", "lora_rank", *proj.out_axes))
    model.lora_scale = LoRAScale(jnp.full((S,), cfg.scale, jnp.float32), logical_axes=("adapters",))
    model.lora_config = cfg
    return model


@functools.partial(jax.jit, static_argnums=1)
def _lora_init(key: jax.Array, shapes) -> dict[str, tuple[jax.Array, jax.Array]]:
    """All modules' (A, B) in one compiled call. A: kaiming_uniform(a=sqrt(5)) on [r, in] as PEFT initialises
    lora_A, i.e. U(-1/sqrt(in), 1/sqrt(in)); B: zeros."""
    out = {}
    for k, (name, a_shape, b_shape) in zip(jax.random.split(key, len(shapes)), shapes):
        bound = 1.0 / math.sqrt(math.prod(a_shape[2:-1]))
        out[name] = (jax.random.uniform(k, a_shape, jnp.float32, -bound, bound), jnp.zeros(b_shape, jnp.float32))
    return out


def lora_state(model: Decoder) -> nnx.State:
    return nnx.state(model, nnx.LoRAParam)


def lora_targets(model: Decoder) -> tuple[str, ...]:
    return tuple(n for n in PROJ_NAMES if getattr(model.layers, n).lora_a is not None)


def _require_lora(model: Decoder, what: str) -> None:
    if model.lora_scale is None:
        raise LoRAError(f"{what}: the model has no LoRA params; call apply_lora (or load_model(..., lora=...)) first")


def _check_slot(model: Decoder, slot: int, what: str) -> None:
    n = model.lora_scale[...].shape[0]
    if not 0 <= slot < n:
        raise LoRAError(f"{what}: slot {slot} out of range; the model has {n} LoRA slot(s)")


def export_peft(model: Decoder, out_dir: str | os.PathLike, *, slot: int = 0,
                base_model_name_or_path: str = "") -> Path:
    """Write `slot`'s adapter as a PEFT directory (adapter_config.json + adapter_model.safetensors), atomically."""
    _require_lora(model, "export_peft")
    _check_slot(model, slot, "export_peft")
    out_dir = Path(out_dir)
    targets = lora_targets(model)
    scale = float(model.lora_scale[...][slot])
    tensors: dict[str, np.ndarray] = {}
    rank = None
    for name in targets:
        proj = getattr(model.layers, name)
        a = np.asarray(jax.device_get(proj.lora_a[...][:, slot]), np.float32)   # [L, *in, r]
        b = np.asarray(jax.device_get(proj.lora_b[...][:, slot]), np.float32)   # [L, r, *out]
        rank = a.shape[-1]
        for layer in range(a.shape[0]):
            tensors[peft_key(layer, name, "A")] = np.ascontiguousarray(a[layer].reshape(-1, rank).T)
            tensors[peft_key(layer, name, "B")] = np.ascontiguousarray(b[layer].reshape(rank, -1).T)
    alpha = scale * rank
    alpha = int(round(alpha)) if abs(alpha - round(alpha)) < 1e-6 else alpha
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
              "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
              "target_modules": list(targets), "use_rslora": False, "use_dora": False, "inference_mode": True,
              "init_lora_weights": True, "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        st_io.write(tmp / ADAPTER_WEIGHTS, tensors, metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


_KEY_RE = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+_proj)\.lora_([AB])(?:\.[\w-]+)?\.weight$")


def read_peft_config(adapter_dir: Path) -> tuple[int, float, tuple[str, ...]]:
    cfg_path = adapter_dir / ADAPTER_CONFIG
    if not cfg_path.is_file():
        raise LoRAError(f"import_peft: {cfg_path} not found (a PEFT adapter dir needs {ADAPTER_CONFIG} and "
                        f"{ADAPTER_WEIGHTS})")
    cfg = json.loads(cfg_path.read_text())
    if not isinstance(cfg, dict):
        raise LoRAError(f"{cfg_path}: must be a JSON object (PEFT's adapter config), got {type(cfg).__name__}")
    if cfg.get("peft_type", "LORA") != "LORA":
        raise LoRAError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r} not supported (LORA only)")
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            raise LoRAError(f"{cfg_path}: {key} is not supported; use one r/lora_alpha for all modules")
    if cfg.get("use_dora"):
        raise LoRAError(f"{cfg_path}: use_dora=true is not supported")
    if cfg.get("bias", "none") != "none":
        raise LoRAError(f"{cfg_path}: bias={cfg['bias']!r} not supported; use 'none'")
    targets = cfg.get("target_modules")
    if targets == "all-linear":
        targets = list(PROJ_NAMES)
    if not isinstance(targets, list):
        raise LoRAError(f"{cfg_path}: target_modules must be an explicit list of names from {list(PROJ_NAMES)}, "
                        f"got {targets!r}")
    bad = [t for t in targets if t not in PROJ_NAMES]
    if bad:
        raise LoRAError(f"{cfg_path}: target_modules {bad} not supported; supported: {list(PROJ_NAMES)}")
    r = cfg.get("r")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise LoRAError(f"{cfg_path}: r must be an integer >= 1 (the adapter's rank), got {r!r}")
    alpha = cfg.get("lora_alpha", r)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise LoRAError(f"{cfg_path}: lora_alpha must be a finite number, got {alpha!r}")
    alpha = float(alpha)
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    return r, scale, tuple(targets)


def import_peft(model: Decoder, adapter_dir: str | os.PathLike, *, slot: int = 0) -> Decoder:
    """Load a PEFT LoRA adapter into `slot` (rank <= slot rank is zero-padded; untargeted modules get zeros)."""
    _require_lora(model, "import_peft")
    _check_slot(model, slot, "import_peft")
    adapter_dir = Path(adapter_dir)
    r, scale, targets = read_peft_config(adapter_dir)
    have = lora_targets(model)
    missing = [t for t in targets if t not in have]
    if missing:
        raise LoRAError(f"import_peft {adapter_dir}: adapter targets {missing} but the model's LoRA covers only "
                        f"{list(have)}; create the model with those target_modules")
    weights = adapter_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise LoRAError(f"import_peft: {weights} not found")
    f = st_io.SafetensorsFile(weights)
    found: dict[tuple[str, str], dict[int, str]] = {}
    for key in f.names:
        m = _KEY_RE.search(key)
        if m is None:
            raise LoRAError(f"import_peft {weights}: unexpected tensor {key!r} (expected PEFT LoRA keys like "
                            f"{peft_key(0, 'q_proj', 'A')})")
        found.setdefault((m.group(2), m.group(3)), {})[int(m.group(1))] = key
    L = model.config.num_layers
    for name in have:
        proj = getattr(model.layers, name)
        slot_rank = proj.lora_a[...].shape[-1]
        if r > slot_rank:
            raise LoRAError(f"import_peft {adapter_dir}: adapter rank r={r} exceeds the model's LoRA rank "
                            f"{slot_rank}; load the model with a larger LoRAConfig.rank")
        a_new = np.zeros((L, *proj.in_shape, slot_rank), np.float32)
        b_new = np.zeros((L, slot_rank, *proj.out_shape), np.float32)
        if name in targets:
            n_in, n_out = math.prod(proj.in_shape), math.prod(proj.out_shape)
            for which, want in (("A", (r, n_in)), ("B", (n_out, r))):
                keys = found.get((name, which), {})
                if sorted(keys) != list(range(L)):
                    raise LoRAError(f"import_peft {weights}: {name}.lora_{which} present for layers {sorted(keys)}, "
                                    f"expected all {L} layers")
                for layer, key in keys.items():
                    t = f.read(key).astype(np.float32)
                    if t.shape != want:
                        raise LoRAError(f"import_peft {weights}: {key} has shape {t.shape}, expected {want}")
                    if which == "A":
                        a_new[layer, ..., :r] = t.T.reshape(*proj.in_shape, r)
                    else:
                        b_new[layer, :r] = t.T.reshape(r, *proj.out_shape)
        _set_slot(proj.lora_a, slot, a_new)
        _set_slot(proj.lora_b, slot, b_new)
    _set_slot(model.lora_scale, slot, np.float32(scale), axis=0)
    return model


def _set_slot(var: nnx.Variable, slot: int, value, axis: int = 1) -> None:
    old = var[...]
    idx = (slice(None),) * axis + (slot,)
    new = old.at[idx].set(jnp.asarray(value, old.dtype))
    sharding = getattr(old, "sharding", None)
    # keep a mesh placement; leave single-device arrays alone (re-committing them would change jit cache keys)
    var.set_value(jax.device_put(new, sharding) if isinstance(sharding, NamedSharding) else new)


def clear_slot(model: Decoder, slot: int) -> Decoder:
    """Zero a slot (its rows then behave like the base model)."""
    _require_lora(model, "clear_slot")
    _check_slot(model, slot, "clear_slot")
    for name in lora_targets(model):
        proj = getattr(model.layers, name)
        _set_slot(proj.lora_a, slot, 0.0)
        _set_slot(proj.lora_b, slot, 0.0)
    return model
