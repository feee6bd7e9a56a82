"""Generation engines behind one protocol (see base.py): in-process JAX, SGLang HTTP, OpenAI HTTP, scripted."""
from __future__ import annotations

from typing import Any

from automem_jax.engine.base import Completion, Engine, EngineError, Request, SamplingParams
from automem_jax.engine.config import EngineConfig, MeshConfig

__all__ = ["Completion", "Engine", "EngineConfig", "EngineError", "MeshConfig", "Request", "SamplingParams",
           "make_engine"]


def make_engine(kind: str = "jax", **kw: Any) -> Engine:
    """kind: "jax" (JaxEngine(model, ...)), "sglang" (SGLangClient(base_url, ...)), "openai"
    (OpenAIClient(base_url, model, api_key_env, ...)), "scripted" (ScriptedEngine(fn))."""
    if kind == "jax":
        from automem_jax.engine.scheduler import JaxEngine
        return JaxEngine(kw.pop("model"), **kw)
    if kind == "sglang":
        from automem_jax.engine.clients.sglang import SGLangClient
        return SGLangClient(**kw)
    if kind == "openai":
        from automem_jax.engine.clients.openai import OpenAIClient
        return OpenAIClient(**kw)
    if kind == "scripted":
        from automem_jax.engine.scripted import ScriptedEngine
        return ScriptedEngine(**kw)
    raise ValueError(f"make_engine: unknown kind {kind!r}; choose one of jax, sglang, openai, scripted")
