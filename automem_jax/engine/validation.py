"""Up-front checks of a Request against an engine's limits, before anything is placed in a slot.

SamplingParams checks its own ranges, but a request built by a server from JSON, or with dataclasses.replace, can
still carry values that only fail deep inside a batch (a stop id past int32 fails while the device rows are
built, an int stop "string" fails on the host after prefill), taking every request of the batch with it. These
checks run per request, so a bad one fails alone with an EngineError naming its field and the fix. The HTTP server
calls them too, to answer 400 before a request reaches the batch.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Mapping, Sequence

import numpy as np
from absl import logging

from automem_jax.engine.base import Completion, EngineError, Request, SamplingParams
from automem_jax.short_repr import short_repr

INT32_MAX = 2**31 - 1
MAX_STOP_STRINGS = 64
MAX_STOP_CHARS = 1024
_FLOAT32_MAX = float(np.finfo(np.float32).max)  # temperatures reach the device as float32


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """What an engine can serve. max_stop_ids: distinct stop ids per request, EOS ids included (None = any);
    max_new_tokens: the largest max_new_tokens accepted (None = any; the engine caps it at the context left)."""

    vocab_size: int
    max_stop_ids: int | None = None
    eos_ids: tuple[int, ...] = ()
    max_new_tokens: int | None = None


def check_request(req: Any, limits: RequestLimits) -> None:
    """Raise EngineError naming the first bad field of a request's adapter or sampling parameters."""
    if not isinstance(req, Request):
        raise EngineError(f"request must be an engine Request, got {type(req).__name__}")
    if req.adapter is not None and not isinstance(req.adapter, str):
        raise EngineError(f"request.adapter must be an adapter name (a string) or None, got "
                          f"{type(req.adapter).__name__}; load the adapter by name first")
    check_sampling(req.sampling, limits)


def check_messages(messages: Any) -> None:
    """Raise EngineError naming the first bad message of a chat request: a non-empty list of {'role', 'content'}
    dicts with string values (a template renders them, and a non-string fails the render of a whole batch)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise EngineError(f"messages must be a non-empty list of {{'role', 'content'}} dicts, got "
                          f"{type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise EngineError(f"messages[{i}] must be a dict with 'role' and 'content', got {type(m).__name__}")
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                raise EngineError(f"messages[{i}].{key} must be a string, got {type(m.get(key)).__name__} "
                                  f"{short_repr(m.get(key))}" + ("; join text parts into one string"
                                                                  if key == "content" else ""))


def failed_completion(req: Any, error: Exception) -> Completion:
    """The Completion of a request that failed alone: finish_reason "error" and the reason (an EngineError's
    message names the field; another exception is an engine bug, logged and reported with its type)."""
    if not isinstance(error, EngineError):
        logging.warning("engine: request failed: %s: %s", type(error).__name__, error)
    text = str(error) if isinstance(error, EngineError) else f"{type(error).__name__}: {error}"
    return Completion(text="", token_ids=[], finish_reason="error", error=text, rid=getattr(req, "rid", None))


def check_sampling(sp: Any, limits: RequestLimits) -> None:
    """Raise EngineError naming the first bad field (sampling.<field>) of `sp` and the fix."""
    if not isinstance(sp, SamplingParams):
        raise EngineError(f"request.sampling must be a SamplingParams, got {type(sp).__name__}")
    temperature = _real("temperature", sp.temperature)
    if not 0 <= temperature <= _FLOAT32_MAX:
        raise EngineError(f"sampling.temperature must be >= 0 and finite in float32 (0 = greedy), got "
                          f"{short_repr(sp.temperature)}")
    top_p = _real("top_p", sp.top_p)
    if not 0 < top_p <= 1:
        raise EngineError(f"sampling.top_p must be in (0, 1], got {short_repr(sp.top_p)}")
    _int("top_k", sp.top_k, 0, INT32_MAX, "0 = off")
    _int("max_new_tokens", sp.max_new_tokens, 1, limits.max_new_tokens or math.inf,
         "ask for fewer tokens" if limits.max_new_tokens else "")
    if sp.seed is not None:
        _int("seed", sp.seed, -math.inf, math.inf, "or None for a random seed")
    _check_stops(sp.stop)
    _check_stop_ids(sp.stop_token_ids, limits)
    if sp.regex is not None and (not isinstance(sp.regex, str) or not sp.regex):
        raise EngineError(f"sampling.regex must be a non-empty string or None, got {type(sp.regex).__name__}")


def _check_stops(stops: Any) -> None:
    if not isinstance(stops, (tuple, list)):
        raise EngineError(f"sampling.stop must be a list of strings, got {type(stops).__name__}; "
                          "wrap a single stop string in a list")
    if len(stops) > MAX_STOP_STRINGS:
        raise EngineError(f"sampling.stop has {len(stops)} strings; at most {MAX_STOP_STRINGS} are supported")
    for i, s in enumerate(stops):
        if not isinstance(s, str) or not s:
            raise EngineError(f"sampling.stop[{i}] must be a non-empty string, got {type(s).__name__} "
                              f"{short_repr(s)}; stop token ids go in stop_token_ids")
        if len(s) > MAX_STOP_CHARS:
            raise EngineError(f"sampling.stop[{i}] has {len(s)} characters; at most {MAX_STOP_CHARS}")


def _check_stop_ids(ids: Any, limits: RequestLimits) -> None:
    if not isinstance(ids, (tuple, list)):
        raise EngineError(f"sampling.stop_token_ids must be a list of token ids, got {type(ids).__name__}")
    for i, t in enumerate(ids):
        _int(f"stop_token_ids[{i}]", t, 0, limits.vocab_size - 1, f"token ids are < vocab_size={limits.vocab_size}")
    if limits.max_stop_ids is not None:
        distinct = dict.fromkeys([int(t) for t in ids] + list(limits.eos_ids))
        if len(distinct) > limits.max_stop_ids:
            raise EngineError(f"sampling.stop_token_ids: at most {limits.max_stop_ids - len(limits.eos_ids)} ids "
                              f"(plus EOS) are supported, got {len(ids)}")


def _real(field: str, v: Any) -> float:
    """A finite real number (no bool, no string); returns it as a float."""
    if type(v) is not float and type(v) is not int and (  # the common types skip the slower ABC check
            isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real)):
        raise EngineError(f"sampling.{field} must be a number, got {type(v).__name__} {short_repr(v)}")
    try:
        f = float(v)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f):
        raise EngineError(f"sampling.{field} must be a finite number, got {short_repr(v)}")
    return f


def _int(field: str, v: Any, lo: float, hi: float, fix: str = "") -> int:
    if type(v) is not int and (isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral)):
        raise EngineError(f"sampling.{field} must be an integer, got {type(v).__name__} {short_repr(v)}")
    if not lo <= v <= hi:
        bounds = f">= {lo}" if hi == math.inf else f"in [{lo}, {hi}]"
        raise EngineError(f"sampling.{field} must be {bounds}, got {short_repr(v)}" + (f" ({fix})" if fix else ""))
    return int(v)
