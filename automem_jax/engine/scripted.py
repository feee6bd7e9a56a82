"""ScriptedEngine: a deterministic Engine for tests and dry runs; a Python callable writes each reply."""
from __future__ import annotations

from typing import Callable, Sequence

from automem_jax.engine.base import Completion, Request


def _approx_tokens(text: str) -> int:
    return len(text.split())


class ScriptedEngine:
    """`fn(request) -> reply text`. Records every request (in `requests`) and every batch size (in `batches`).

    Token counts are approximate (whitespace-split words). An exception from `fn` becomes that request's
    `finish_reason="error"` completion, as a real engine reports a failed request without failing the batch.
    """

    def __init__(self, fn: Callable[[Request], str]):
        self.fn = fn
        self.requests: list[Request] = []
        self.batches: list[int] = []
        self.adapters: dict[str, str] = {}
        self.released = 0  # release_memory calls

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        self.batches.append(len(requests))
        out = []
        for req in requests:
            self.requests.append(req)
            prompt = " ".join(m["content"] for m in req.messages) if req.messages is not None else ""
            n_prompt = _approx_tokens(prompt) if req.messages is not None else len(req.prompt_ids)
            if req.adapter is not None and req.adapter not in self.adapters:
                out.append(Completion(text="", token_ids=[], finish_reason="error", prompt_tokens=n_prompt,
                                      error=f"unknown adapter {req.adapter!r}; load it first", rid=req.rid))
                continue
            try:
                text = self.fn(req)
            except Exception as e:  # noqa: BLE001 - reported per request, like a real engine
                out.append(Completion(text="", token_ids=[], finish_reason="error", prompt_tokens=n_prompt,
                                      error=f"{type(e).__name__}: {e}", rid=req.rid))
                continue
            out.append(Completion(text=text, token_ids=[], finish_reason="stop", prompt_tokens=n_prompt,
                                  completion_tokens=_approx_tokens(text), rid=req.rid))
        return out

    def load_adapter(self, name: str, path: str) -> None:
        self.adapters[name] = str(path)

    def unload_adapter(self, name: str) -> None:
        self.adapters.pop(name, None)

    def release_memory(self) -> None:
        self.released += 1  # a real engine drops its KV cache here (engine.scheduler); tests count the calls

    def close(self) -> None:
        pass
