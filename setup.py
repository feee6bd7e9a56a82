"""automem-jax: a JAX-native, high-throughput implementation of AutoMem."""
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent


def requirements(name: str) -> list[str]:
    return [line.strip() for line in (here / name).read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")]


setup(
    name="automem-jax",
    version="0.1.0",
    description="JAX-native AutoMem: learned agent memory for Crafter, MiniHack and NetHack",
    python_requires=">=3.11",
    packages=find_packages(include=["automem_jax", "automem_jax.*"]),
    package_data={"automem_jax": ["envs/data/*", "envs/data/**/*", "bench/results/*.json"]},
    include_package_data=True,
    install_requires=requirements("requirements.txt"),
    # No "sglang" extra: SGLang pins its own torch, so it would make the test requirements unsatisfiable in one
    # environment. A real SGLang server runs from its own venv (launch/requirements-sglang.txt, launch/gpu.sh
    # --sglang_python); this package only talks to it over HTTP (engine/clients/sglang.py) and ships its own
    # SGLang-compatible server (python -m automem_jax.engine.server).
    extras_require={
        "test": requirements("requirements-test.txt"),
        "tpu": ["jax[tpu]"],
        "cuda": ["jax[cuda12]"],
    },
    entry_points={"console_scripts": ["automem-jax=automem_jax.main:run"]},
)
