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
backlog holds 256); server_guard caps them and times each request's arrival, so idle or slow clients cannot pile up.

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

from automem_jax.engine import server_requests as rq
from automem_jax.engine import server_responses as rs
from automem_jax.engine.base import EngineError
from automem_jax.engine.server_guard import ConnectionGuard
from automem_jax.engine.serving import Batcher, Job

MAX_BODY_BYTES = 32 << 20
READ_TIMEOUT_S = 30.0  # a request's line and headers, then its body, must each arrive within this
HEALTH_TIMEOUT_S = 20.0  # as SGLang's SGLANG_HEALTH_CHECK_TIMEOUT
POLL_S = 0.1  # how often a waiting handler checks that its client is still connected
VERSION = "automem-jax-0.1.0 (SGLang 0.5 API)"


class EngineHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # listen backlog: bursts of concurrent clients are queued, not refused

    def process_request(self, request, client_address) -> None:
        if not self.guard.admit(request):  # every connection slot taken: answered 503
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.guard.release(request)

    def server_close(self) -> None:
        self.guard.close()
        super().server_close()

    def handle_error(self, request, client_address) -> None:
        """A client that resets or stalls its connection is routine, not a server error with a traceback."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            logging.debug("client %s went away: %s", client_address, sys.exc_info()[1])
            return
        super().handle_error(request, client_address)

    def __init__(self, engine: Any, host: str = "127.0.0.1", port: int = 30000, *, model_name: str = "default",
                 model_path: str = "", batch_wait_s: float = 0.005, server_args: dict[str, Any] | None = None,
                 guard: ConnectionGuard | None = None):
        """`guard`: the connection cap and request deadlines (default: ConnectionGuard(READ_TIMEOUT_S))."""
        self.guard = guard or ConnectionGuard(READ_TIMEOUT_S)
        self.read_timeout_s = self.guard.read_timeout_s
        super().__init__((host, port), _Handler)
        self.engine, self.model_name, self.model_path = engine, model_name, model_path
        self.server_args = dict(server_args or {})
        self.batcher = Batcher(engine, batch_wait_s)
        self.ready = threading.Event()  # set after the warm-up: /health answers 503 until then
        self.adapter_paths: dict[str, str] = {}
        self.warmup_s: float | None = None
        tok = engine.tokenizer
        cfg = engine.config
        self.limits = rq.Limits(vocab_size=cfg.vocab_size, max_seq_len=engine.max_seq_len, engine=engine.limits,
                                grammar=engine.prepare_grammar if tok is not None else None,
                                max_prompt_chars=rq.max_prompt_chars(tok, engine.max_seq_len))
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

    def handle_one_request(self):
        self.server.guard.start(self.connection)  # the request line and headers are timed in all, not per read
        super().handle_one_request()

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
            raise rq.BadRequest("header Transfer-Encoding: request bodies with a transfer coding (chunked, gzip, ...) "
                                "are not supported; send the body with a Content-Length", param="Transfer-Encoding",
                                status=411)
        given = self.headers.get_all("Content-Length") or []
        raw = given[0] if given else None
        if len({g.strip() for g in given}) > 1:
            self.close_connection = True
            raise rq.BadRequest(f"header Content-Length: given {len(given)} times with different values; send one",
                                param="Content-Length")
        if raw is None:
            n = 0
        elif not (raw.strip().isascii() and raw.strip().isdigit()):  # isdigit alone passes '²'
            self.close_connection = True
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
        late_message = (f"request body: the announced {n} bytes did not arrive within {self.server.read_timeout_s:g} s; "
                        "send the body with its headers")
        self.server.guard.start(self.connection)
        try:
            data = self.rfile.read(n) if n else b""
        except (TimeoutError, socket.timeout):
            self.close_connection = True
            raise rq.BadRequest(late_message, status=408) from None
        finally:
            late = self.server.guard.clear(self.connection)
        if late and len(data) < n:
            self.close_connection = True
            raise rq.BadRequest(late_message, status=408)
        if len(data) < n:
            self.close_connection = True
            raise rq.BadRequest(f"request body: {len(data)} of the announced {n} bytes arrived before the client "
                                "closed its side")
        return rq.parse_json(data)

    def _client_gone(self) -> bool:
        """True once the client closed its side (readable, and a peek reads end-of-stream). poll, not select:
        select fails on descriptors past 1023, i.e. once ~1000 connections are open, and would cancel every request."""
        try:
            poller = select.poll()
            poller.register(self.connection, select.POLLIN)
            return bool(poller.poll(0)) and self.connection.recv(1, socket.MSG_PEEK) == b""
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
        if self.server.guard.clear(self.connection):  # its headers came too slowly: the reading side is shut
            self.close_connection = True
            return self._send(408, rs.native_error(f"request headers did not arrive within "
                                                   f"{self.server.read_timeout_s:g} s"))
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
        except (BrokenPipeError, ConnectionResetError, TimeoutError):  # the answer could not be written
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
        except (OSError, ClientGone):  # a closed connection, or a client that stopped reading (write timeout)
            job.cancel()
            raise ClientGone() from None


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


if __name__ == "__main__":  # the command line lives in server_cli (flags, model, warm-up)
    from automem_jax.engine.server_cli import run
    run()
