"""The SGLang-compatible server (in-process on a free port, tiny random model) and the SGLang / OpenAI clients:
SGLang 0.5's routes and field names, SSE streams read by an SSE parser, logprobs equal to the engine's, adapters,
and cancelled clients (the command line: test_server_cli.py)."""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import requests

from automem_jax.engine import make_engine
from automem_jax.engine.base import Completion, Request, SamplingParams
from automem_jax.engine.clients.openai import OpenAIClient
from automem_jax.engine.clients.sglang import SGLangClient
from automem_jax.engine.server import EngineHTTPServer
from automem_jax.engine.validation import RequestLimits
from automem_jax.models import lora as lora_lib
from automem_jax.models.loader import load_model
from automem_jax.models.testing import save_tiny_hf_model
from engine_standin import ByteTokenizer

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=6)
ENGINE_KW = dict(max_batch=4, max_seq_len=128, max_loras=2, max_lora_rank=8, decode_steps=4, min_window=128,
                 min_prefill_bucket=64, max_prefill_tokens=64, dtype=jnp.float32, cache_dtype=jnp.float32)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_hf_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", arch="llama", seed=0)


@pytest.fixture(scope="module")
def adapter_dir(model_dir, tmp_path_factory) -> Path:
    model = load_model(str(model_dir), dtype=jnp.float32, lora=lora_lib.LoRAConfig(rank=4, alpha=8))
    for name in lora_lib.lora_targets(model):
        var = getattr(model.layers, name).lora_b
        var[...] = jax.random.normal(jax.random.key(0), var[...].shape) * 0.5
    return lora_lib.export_peft(model, tmp_path_factory.mktemp("adapters") / "mem", base_model_name_or_path="tiny")


@pytest.fixture(scope="module")
def engine(model_dir):
    return make_engine("jax", model=str(model_dir), **ENGINE_KW)


@pytest.fixture(scope="module")
def url(engine, model_dir):
    server = EngineHTTPServer(engine, "127.0.0.1", 0, model_name="tiny-llama", model_path=str(model_dir))
    server.serve_in_thread()
    server.ready.set()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def sse(resp: requests.Response) -> list:
    """A server-sent-event reader: each `data:` payload, JSON-decoded, up to and including the [DONE] marker."""
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    events, buf = [], b""
    for chunk in resp.iter_content(chunk_size=None):
        buf += chunk
        while b"\n\n" in buf:
            block, buf = buf.split(b"\n\n", 1)
            data = b"".join(line[5:].strip() for line in block.split(b"\n") if line.startswith(b"data:"))
            events.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    assert events and events[-1] == "[DONE]" and buf == b"", (events[-3:], buf)
    return events[:-1]


def test_client_round_trip_matches_in_process_engine(url, engine):
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15], [20, 21]]
    client = SGLangClient(url, timeout=60, retries=1)
    got = client.generate([Request(prompt_ids=p, sampling=GREEDY, rid=f"r{i}") for i, p in enumerate(prompts)])
    want = engine.generate([Request(prompt_ids=p, sampling=GREEDY) for p in prompts])
    assert [c.token_ids for c in got] == [c.token_ids for c in want]
    assert [c.text for c in got] == [c.text for c in want]
    assert [c.rid for c in got] == ["r0", "r1", "r2"]
    assert [c.prompt_tokens for c in got] == [4, 7, 2] and all(c.completion_tokens == 6 for c in got)


def test_native_generate_shapes_and_limits(url):
    one = requests.post(f"{url}/generate", json={"text": "hello", "rid": "abc", "sampling_params": {
        "max_new_tokens": 3, "temperature": 0}}, timeout=60).json()
    assert set(one) == {"text", "output_ids", "meta_info"}
    meta = one["meta_info"]
    assert meta["id"] == "abc" and meta["finish_reason"] == {"type": "length", "length": 3}
    assert meta["completion_tokens"] == 3 == len(one["output_ids"])
    assert {"prompt_tokens", "cached_tokens", "e2e_latency", "weight_version"} <= set(meta)
    many = requests.post(f"{url}/generate", json={"text": ["a", "bb"], "sampling_params": [
        {"max_new_tokens": 2, "temperature": 0}, {"max_new_tokens": 3, "temperature": 0}]}, timeout=60).json()
    assert [m["meta_info"]["completion_tokens"] for m in many] == [2, 3]
    free = {"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 6, "temperature": 0}}
    ids = requests.post(f"{url}/generate", json=free, timeout=60).json()["output_ids"]
    free["sampling_params"]["stop_token_ids"] = [ids[1]]
    stop = requests.post(f"{url}/generate", json=free, timeout=60).json()
    assert stop["meta_info"]["finish_reason"] == {"type": "stop", "matched": ids[1]}
    assert stop["output_ids"] == ids[:ids.index(ids[1]) + 1]
    too_long = requests.post(f"{url}/generate", json={"input_ids": [1] * 300}, timeout=60)
    assert too_long.status_code == 400 and "max_seq_len" in too_long.json()["error"]["message"]
    huge = requests.post(f"{url}/generate", json={"input_ids": [1, 2, 3], "sampling_params": {
        "max_new_tokens": 126}}, timeout=60)
    assert huge.status_code == 400 and "sampling_params.max_new_tokens" in huge.text and "at most 125" in huge.text


def test_generate_stream_is_sse_and_ends_like_the_plain_answer(url):
    body = {"input_ids": [5, 6, 7, 8], "sampling_params": {"max_new_tokens": 11, "temperature": 0}}
    plain = requests.post(f"{url}/generate", json=body, timeout=60).json()
    events = sse(requests.post(f"{url}/generate", json={**body, "stream": True}, stream=True, timeout=60))
    assert len(events) >= 2  # the engine steps 4 tokens at a time: text arrives before the end
    for ev in events[:-1]:
        assert ev["meta_info"]["finish_reason"] is None
        assert plain["text"].startswith(ev["text"]) and plain["output_ids"][:len(ev["output_ids"])] == \
            ev["output_ids"]
    assert events[-1]["text"] == plain["text"] and events[-1]["output_ids"] == plain["output_ids"]
    assert events[-1]["meta_info"]["finish_reason"] == {"type": "length", "length": 11}
    batch = sse(requests.post(f"{url}/generate", json={"input_ids": [[5, 6], [7, 8, 9]], "stream": True,
                                                        "sampling_params": {"max_new_tokens": 3}},
                              stream=True, timeout=60))
    finals = {ev["index"]: ev for ev in batch if ev["meta_info"]["finish_reason"] is not None}
    assert sorted(finals) == [0, 1] and all(len(ev["output_ids"]) == 3 for ev in finals.values())


def test_chat_and_completion_streams(url):
    chat = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9,
            "temperature": 0}
    plain = requests.post(f"{url}/v1/chat/completions", json=chat, timeout=60).json()
    assert plain["object"] == "chat.completion" and plain["choices"][0]["message"]["role"] == "assistant"
    assert plain["usage"]["completion_tokens"] == 9 and plain["choices"][0]["finish_reason"] == "length"
    events = sse(requests.post(f"{url}/v1/chat/completions", json={**chat, "stream": True, "stream_options": {
        "include_usage": True}}, stream=True, timeout=60))
    assert all(ev["object"] == "chat.completion.chunk" and ev["id"] == events[0]["id"] for ev in events)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(ev["choices"][0]["delta"].get("content") or "" for ev in events if ev["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 9
    comp = {"prompt": "hello", "max_tokens": 5, "temperature": 0}
    plain_c = requests.post(f"{url}/v1/completions", json=comp, timeout=60).json()
    assert plain_c["object"] == "text_completion" and plain_c["usage"]["completion_tokens"] == 5
    events = sse(requests.post(f"{url}/v1/completions", json={**comp, "stream": True}, stream=True, timeout=60))
    assert "".join(ev["choices"][0]["text"] for ev in events) == plain_c["choices"][0]["text"]
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    client = SGLangClient(url, timeout=60, retries=0)
    pieces: list[str] = []
    streamed = client.stream(Request(prompt_ids=[5, 6, 7, 8], sampling=SamplingParams(temperature=0,
                                                                                      max_new_tokens=11)),
                             on_text=pieces.append)
    assert streamed.finish_reason == "length" and streamed.completion_tokens == 11
    assert "".join(pieces) == streamed.text
    oa = OpenAIClient(f"{url}/v1", "tiny-llama", api_key_env=None, timeout=60, retries=0)
    chat_pieces: list[str] = []
    got = oa.stream(Request(messages=chat["messages"], sampling=SamplingParams(temperature=0, max_new_tokens=9)),
                    on_text=chat_pieces.append)
    assert got.text == "".join(chat_pieces) == plain["choices"][0]["message"]["content"]
    assert got.completion_tokens == 9


def test_logprobs_equal_the_engines(url, engine):
    prompt = [5, 6, 7, 8, 9]
    out = requests.post(f"{url}/generate", json={"input_ids": prompt, "return_logprob": True,
                                                  "logprob_start_len": 0, "top_logprobs_num": 3,
                                                  "sampling_params": {"max_new_tokens": 6, "temperature": 0}},
                        timeout=60).json()
    meta = out["meta_info"]
    ids = out["output_ids"]
    seq = prompt + ids
    # the model's own distribution, computed here without the engine
    logits = np.asarray(engine.model.logits(np.asarray([seq])))[0].astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - \
        logits.max(-1, keepdims=True)
    want = [logp[t - 1, seq[t]] for t in range(1, len(seq))]
    scored = engine.score(seq, top_k=3)
    assert [e[1] for e in meta["input_token_logprobs"]] == prompt
    assert meta["input_token_logprobs"][0][0] is None and meta["input_top_logprobs"][0] is None
    got = [e[0] for e in meta["input_token_logprobs"][1:]] + [e[0] for e in meta["output_token_logprobs"]]
    np.testing.assert_allclose(got, scored.token, rtol=1e-6)
    np.testing.assert_allclose(got, want, atol=2e-4)
    assert [e[1] for e in meta["output_token_logprobs"]] == ids
    # greedy: each output token is the most likely one, and the top list is sorted
    for tok, top in zip(ids, meta["output_top_logprobs"]):
        assert len(top) == 3 and top[0][1] == tok and top[0][0] >= top[1][0] >= top[2][0]
    default = requests.post(f"{url}/generate", json={"input_ids": prompt, "return_logprob": True,
                                                      "sampling_params": {"max_new_tokens": 2, "temperature": 0}},
                            timeout=60).json()["meta_info"]
    assert default["input_token_logprobs"] == [] and len(default["output_token_logprobs"]) == 2
    chat = requests.post(f"{url}/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0, "logprobs": True,
        "top_logprobs": 2}, timeout=60).json()
    content = chat["choices"][0]["logprobs"]["content"]
    assert len(content) == 3 and all(set(c) == {"token", "bytes", "logprob", "top_logprobs"} for c in content)
    assert all(len(c["top_logprobs"]) == 2 and c["top_logprobs"][0]["logprob"] == c["logprob"] for c in content)
    comp = requests.post(f"{url}/v1/completions", json={"prompt": [5, 6, 7], "max_tokens": 3, "temperature": 0,
                                                         "logprobs": 2}, timeout=60).json()
    lp = comp["choices"][0]["logprobs"]
    assert set(lp) == {"text_offset", "token_logprobs", "tokens", "top_logprobs"} and len(lp["tokens"]) == 3


def test_info_routes_and_adapters(url, adapter_dir):
    for path in ("/model_info", "/get_model_info"):
        info = requests.get(f"{url}{path}", timeout=10).json()
        assert {"model_path", "tokenizer_path", "is_generation", "preferred_sampling_params",
                "weight_version"} <= set(info) and info["is_generation"]
    for path in ("/server_info", "/get_server_info"):
        info = requests.get(f"{url}{path}", timeout=10).json()
        assert {"internal_states", "version", "context_length", "max_running_requests"} <= set(info)
        assert info["context_length"] == 128
    assert requests.get(f"{url}/health", timeout=30).status_code == 200
    assert requests.get(f"{url}/health_generate", timeout=30).status_code == 200
    flushed = requests.post(f"{url}/flush_cache", timeout=10)
    assert flushed.status_code == 200 and flushed.text.startswith("Cache flushed.")
    assert requests.get(f"{url}/flush_cache", timeout=10).status_code == 200
    assert requests.get(f"{url}/nope", timeout=10).status_code == 404
    assert requests.get(f"{url}/generate", timeout=10).status_code == 405

    client = SGLangClient(url, timeout=60, retries=0)
    prompt = [5, 6, 7, 8, 9]
    missing = client.generate([Request(prompt_ids=prompt, sampling=GREEDY, adapter="mem")])[0]
    assert missing.finish_reason == "error" and "unknown adapter 'mem'" in missing.error
    bad = requests.post(f"{url}/load_lora_adapter", json={"lora_name": "x", "lora_path": "/nonexistent"},
                        timeout=60)
    assert bad.status_code == 400 and bad.json()["success"] is False and "lora_path" in bad.json()["error_message"]
    ok = requests.post(f"{url}/load_lora_adapter", json={"lora_name": "mem", "lora_path": str(adapter_dir)},
                       timeout=60).json()
    assert ok == {"success": True, "error_message": None, "loaded_adapters": {"mem": str(adapter_dir)}}
    cards = requests.get(f"{url}/v1/models", timeout=10).json()
    assert cards["object"] == "list"
    assert [(c["id"], c["parent"], c["root"]) for c in cards["data"]] == [
        ("tiny-llama", None, "tiny-llama"), ("mem", "tiny-llama", str(adapter_dir))]
    assert all({"object", "created", "owned_by", "max_model_len"} <= set(c) for c in cards["data"])
    assert requests.get(f"{url}/v1/models/mem", timeout=10).json()["parent"] == "tiny-llama"
    base, lora = client.generate([Request(prompt_ids=prompt, sampling=GREEDY),
                                  Request(prompt_ids=prompt, sampling=GREEDY, adapter="mem")])
    assert base.finish_reason == lora.finish_reason == "length" and base.token_ids != lora.token_ids
    for model in ("tiny-llama:mem", "mem"):
        chat = requests.post(f"{url}/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0},
            timeout=60).json()
        assert chat["model"] == model and chat["usage"]["completion_tokens"] == 3
    unknown = requests.post(f"{url}/v1/chat/completions", json={
        "model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, timeout=60)
    assert unknown.status_code == 404 and unknown.json()["param"] == "model"
    client.unload_adapter("mem")
    again = requests.post(f"{url}/unload_lora_adapter", json={"lora_name": "mem"}, timeout=10)
    assert again.status_code == 400 and again.json()["success"] is False
    assert client.generate([Request(prompt_ids=prompt, sampling=GREEDY, adapter="mem")])[0].finish_reason == "error"


class _OldServer(BaseHTTPRequestHandler):
    """An SGLang older than 0.5: only /get_model_info."""

    def do_GET(self):
        body = json.dumps({"model_path": "old"}).encode() if self.path == "/get_model_info" else b"{}"
        self.send_response(200 if self.path == "/get_model_info" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_client_model_info_new_route_then_deprecated_one(url):
    assert SGLangClient(url, retries=0).model_info()["tokenizer_path"] is not None
    old = ThreadingHTTPServer(("127.0.0.1", 0), _OldServer)
    threading.Thread(target=old.serve_forever, daemon=True).start()
    try:
        assert SGLangClient(f"http://127.0.0.1:{old.server_address[1]}", retries=0).model_info() == {
            "model_path": "old"}
    finally:
        old.shutdown()


def test_a_client_that_disconnects_is_cancelled(url, engine):
    before = requests.get(f"{url}/server_info", timeout=10).json()["internal_states"][0]["cancelled_requests"]
    body = json.dumps({"input_ids": [5, 6, 7], "stream": True,
                       "sampling_params": {"max_new_tokens": 120, "temperature": 0}}).encode()
    sock = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    # hold the engine: the request must still run when its client leaves
    with engine._lock:
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        time.sleep(0.3)
        sock.close()
        time.sleep(0.3)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = requests.get(f"{url}/server_info", timeout=10).json()["internal_states"][0]
        if states["cancelled_requests"] > before:
            break
        time.sleep(0.1)
    assert states["cancelled_requests"] == before + 1
    ok = requests.post(f"{url}/generate", json={"input_ids": [5, 6], "sampling_params": {"max_new_tokens": 2}},
                       timeout=60)
    assert ok.status_code == 200 and ok.json()["meta_info"]["completion_tokens"] == 2


def test_engine_on_tokens_streams_and_cancels(engine):
    seen: dict[int, list[int]] = {0: [], 1: []}

    def hook(i, ids):
        seen[i] += ids
        return i == 0 or len(seen[1]) < 5  # cancel request 1 after its first engine steps

    out = engine.generate([Request(prompt_ids=[5, 6, 7], sampling=SamplingParams(temperature=0, max_new_tokens=20)),
                           Request(prompt_ids=[8, 9], sampling=SamplingParams(temperature=0, max_new_tokens=60))],
                          on_tokens=hook)
    assert out[0].finish_reason == "length" and seen[0] == out[0].token_ids
    assert out[1].finish_reason == "error" and "cancelled" in out[1].error and 5 <= len(out[1].token_ids) < 60
    again = engine.generate([Request(prompt_ids=[8, 9], sampling=SamplingParams(temperature=0, max_new_tokens=3))])
    assert again[0].finish_reason == "length" and len(again[0].token_ids) == 3


def test_killed_server_gives_clear_errors_fast(engine, model_dir):
    server = EngineHTTPServer(engine, "127.0.0.1", 0, model_name="tiny")
    server.serve_in_thread()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    client = SGLangClient(url, timeout=5, retries=2, backoff=0.1)
    t0 = time.monotonic()
    out = client.generate([Request(prompt_ids=[5, 6, 7], sampling=GREEDY) for _ in range(4)])
    assert time.monotonic() - t0 < 30
    assert all(c.finish_reason == "error" for c in out)
    assert all("connection failed" in c.error and url in c.error for c in out)
    assert not client.health()


class _Recorder:
    """A stand-in engine that records the Requests the server builds (the JAX engine's regex support is another
    branch's work; this checks the server hands `regex` on from every route)."""

    tokenizer, config = ByteTokenizer(), SimpleNamespace(vocab_size=256)
    max_seq_len, max_batch, max_loras, eos_ids, adapters = 64, 2, 0, (0,), {}
    limits = RequestLimits(vocab_size=256, max_stop_ids=8, eos_ids=(0,))

    def __init__(self):
        self.seen: list[Request] = []
        self.prepared: list[str] = []

    def prepare_grammar(self, regex: str) -> None:
        self.prepared.append(regex)

    def generate(self, requests, on_tokens=None):
        self.seen += requests
        return [Completion(text="ab", token_ids=[97, 98], finish_reason="length", prompt_tokens=len(r.prompt_ids),
                           completion_tokens=2, rid=r.rid) for r in requests]


def test_regex_reaches_the_engine_from_every_route():
    engine = _Recorder()
    server = EngineHTTPServer(engine, "127.0.0.1", 0, model_name="rec")
    server.serve_in_thread()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        requests.post(f"{url}/generate", json={"text": "hi", "sampling_params": {"regex": "a+"}}, timeout=10)
        requests.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                          "regex": "b+"}, timeout=10)
        requests.post(f"{url}/v1/completions", json={"prompt": "hi", "regex": "c+"}, timeout=10)
        SGLangClient(url, retries=0).generate([Request(prompt_ids=[104, 105],
                                                       sampling=SamplingParams(regex="d+", max_new_tokens=4))])
        assert [r.sampling.regex for r in engine.seen] == ["a+", "b+", "c+", "d+"]
        assert engine.prepared == ["a+", "b+", "c+", "d+"]  # compiled on the request's thread, before submitting
        chat = engine.seen[1]
        assert chat.prompt_ids == ByteTokenizer().apply_chat_template([{"role": "user", "content": "hi"}])
    finally:
        server.shutdown()
        server.server_close()
