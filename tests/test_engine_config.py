"""EngineConfig is the one source of the engine's defaults and options (the experiment config, absl programs and
the benchmarks read it), and no engine or model path is chosen by a module-level switch."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from absl import flags

from automem_jax.engine.config import EngineConfig, MeshConfig, define_flags, from_flags
from automem_jax.kernels.config import KernelConfig

REPO = Path(__file__).resolve().parents[1]


def test_the_experiment_config_holds_the_engine_defaults_and_builds_them_back():
    from automem_jax.orchestrate import config as cfg_lib
    c = cfg_lib.base_config()
    assert EngineConfig.from_dict(c.engine.to_dict()) == EngineConfig()
    c.engine.mesh.data = 4
    c.engine.kernels.decode.block_s = 32
    c.engine.packed_prefill = "off"
    got = EngineConfig.from_dict(c.engine.to_dict())
    assert got.mesh == MeshConfig(data=4) and got.kernels.decode.block_s == 32 and got.packed_prefill == "off"
    c.engine.kernels.prefill_attention = "cudnn"
    with pytest.raises(cfg_lib.ConfigError, match=r"config.engine: kernels.prefill_attention='cudnn': use one of"):
        cfg_lib.validate(c)


def test_flags_default_to_the_config_and_build_it():
    fv = flags.FlagValues()
    define_flags({"decode_steps": 16}, flag_values=fv)  # a program's own scenario value
    fv(["prog", "--max_batch=64", "--mesh_data=-1", "--decode_attention=xla", "--packed_prefill=off",
        "--lora_target_modules=q_proj,o_proj"])
    assert fv["max_seq_len"].default == EngineConfig.max_seq_len and fv["decode_steps"].default == 16
    got = from_flags(fv, seed=3)
    assert got == EngineConfig(max_batch=64, decode_steps=16, mesh=MeshConfig(data=-1), seed=3,
                               kernels=KernelConfig(decode_attention="xla"), packed_prefill="off",
                               lora_target_modules=("q_proj", "o_proj"))


def test_bad_options_name_the_field_and_the_fix():
    with pytest.raises(ValueError, match=r"engine.max_batch=0: must be >= 1"):
        EngineConfig(max_batch=0)
    with pytest.raises(ValueError, match=r"engine.packed_prefill_block=24: must be a multiple of 16"):
        EngineConfig(packed_prefill_block=24)
    with pytest.raises(ValueError, match=r"engine.lora_target_modules: unknown \['qproj'\]"):
        EngineConfig.of(lora_target_modules=["qproj"])
    with pytest.raises(ValueError, match=r"kernels.decode.block_s=0: must be >= 1"):
        EngineConfig.of(kernels={"decode": {"block_s": 0}})
    with pytest.raises(ValueError, match=r"kernels.gemv: unknown field\(s\) \['rows'\]"):
        KernelConfig.from_dict({"gemv": {"rows": 4}})
    with pytest.raises(ValueError, match="sizes must be >= 1, one of them may be -1"):
        MeshConfig(data=-1, tensor=-1)
    assert MeshConfig(data=-1, tensor=2).sizes(8) == (4, 2) and MeshConfig(tensor=-1).sizes(4) == (1, 4)
    with pytest.raises(ValueError, match="needs 16 devices, this host has 8"):
        MeshConfig(data=8, tensor=2).sizes(8)
    # dtype objects and the old None / True / False of the switches are accepted
    import jax.numpy as jnp
    cfg = EngineConfig.of(dtype=jnp.float32, cache_dtype=jnp.bfloat16, packed_prefill=None, unstack_layers=True)
    assert (cfg.dtype, cfg.cache_dtype, cfg.packed_prefill, cfg.unstack_layers) == ("float32", "bfloat16", "auto",
                                                                                     "on")


_SWITCH = re.compile(r"""setattr\(\s*[\w.]+\s*,\s*["'][A-Z][A-Z0-9_]*["']|^\s*[a-z_]+_lib\.[A-Z][A-Z0-9_]*\s*=""")


def test_no_module_switch_is_flipped_by_tests_or_benchmarks():
    """Paths are chosen by configuration passed in, never by a module global that a benchmark or a test flips
    (setattr / monkeypatch.setattr of an UPPER_CASE module name, or `<module>_lib.NAME = ...`)."""
    files = sorted((REPO / "automem_jax").rglob("*.py")) + sorted((REPO / "tests").glob("*.py"))
    hits = [f"{p.relative_to(REPO)}:{i}: {line.strip()}" for p in files
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if _SWITCH.search(line)]
    assert not hits, "\n".join(hits)
