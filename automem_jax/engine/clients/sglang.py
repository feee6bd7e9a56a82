"""Engine backend speaking SGLang's native HTTP API (a real `sglang.launch_server --enable-lora`, or ours).

It reads the answers of both: SGLang 0.5's shapes, which ours follow, and the fields older servers (and our earlier
one) sent; `model_info` asks /model_info and falls back to the deprecated /get_model_info."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from automem_jax.engine.base import Completion, EngineError, Request, SamplingParams
from automem_jax.engine.clients.http_util import JsonHttp


def sampling_to_sglang(sp: SamplingParams) -> dict[str, Any]:
    out: dict[str, Any] = {"max_new_tokens": sp.max_new_tokens, "temperature": sp.temperature, "top_p": sp.top_p,
                           "top_k": sp.top_k if sp.top_k > 0 else -1}
    if sp.stop:
        out["stop"] = list(sp.stop)
    if sp.stop_token_ids:
        out["stop_token_ids"] = list(sp.stop_token_ids)
    if sp.seed is not None:
        out["sampling_seed"] = sp.seed
    if sp.regex is not None:  # SGLang's constrained decoding parameter (grammar backend on the server)
        out["regex"] = sp.regex
    return out


def completion_from_sglang(item: dict[str, Any], rid: str | None) -> Completion:
    """A /generate answer (or the last chunk of its stream). finish_reason is SGLang's {type, matched | length |
    message} object, or a bare string from servers that send one."""
    if isinstance(item.get("error"), dict):  # SGLang's error body
        return Completion(text="", token_ids=[], finish_reason="error", rid=rid,
                          error=f"server error: {item['error'].get('message', item['error'])}")
    meta = item.get("meta_info") or {}
    fr = meta.get("finish_reason") or {}
    kind = fr.get("type") if isinstance(fr, dict) else str(fr)
    ids = list(item.get("output_ids") or [])
    if kind == "abort":
        return Completion(text="", token_ids=ids, finish_reason="error", rid=rid,
                          error=f"server aborted the request: {fr.get('message', fr) if isinstance(fr, dict) else fr}")
    meta_out = {"matched_stop": fr.get("matched") if isinstance(fr, dict) else None,
                "e2e_latency": meta.get("e2e_latency")}
    for key in ("output_token_logprobs", "output_top_logprobs", "input_token_logprobs", "input_top_logprobs"):
        if key in meta:
            meta_out[key] = meta[key]
    return Completion(text=item.get("text", ""), token_ids=ids, finish_reason="length" if kind == "length" else "stop",
                      prompt_tokens=int(meta.get("prompt_tokens", 0)),
                      completion_tokens=int(meta.get("completion_tokens", len(ids))),
                      cached_tokens=int(meta.get("cached_tokens", 0)), rid=rid, meta=meta_out)


class SGLangClient:
    """`generate` sends each request as its own POST /generate, all in parallel from a thread pool (the server
    batches them); a failed request becomes a Completion with finish_reason "error" and the reason."""

    def __init__(self, base_url: str = "http://127.0.0.1:30000", *, timeout: float = 300.0, retries: int = 3,
                 backoff: float = 0.5, max_concurrency: int = 256, tokenizer: Any = None):
        self.http = JsonHttp(base_url, timeout=timeout, retries=retries, backoff=backoff,
                             pool_size=min(max_concurrency, 1024))
        self.tokenizer = tokenizer
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="sglang-client")

    def _payload(self, req: Request) -> dict[str, Any]:
        payload: dict[str, Any] = {"sampling_params": sampling_to_sglang(req.sampling)}
        if req.prompt_ids is not None:
            payload["input_ids"] = [int(t) for t in req.prompt_ids]
        elif self.tokenizer is not None:
            payload["input_ids"] = list(self.tokenizer.apply_chat_template(list(req.messages)))
        else:
            raise EngineError("SGLangClient: request has chat messages but no tokenizer was given; pass "
                              "tokenizer= to render them, or send prompt_ids")
        if req.adapter is not None:
            payload["lora_path"] = req.adapter
        if req.rid is not None:
            payload["rid"] = req.rid
        return payload

    def _one(self, req: Request) -> Completion:
        try:
            item = self.http.post("/generate", self._payload(req))
            if not isinstance(item, dict):
                raise EngineError(f"POST {self.http.base_url}/generate returned {type(item).__name__}, expected an "
                                  "object with text/output_ids/meta_info")
            return completion_from_sglang(item, req.rid)
        except EngineError as e:
            return Completion(text="", token_ids=[], finish_reason="error", error=str(e), rid=req.rid)

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        return list(self._pool.map(self._one, requests))

    def stream(self, req: Request, on_text: Callable[[str], None] | None = None) -> Completion:
        """One request as a stream (`"stream": true`): on_text gets each new piece of text as the server sends it
        (SGLang streams the text so far; this passes on what is new); returns the final Completion."""
        payload = self._payload(req)
        payload["stream"] = True
        sent, last = "", None
        try:
            for event in self.http.stream("/generate", payload):
                last = event
                text = event.get("text", "") if isinstance(event, dict) else ""
                if on_text is not None and text.startswith(sent) and len(text) > len(sent):
                    on_text(text[len(sent):])
                    sent = text
        except EngineError as e:
            return Completion(text="", token_ids=[], finish_reason="error", error=str(e), rid=req.rid)
        if not isinstance(last, dict):
            return Completion(text="", token_ids=[], finish_reason="error", rid=req.rid,
                              error=f"POST {self.http.base_url}/generate: the stream carried no result")
        return completion_from_sglang(last, req.rid)

    def load_adapter(self, name: str, path: str) -> None:
        out = self.http.post("/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        if isinstance(out, dict) and out.get("success") is False:
            raise EngineError(f"load_lora_adapter {name!r} from {path}: {_update_error(out)}")

    def unload_adapter(self, name: str) -> None:
        out = self.http.post("/unload_lora_adapter", {"lora_name": name})
        if isinstance(out, dict) and out.get("success") is False:
            raise EngineError(f"unload_lora_adapter {name!r}: {_update_error(out)}")

    def model_info(self) -> dict[str, Any]:
        """GET /model_info (SGLang >= 0.5), else the deprecated /get_model_info of older servers."""
        return self.http.get_first("/model_info", "/get_model_info")

    def server_info(self) -> dict[str, Any]:
        return self.http.get_first("/server_info", "/get_server_info")

    def health(self) -> bool:
        try:
            self.http.request("GET", "/health", timeout=min(self.http.timeout, 5.0))
            return True
        except EngineError:
            return False

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.http.close()


def _update_error(out: dict[str, Any]) -> Any:
    """The reason of a failed LoRA update: SGLang's error_message, or the message field older servers sent."""
    return out.get("error_message") or out.get("message")
