"""Engine Completions -> the response bodies and stream chunks of SGLang 0.5's native and OpenAI APIs.

Shapes follow SGLang (tokenizer_manager's meta_info, openai/protocol.py): /generate answers `text`, `output_ids`
and `meta_info` (id, finish_reason {type, matched | length | message}, prompt/completion/cached tokens,
e2e_latency, and with return_logprob the [logprob, token_id, text|null] lists); a stream sends the same object
with the text and ids so far after each engine step, then `data: [DONE]`. The OpenAI routes answer
text_completion / chat.completion objects and their chunk forms.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Callable, Sequence

from automem_jax.engine.base import Completion
from automem_jax.engine.scoring import TokenLogprobs
from automem_jax.engine.server_requests import Call, Item, Logprobs

Decode = Callable[[Sequence[int]], str]


def native_finish_reason(c: Completion) -> dict[str, Any] | None:
    if c.finish_reason == "error":
        return {"type": "abort", "message": c.error}
    if c.finish_reason == "length":
        return {"type": "length", "length": c.completion_tokens}
    return {"type": "stop", "matched": c.meta.get("matched_stop")}


def openai_finish_reason(c: Completion) -> str:
    return {"error": "abort", "length": "length"}.get(c.finish_reason, "stop")


def native(c: Completion, item: Item, scores: TokenLogprobs | None, decode: Decode) -> dict[str, Any]:
    """The /generate answer for one prompt (also the last chunk of its stream)."""
    meta = {"id": c.rid, "finish_reason": native_finish_reason(c), "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens, "cached_tokens": c.cached_tokens,
            "e2e_latency": c.meta.get("e2e_latency"), "weight_version": "default"}
    if item.logprobs is not None and scores is not None:
        meta.update(native_logprobs(item.logprobs, list(item.request.prompt_ids), c.token_ids, scores, decode))
    return {"text": c.text, "output_ids": list(c.token_ids), "meta_info": meta}


def native_partial(item: Item, text: str, ids: list[int]) -> dict[str, Any]:
    """A /generate stream chunk before the end: the text and ids so far (SGLang streams them cumulatively)."""
    return {"text": text, "output_ids": list(ids),
            "meta_info": {"id": item.request.rid, "finish_reason": None,
                          "prompt_tokens": len(item.request.prompt_ids), "completion_tokens": len(ids),
                          "cached_tokens": 0}}


def native_logprobs(spec: Logprobs, prompt: list[int], output: list[int], scores: TokenLogprobs,
                    decode: Decode) -> dict[str, Any]:
    """meta_info logprob fields. scores cover positions 1.. of prompt + output; position 0 has none (null)."""
    text = (lambda t: decode([t])) if spec.with_text else (lambda t: None)

    def entry(pos: int, tok: int) -> list:
        return [None if pos == 0 else float(scores.token[pos - 1]), tok, text(tok)]

    def top(pos: int) -> list | None:
        if pos == 0:
            return None
        return [[float(v), int(i), text(int(i))] for v, i in zip(scores.top[pos - 1], scores.top_ids[pos - 1])]

    p = len(prompt)
    start = p if spec.start < 0 else min(spec.start, p)
    out = {"input_token_logprobs": [entry(q, prompt[q]) for q in range(start, p)],
           "output_token_logprobs": [entry(p + i, t) for i, t in enumerate(output)]}
    if spec.top:
        out["input_top_logprobs"] = [top(q) for q in range(start, p)]
        out["output_top_logprobs"] = [top(p + i) for i in range(len(output))]
    return out


class StreamText:
    """Text of a growing reply to stream: only text that cannot change any more is sent. Held back: an
    undecodable tail (part of a UTF-8 character) and, with stop strings, the last len(stop) - 1 characters (the
    finished text is cut before a stop string, so a stop's prefix may yet vanish)."""

    def __init__(self, decode: Decode, stops: Sequence[str]):
        self.decode, self.ids, self.sent = decode, [], ""
        self.hold = max((len(s) for s in stops), default=1) - 1

    def add(self, ids: Sequence[int]) -> str:
        """Record new ids; return the newly safe text (possibly "")."""
        self.ids.extend(ids)
        text = self.decode(self.ids).rstrip("\ufffd")
        text = text[:len(text) - self.hold] if self.hold else text
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta

    def finish(self, final: str) -> str:
        """The rest of the finished text (all of it if what was sent is not its prefix, which a decoder that
        rewrites earlier text could cause)."""
        delta = final[len(self.sent):] if final.startswith(self.sent) else final
        self.sent = final
        return delta


# ---------------------------------------------------------------------------------------------------- OpenAI
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(completions: Sequence[Completion]) -> dict[str, Any]:
    prompt = sum(c.prompt_tokens for c in completions)
    done = sum(c.completion_tokens for c in completions)
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done,
            "prompt_tokens_details": {"cached_tokens": sum(c.cached_tokens for c in completions)},
            "reasoning_tokens": 0}


def _token_text(decode: Decode, tok: int) -> str:
    return decode([tok])


def completion_logprobs(c: Completion, item: Item, scores: TokenLogprobs | None, decode: Decode
                        ) -> dict[str, Any] | None:
    """OpenAI completions `logprobs` (LogProbs: tokens, token_logprobs, top_logprobs, text_offset)."""
    if item.logprobs is None or scores is None:
        return None
    p = len(item.request.prompt_ids)
    tokens, offsets, offset = [], [], 0
    for t in c.token_ids:
        tokens.append(_token_text(decode, t))
        offsets.append(offset)
        offset += len(tokens[-1])
    tops = [{_token_text(decode, int(i)): float(v) for v, i in zip(scores.top[p + k - 1], scores.top_ids[p + k - 1])}
            for k in range(len(c.token_ids))] if item.logprobs.top else [None] * len(c.token_ids)
    return {"text_offset": offsets, "token_logprobs": [float(scores.token[p + k - 1]) for k in range(len(tokens))],
            "tokens": tokens, "top_logprobs": tops}


def chat_logprobs(c: Completion, item: Item, scores: TokenLogprobs | None, decode: Decode) -> dict[str, Any] | None:
    """OpenAI chat `logprobs` ({content: [{token, bytes, logprob, top_logprobs}]})."""
    if item.logprobs is None or scores is None:
        return None
    p = len(item.request.prompt_ids)

    def one(tok: int, lp: float) -> dict[str, Any]:
        text = _token_text(decode, tok)
        return {"token": text, "bytes": list(text.encode("utf-8")), "logprob": float(lp)}

    content = []
    for k, t in enumerate(c.token_ids):
        e = one(t, scores.token[p + k - 1])
        e["top_logprobs"] = [one(int(i), v) for v, i in zip(scores.top[p + k - 1], scores.top_ids[p + k - 1])]
        content.append(e)
    return {"content": content}


def completion_response(call_id: str, model: str, done: Sequence[tuple[Completion, Item, Any]],
                        decode: Decode) -> dict[str, Any]:
    choices = [{"index": i, "text": c.text, "logprobs": completion_logprobs(c, item, s, decode),
                "finish_reason": openai_finish_reason(c), "matched_stop": c.meta.get("matched_stop")}
               for i, (c, item, s) in enumerate(done)]
    return {"id": call_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage([c for c, _, _ in done])}


def chat_response(call_id: str, model: str, c: Completion, item: Item, scores: Any, decode: Decode
                  ) -> dict[str, Any]:
    return {"id": call_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text, "reasoning_content": None,
                                                 "tool_calls": None},
                         "logprobs": chat_logprobs(c, item, scores, decode),
                         "finish_reason": openai_finish_reason(c), "matched_stop": c.meta.get("matched_stop")}],
            "usage": usage([c])}


def completion_chunk(call_id: str, model: str, index: int, text: str, c: Completion | None = None,
                     logprobs: Any = None) -> dict[str, Any]:
    return {"id": call_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": index, "text": text, "logprobs": logprobs,
                         "finish_reason": None if c is None else openai_finish_reason(c),
                         "matched_stop": None if c is None else c.meta.get("matched_stop")}]}


def chat_chunk(call_id: str, model: str, delta: dict[str, Any], c: Completion | None = None,
               logprobs: Any = None) -> dict[str, Any]:
    return {"id": call_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs,
                         "finish_reason": None if c is None else openai_finish_reason(c),
                         "matched_stop": None if c is None else c.meta.get("matched_stop")}]}


def usage_chunk(call_id: str, model: str, obj: str, completions: Sequence[Completion]) -> dict[str, Any]:
    """The last chunk of a stream asked with stream_options.include_usage: no choices, the usage."""
    return {"id": call_id, "object": obj, "created": int(time.time()), "model": model, "choices": [],
            "usage": usage(completions)}


# --------------------------------------------------------------------------------------------- streams
class StreamFormat:
    """How a stream's chunks look for one route: opening chunks, a chunk per new text, closing chunks."""

    def __init__(self, decode: Decode, call: Call):
        self.decode, self.call = decode, call
        self.texts = [StreamText(decode, it.request.sampling.stop) for it in call.items]

    def opening(self) -> list[Any]:
        return []

    def tokens(self, i: int, ids: list[int]) -> list[Any]:
        delta = self.texts[i].add(ids)
        return [self.delta(i, delta)] if delta else []

    def delta(self, i: int, text: str) -> Any:
        raise NotImplementedError

    def closing(self, job: Any) -> list[Any]:
        raise NotImplementedError


class NativeStream(StreamFormat):
    def delta(self, i: int, text: str) -> Any:
        st = self.texts[i]
        out = native_partial(self.call.items[i], st.sent, st.ids)
        return {**out, "index": i} if self.call.batched else out

    def closing(self, job: Any) -> list[Any]:
        out = []
        for i, (c, item, sc) in enumerate(zip(job.results, self.call.items, job.scores)):
            final = native(c, item, sc, self.decode)
            out.append({**final, "index": i} if self.call.batched else final)
        return out


class CompletionStream(StreamFormat):
    def __init__(self, decode: Decode, call: Call, call_id: str):
        super().__init__(decode, call)
        self.id = call_id

    def delta(self, i: int, text: str) -> Any:
        return completion_chunk(self.id, self.call.model, i, text)

    def closing(self, job: Any) -> list[Any]:
        out = [completion_chunk(self.id, self.call.model, i, self.texts[i].finish(c.text), c,
                                   completion_logprobs(c, item, sc, self.decode))
               for i, (c, item, sc) in enumerate(zip(job.results, self.call.items, job.scores))]
        if self.call.include_usage:
            out.append(usage_chunk(self.id, self.call.model, "text_completion", job.results))
        return out


class ChatStream(StreamFormat):
    def __init__(self, decode: Decode, call: Call, call_id: str):
        super().__init__(decode, call)
        self.id = call_id

    def opening(self) -> list[Any]:
        return [chat_chunk(self.id, self.call.model, {"role": "assistant", "content": ""})]

    def delta(self, i: int, text: str) -> Any:
        return chat_chunk(self.id, self.call.model, {"content": text})

    def closing(self, job: Any) -> list[Any]:
        c, item, sc = job.results[0], self.call.items[0], job.scores[0]
        rest = self.texts[0].finish(c.text)
        out = [chat_chunk(self.id, self.call.model, {"content": rest} if rest else {}, c,
                             chat_logprobs(c, item, sc, self.decode))]
        if self.call.include_usage:
            out.append(usage_chunk(self.id, self.call.model, "chat.completion.chunk", job.results))
        return out


# ------------------------------------------------------------------------------------------------ errors
def native_error(message: str) -> dict[str, Any]:
    """SGLang's native error body (http_server._create_error_response)."""
    return {"error": {"message": message}}


def openai_error(message: str, status: int, param: str | None = None) -> dict[str, Any]:
    """SGLang's OpenAI ErrorResponse."""
    kind = {400: "BadRequestError", 404: "NotFoundError", 413: "BadRequestError"}.get(status, "InternalServerError")
    return {"object": "error", "message": message, "type": kind, "param": param, "code": status}
