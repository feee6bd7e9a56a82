"""SGLang-compatible HTTP server around the JAX engine (stdlib only).

`python -m automem_jax.engine.server --model=DIR_or_preset --port=N [--lora=name=path ...]`

Endpoints (SGLang native): POST /generate (text|input_ids, single or list; sampling_params; lora_path; rid),
POST /load_lora_adapter {lora_name, lora_path}, POST /unload_lora_adapter {lora_name}, GET /health,
GET /get_model_info, GET /v1/models, POST /v1/chat/completions (model "base" or "base:adapter").

Handler threads never touch the engine: they enqueue jobs, and one collector thread drains the queue every few
milliseconds and runs everything it found as ONE engine.generate batch (continuous batching happens inside).
"""
from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from absl import app, flags, logging

from automem_jax.engine.base import Completion, EngineError, Request, SamplingParams


class BadRequest(ValueError):
    pass


def sampling_from_sglang(d: dict[str, Any] | None) -> SamplingParams:
    d = dict(d or {})
    stop = d.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    top_k = int(d.get("top_k", -1) if d.get("top_k") is not None else -1)
    seed = d.get("sampling_seed", d.get("seed"))
    try:
        return SamplingParams(temperature=float(d.get("temperature", 1.0)), top_p=float(d.get("top_p", 1.0)),
                              top_k=max(top_k, 0), max_new_tokens=int(d.get("max_new_tokens", 128)), stop=stop,
                              stop_token_ids=tuple(int(t) for t in d.get("stop_token_ids") or ()),
                              seed=None if seed is None else int(seed))
    except (TypeError, ValueError) as e:
        raise BadRequest(f"sampling_params: {e}") from e


def completion_to_sglang(c: Completion) -> dict[str, Any]:
    if c.finish_reason == "error":
        fr: dict[str, Any] = {"type": "abort", "message": c.error}
    elif c.finish_reason == "length":
        fr = {"type": "length", "length": c.completion_tokens}
    else:
        fr = {"type": "stop", "matched": c.meta.get("matched_stop")}
    return {"text": c.text, "output_ids": c.token_ids,
            "meta_info": {"id": c.rid, "finish_reason": fr, "prompt_tokens": c.prompt_tokens,
                          "completion_tokens": c.completion_tokens, "cached_tokens": c.cached_tokens,
                          "e2e_latency": c.meta.get("e2e_latency")}}


class Batcher:
    """Collects requests from many handler threads into engine.generate batches."""

    def __init__(self, engine: Any, wait_s: float = 0.005):
        self.engine, self.wait_s = engine, wait_s
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="engine-collector", daemon=True)
        self._thread.start()

    def submit(self, requests: list[Request]) -> list[Completion]:
        job = {"requests": requests, "event": threading.Event(), "result": None}
        self._queue.put(job)
        job["event"].wait()
        if isinstance(job["result"], BaseException):
            raise job["result"]
        return job["result"]

    def _loop(self) -> None:
        while True:
            jobs = [self._queue.get()]
            deadline = time.monotonic() + self.wait_s
            while (left := deadline - time.monotonic()) > 0:
                try:
                    jobs.append(self._queue.get(timeout=left))
                except queue.Empty:
                    break
            reqs = [r for j in jobs for r in j["requests"]]
            try:
                out = self.engine.generate(reqs)
            except Exception as e:  # the engine itself broke: every waiting request gets the error
                logging.exception("engine.generate failed")
                for j in jobs:
                    j["result"] = EngineError(f"engine failure: {type(e).__name__}: {e}")
                    j["event"].set()
                continue
            i = 0
            for j in jobs:
                j["result"], i = out[i:i + len(j["requests"])], i + len(j["requests"])
                j["event"].set()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "EngineHTTPServer"

    def log_message(self, fmt, *args):  # route through absl at debug level
        logging.debug("http: " + fmt, *args)

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, message: str) -> None:
        self._send(code, {"error": {"message": message, "code": code}, "success": False, "message": message})

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        try:
            return json.loads(self.rfile.read(n) or b"{}")
        except json.JSONDecodeError as e:
            raise BadRequest(f"request body is not valid JSON: {e}") from e

    def do_GET(self):
        srv = self.server
        if self.path in ("/health", "/health_generate"):
            self._send(200, b"")
        elif self.path == "/get_model_info":
            self._send(200, srv.model_info())
        elif self.path == "/v1/models":
            names = [srv.model_name] + [f"{srv.model_name}:{a}" for a in srv.engine.adapters]
            self._send(200, {"object": "list", "data": [{"id": n, "object": "model"} for n in names]})
        else:
            self._error(404, f"unknown path {self.path}")

    def do_POST(self):
        try:
            body = self._body()
            route = {"/generate": self._generate, "/load_lora_adapter": self._load, "/unload_lora_adapter":
                     self._unload, "/v1/chat/completions": self._chat}.get(self.path)
            if route is None:
                return self._error(404, f"unknown path {self.path}")
            route(body)
        except BadRequest as e:
            self._error(400, str(e))
        except EngineError as e:
            self._error(500, str(e))

    # ------------------------------------------------------------------ routes
    def _generate(self, body: dict[str, Any]) -> None:
        if not isinstance(body, dict):
            raise BadRequest("/generate body must be a JSON object")
        text, ids = body.get("text"), body.get("input_ids")
        if (text is None) == (ids is None):
            raise BadRequest("/generate needs exactly one of 'text' or 'input_ids'")
        batched = isinstance(text, list) or (isinstance(ids, list) and ids and isinstance(ids[0], list))
        prompts = (text if isinstance(text, list) else [text]) if text is not None else (ids if batched else [ids])
        n = len(prompts)
        tok = self.server.engine.tokenizer

        def per_item(key: str, default=None) -> list:
            v = body.get(key, default)
            if isinstance(v, list) and (key != "sampling_params" or batched):
                if len(v) != n:
                    raise BadRequest(f"/generate: '{key}' has {len(v)} entries for {n} prompts")
                return v
            return [v] * n

        reqs = []
        for p, sp, lora, rid in zip(prompts, per_item("sampling_params"), per_item("lora_path"), per_item("rid")):
            if text is not None:
                if tok is None:
                    raise BadRequest("this server has no tokenizer (preset model); send input_ids")
                p = tok.encode(p)
            reqs.append(Request(prompt_ids=list(p), sampling=sampling_from_sglang(sp), adapter=lora,
                                rid=rid if rid is not None else uuid.uuid4().hex))
        out = [completion_to_sglang(c) for c in self.server.batcher.submit(reqs)]
        if not batched and out[0]["meta_info"]["finish_reason"]["type"] == "abort":
            return self._error(400, out[0]["meta_info"]["finish_reason"]["message"])
        self._send(200, out if batched else out[0])

    def _load(self, body: dict[str, Any]) -> None:
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            raise BadRequest("/load_lora_adapter needs 'lora_name' and 'lora_path'")
        try:
            self.server.engine.load_adapter(name, path)
        except EngineError as e:
            raise BadRequest(str(e)) from e
        self._send(200, {"success": True, "message": f"loaded {name}", "loaded_adapters":
                         sorted(self.server.engine.adapters)})

    def _unload(self, body: dict[str, Any]) -> None:
        name = body.get("lora_name")
        if not name:
            raise BadRequest("/unload_lora_adapter needs 'lora_name'")
        try:
            self.server.engine.unload_adapter(name)
        except EngineError as e:
            raise BadRequest(str(e)) from e
        self._send(200, {"success": True, "message": f"unloaded {name}"})

    def _chat(self, body: dict[str, Any]) -> None:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("/v1/chat/completions needs a non-empty 'messages' list")
        model = str(body.get("model") or self.server.model_name)
        adapter = model.split(":", 1)[1] if ":" in model else None
        stop = body.get("stop") or ()
        sp = sampling_from_sglang({
            "max_new_tokens": body.get("max_completion_tokens") or body.get("max_tokens") or 128,
            "temperature": body.get("temperature", 1.0), "top_p": body.get("top_p", 1.0),
            "top_k": body.get("top_k", -1), "stop": stop, "seed": body.get("seed")})
        c = self.server.batcher.submit([Request(messages=messages, sampling=sp, adapter=adapter)])[0]
        if c.finish_reason == "error":
            return self._error(400, c.error or "error")
        self._send(200, {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                         "model": model, "choices": [{"index": 0, "finish_reason": c.finish_reason,
                                                      "message": {"role": "assistant", "content": c.text}}],
                         "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                                   "total_tokens": c.prompt_tokens + c.completion_tokens}})


class EngineHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, engine: Any, host: str = "127.0.0.1", port: int = 30000, *, model_name: str = "default",
                 model_path: str = "", batch_wait_s: float = 0.005):
        super().__init__((host, port), _Handler)
        self.engine, self.model_name, self.model_path = engine, model_name, model_path
        self.batcher = Batcher(engine, batch_wait_s)

    def model_info(self) -> dict[str, Any]:
        e = self.engine
        return {"model_path": self.model_path, "tokenizer_path": self.model_path, "is_generation": True,
                "served_model_name": self.model_name, "max_batch": e.max_batch, "max_seq_len": e.max_seq_len,
                "max_loras": e.max_loras, "loaded_adapters": sorted(e.adapters)}

    def serve_in_thread(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, name="engine-http", daemon=True)
        t.start()
        return t


FLAGS = flags.FLAGS


def define_flags() -> None:
    """CLI flags (defined only when run as a program, so importing this module defines no flags)."""
    flags.DEFINE_string("model", None, "HF model directory or preset name (random weights)")
    flags.DEFINE_string("host", "127.0.0.1", "bind address")
    flags.DEFINE_integer("port", 30000, "port")
    flags.DEFINE_multi_string("lora", [], "adapter to load at start, name=path (repeatable)")
    flags.DEFINE_integer("max_batch", 64, "KV-cache slots (concurrent sequences)")
    flags.DEFINE_integer("max_seq_len", 4096, "prompt + completion tokens per sequence")
    flags.DEFINE_integer("max_loras", 4, "LoRA slots")
    flags.DEFINE_integer("max_lora_rank", 64, "LoRA slot rank (adapters of lower rank are zero-padded)")
    flags.DEFINE_list("lora_target_modules", None, "LoRA target modules (default: all projections)")
    flags.DEFINE_integer("decode_steps", 8, "decode steps per device call")
    flags.DEFINE_integer("max_prefill_tokens", 1 << 15, "new tokens (rows x prompt bucket) per prefill call")
    flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "weights / compute dtype")
    flags.DEFINE_float("batch_wait_ms", 5.0, "how long the collector waits to grow a batch")


def main(argv):
    del argv
    import jax.numpy as jnp

    from automem_jax.engine.jax_engine import JaxEngine
    if not FLAGS.model:
        raise app.UsageError("--model=DIR_or_preset is required")
    dtype = jnp.bfloat16 if FLAGS.dtype == "bfloat16" else jnp.float32
    engine = JaxEngine(FLAGS.model, max_batch=FLAGS.max_batch, max_seq_len=FLAGS.max_seq_len,
                       max_loras=FLAGS.max_loras, max_lora_rank=FLAGS.max_lora_rank,
                       lora_target_modules=FLAGS.lora_target_modules, decode_steps=FLAGS.decode_steps, dtype=dtype,
                       max_prefill_tokens=FLAGS.max_prefill_tokens)
    for spec in FLAGS.lora:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise app.UsageError(f"--lora={spec!r}: expected name=path")
        engine.load_adapter(name, path)
    name = FLAGS.model.rstrip("/").split("/")[-1]
    server = EngineHTTPServer(engine, FLAGS.host, FLAGS.port, model_name=name, model_path=FLAGS.model,
                              batch_wait_s=FLAGS.batch_wait_ms / 1000)
    logging.info("serving %s on http://%s:%d", FLAGS.model, FLAGS.host, FLAGS.port)
    print(f"READY http://{FLAGS.host}:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    define_flags()
    app.run(main)
