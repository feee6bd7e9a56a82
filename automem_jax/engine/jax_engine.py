"""The in-process JAX engine under its historical import path: `from automem_jax.engine.jax_engine import
JaxEngine`. The scheduler lives in engine/scheduler.py, the device side in engine/runner.py."""
from automem_jax.engine.config import EngineConfig
from automem_jax.engine.scheduler import JaxEngine

__all__ = ["EngineConfig", "JaxEngine"]
