"""sampling.regex through the HTTP clients: SGLang's `regex` sampling parameter; OpenAI-compatible endpoints only
where a regex field is configured, else a clear refusal."""
from __future__ import annotations

import pytest

from automem_jax.engine.base import EngineError, Request, SamplingParams
from automem_jax.engine.clients.openai import OpenAIClient
from automem_jax.engine.clients.sglang import SGLangClient, sampling_to_sglang

RX = r"<\|ACTION\|>(?:Noop|Do)<\|END\|>"


def test_sglang_sends_regex_sampling_parameter():
    assert sampling_to_sglang(SamplingParams(regex=RX))["regex"] == RX
    assert "regex" not in sampling_to_sglang(SamplingParams())
    client = SGLangClient("http://127.0.0.1:9")
    try:
        payload = client._payload(Request(prompt_ids=[1, 2], sampling=SamplingParams(regex=RX)))
        assert payload["sampling_params"]["regex"] == RX
    finally:
        client.close()


def test_openai_sends_regex_where_configured_and_refuses_clearly_elsewhere():
    req = Request(messages=[{"role": "user", "content": "hi"}], sampling=SamplingParams(regex=RX))
    for field in ("regex", "guided_regex"):
        client = OpenAIClient("http://127.0.0.1:9/v1", "m", api_key_env=None, regex_param=field)
        assert client._payload(req)[field] == RX
        assert field not in client._payload(Request(messages=req.messages))
        client.close()
    client = OpenAIClient("http://127.0.0.1:9/v1", "m", api_key_env=None)
    with pytest.raises(EngineError, match="openai_regex_param"):
        client._payload(req)
    out = client.generate([req])[0]  # a refusal, not an unconstrained reply
    assert out.finish_reason == "error" and "no regex structured output" in out.error
    client.close()
