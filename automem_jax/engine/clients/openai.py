"""Engine backend for any OpenAI-compatible chat-completions endpoint (used e.g. by the structure proposer)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from automem_jax.engine.base import Completion, EngineError, Request
from automem_jax.engine.clients.http_util import JsonHttp


class OpenAIClient:
    """`base_url` includes the API prefix (e.g. http://host:8000/v1). The API key is read from the environment
    variable named by `api_key_env` (never from config files). An adapter is addressed as model "base:adapter"
    (SGLang's convention); adapters are loaded server-side, so load/unload are not supported here.

    Constrained decoding (sampling.regex) is not part of the OpenAI API: `regex_param` names the request field of
    an endpoint that has it ("regex" for SGLang, "guided_regex" for vLLM); without it a request with a regex fails
    with an error saying so (its reply would not be constrained)."""

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY", *,
                 timeout: float = 300.0, retries: int = 3, backoff: float = 1.0, max_concurrency: int = 32,
                 regex_param: str | None = None):
        headers = {}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if key:
                headers["Authorization"] = f"Bearer {key}"
        self.model, self.regex_param = model, regex_param
        self.http = JsonHttp(base_url, timeout=timeout, retries=retries, backoff=backoff, headers=headers,
                             pool_size=max_concurrency)
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="openai-client")

    def _payload(self, req: Request) -> dict[str, Any]:
        if req.messages is None:
            raise EngineError("OpenAIClient: requests need chat messages (prompt_ids are not supported by "
                              "chat-completions)")
        sp = req.sampling
        payload: dict[str, Any] = {"model": self.model if req.adapter is None else f"{self.model}:{req.adapter}",
                                   "messages": list(req.messages), "max_tokens": sp.max_new_tokens,
                                   "temperature": sp.temperature, "top_p": sp.top_p}
        if sp.stop:
            payload["stop"] = list(sp.stop)
        if sp.seed is not None:
            payload["seed"] = sp.seed
        # SGLang's extensions of the OpenAI body, sent only when used (other servers may refuse unknown fields)
        if sp.top_k > 0:
            payload["top_k"] = sp.top_k
        if sp.stop_token_ids:
            payload["stop_token_ids"] = list(sp.stop_token_ids)
        if sp.regex is not None:
            if not self.regex_param:
                raise EngineError("OpenAIClient: sampling.regex (a constrained phase) but this endpoint has no regex "
                                  "structured output configured: set engine.openai_regex_param to 'regex' (SGLang) or "
                                  "'guided_regex' (vLLM), or turn constrained off in the spec (OpenAI's own API "
                                  "cannot constrain to a regex)")
            payload[self.regex_param] = sp.regex
        return payload

    def _one(self, req: Request) -> Completion:
        try:
            out = self.http.post("/chat/completions", self._payload(req))
            try:
                choice = out["choices"][0]
                text = choice["message"].get("content") or ""
            except (KeyError, IndexError, TypeError) as e:
                raise EngineError(f"chat-completions answer has no choices[0].message: {str(out)[:300]}") from e
            usage = out.get("usage") or {}
            return Completion(text=text, token_ids=[], rid=req.rid,
                              finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
                              prompt_tokens=int(usage.get("prompt_tokens", 0)),
                              completion_tokens=int(usage.get("completion_tokens", 0)))
        except EngineError as e:
            return Completion(text="", token_ids=[], finish_reason="error", error=str(e), rid=req.rid)

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        return list(self._pool.map(self._one, requests))

    def stream(self, req: Request, on_text: Callable[[str], None] | None = None) -> Completion:
        """One chat request streamed (`"stream": true`): on_text gets each content delta; returns the Completion
        (usage from the server's usage chunk, asked for with stream_options.include_usage)."""
        try:
            payload = self._payload(req)
            payload.update(stream=True, stream_options={"include_usage": True})
            parts, finish, used = [], "stop", {}
            for event in self.http.stream("/chat/completions", payload):
                for choice in event.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") or ""
                    if piece:
                        parts.append(piece)
                        if on_text is not None:
                            on_text(piece)
                    finish = choice.get("finish_reason") or finish
                used = event.get("usage") or used
        except EngineError as e:
            return Completion(text="", token_ids=[], finish_reason="error", error=str(e), rid=req.rid)
        return Completion(text="".join(parts), token_ids=[], rid=req.rid,
                          finish_reason="length" if finish == "length" else "stop",
                          prompt_tokens=int(used.get("prompt_tokens", 0)),
                          completion_tokens=int(used.get("completion_tokens", 0)))

    def load_adapter(self, name: str, path: str) -> None:
        raise EngineError("OpenAIClient cannot load adapters; load them on the server and use model 'base:name'")

    def unload_adapter(self, name: str) -> None:
        raise EngineError("OpenAIClient cannot unload adapters; manage them on the server")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.http.close()
