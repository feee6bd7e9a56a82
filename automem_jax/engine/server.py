"""SGLang-compatible HTTP server around the JAX engine.

`python -m automem_jax.engine.server [--model=embedded|DIR|preset] [--port=30000] [--lora=name=path ...]`

Routes (SGLang 0.5 field names and response shapes): POST/PUT /generate (text | input_ids, one or a list;
sampling_params incl. regex; lora_path; rid; stream; return_logprob / logprob_start_len / top_logprobs_num /
return_text_in_logprobs), POST /v1/completions, POST /v1/chat/completions (model "base", "base:adapter" or an
adapter id; stream, stream_options.include_usage, logprobs / top_logprobs, regex), GET /v1/models[/<id>] (adapters
as their own ids, parent = the base model, root = their path), POST /load_lora_adapter, POST /unload_lora_adapter,
GET|POST /flush_cache, GET /model_info and /server_info (and the deprecated /get_model_info, /get_server_info),
GET /health and /health_generate (200 only once a 1-token generation went through; 503 while warming up).
Streams are server-sent events, `data: {...}` chunks and `data: [DONE]`, as SGLang sends them.

Why the standard library (http.server + hand-written chunked SSE) and not FastAPI + uvicorn as SGLang uses:
- no new dependencies: the GPU hosts have no network, so every wheel (fastapi, starlette, uvicorn, h11, anyio, ...)
  would have to be carried there, for a server whose heavy work is one engine owned by one thread;
- the engine is driven by one collector thread (engine/serving.py), so an event loop would add nothing: a thread
  per connection waits on its job, and streaming is HTTP/1.1 chunked transfer encoding (a dozen lines here);
- every malformed request is ours to answer: a bad Content-Length, a body that is not UTF-8 or not JSON, a wrong
  field type all get a 400 that names the header or field (framework validators answer some of these generically).
The price is a thread per open connection, fine for the tens to hundreds of clients an agent run opens (the listen
backlog holds 256).

Safety: /load_lora_adapter reads any path this process can read, so the server binds 127.0.0.1 by default and
refuses another --host unless --allow_remote is given.
"""
from __future__ import annotations

import ipaddress
import json
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from absl import logging

from automem_jax.engine import config as engine_config
from automem_jax.engine import server_requests as rq
from automem_jax.engine import server_responses as rs
from automem_jax.engine.base import EngineError
from automem_jax.engine.serving import Batcher, Job

MAX_BODY_BYTES = 32 << 20
READ_TIMEOUT_S = 30.0  # a client that announces a body and never sends it frees its thread after this
HEALTH_TIMEOUT_S = 20.0  # as SGLang's SGLANG_HEALTH_CHECK_TIMEOUT
POLL_S = 0.1  # how often a waiting handler checks that its client is still connected
VERSION = "automem-jax-0.1.0 (SGLang 0.5 API)"


class EngineHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # listen backlog: bursts of concurrent clients are queued, not refused

    def handle_error(self, request, client_address) -> None:
        """A client that resets or stalls its connection is routine, not a server error with a traceback."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            logging.debug("client %s went away: %s", client_address, sys.exc_info()[1])
            return
        super().handle_error(request, client_address)

    def __init__(self, engine: Any, host: str = "127.0.0.1", port: int = 30000, *, model_name: str = "default",
                 model_path: str = "", batch_wait_s: float = 0.005, server_args: dict[str, Any] | None = None,
                 read_timeout_s: float = READ_TIMEOUT_S):
        self.read_timeout_s = read_timeout_s
        super().__init__((host, port), _Handler)
        self.engine, self.model_name, self.model_path = engine, model_name, model_path
        self.server_args = dict(server_args or {})
        self.batcher = Batcher(engine, batch_wait_s)
        self.ready = threading.Event()  # set after the warm-up: /health answers 503 until then
        self.adapter_paths: dict[str, str] = {}
        self.warmup_s: float | None = None
        tok = engine.tokenizer
        cfg = engine.config
        self.limits = rq.Limits(vocab_size=cfg.vocab_size, max_seq_len=engine.max_seq_len, engine=engine.limits)
        self.encode = None if tok is None else (lambda text: list(tok.encode(text)))
        self.render = None if tok is None or not hasattr(tok, "apply_chat_template") else \
            (lambda msgs: list(tok.apply_chat_template(msgs, add_generation_prompt=True)))

    def decode(self, ids) -> str:
        tok = self.engine.tokenizer
        if tok is None:
            return ""
        try:  # SGLang's default: special tokens are not part of the text
            return tok.decode(list(ids), skip_special_tokens=True)
        except TypeError:
            return tok.decode(list(ids))

    def load_adapter(self, name: str, path: str) -> None:
        self.engine.load_adapter(name, path)
        self.adapter_paths[name] = str(path)

    def model_info(self) -> dict[str, Any]:
        e, cfg = self.engine, self.engine.config
        return {"model_path": self.model_path, "tokenizer_path": self.model_path, "is_generation": True,
                "preferred_sampling_params": None, "weight_version": "default", "has_image_understanding": False,
                "has_audio_understanding": False, "model_type": getattr(cfg, "model_type", None),
                "architectures": getattr(cfg, "architectures", None), "served_model_name": self.model_name,
                "max_batch": e.max_batch, "max_seq_len": e.max_seq_len, "max_loras": e.max_loras,
                "loaded_adapters": sorted(e.adapters)}

    def server_info(self) -> dict[str, Any]:
        e = self.engine
        stats = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in dict(getattr(e, "stats", {})).items()}
        return {**self.server_args, "model_path": self.model_path, "served_model_name": self.model_name,
                "context_length": e.max_seq_len, "max_running_requests": e.max_batch,
                "max_total_num_tokens": e.max_batch * e.max_seq_len, "max_req_input_len": e.max_seq_len - 1,
                "max_loras_per_batch": e.max_loras, "enable_lora": e.max_loras > 0,
                "internal_states": [{"engine_stats": stats, "jobs_done": self.batcher.jobs_done,
                                     "cancelled_requests": self.batcher.cancelled,
                                     "compiled_programs": dict(getattr(e, "compile_counts", {})),
                                     "warmup_s": self.warmup_s, "ready": self.ready.is_set()}],
                "version": VERSION}

    def model_cards(self) -> list[dict[str, Any]]:
        created = int(time.time())
        base = {"id": self.model_name, "object": "model", "created": created, "owned_by": "sglang",
                "root": self.model_name, "parent": None, "max_model_len": self.engine.max_seq_len}
        return [base] + [{"id": name, "object": "model", "created": created, "owned_by": "sglang",
                          "root": self.adapter_paths.get(name, name), "parent": self.model_name,
                          "max_model_len": None} for name in sorted(self.engine.adapters)]

    def serve_in_thread(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, name="engine-http", daemon=True)
        t.start()
        return t


class ClientGone(Exception):
    """The client closed its connection while its request ran; the request was cancelled."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "automem-jax"
    server: EngineHTTPServer

    def setup(self):
        self.timeout = self.server.read_timeout_s  # socket timeout: a stalled client's reads end, freeing the thread
        super().setup()

    def log_message(self, fmt, *args):  # route through absl at debug level
        logging.debug("http: " + fmt, *args)

    # ------------------------------------------------------------------------------------------ plumbing
    def send_error(self, code, message=None, explain=None):
        """Protocol-level errors of http.server (bad request line or headers, unknown method) as JSON, with a
        status line even for a request line that parsed as HTTP/0.9, and 405 (not 501) for an unknown method."""
        self.close_connection = True
        self.request_version = "HTTP/1.1"
        if code == 501:
            code, message = 405, f"Method Not Allowed: {self.command}"
        try:
            self._send(code, rs.native_error(f"{message or 'bad request'}" + (f": {explain}" if explain else "")))
        except OSError:
            pass

    def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else (body.encode() if isinstance(body, str) else
                                                     json.dumps(body).encode())
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, e: rq.BadRequest, openai: bool) -> None:
        body = rs.openai_error(str(e), e.status, e.param) if openai else rs.native_error(str(e))
        self._send(e.status, body)

    def _body(self, openai: bool) -> Any:
        """The request's JSON body. Checked on the way: framing (Content-Length, no chunked bodies), size, arrival
        within the read timeout, Content-Type for the OpenAI routes (as SGLang), UTF-8 and JSON. A connection whose
        body was not read to its end is closed after the answer."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise rq.BadRequest("header Transfer-Encoding: chunked request bodies are not supported; send the body "
                                "with a Content-Length", param="Transfer-Encoding", status=411)
        raw = self.headers.get("Content-Length")
        if raw is None:
            n = 0
        elif not raw.strip().isdigit():
            self.close_connection = True  # the body's end is unknown: this connection cannot be reused
            raise rq.BadRequest(f"header Content-Length: must be a non-negative integer, got {rq.short(raw)}",
                                param="Content-Length")
        else:
            n = int(raw)
        if n > MAX_BODY_BYTES:
            self.close_connection = True
            raise rq.BadRequest(f"request body: {n} bytes exceed the limit of {MAX_BODY_BYTES}", status=413)
        if openai and n:
            media = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
            if media != "application/json":
                self.close_connection = True  # its body is left unread
                raise rq.BadRequest(f"header Content-Type: only 'application/json' is accepted, got {media!r}",
                                    param="Content-Type")
        try:
            data = self.rfile.read(n) if n else b""
        except (TimeoutError, socket.timeout):
            self.close_connection = True
            raise rq.BadRequest(f"request body: the announced {n} bytes did not arrive within "
                                f"{self.server.read_timeout_s:g} s", status=408) from None
        if len(data) < n:
            self.close_connection = True
            raise rq.BadRequest(f"request body: {len(data)} of the announced {n} bytes arrived before the client "
                                "closed its side")
        return parse_json(data)

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _wait(self, job: Job) -> None:
        """Wait for a job, cancelling it (and raising ClientGone) if the client disconnects meanwhile."""
        while not job.done.wait(POLL_S):
            if self._client_gone():
                job.cancel()
                raise ClientGone()

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    # ------------------------------------------------------------------------------------------- dispatch
    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        path = self._path()
        route = _ROUTES.get(path)
        if route is None and path.startswith("/v1/models/"):
            route = {"GET": _Handler._get_model}
        openai = path.startswith("/v1/")
        if route is None:
            return self._send(404, {"detail": f"Not Found: {path}"})
        fn = route.get(method)
        if fn is None:
            self.close_connection = True  # the unread body (if any) would be taken for the next request
            return self._send(405, {"detail": f"Method Not Allowed: {method} {path}; use {' or '.join(route)}"})
        try:
            fn(self)
        except rq.BadRequest as e:
            self._error(e, openai)
        except ClientGone:
            self.close_connection = True
            logging.info("http: client of %s %s went away; request cancelled", method, path)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - a bug must answer 500, never drop the connection silently
            logging.exception("http: %s %s failed", method, path)
            self.close_connection = True
            self._error(rq.BadRequest(f"internal error: {type(e).__name__}: {e}", status=500), openai)

    # ------------------------------------------------------------------------------------------ GET routes
    def _health(self) -> None:
        if not self.server.ready.is_set():
            return self._send(503, b"")
        ok = self.server.batcher.probe(HEALTH_TIMEOUT_S)
        self._send(200 if ok else 503, b"")

    def _model_info(self) -> None:
        self._send(200, self.server.model_info())

    def _server_info(self) -> None:
        self._send(200, self.server.server_info())

    def _models(self) -> None:
        self._send(200, {"object": "list", "data": self.server.model_cards()})

    def _get_model(self) -> None:
        want = self._path()[len("/v1/models/"):]
        for card in self.server.model_cards():
            if card["id"] == want:
                return self._send(200, card)
        self._send(404, {"error": {"message": f"The model '{want}' does not exist", "type": "invalid_request_error",
                                   "param": "model", "code": "model_not_found"}})

    def _flush_cache(self) -> None:
        if self.command == "POST":
            self._body(False)  # read (and check) whatever was sent, so the connection stays usable
        flush = getattr(self.server.engine, "flush_cache", None)
        ok = bool(flush and flush())
        self._send(200 if ok else 400, "Cache flushed.\nPlease check backend logs for more details. (When there "
                   "are running or waiting requests, the operation will not be performed.)\n" if ok else
                   "Cache not flushed: requests are running; retry when idle.\n", "text/plain")

    # ------------------------------------------------------------------------------------------- adapters
    def _lora_result(self, ok: bool, error: str | None) -> None:
        self._send(200 if ok else 400, {"success": ok, "error_message": error,
                                        "loaded_adapters": {n: self.server.adapter_paths.get(n, "")
                                                            for n in sorted(self.server.engine.adapters)}})

    def _load(self) -> None:
        name, path = rq.lora_load(self._body(False))
        try:
            self.server.load_adapter(name, path)
        except (EngineError, OSError, ValueError) as e:
            return self._lora_result(False, f"lora_path: {e}")
        self._lora_result(True, None)

    def _unload(self) -> None:
        name = rq.lora_unload(self._body(False))
        try:
            self.server.engine.unload_adapter(name)
            self.server.adapter_paths.pop(name, None)
        except EngineError as e:
            return self._lora_result(False, f"lora_name: {e}")
        self._lora_result(True, None)

    # ----------------------------------------------------------------------------------------- generation
    def _submit(self, call: rq.Call) -> Job:
        loaded = self.server.engine.adapters
        for item in call.items:
            name = item.request.adapter
            if name is not None and name not in loaded:
                raise rq.BadRequest(f"lora_path: unknown adapter {name!r} (loaded: {sorted(loaded)}); load it with "
                                    "POST /load_lora_adapter first", param="lora_path")
        return self.server.batcher.submit(call.items, stream=call.stream)

    def _check_job(self, job: Job) -> None:
        if job.error is not None:
            raise rq.BadRequest(str(job.error), status=500)
        errors = [(i, c) for i, c in enumerate(job.results) if c.finish_reason == "error"]
        if errors and len(job.results) == 1:  # a single request the engine refused: SGLang answers 400
            raise rq.BadRequest(errors[0][1].error or "the engine refused the request")

    def _answer(self, call: rq.Call, stream: rs.StreamFormat, respond: Callable[[list], Any]) -> None:
        """Run a call; answer with the stream, or with respond([(completion, item, scores), ...])."""
        job = self._submit(call)
        if call.stream:
            return self._stream(job, call, stream)
        self._wait(job)
        self._check_job(job)
        self._send(200, respond(list(zip(job.results, call.items, job.scores))))

    def _generate(self) -> None:
        s = self.server
        call = rq.generate(self._body(False), s.limits, s.encode)

        def respond(done: list) -> Any:
            out = [rs.native(c, item, scores, s.decode) for c, item, scores in done]
            return out if call.batched else out[0]
        self._answer(call, rs.NativeStream(s.decode, call), respond)

    def _completions(self) -> None:
        s = self.server
        call = rq.completions(self._body(True), s.limits, s.encode, s.model_name, list(s.engine.adapters))
        call_id = rs.new_id("cmpl")
        self._answer(call, rs.CompletionStream(s.decode, call, call_id),
                     lambda done: rs.completion_response(call_id, call.model, done, s.decode))

    def _chat(self) -> None:
        s = self.server
        call = rq.chat(self._body(True), s.limits, s.render, s.model_name, list(s.engine.adapters))
        call_id = rs.new_id("chatcmpl")
        self._answer(call, rs.ChatStream(s.decode, call, call_id),
                     lambda done: rs.chat_response(call_id, call.model, *done[0], s.decode))

    # --------------------------------------------------------------------------------------------- streams
    def _chunk(self, payload: Any) -> None:
        data = b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload).encode()) + b"\n\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _stream(self, job: Job, call: rq.Call, fmt: rs.StreamFormat) -> None:
        """Server-sent events over chunked transfer encoding: a chunk per engine step with new text, the final
        chunk(s) of each item, then `data: [DONE]`. A write to a closed connection cancels the job."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for payload in fmt.opening():
                self._chunk(payload)
            while True:
                finished = job.done.wait(POLL_S)
                while not job.events.empty():
                    i, ids = job.events.get()
                    for payload in fmt.tokens(i, ids):
                        self._chunk(payload)
                if finished:
                    break
                if self._client_gone():
                    raise ClientGone()
            if job.error is not None:
                self._chunk({"error": {"message": str(job.error)}})
            else:
                for payload in fmt.closing(job):
                    self._chunk(payload)
            self._chunk(b"[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ClientGone):
            job.cancel()
            raise ClientGone() from None


def parse_json(data: bytes) -> Any:
    """A request body -> JSON value; every failure a BadRequest saying what is wrong with the body."""
    if not data.strip():
        return {}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise rq.BadRequest(f"request body: not valid UTF-8 (byte {data[e.start]:#04x} at offset {e.start})") \
            from None

    def constant(name: str) -> Any:
        raise rq.BadRequest(f"request body: {name} is not a JSON number; send a finite number")
    try:
        return json.loads(text, parse_constant=constant)
    except json.JSONDecodeError as e:
        raise rq.BadRequest(f"request body: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") \
            from None
    except RecursionError:
        raise rq.BadRequest("request body: JSON nested too deeply") from None


_Route = dict[str, Callable[[_Handler], None]]
_ROUTES: dict[str, _Route] = {
    "/health": {"GET": _Handler._health}, "/health_generate": {"GET": _Handler._health},
    "/model_info": {"GET": _Handler._model_info}, "/get_model_info": {"GET": _Handler._model_info},
    "/server_info": {"GET": _Handler._server_info}, "/get_server_info": {"GET": _Handler._server_info},
    "/v1/models": {"GET": _Handler._models},
    "/flush_cache": {"GET": _Handler._flush_cache, "POST": _Handler._flush_cache},
    "/generate": {"POST": _Handler._generate, "PUT": _Handler._generate},
    "/v1/completions": {"POST": _Handler._completions},
    "/v1/chat/completions": {"POST": _Handler._chat},
    "/load_lora_adapter": {"POST": _Handler._load},
    "/unload_lora_adapter": {"POST": _Handler._unload},
}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------------------ CLI
# The engine's flags are EngineConfig's (engine/config.py define_flags), with its defaults, except where a platform
# has measured values of its own, which a flag left unset takes. On a CPU (the embedded model on 2 cores): float32
# (XLA's CPU bfloat16 is emulated: ~10 s per 4-row decode step against 0.2 s), 4 slots (64 slots cost ~3.5 s per
# step and a 12 GB float32 cache), a 2048-token context, one prompt per prefill call from a 16-token bucket up
# (a prefill costs its padded tokens; one program per bucket instead of one per rows x bucket: fewer compiles, and
# a CPU gains nothing from batching prefills), and rank-64 LoRA slots (every row computes each projection's LoRA
# term, adapter or not: rank 256 made 32-token replies 1.6-1.8x slower than rank 64; its 4 slots hold 1.2 GB).
PLATFORM_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": dict(dtype="float32", max_batch=4, max_seq_len=2048, min_prefill_bucket=16, max_prefill_tokens=16,
                max_lora_rank=64),
}
WARM_PROMPT_TOKENS = 128  # the warm-up compiles the prefill buckets up to this many prompt tokens


def define_flags(flag_values=None) -> None:
    """CLI flags (defined only when run as a program, so importing this module defines no flags): the server's
    own, then the engine's (engine.config.define_flags)."""
    from absl import flags
    fv = flags.FLAGS if flag_values is None else flag_values
    flags.DEFINE_string("model", "embedded", "'embedded' (SmolLM2-135M-Instruct), an HF model directory, or a "
                        "preset name (random weights, no tokenizer)", flag_values=fv)
    flags.DEFINE_string("served_model_name", None, "model id in /v1/models (default: the model directory's name)",
                        flag_values=fv)
    flags.DEFINE_string("host", "127.0.0.1", "bind address; anything but loopback needs --allow_remote",
                        flag_values=fv)
    flags.DEFINE_bool("allow_remote", False, "allow a non-loopback --host: anyone who can reach the port can load "
                      "adapters from any path this process can read", flag_values=fv)
    flags.DEFINE_integer("port", 30000, "port (0 = any free port; READY prints the URL)", flag_values=fv)
    flags.DEFINE_multi_string("lora", [], "adapter to load at start, name=path (repeatable)", flag_values=fv)
    flags.DEFINE_float("batch_wait_ms", 5.0, "how long the collector waits to grow a batch", flag_values=fv)
    flags.DEFINE_bool("warmup", True, "compile the programs of the first requests before READY", flag_values=fv)
    engine_config.define_flags(flag_values=fv)
    flags.adopt_module_key_flags(engine_config, flag_values=fv)  # --help lists them beside the server's
    for platform, values in PLATFORM_DEFAULTS.items():
        for name, value in values.items():
            fv[name].help += f" (default on a {platform}: {value})"


def engine_settings(platform: str, flag_values=None) -> engine_config.EngineConfig:
    """The EngineConfig the engine flags describe; a flag the command line did not set takes the platform's value
    (PLATFORM_DEFAULTS) where it has one, else EngineConfig's default. A bad value is a ValueError naming it."""
    from absl import flags
    fv = flags.FLAGS if flag_values is None else flag_values
    unset = {k: v for k, v in PLATFORM_DEFAULTS.get(platform, {}).items() if not fv[k].present}
    return engine_config.from_flags(fv, **unset)


def fail(message: str) -> None:
    """A usage mistake: one line on stderr, exit status 2, before any model is loaded."""
    print(f"usage error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag value reported as one line (absl prints the whole usage text)."""
    from absl import flags
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(" ".join(str(e).split()))
    return []  # unreachable: fail exits


def main(argv) -> None:
    import jax
    from absl import flags

    from automem_jax.engine.runner import make_mesh
    from automem_jax.engine.scheduler import JaxEngine
    from automem_jax.engine.serving import warm_up
    from automem_jax.models import hub
    f = flags.FLAGS
    if len(argv) > 1:
        fail(f"unexpected arguments: {argv[1:]}")
    if not is_loopback(f.host) and not f.allow_remote:
        fail(f"--host={f.host} is not a loopback address: /load_lora_adapter would let anyone who reaches the port "
             "read any path this process can; pass --allow_remote to do it anyway")
    loras = []
    for spec in f.lora:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            fail(f"--lora={spec!r}: expected name=path")
        loras.append((name, path))
    platform = jax.default_backend()
    try:
        config = engine_settings(platform)
        make_mesh(config)  # the mesh sizes against this host's devices, before the model loads
    except ValueError as e:
        fail(str(e))
    t0 = time.monotonic()
    try:
        model = hub.resolve_model(f.model)
    except ValueError as e:
        fail(f"--model: {e}")
    engine = JaxEngine(model, config=config)
    name = f.served_model_name or model.rstrip("/").split("/")[-1]
    args = {"model_path": model, "host": f.host, "port": f.port, "platform": platform, "allow_remote": f.allow_remote,
            "batch_wait_ms": f.batch_wait_ms, **engine.engine_config.to_dict()}
    server = EngineHTTPServer(engine, f.host, f.port, model_name=name, model_path=model,
                              batch_wait_s=f.batch_wait_ms / 1000, server_args=args)
    for lname, path in loras:
        server.load_adapter(lname, path)
    server.serve_in_thread()
    url = f"http://{f.host}:{server.server_address[1]}"
    logging.info("serving %s on %s (%s: %s); loaded in %.1f s", model, url, platform, config, time.monotonic() - t0)
    if f.warmup:
        lengths = [b * 3 // 4 for b in engine.prefill_buckets if b <= WARM_PROMPT_TOKENS]
        server.warmup_s = warm_up(server.batcher, engine.config.vocab_size, engine.max_batch, engine.decode_steps,
                                  lengths)
        logging.info("warm-up took %.1f s", server.warmup_s)
    server.ready.set()
    print(f"READY {url}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    from absl import app as _app
    define_flags()
    _app.run(main, flags_parser=parse_flags)
