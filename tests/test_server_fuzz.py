"""Hostile and sloppy HTTP input against a live server on 127.0.0.1 (tiny random model): a seeded fuzz of malformed
requests (each answered 4xx with its field or header named, no 5xx, no dropped connection), bad requests mixed
with good ones (per-request failures), 50 concurrent clients, a stalled body, and a good answer afterwards."""
from __future__ import annotations

import collections
import copy
import json
import random
import select
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax.numpy as jnp
import pytest
import requests

from automem_jax.engine import make_engine
from automem_jax.engine.base import Completion, EngineError, Request
from automem_jax.engine.server import EngineHTTPServer
from automem_jax.engine.server_guard import ConnectionGuard
from automem_jax.engine.server_requests import Item, Logprobs
from automem_jax.engine.serving import Batcher

ENGINE_KW = dict(max_batch=4, max_seq_len=128, max_loras=1, max_lora_rank=4, decode_steps=4, min_window=128,
                 min_prefill_bucket=64, max_prefill_tokens=64, dtype=jnp.float32, cache_dtype=jnp.float32)
GOOD = {"/generate": {"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 2, "temperature": 0}},
        "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                                 "temperature": 0},
        "/v1/completions": {"prompt": [5, 6, 7], "max_tokens": 2, "temperature": 0},
        "/load_lora_adapter": {"lora_name": "a", "lora_path": "/nonexistent"},
        "/unload_lora_adapter": {"lora_name": "a"}}
# (route, dotted path in the body, bad value, text the answer must contain: the field it names)
MUTATIONS = [
    ("/generate", "input_ids", None, "text"), ("/generate", "input_ids", "abc", "input_ids"),
    ("/generate", "input_ids", [1.5], "input_ids[0]"), ("/generate", "input_ids", [-1], "input_ids[0]"),
    ("/generate", "input_ids", [10**12], "input_ids[0]"), ("/generate", "input_ids", [[1], [2, "x"]],
                                                           "input_ids[1][1]"),
    ("/generate", "input_ids", [], "input_ids"), ("/generate", "input_ids", [1] * 300, "max_seq_len"),
    ("/generate", "text", 123, "text"), ("/generate", "text", [], "text"), ("/generate", "text", ["a", 1], "text"),
    ("/generate", "sampling_params", [], "sampling_params"), ("/generate", "sampling_params", "x", "sampling_params"),
    ("/generate", "sampling_params.top_k", "abc", "sampling_params.top_k"),
    ("/generate", "sampling_params.top_k", -5, "sampling_params.top_k"),
    ("/generate", "sampling_params.temperature", -1, "sampling_params.temperature"),
    ("/generate", "sampling_params.temperature", "hot", "sampling_params.temperature"),
    ("/generate", "sampling_params.top_p", 0, "sampling_params.top_p"),
    ("/generate", "sampling_params.top_p", 2, "sampling_params.top_p"),
    ("/generate", "sampling_params.max_new_tokens", 0, "sampling_params.max_new_tokens"),
    ("/generate", "sampling_params.max_new_tokens", 2.5, "sampling_params.max_new_tokens"),
    ("/generate", "sampling_params.max_new_tokens", 10**9, "sampling_params.max_new_tokens"),
    ("/generate", "sampling_params.max_new_tokens", 126, "sampling_params.max_new_tokens"),
    ("/generate", "sampling_params.max_new_tokens", True, "sampling_params.max_new_tokens"),
    ("/generate", "sampling_params.stop", [1], "sampling_params.stop"),
    ("/generate", "sampling_params.stop", 123, "sampling_params.stop"),
    ("/generate", "sampling_params.stop", [""], "sampling_params.stop"),
    ("/generate", "sampling_params.stop_token_ids", [1099511627776], "sampling_params.stop_token_ids[0]"),
    ("/generate", "sampling_params.stop_token_ids", "x", "sampling_params.stop_token_ids"),
    ("/generate", "sampling_params.stop_token_ids", list(range(3, 40)), "sampling_params.stop_token_ids"),
    ("/generate", "sampling_params.sampling_seed", "x", "sampling_params.sampling_seed"),
    ("/generate", "sampling_params.regex", 5, "sampling_params.regex"),
    ("/generate", "sampling_params.temprature", 0.5, "did you mean 'temperature'"),
    ("/generate", "sampling_params.min_p", 0.5, "sampling_params.min_p"),
    ("/generate", "sampling_params.n", 2, "sampling_params.n"),
    ("/generate", "lora_path", {"a": 1}, "lora_path"), ("/generate", "lora_path", 5, "lora_path"),
    ("/generate", "lora_path", "ghost", "lora_path"), ("/generate", "rid", 5, "rid"),
    ("/generate", "return_logprob", "yes", "return_logprob"),
    ("/generate", "top_logprobs_num", -1, "top_logprobs_num"), ("/generate", "top_logprobs_num", 1000,
                                                                "top_logprobs_num"),
    ("/generate", "logprob_start_len", "a", "logprob_start_len"), ("/generate", "stream", "yes", "stream"),
    ("/generate", "image_data", "x", "image_data"),
    ("/v1/chat/completions", "messages", None, "messages"), ("/v1/chat/completions", "messages", "hi", "messages"),
    ("/v1/chat/completions", "messages", [], "messages"), ("/v1/chat/completions", "messages", [1], "messages[0]"),
    ("/v1/chat/completions", "messages.0.role", None, "messages[0].role"),
    ("/v1/chat/completions", "messages.0.role", "robot", "messages[0].role"),
    ("/v1/chat/completions", "messages.0.content", 5, "messages[0].content"),
    ("/v1/chat/completions", "messages.0.content", [{"type": "image_url"}], "messages[0].content[0]"),
    ("/v1/chat/completions", "messages.0.content", ["x"], "messages[0].content[0]"),
    ("/v1/chat/completions", "max_tokens", "a", "max_tokens"),
    ("/v1/chat/completions", "max_tokens", 10**9, "max_tokens"),
    ("/v1/chat/completions", "temperature", -1, "temperature"), ("/v1/chat/completions", "logprobs", "x", "logprobs"),
    ("/v1/chat/completions", "top_logprobs", 100, "top_logprobs"), ("/v1/chat/completions", "n", 3, "n"),
    ("/v1/chat/completions", "response_format", {"type": "json_object"}, "response_format.type"),
    ("/v1/chat/completions", "model", 5, "model"), ("/v1/chat/completions", "model", "nope", "model"),
    ("/v1/chat/completions", "stream_options", "x", "stream_options"),
    ("/v1/chat/completions", "tools", [{"type": "function"}], "tools"),
    ("/v1/completions", "prompt", None, "prompt"), ("/v1/completions", "prompt", 5, "prompt"),
    ("/v1/completions", "prompt", [[1, "a"]], "prompt[0]"), ("/v1/completions", "prompt", [], "prompt"),
    ("/v1/completions", "echo", True, "echo"), ("/v1/completions", "logprobs", 99, "logprobs"),
    ("/v1/completions", "max_tokens", 0, "max_tokens"), ("/v1/completions", "suffix", "x", "suffix"),
    ("/load_lora_adapter", "lora_name", None, "lora_name"), ("/load_lora_adapter", "lora_name", 5, "lora_name"),
    ("/load_lora_adapter", "lora_path", 0, "lora_path"), ("/load_lora_adapter", "lora_path", "/nonexistent",
                                                          "lora_path"),
    ("/unload_lora_adapter", "lora_name", None, "lora_name"), ("/unload_lora_adapter", "lora_name", 5, "lora_name"),
]


def _post(path: str, body: bytes, headers: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {len(body)}\r\n\r\n").encode() + body


# raw requests: (bytes sent, text the answer must contain, status)
RAW = [
    (b"POST /generate HTTP/1.1\r\nContent-Length: abc\r\n\r\n{}", "Content-Length", 400),
    (b"POST /generate HTTP/1.1\r\nContent-Length: -5\r\n\r\n{}", "Content-Length", 400),
    (b"POST /generate HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n{}", "request body", 413),
    (b"POST /generate HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", "Transfer-Encoding",
     411),
    (_post("/generate", b"\xff\xfe{}"), "UTF-8", 400),
    (_post("/generate", b'{"text": '), "JSON", 400),
    (_post("/generate", b"[1,2]"), "request body", 400),
    (_post("/generate", b'{"input_ids": [NaN]}'), "NaN", 400),
    (_post("/generate", b"[" * 5000 + b"]" * 5000), "request body", 400),
    (_post("/generate", b'{"text":"x","sampling_params":{"max_new_tokens":1e400}}'), "max_new_tokens", 400),
    (_post("/v1/completions", b"{}", "Content-Type: text/plain\r\n"), "Content-Type", 400),
    (b"HELLO\r\n\r\n", "error", 400),
    (b"BREW /generate HTTP/1.1\r\n\r\n", "Method Not Allowed", 405),
    (b"GET /nothing-here HTTP/1.1\r\n\r\n", "Not Found", 404),
    (b"DELETE /generate HTTP/1.1\r\n\r\n", "Method Not Allowed", 405),
    (b"POST /generate HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 9\r\n\r\n{}", "Content-Length", 400),
    ("POST /generate HTTP/1.1\r\nContent-Length: \u00b2\r\n\r\n{}".encode("latin-1"), "Content-Length", 400),
    (_post("/generate", b'{"input_ids": [' + b"1" * 5000 + b"]}"), "request body", 400),  # past int's digit limit
]


@pytest.fixture(scope="module")
def server(tiny_llama_dir):
    engine = make_engine("jax", model=str(tiny_llama_dir), **ENGINE_KW)
    srv = EngineHTTPServer(engine, "127.0.0.1", 0, model_name="tiny", guard=ConnectionGuard(read_timeout_s=1.0))
    srv.serve_in_thread()
    srv.ready.set()
    yield srv
    srv.shutdown()
    srv.server_close()


def _set(body: dict, path: str, value) -> dict:
    body = copy.deepcopy(body)
    keys = path.split(".")
    node = body
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
    if value is None:
        node.pop(keys[-1], None)
    else:
        node[keys[-1]] = value
    return body


def _raw(port: int, data: bytes) -> tuple[int, str]:
    """Send raw bytes; the status and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        head, _, rest = reply.partition(b"\r\n\r\n")
        length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")),
                      0)
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return int(head.split()[1]), rest.decode("utf-8", "replace")


def test_fuzz_malformed_requests_get_4xx_naming_the_field(server):
    port = server.server_address[1]
    url = f"http://127.0.0.1:{port}"
    rng = random.Random(1234)
    counts: collections.Counter = collections.Counter()
    for n in range(260):
        if n % 5 == 4:
            data, expect, status = RAW[rng.randrange(len(RAW))]
            got, text = _raw(port, data)
            assert got == status and expect in text, (data[:80], got, text)
            counts[f"raw {got}"] += 1
            continue
        route, path, value, expect = MUTATIONS[rng.randrange(len(MUTATIONS))]
        body = _set(GOOD[route], path, value)
        resp = requests.post(url + route, json=body, timeout=60)
        assert 400 <= resp.status_code < 500 and expect in resp.text, (route, path, value, resp.status_code,
                                                                       resp.text)
        counts[f"{route} {resp.status_code}"] += 1
    print(dict(counts))
    assert sum(counts.values()) >= 200
    good = requests.post(f"{url}/generate", json=GOOD["/generate"], timeout=60).json()
    assert good["meta_info"]["completion_tokens"] == 2
    assert requests.get(f"{url}/health", timeout=30).status_code == 200


def test_a_bad_adapter_config_is_a_400_naming_it(server, tmp_path):
    url = f"http://127.0.0.1:{server.server_address[1]}"
    for r in (0, -1, "8", None):
        (tmp_path / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": 8, "peft_type": "LORA",
                                                                  "target_modules": ["q_proj"]}))
        out = requests.post(f"{url}/load_lora_adapter", json={"lora_name": "bad", "lora_path": str(tmp_path)},
                            timeout=60)
        assert out.status_code == 400 and out.json()["success"] is False, out.text
        assert "lora_path" in out.json()["error_message"] and "r must be an integer >= 1" in out.text
    assert requests.post(f"{url}/generate", json=GOOD["/generate"], timeout=60).status_code == 200


def test_a_stalled_body_times_out_with_408(server):
    status, text = _raw(server.server_address[1], b"POST /generate HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"te")
    assert status == 408 and "did not arrive within 1 s" in text


def test_bad_requests_fail_alone_among_good_ones(server):
    url = f"http://127.0.0.1:{server.server_address[1]}"
    bad = [("/generate", {"input_ids": [5], "lora_path": {"x": 1}}),
           ("/v1/chat/completions", {"messages": [{"role": "user", "content": 7}]}),
           ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}),
           ("/v1/chat/completions", {"messages": [{"role": None, "content": "x"}]}),
           ("/generate", {"input_ids": [1], "sampling_params": {"stop_token_ids": [1099511627776]}}),
           ("/generate", {"input_ids": [1], "sampling_params": {"stop": [1]}})]
    jobs = [("/generate", GOOD["/generate"])] * 10 + bad

    def post(job):
        return requests.post(url + job[0], json=job[1], timeout=120).status_code
    with ThreadPoolExecutor(len(jobs)) as pool:
        codes = list(pool.map(post, jobs))
    assert codes == [200] * 10 + [400] * len(bad)


def test_fifty_concurrent_clients_are_all_served(server):
    url = f"http://127.0.0.1:{server.server_address[1]}"

    def post(i):
        return requests.post(f"{url}/generate", json={"input_ids": [5 + i % 7, 6], "sampling_params": {
            "max_new_tokens": 2, "temperature": 0}}, timeout=300).json()["meta_info"]["completion_tokens"]
    with ThreadPoolExecutor(50) as pool:
        assert list(pool.map(post, range(50))) == [2] * 50


class _Breaks:
    """An engine whose generate raises for a batch holding prompt [666]."""
    max_batch, max_seq_len = 4, 64

    def generate(self, requests, on_tokens=None):
        if any(list(r.prompt_ids) == [666] for r in requests):
            raise RuntimeError("boom")
        return [Completion(text="ok", token_ids=[1], finish_reason="length", rid=r.rid) for r in requests]


def test_batcher_reruns_a_failed_batch_job_by_job():
    batcher = Batcher(_Breaks(), wait_s=0.3)
    good = batcher.submit([Item(Request(prompt_ids=[1]))])
    bad = batcher.submit([Item(Request(prompt_ids=[666]))])
    good.done.wait(10)
    bad.done.wait(10)
    assert good.error is None and good.results[0].text == "ok"
    assert isinstance(bad.error, EngineError) and "boom" in str(bad.error)


class _ScoreBreaks(_Breaks):
    def score(self, *args, **kwargs):
        raise MemoryError("no room for the logits")


def test_a_failed_logprob_scoring_fails_that_request_alone():
    batcher = Batcher(_ScoreBreaks(), wait_s=0.3)
    asked = batcher.submit([Item(Request(prompt_ids=[1, 2]), Logprobs(top=2)), Item(Request(prompt_ids=[3]))])
    asked.done.wait(10)
    first, second = asked.results
    assert first.finish_reason == "error" and "return_logprob" in first.error and "MemoryError" in first.error
    assert second.text == "ok" and asked.scores == [None, None]
    assert batcher.run([Item(Request(prompt_ids=[4]))])[0].text == "ok"  # the collector still runs


def test_a_client_that_resets_its_connection_leaves_no_traceback(server, capfd):
    for partial in (b"", b"POST /gen", b"POST /generate HTTP/1.1\r\nContent-Length: 50\r\n\r\n{"):
        sock = socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=30)
        sock.sendall(partial)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        sock.close()
    time.sleep(0.5)
    resp = requests.post(f"http://127.0.0.1:{server.server_address[1]}/generate", json=GOOD["/generate"], timeout=60)
    assert resp.status_code == 200
    assert "Traceback" not in capfd.readouterr().err


def _drip(port: int, head: bytes, rest: bytes, every_s: float) -> tuple[int | None, float]:
    """Send `head`, then `rest` a byte every `every_s` s (slowloris) until the server answers or closes: (status or
    None, seconds it took)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        for b in rest:
            try:
                sock.sendall(bytes([b]))
            except OSError:
                break
            if select.select([sock], [], [], every_s)[0]:
                break
        sock.settimeout(10)
        try:
            reply = sock.recv(4096)
        except OSError:
            reply = b""
    return (int(reply.split()[1]) if reply.startswith(b"HTTP/") else None), time.monotonic() - t0


def test_a_slowloris_client_is_cut_off_at_the_request_deadline(server):
    port = server.server_address[1]
    body = json.dumps(GOOD["/generate"]).encode()
    with ThreadPoolExecutor(2) as pool:  # headers, then a body, each a byte every 0.2 s: the deadline is 1 s in all
        headers = pool.submit(_drip, port, b"", _post("/generate", body), 0.2)
        slow_body = pool.submit(_drip, port, _post("/generate", body)[:-len(body)], body, 0.2)
        (h_status, h_s), (b_status, b_s) = headers.result(), slow_body.result()
    assert h_status in (400, 408) and h_s < 4, (h_status, h_s)  # cut mid-line: 400; after the request line: 408
    assert b_status == 408 and b_s < 4, (b_status, b_s)
    assert requests.post(f"http://127.0.0.1:{port}/generate", json=GOOD["/generate"], timeout=60).status_code == 200


def test_connections_past_the_cap_get_503_and_the_held_ones_still_work(server):
    small = EngineHTTPServer(server.engine, "127.0.0.1", 0, model_name="tiny",
                             guard=ConnectionGuard(read_timeout_s=30.0, max_connections=2))
    small.serve_in_thread()
    small.ready.set()
    port = small.server_address[1]
    try:
        held = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(2)]
        time.sleep(0.3)
        status, text = _raw(port, _post("/generate", json.dumps(GOOD["/generate"]).encode()))
        assert status == 503 and "too many open connections" in text
        held[0].sendall(_post("/generate", json.dumps(GOOD["/generate"]).encode()))
        assert b" 200 " in held[0].recv(4096)
        for sock in held:
            sock.close()
        time.sleep(0.3)
        assert requests.post(f"http://127.0.0.1:{port}/generate", json=GOOD["/generate"], timeout=60).ok
    finally:
        small.shutdown()
        small.server_close()


def test_a_costly_regex_is_refused_in_milliseconds_before_it_reaches_the_engine(server):
    url = f"http://127.0.0.1:{server.server_address[1]}"
    bodies = [{"text": "hi", "sampling_params": {"regex": r, "max_new_tokens": 4}}
              for r in ("a{1,60000}", "(a{1,100}){1,100}", r"\p{L}{1,500}", r"\w{1,200}")]
    t0 = time.monotonic()
    for body in bodies:  # each took 10-146 s inside the engine before it was refused, stalling every request
        resp = requests.post(f"{url}/generate", json=body, timeout=60)
        assert resp.status_code == 400 and "sampling_params.regex" in resp.text, resp.text
    assert time.monotonic() - t0 < 5
    chat = requests.post(f"{url}/v1/chat/completions", json={**GOOD["/v1/chat/completions"], "regex": "(a"},
                         timeout=60)
    assert chat.status_code == 400 and chat.json()["param"] == "regex", chat.text
    stream = requests.post(f"{url}/generate", json={**bodies[0], "stream": True}, timeout=60)
    assert stream.status_code == 400  # refused before the stream opens, not a 200 stream that aborts


def test_text_that_cannot_fit_the_context_is_refused_before_it_is_tokenised(server):
    url = f"http://127.0.0.1:{server.server_address[1]}"
    resp = requests.post(f"{url}/generate", json={"text": "hello " * 2_000_000}, timeout=60)
    assert resp.status_code == 400 and "text: 12000000 characters cannot fit max_seq_len=128" in resp.text
    resp = requests.post(f"{url}/v1/completions", json={"prompt": ["hi", "x" * 10**7], "max_tokens": 2}, timeout=60)
    assert resp.status_code == 400 and "prompt[1]" in resp.text


@pytest.mark.parametrize("config,weights,expect", [
    ("[1]", None, "must be a JSON object"),
    ('{"r": 4, "lora_alpha": [1], "target_modules": ["q_proj"]}', None, "lora_alpha must be a finite number"),
    ('{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}', b"[1, 2]", "not an object"),
    ('{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}', b'{"a": {"dtype": "F32", "shape": "x"}}',
     "tensor 'a' needs dtype"),
])
def test_a_malformed_adapter_file_is_a_400_naming_it(server, tmp_path, config, weights, expect):
    (tmp_path / "adapter_config.json").write_text(config)
    if weights is not None:
        (tmp_path / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(weights)) + weights)
    out = requests.post(f"http://127.0.0.1:{server.server_address[1]}/load_lora_adapter",
                        json={"lora_name": "bad", "lora_path": str(tmp_path)}, timeout=60)
    assert out.status_code == 400 and out.json()["success"] is False and expect in out.text, out.text


def test_requests_are_served_with_over_a_thousand_connections_open(server):
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2600 and (hard == resource.RLIM_INFINITY or hard >= 2600):
        resource.setrlimit(resource.RLIMIT_NOFILE, (2600, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 2600:
        pytest.skip("needs 2,600 open files (client and server sockets in one process)")
    big = EngineHTTPServer(server.engine, "127.0.0.1", 0, model_name="tiny",
                           guard=ConnectionGuard(read_timeout_s=30.0, max_connections=2048))
    big.serve_in_thread()
    big.ready.set()
    port = big.server_address[1]
    idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(1100)]
    try:  # descriptors past 1023: select() failed there and every waiting request was cancelled unanswered
        body = {"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 12, "temperature": 0}}
        resp = requests.post(f"http://127.0.0.1:{port}/generate", json=body, timeout=60)
        assert resp.status_code == 200 and resp.json()["meta_info"]["completion_tokens"] == 12
    finally:
        for sock in idle:
            sock.close()
        big.shutdown()
        big.server_close()
