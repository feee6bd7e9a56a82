"""The request side of the JAX engine's scheduler (engine/scheduler.py): a running request (`Seq`), chat prompts
rendered in one batch, the host's stop handling (stop ids and lengths, which the device enforces too, and stop
strings, which it cannot) and the request's Completion. Nothing here touches the device."""
from __future__ import annotations

import dataclasses
from typing import Any, Hashable, Sequence

import numpy as np
from absl import logging

from automem_jax.engine.base import Completion, EngineError, Request
from automem_jax.engine.grammar.device import FREE, NO_GRAMMAR
from automem_jax.engine.sampling import find_stop_string, mode_for
from automem_jax.engine.validation import check_messages


@dataclasses.dataclass
class Seq:
    index: int
    req: Request
    prompt: np.ndarray
    adapter_id: int
    salt: Hashable
    max_new: int
    stop_ids: tuple[int, ...]
    key: np.ndarray
    t0: float
    slot: int = -1
    src: int = -1
    cached: int = 0
    gid: int = NO_GRAMMAR  # constrained decoding (sampling.regex): grammar id, initial state
    gstate: int = FREE
    dev_tokens: list[int] = dataclasses.field(default_factory=list)  # every token the device produced
    out: list[int] = dataclasses.field(default_factory=list)  # tokens reported
    done: bool = False
    reason: tuple[str, Any] | None = None  # (kind, detail) once done
    latency: float = 0.0


def chat_prompts(tokenizer: Any, requests: Sequence[Request]) -> dict[int, Any]:
    """Token ids (or the rendering error) of the chat requests, by request index: one batched encode when the
    tokenizer has `apply_chat_template_batch` (models.tokenizer.Tokenizer), else one request at a time."""
    if tokenizer is None:
        return {}
    out: dict[int, Any] = {}
    chat, convs = [], []
    for i, r in enumerate(requests):
        if getattr(r, "messages", None) is None:
            continue
        try:
            check_messages(r.messages)
        except EngineError as e:
            out[i] = e
            continue
        convs.append(list(r.messages))
        chat.append(i)
    batch = getattr(tokenizer, "apply_chat_template_batch", None)
    if batch is not None:
        try:
            return out | dict(zip(chat, batch(convs, add_generation_prompt=True)))
        except Exception:  # a template error that fails the whole batch: render one by one to find whose
            logging.warning("engine: batched chat rendering failed; rendering %d requests one by one", len(chat))
    for i, conv in zip(chat, convs):
        try:
            out[i] = list(tokenizer.apply_chat_template(conv, add_generation_prompt=True))
        except Exception as e:  # malformed messages (or a template that refuses them): this request fails alone
            out[i] = e
    return out


def sampling_mode(seqs: Sequence[Seq]) -> str:
    """Static sampling mode for a program over these live rows (sampling.mode_for): at most 3 programs per shape."""
    sp = [s.req.sampling for s in seqs]
    return mode_for(np.asarray([p.temperature for p in sp], np.float32), np.asarray([p.top_k for p in sp]),
                    np.asarray([p.top_p for p in sp], np.float32))


def decode_text(tokenizer: Any, ids: list[int]) -> str:
    try:  # SGLang's default: special tokens are not part of the text
        return tokenizer.decode(ids, skip_special_tokens=True)
    except TypeError:
        return tokenizer.decode(ids)


def _trim_to_stop(tokenizer: Any, ids: list[int], end: int) -> list[int]:
    """Shortest prefix of ids whose decoded text reaches `end` chars (the token completing the stop string)."""
    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(decode_text(tokenizer, ids[:mid])) >= end:
            hi = mid
        else:
            lo = mid + 1
    return ids[:hi]


def stop_reason(seq: Seq, toks: list[int], tokenizer: Any) -> tuple[str, Any] | None:
    """Append the device's new tokens `toks` to seq.out up to the first stop; the reason it stops, if it does:
    ("stop", id), ("length", None) or ("stop_str", matched) (seq.out then ends at the token completing it)."""
    stop_set = set(seq.stop_ids)
    reason = None
    for t in toks:
        seq.out.append(t)
        if t in stop_set:
            reason = ("stop", t)
            break
        if len(seq.out) >= seq.max_new:
            reason = ("length", None)
            break
    stops = seq.req.sampling.stop
    if stops and tokenizer is not None:
        ids = seq.out[:-1] if reason and reason[0] == "stop" else seq.out
        text = decode_text(tokenizer, ids)
        idx = find_stop_string(text, tuple(stops))
        if idx >= 0:
            matched = next(s for s in stops if text.startswith(s, idx))
            seq.out = _trim_to_stop(tokenizer, ids, idx + len(matched))
            reason = ("stop_str", matched)
    return reason


def completion(seq: Seq, tokenizer: Any) -> Completion:
    kind, matched = seq.reason
    ids = list(seq.out)
    if kind == "abort":
        return Completion(text="", token_ids=ids, finish_reason="error", error=f"request {matched}",
                          prompt_tokens=len(seq.prompt), completion_tokens=len(ids), cached_tokens=seq.cached,
                          rid=seq.req.rid, meta={"cancelled": True})
    text_ids = ids[:-1] if kind == "stop" else ids
    text = decode_text(tokenizer, text_ids) if tokenizer is not None else ""
    if kind == "stop_str":
        idx = find_stop_string(text, (matched,))
        text = text[:idx] if idx >= 0 else text
    return Completion(text=text, token_ids=ids, finish_reason="length" if kind == "length" else "stop",
                      prompt_tokens=len(seq.prompt), completion_tokens=len(ids), cached_tokens=seq.cached,
                      rid=seq.req.rid, meta={"matched_stop": matched, "e2e_latency": seq.latency,
                                             "adapter": seq.req.adapter})
