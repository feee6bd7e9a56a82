"""`python -m automem_jax.engine.server`'s command line: its engine flags are EngineConfig's, with its defaults, a
platform's measured values apply only to flags left unset, /server_info reports the EngineConfig the engine runs,
and every mistake is one line on stderr with exit status 2, before any model loads."""
from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from absl import flags

from automem_jax.engine import server_cli
from automem_jax.engine.config import EngineConfig, MeshConfig
from automem_jax.kernels.config import KernelConfig

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
           XLA_FLAGS="--xla_force_host_platform_device_count=8")
# what was measured on a CPU (server_cli.py's PLATFORM_DEFAULTS), written out so a changed value fails here
CPU = dict(dtype="float32", max_batch=4, max_seq_len=2048, min_prefill_bucket=16, max_prefill_tokens=16,
           max_lora_rank=64)


def parsed(*args: str) -> flags.FlagValues:
    fv = flags.FlagValues()
    server_cli.define_flags(fv)
    fv(["server", *args])
    return fv


def test_unset_flags_take_engine_config_defaults_and_on_a_cpu_its_measured_values():
    assert server_cli.engine_settings("gpu", parsed()) == EngineConfig()
    assert server_cli.engine_settings("cpu", parsed()) == EngineConfig.of(**CPU)
    fv = parsed()
    for name in ("max_lora_rank", "max_loras", "decode_steps", "max_batch", "max_seq_len"):
        assert fv[name].default == getattr(EngineConfig, name), name


def test_a_given_flag_wins_over_the_platform_value():
    # --max_seq_len=4096 is EngineConfig's own default: given, it still wins over the CPU's 2048
    got = server_cli.engine_settings("cpu", parsed("--max_seq_len=4096", "--dtype=bfloat16", "--mesh_data=2",
                                               "--mesh_tensor=2", "--decode_attention=xla", "--max_lora_rank=16",
                                               "--lora_target_modules=q_proj,v_proj"))
    assert got == EngineConfig.of(**(CPU | dict(max_seq_len=4096, dtype="bfloat16", max_lora_rank=16,
                                                lora_target_modules=("q_proj", "v_proj"))),
                                  mesh=MeshConfig(data=2, tensor=2), kernels=KernelConfig(decode_attention="xla"))


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "automem_jax.engine.server", *args], capture_output=True,
                          text=True, env=ENV, cwd=REPO, timeout=timeout)


@pytest.mark.parametrize("args, expect", [
    (["--host=0.0.0.0"], "--host=0.0.0.0 is not a loopback address"),
    (["--lora=adapter"], "--lora='adapter': expected name=path"),
    (["--max_batch=abc"], "flag --max_batch=abc"),
    (["--max_batch=0"], "engine.max_batch=0: must be >= 1"),
    (["--lora_target_modules=qproj"], "engine.lora_target_modules: unknown ['qproj']"),
    (["--mesh_data=3"], "engine.mesh.data=3 must divide engine.max_batch=4"),  # the CPU's 4 slots
    (["--mesh_tensor=16"], "needs 16 devices, this host has 8"),
])
def test_a_mistake_is_one_line_and_exit_status_2(args, expect):
    proc = run_cli("--model=/nonexistent", *args)  # the model is never loaded: the flags are checked first
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and expect in lines[0], proc.stderr
    assert "READY" not in proc.stdout


def test_a_model_that_is_neither_preset_nor_hf_directory_is_one_line(tmp_path):
    for model in ("/nonexistent", str(tmp_path)):  # a folder without config.json is no HF model either
        proc = run_cli(f"--model={model}")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and f"--model: {model!r}" in lines[0]


def test_server_info_reports_the_engine_config_the_flags_resolve_to(tmp_path):
    from automem_jax.models.testing import save_tiny_hf_model
    model = save_tiny_hf_model(tmp_path / "tiny", arch="llama", seed=0)
    args = (f"--model={model}", "--port=0", "--nowarmup", "--mesh_data=2", "--max_seq_len=256",
            "--max_lora_rank=8", "--max_loras=1")
    proc = subprocess.Popen([sys.executable, "-m", "automem_jax.engine.server", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=ENV, cwd=REPO)
    try:
        deadline, line = time.monotonic() + 300, ""
        while not line.startswith("READY"):
            assert select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))[0], "no READY"
            line = proc.stdout.readline()
            assert line, "the server exited before READY"
        info = requests.get(f"{line.split()[1]}/server_info", timeout=30).json()
    finally:
        proc.kill()
        proc.wait(timeout=30)
    want = server_cli.engine_settings("cpu", parsed(*args)).to_dict()
    assert {k: info[k] for k in want} == _json(want)
    assert info["mesh"] == {"data": 2, "tensor": 1} and info["max_running_requests"] == CPU["max_batch"]


def _json(value):
    """`value` as it reads back from JSON (tuples become lists)."""
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    return [_json(v) for v in value] if isinstance(value, (list, tuple)) else value
