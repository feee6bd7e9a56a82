"""launch/*.sh --dry_run print complete, correct command lines (and run nothing)."""
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def dry(script: str, *args: str) -> list[list[str]]:
    r = subprocess.run(["bash", str(REPO / "launch" / script), *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [shlex.split(line[2:]) for line in r.stdout.splitlines() if line.startswith("+ ")]


def fails(script: str, *args: str) -> str:
    r = subprocess.run(["bash", str(REPO / "launch" / script), *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    return r.stderr


TPU = ["--project=proj", "--zone=us-central2-b", "--accelerator_type=v4-32", "--name=am1"]
LOC = ["--zone=us-central2-b", "--project=proj"]
GC = ["gcloud", "compute", "tpus", "tpu-vm"]


def test_tpu_dry_run_copy():
    cmds = dry("tpu.sh", *TPU, "--version=tpu-vm-v4-base", "--config=configs/minihack.py", "--workdir=/mnt/gcs/run",
               "--dry_run", "--", "--config.num_envs=16", "--config.name=my run")
    assert cmds[0] == GC + ["describe", "am1", *LOC, "--format=value(state)"]
    assert cmds[1] == GC + ["create", "am1", *LOC, "--accelerator-type=v4-32", "--version=tpu-vm-v4-base"]
    assert cmds[2] == ["git", "-C", str(REPO), "archive", "--format=tar.gz", "-o", "/tmp/automem-jax-am1.tar.gz",
                       "HEAD"]
    assert cmds[3] == GC + ["scp", "/tmp/automem-jax-am1.tar.gz", "am1:automem-jax.tar.gz", *LOC, "--worker=all"]
    ssh = [c for c in cmds if c[4] == "ssh"]
    assert all(c[:8] == GC + ["ssh", "am1", *LOC] and c[8] == "--worker=all" for c in ssh)
    remote = [c[9].removeprefix("--command=") for c in ssh]
    assert remote[0] == "rm -rf automem-jax && mkdir -p automem-jax && tar -xzf automem-jax.tar.gz -C automem-jax"
    assert remote[1].endswith('.venv/bin/pip install -q -e ".[tpu]"')
    run = remote[2]
    assert run.startswith("cd automem-jax && ")
    assert shlex.split(run.removeprefix("cd automem-jax && ")) == [
        ".venv/bin/python", "-m", "automem_jax", "--config=configs/minihack.py", "--workdir=/mnt/gcs/run",
        "--config.multihost=True", "--config.num_envs=16", "--config.name=my run"]
    assert len(cmds) == 7


def test_tpu_dry_run_git_and_spot():
    cmds = dry("tpu.sh", *TPU, "--source=git", "--git_url=https://example.com/automem-jax.git", "--git_ref=v1",
               "--spot", "--dry_run")
    assert cmds[1][-1] == "--spot"
    clone = cmds[2][9].removeprefix("--command=")
    assert clone == "rm -rf automem-jax && git clone --depth 1 --branch v1 https://example.com/automem-jax.git " \
                    "automem-jax"
    assert not any(c[0] == "git" for c in cmds)


@pytest.mark.parametrize("missing", ["--project", "--zone", "--accelerator_type", "--name"])
def test_tpu_requires_flags(missing):
    args = [a for a in TPU if not a.startswith(missing + "=")]
    assert missing in fails("tpu.sh", *args, "--dry_run")


def test_gpu_dry_run_jax():
    cmds = dry("gpu.sh", "--config=configs/nethack.py", "--workdir=runs/n", "--dry_run", "--", "--config.seed=3")
    assert cmds == [["python", "-m", "automem_jax", "--config=configs/nethack.py", "--workdir=runs/n",
                     "--config.engine.backend=jax", "--config.seed=3"]]


def test_gpu_dry_run_sglang():
    cmds = dry("gpu.sh", "--engine=sglang", "--model=/models/Qwen2.5-32B-Instruct", "--tp=2", "--port=31000",
               "--max_lora_rank=128", "--lora_target_modules=q_proj v_proj", "--max_loras_per_batch=6",
               "--server_gpus=0,1", "--run_gpus=2", "--workdir=runs/c", "--sglang_python=/venvs/sgl/bin/python",
               "--install", "--dry_run")
    assert cmds[0] == ["python", "-m", "pip", "install", "-q", "-e", ".[cuda]"]
    # SGLang pins its own torch: it is installed into, and served from, its own environment
    assert cmds[1] == ["/venvs/sgl/bin/python", "-m", "pip", "install", "-q", "-r", "launch/requirements-sglang.txt"]
    assert cmds[2] == ["mkdir", "-p", "runs/c"]
    assert cmds[3] == ["env", "CUDA_VISIBLE_DEVICES=0,1", "/venvs/sgl/bin/python", "-m", "sglang.launch_server",
                       "--model-path", "/models/Qwen2.5-32B-Instruct", "--port", "31000", "--tp", "2",
                       "--mem-fraction-static", "0.6", "--enable-lora", "--max-lora-rank", "128",
                       "--lora-target-modules", "q_proj", "v_proj", "--max-loras-per-batch", "6"]
    assert cmds[4] == ["curl", "-sf", "http://127.0.0.1:31000/health"]
    assert cmds[5] == ["env", "CUDA_VISIBLE_DEVICES=2", "XLA_PYTHON_CLIENT_PREALLOCATE=false", "python", "-m",
                       "automem_jax", "--config=configs/crafter.py", "--workdir=runs/c",
                       "--config.model=/models/Qwen2.5-32B-Instruct", "--config.engine.backend=sglang",
                       "--config.engine.url=http://127.0.0.1:31000", "--config.engine.max_lora_rank=128"]
    assert len(cmds) == 6


def test_gpu_bad_flags():
    assert "--model" in fails("gpu.sh", "--engine=sglang", "--dry_run")
    assert "--sglang_python" in fails("gpu.sh", "--engine=sglang", "--model=/m", "--install", "--dry_run")
    assert "--engine" in fails("gpu.sh", "--engine=vllm", "--dry_run")
    assert "unknown flag" in fails("gpu.sh", "--bogus")
