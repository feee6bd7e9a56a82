"""The Engine seam: batched text generation behind one protocol (JAX in-process, SGLang HTTP, OpenAI HTTP)."""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol, Sequence, runtime_checkable


class EngineError(RuntimeError):
    """A request could not be served (bad input, unknown adapter, dead server, ...). The message says why."""


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 128
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    # Constrained decoding: the reply must match this regular expression (SGLang's `regex` sampling parameter).
    regex: str | None = None

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"sampling.top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"sampling.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.regex is not None and (not isinstance(self.regex, str) or not self.regex):
            raise ValueError(f"sampling.regex must be a non-empty string or None, got {self.regex!r}")


@dataclasses.dataclass
class Request:
    """One generation request: token ids, or chat messages the engine renders with its chat template."""

    prompt_ids: Sequence[int] | None = None
    messages: Sequence[dict[str, str]] | None = None
    sampling: SamplingParams = dataclasses.field(default_factory=SamplingParams)
    adapter: str | None = None  # name of a loaded LoRA adapter; None = base model
    rid: str | None = None

    def __post_init__(self):
        if (self.prompt_ids is None) == (self.messages is None):
            raise ValueError("Request needs exactly one of prompt_ids or messages")


@dataclasses.dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    error: str | None = None
    rid: str | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    def generate(self, requests: Sequence[Request]) -> list[Completion]: ...
    def load_adapter(self, name: str, path: str) -> None: ...
    def unload_adapter(self, name: str) -> None: ...
    def close(self) -> None: ...
