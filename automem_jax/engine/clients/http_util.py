"""Shared HTTP plumbing for the SGLang and OpenAI clients: pooled session, timeouts, retries with backoff, and
server-sent-event streams (`data: {...}` lines ending with `data: [DONE]`, as SGLang and OpenAI stream)."""
from __future__ import annotations

import json
import time
from typing import Any, Iterator

import requests
from requests.adapters import HTTPAdapter

from automem_jax.engine.base import EngineError


class NotFound(EngineError):
    """HTTP 404: the route (or model) does not exist on this server."""


class JsonHttp:
    """POST/GET JSON with connection pooling; retries connection errors and 5xx with exponential backoff.

    4xx is never retried (the request itself is bad). Every failure raises EngineError naming the URL, the HTTP
    status and the response body (NotFound for a 404), so a dead or broken server is a clear error after at most
    (retries + 1) * timeout + backoff seconds, never a hang.
    """

    def __init__(self, base_url: str, *, timeout: float = 120.0, retries: int = 3, backoff: float = 0.5,
                 pool_size: int = 64, headers: dict[str, str] | None = None):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        if headers:
            self.session.headers.update(headers)

    def _send(self, method: str, path: str, payload: Any, timeout: float | None, stream: bool) -> requests.Response:
        """The first answer below 500 (raising EngineError for 4xx), retrying connection errors and 5xx."""
        url = f"{self.base_url}{path}"
        timeout = self.timeout if timeout is None else timeout
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                resp = self.session.request(method, url, json=payload, timeout=timeout, stream=stream)
            except requests.Timeout:
                last = f"no answer within timeout={timeout}s"
                continue
            except requests.ConnectionError as e:
                last = f"connection failed ({type(e).__name__}: {_short(str(e))}); is the server running?"
                continue
            if resp.status_code >= 500:
                last = f"HTTP {resp.status_code}: {_short(resp.text)}"
                continue
            if resp.status_code >= 400:
                kind = NotFound if resp.status_code == 404 else EngineError
                raise kind(f"{method} {url} -> HTTP {resp.status_code}: {_short(resp.text)}")
            return resp
        raise EngineError(f"{method} {url} failed after {self.retries + 1} attempt(s): {last}")

    def request(self, method: str, path: str, payload: Any = None, *, timeout: float | None = None) -> Any:
        resp = self._send(method, path, payload, timeout, stream=False)
        try:
            return resp.json() if resp.content else None
        except ValueError as e:
            raise EngineError(f"{method} {resp.url} -> HTTP {resp.status_code}: body is not JSON: "
                              f"{_short(resp.text)}") from e

    def stream(self, path: str, payload: Any, *, timeout: float | None = None) -> Iterator[Any]:
        """POST and yield each server-sent event's JSON until `data: [DONE]`. An event {"error": {...}} (how SGLang
        reports a failure once the stream has begun) raises EngineError; so does a stream cut before [DONE]."""
        resp = self._send("POST", path, payload, timeout, stream=True)
        url = resp.url
        try:
            for line in resp.iter_lines():
                if not line or not line.startswith(b"data:"):
                    continue  # blank separators and ": comment" keep-alives
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                try:
                    event = json.loads(data)
                except ValueError as e:
                    raise EngineError(f"POST {url}: stream event is not JSON: {_short(data.decode(errors='replace'))}"
                                      ) from e
                if isinstance(event, dict) and isinstance(event.get("error"), dict):
                    raise EngineError(f"POST {url}: the server reported an error mid-stream: "
                                      f"{_short(str(event['error'].get('message', event['error'])))}")
                yield event
        except requests.RequestException as e:
            raise EngineError(f"POST {url}: stream broke ({type(e).__name__}: {_short(str(e))})") from e
        finally:
            resp.close()
        raise EngineError(f"POST {url}: the stream ended without data: [DONE]")

    def post(self, path: str, payload: Any, **kw) -> Any:
        return self.request("POST", path, payload, **kw)

    def get(self, path: str, **kw) -> Any:
        return self.request("GET", path, **kw)

    def get_first(self, *paths: str, **kw) -> Any:
        """GET the first of `paths` that exists (a newer route, then its deprecated alias)."""
        for path in paths[:-1]:
            try:
                return self.get(path, **kw)
            except NotFound:
                continue
        return self.get(paths[-1], **kw)

    def close(self) -> None:
        self.session.close()


def _short(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
