"""HTTP request bodies of SGLang's native and OpenAI APIs -> engine Requests, every field checked up front.

A body is read once, here, into `Call`s of engine `Request`s (prompts as token ids: the server tokenises text and
renders chats itself) before anything reaches the engine, so a malformed request is answered 400 with a message
that names its field (`sampling_params.top_k`, `messages[2].content`, ...) and never shares a batch with others.
Field names, defaults and accepted shapes follow SGLang 0.5 (io_struct.GenerateReqInput, sampling_params,
openai/protocol.py); a field SGLang has but this server does not implement is refused when set to anything but
its default, never silently ignored.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import numbers
import re
from typing import Any, Callable, Mapping, Sequence

from automem_jax.engine import validation
from automem_jax.engine.base import EngineError, Request, SamplingParams
from automem_jax.short_repr import short_repr

MAX_TOP_LOGPROBS = 20  # as OpenAI's top_logprobs


class BadRequest(ValueError):
    """A request field is missing or invalid; the message names it and the fix. Answered with `status`."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status


def fail(field: str, message: str, status: int = 400) -> BadRequest:
    return BadRequest(f"{field}: {message}", param=field, status=status)


def parse_json(data: bytes) -> Any:
    """A request body -> JSON value; every failure a BadRequest saying what is wrong with the body."""
    if not data.strip():
        return {}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"request body: not valid UTF-8 (byte {data[e.start]:#04x} at offset {e.start})") \
            from None

    def constant(name: str) -> Any:
        raise BadRequest(f"request body: {name} is not a JSON number; send a finite number")
    try:
        return json.loads(text, parse_constant=constant)
    except json.JSONDecodeError as e:
        raise BadRequest(f"request body: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") \
            from None
    except RecursionError:
        raise BadRequest("request body: JSON nested too deeply") from None
    except ValueError as e:  # e.g. an integer past Python's digit limit
        raise BadRequest(f"request body: {e}") from None


def short(v: Any, limit: int = 80) -> str:
    """A bounded repr of a request value for an error message (short_repr: bounded time for huge values)."""
    return short_repr(v, limit)


def type_name(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "integer", float: "number"}.get(type(v), type(v).__name__)


class Fields:
    """Typed reads of one JSON object; every error names `where.key`."""

    def __init__(self, d: Any, where: str):
        if not isinstance(d, Mapping):
            raise fail(where or "request body", f"must be a JSON object, got {type_name(d)} {short(d)}")
        self.d, self.where = d, where

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, default: Any = None) -> Any:
        v = self.d.get(key)
        return default if v is None else v

    def int(self, key: str, default: int | None, lo: float = -math.inf, hi: float = math.inf,
            fix: str = "") -> int | None:
        v = self.d.get(key)
        if v is None:
            return default
        return check_int(v, self.name(key), lo, hi, fix)

    def float(self, key: str, default: float, lo: float = -math.inf, hi: float = math.inf,
              lo_open: bool = False) -> float:
        v = self.d.get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise fail(self.name(key), f"must be a finite number, got {type_name(v)} {short(v)}")
        if v < lo or v > hi or (lo_open and v == lo):
            left = "(" if lo_open else "["
            raise fail(self.name(key), f"must be in {left}{lo}, {hi}], got {v}")
        return float(v)

    def bool(self, key: str, default: bool = False) -> bool:
        v = self.d.get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise fail(self.name(key), f"must be true or false, got {type_name(v)} {short(v)}")
        return v

    def str(self, key: str, default: str | None = None, *, nonempty: bool = True) -> str | None:
        v = self.d.get(key)
        if v is None:
            return default
        if not isinstance(v, str) or (nonempty and not v):
            raise fail(self.name(key), f"must be a non-empty string, got {type_name(v)} {short(v)}")
        return v

    def unsupported(self, defaults: Mapping[str, Any]) -> None:
        """Refuse SGLang fields this server does not implement unless they hold their default (or null)."""
        for key, default in defaults.items():
            v = self.d.get(key)
            if v is not None and v != default:
                raise fail(self.name(key), f"is not supported by this server (only {default!r}); got {short(v)}")

    def known(self, allowed: Sequence[str]) -> None:
        """Refuse keys outside `allowed`, suggesting the nearest one."""
        for key in self.d:
            if key not in allowed:
                near = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else f"; known: {', '.join(sorted(allowed))}"
                raise fail(self.name(str(key)), f"unknown field{hint}")


def check_int(v: Any, field: str, lo: float = -math.inf, hi: float = math.inf, fix: str = "") -> int:
    """An integer (a float with an integral value is taken, as JSON numbers carry no type); bounds inclusive."""
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise fail(field, f"must be an integer, got {type_name(v)} {short(v)}")
    if not lo <= v <= hi:
        bounds = f">= {lo}" if hi == math.inf else (f"<= {hi}" if lo == -math.inf else f"in [{lo}, {hi}]")
        raise fail(field, f"must be {bounds}, got {v}" + (f" ({fix})" if fix else ""))
    return v


@dataclasses.dataclass(frozen=True)
class Limits:
    """What the served engine accepts: the checks a request passes before it reaches the engine."""

    vocab_size: int
    max_seq_len: int
    engine: validation.RequestLimits  # what the engine checks every request against (stop ids, EOS, ...)
    # compiles a regex for constrained decoding on the request's thread (JaxEngine.prepare_grammar); ValueError if
    # refused. The engine thread then finds it compiled: a slow regex delays only its own request.
    grammar: Callable[[str], None] | None = None
    # longest text that could still fit max_seq_len tokens (tokenizer's longest token x context x 4 for
    # normalisation); longer text is refused before it is tokenised, which costs GBs for a 30-MB body
    max_prompt_chars: int | None = None


def max_prompt_chars(tokenizer: Any, max_seq_len: int) -> int | None:
    """Text longer than this cannot fit max_seq_len tokens: no token spells more bytes than the longest, and a
    character is at least a byte; x4 leaves room for a normaliser that shortens text before tokenising."""
    from automem_jax.engine.grammar import token_bytes_of
    try:
        longest = max(len(b) for b in token_bytes_of(tokenizer) if b)
    except (TypeError, ValueError):  # no tokenizer, or none whose token bytes can be read: no bound
        return None
    return 4 * longest * max_seq_len


def check_text(text: str, field: str, limits: Limits) -> str:
    if limits.max_prompt_chars is not None and len(text) > limits.max_prompt_chars:
        raise fail(field, f"{len(text)} characters cannot fit max_seq_len={limits.max_seq_len} tokens (at most "
                          f"{limits.max_prompt_chars} could); shorten the prompt")
    return text


@dataclasses.dataclass
class Logprobs:
    """What a request asked of `return_logprob`: input logprobs from `start` (-1: none), `top` alternatives."""

    start: int = -1
    top: int = 0
    with_text: bool = False


@dataclasses.dataclass
class Item:
    request: Request
    logprobs: Logprobs | None = None


@dataclasses.dataclass
class Call:
    """One HTTP request's work: its items in order, whether it was a list (`batched`) and streamed."""

    items: list[Item]
    batched: bool = False
    stream: bool = False
    model: str = ""
    include_usage: bool = False


SAMPLING_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "min_p", "stop", "stop_token_ids",
                 "sampling_seed", "seed", "regex", "frequency_penalty", "presence_penalty", "repetition_penalty",
                 "min_new_tokens", "n", "json_schema", "ebnf", "structural_tag", "ignore_eos", "skip_special_tokens",
                 "spaces_between_special_tokens", "no_stop_trim", "custom_params", "stream_interval", "logit_bias",
                 "stop_regex")
# SGLang sampling fields this server refuses unless left at their defaults (the engine has no such feature)
SAMPLING_UNSUPPORTED = {"min_p": 0.0, "frequency_penalty": 0.0, "presence_penalty": 0.0, "repetition_penalty": 1.0,
                        "min_new_tokens": 0, "n": 1, "json_schema": None, "ebnf": None, "structural_tag": None,
                        "ignore_eos": False, "skip_special_tokens": True, "spaces_between_special_tokens": True,
                        "no_stop_trim": False, "custom_params": None, "logit_bias": None, "stop_regex": None}


def sampling(f: Fields, limits: Limits, *, default_max_new: int | None) -> tuple[SamplingParams, str | None]:
    """SGLang sampling fields (a /generate `sampling_params` object, or the top level of an OpenAI body) ->
    SamplingParams and the field that set max_new_tokens (None: the default, capped later to the room left)."""
    f.known(SAMPLING_KEYS)
    f.unsupported(SAMPLING_UNSUPPORTED)
    max_new = f.int("max_new_tokens", None, 1, limits.max_seq_len - 1,
                    f"prompt + max_new_tokens must fit max_seq_len={limits.max_seq_len}")
    explicit = f.name("max_new_tokens") if max_new is not None else None
    max_new = max_new if explicit else (default_max_new or limits.max_seq_len)
    top_k = f.int("top_k", -1, -1, 2**31 - 1, "-1 or 0 = off")
    stop = f.get("stop", ())
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)):
        raise fail(f.name("stop"), f"must be a non-empty string or a list of them, got {type_name(stop)} "
                                   f"{short(stop)}")
    ids = f.get("stop_token_ids", [])
    if not isinstance(ids, list):
        raise fail(f.name("stop_token_ids"), f"must be a list of token ids, got {type_name(ids)} {short(ids)}")
    ids = [int(t) if isinstance(t, float) and math.isfinite(t) and t.is_integer() else t for t in ids]
    seed_key = "sampling_seed" if "sampling_seed" in f.d else "seed"
    sp = SamplingParams(
        temperature=f.float("temperature", 1.0, 0.0, 1e6), top_p=f.float("top_p", 1.0, 0.0, 1.0, lo_open=True),
        top_k=max(top_k, 0), max_new_tokens=max_new, stop=tuple(stop), stop_token_ids=tuple(ids),
        seed=f.int(seed_key, None, -(2**63), 2**64 - 1), regex=f.str("regex"))
    if sp.regex is not None and limits.grammar is not None:
        try:
            limits.grammar(sp.regex)
        except ValueError as e:
            raise fail(f.name("regex"), f"refused for constrained decoding: {e}") from None
    try:  # the engine's own checks (stop strings and ids: types, ranges, counts), named as HTTP fields
        validation.check_sampling(sp, limits.engine)
    except EngineError as e:
        key = re.match(r"sampling\.([\w\[\]]+)", str(e))
        field = f.name(key.group(1)) if key else (f.where or "sampling_params")
        prefix = f"{f.where}." if f.where else ""
        raise BadRequest(str(e).replace("sampling.", prefix, 1), param=field) from None
    return sp, explicit


def finish_item(request: Request, field: str, limits: Limits, max_field: str | None) -> Request:
    """Check a tokenised request against the context: a prompt that does not fit, or an explicit max_new_tokens
    past the room left is refused with the limit (SGLang refuses too); a default one (max_field None) is capped."""
    n = len(request.prompt_ids)
    if n == 0:
        raise fail(field, "the prompt is empty; send at least one token")
    if n > limits.max_seq_len - 1:
        raise fail(field, f"prompt has {n} tokens but max_seq_len is {limits.max_seq_len} (prompt + 1 new token "
                          "must fit); shorten the prompt or start the server with a larger --max_seq_len")
    room = limits.max_seq_len - n
    sp = request.sampling
    if sp.max_new_tokens > room:
        if max_field:
            raise fail(max_field, f"{sp.max_new_tokens} new tokens + {n} prompt tokens exceed max_seq_len="
                                  f"{limits.max_seq_len}; ask for at most {room}")
        request.sampling = dataclasses.replace(sp, max_new_tokens=room)
    try:
        validation.check_request(request, limits.engine)
    except EngineError as e:
        raise BadRequest(f"{field}: {e}", param=field) from e
    return request


def token_ids(v: Any, field: str, vocab: int) -> list[int]:
    if not isinstance(v, list):
        raise fail(field, f"must be a list of token ids, got {type_name(v)} {short(v)}")
    for i, t in enumerate(v):
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab:
            raise fail(f"{field}[{i}]", f"must be a token id in [0, vocab_size={vocab}), got {short(t)}")
    return v


def per_item(f: Fields, key: str, n: int, batched: bool, check: Callable[[Any, str], Any]) -> list:
    """A field that may be one value for every item or (batched) a list with one per item."""
    v = f.d.get(key)
    if batched and isinstance(v, list):
        if len(v) != n:
            raise fail(f.name(key), f"has {len(v)} entries for {n} prompts")
        return [check(x, f"{f.name(key)}[{i}]") for i, x in enumerate(v)]
    one = check(v, f.name(key))
    return [one] * n


def adapter_name(v: Any, field: str) -> str | None:
    if v is None or isinstance(v, str) and v:
        return v
    raise fail(field, f"must be a loaded adapter name (a string) or null, got {type_name(v)} {short(v)}")


def logprob_fields(f: Fields, limits: Limits) -> Logprobs | None:
    """The logprob fields (checked whether or not return_logprob is set) -> what to return, or None."""
    spec = Logprobs(start=f.int("logprob_start_len", -1, -1, limits.max_seq_len - 1, "-1 = output tokens only"),
                    top=f.int("top_logprobs_num", 0, 0, MAX_TOP_LOGPROBS),
                    with_text=f.bool("return_text_in_logprobs"))
    return spec if f.bool("return_logprob") else None


GENERATE_UNSUPPORTED = {"input_embeds": None, "image_data": None, "video_data": None, "audio_data": None,
                        "session_params": None, "return_hidden_states": False, "custom_logit_processor": None,
                        "token_ids_logprob": None, "return_routed_experts": False, "return_entropy": False}


def generate(body: Any, limits: Limits, encode: Callable[[str], list[int]] | None) -> Call:
    """A POST /generate body (GenerateReqInput): `text` or `input_ids`, one or a list, per-item or shared
    `sampling_params`, `lora_path`, `rid`; `stream`; `return_logprob` / `logprob_start_len` /
    `top_logprobs_num` / `return_text_in_logprobs`."""
    f = Fields(body, "")
    f.unsupported(GENERATE_UNSUPPORTED)
    for key in ("return_logprob", "logprob_start_len", "top_logprobs_num"):
        if isinstance(f.d.get(key), list):
            raise fail(key, "one value for every prompt only (per-prompt lists are not supported)")
    text, ids = f.d.get("text"), f.d.get("input_ids")
    if (text is None) == (ids is None):
        raise fail("text", "send exactly one of 'text' (a string or a list of strings) or 'input_ids' (a list of "
                           "token ids or a list of such lists)")
    if text is not None:
        batched = isinstance(text, list)
        texts = text if batched else [text]
        if not texts or not all(isinstance(t, str) for t in texts):
            raise fail("text", f"must be a string or a non-empty list of strings, got {short(text)}")
        if encode is None:
            raise fail("text", "this server has no tokenizer (a preset model); send input_ids")
        where = ["text" if not batched else f"text[{i}]" for i in range(len(texts))]
        prompts = [encode(check_text(t, w, limits)) for t, w in zip(texts, where)]
    else:
        batched = isinstance(ids, list) and bool(ids) and isinstance(ids[0], list)
        lists = ids if batched else [ids]
        prompts = [token_ids(p, f"input_ids[{i}]" if batched else "input_ids", limits.vocab_size)
                   for i, p in enumerate(lists)]
        where = [f"input_ids[{i}]" if batched else "input_ids" for i in range(len(prompts))]
    n = len(prompts)
    sps = per_item(f, "sampling_params", n, batched,
                   lambda v, fld: sampling(Fields({} if v is None else v, fld), limits, default_max_new=128))
    loras = per_item(f, "lora_path", n, batched, adapter_name)
    rids = per_item(f, "rid", n, batched, lambda v, fld: None if v is None else _rid(v, fld))
    lp = logprob_fields(f, limits)
    items = []
    for i, (p, (sp, explicit), lora, rid) in enumerate(zip(prompts, sps, loras, rids)):
        req = Request(prompt_ids=list(p), sampling=sp, adapter=lora, rid=rid)
        items.append(Item(finish_item(req, where[i], limits, explicit), lp))
    return Call(items, batched=batched, stream=f.bool("stream"))


def _rid(v: Any, field: str) -> str:
    if not isinstance(v, str) or not v:
        raise fail(field, f"must be a non-empty string, got {type_name(v)} {short(v)}")
    return v


# ------------------------------------------------------------------------------------------------- OpenAI routes
OPENAI_UNSUPPORTED = {"n": 1, "best_of": None, "echo": False, "suffix": None, "logit_bias": None,
                      "frequency_penalty": 0.0, "presence_penalty": 0.0, "min_p": None, "repetition_penalty": None,
                      "tools": None, "json_schema": None, "ebnf": None, "ignore_eos": False}


def _openai_sampling(f: Fields, limits: Limits, max_key: str | Sequence[str], default_max_new: int | None
                     ) -> tuple[SamplingParams, str | None]:
    keys = (max_key,) if isinstance(max_key, str) else tuple(max_key)
    given = next((k for k in keys if f.d.get(k) is not None), None)
    d = {"max_new_tokens": f.d.get(given) if given else None}
    for key in ("temperature", "top_p", "top_k", "stop", "stop_token_ids", "seed", "regex"):
        if f.d.get(key) is not None:
            d[key] = f.d[key]
    rf = f.d.get("response_format")
    if rf is not None:
        rff = Fields(rf, "response_format")
        if rff.str("type") != "text":
            raise fail("response_format.type", f"only 'text' is supported (constrained decoding takes 'regex'); "
                                               f"got {short(rff.d.get('type'))}")
    try:
        sp, explicit = sampling(Fields(d, ""), limits, default_max_new=default_max_new)
    except BadRequest as e:  # name the OpenAI field, not the internal one
        if given and e.param == "max_new_tokens":
            raise BadRequest(str(e).replace("max_new_tokens", given, 1), param=given) from None
        raise
    return sp, given if explicit else None


def resolve_model(f: Fields, served: str, adapters: Sequence[str]) -> str | None:
    """`model`: the served name (or "default") = base; "base:adapter" or an adapter's own id = that adapter."""
    model = f.str("model", served)
    if model in (served, "default"):
        return None
    base, sep, adapter = model.partition(":")
    if sep and base in (served, "default"):
        return adapter
    if model in adapters:
        return model
    raise BadRequest(f"model: {model!r} is not served here; use {served!r}, '{served}:<adapter>' or one of "
                     f"the adapters {sorted(adapters)} (GET /v1/models)", param="model", status=404)


def completions(body: Any, limits: Limits, encode: Callable[[str], list[int]] | None, served: str,
                adapters: Sequence[str]) -> Call:
    """POST /v1/completions (CompletionRequest): `prompt` as a string, strings, token ids or lists of them."""
    f = Fields(body, "")
    f.unsupported(OPENAI_UNSUPPORTED)
    prompt = f.d.get("prompt")
    batched = isinstance(prompt, list) and bool(prompt) and all(isinstance(p, (str, list)) for p in prompt)
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int)):
        prompts = [prompt]
    elif batched:
        prompts = prompt
    else:
        raise fail("prompt", f"must be a string, a list of strings, a list of token ids or a list of such lists; "
                             f"got {type_name(prompt)} {short(prompt)}")
    adapter = resolve_model(f, served, adapters)
    lora = adapter_name(f.d.get("lora_path"), "lora_path") or adapter
    n_top = f.int("logprobs", None, 0, MAX_TOP_LOGPROBS)
    lp = None if n_top is None else Logprobs(top=n_top, with_text=True)
    items = []
    for i, p in enumerate(prompts):
        field = f"prompt[{i}]" if batched else "prompt"
        if isinstance(p, str):
            if encode is None:
                raise fail(field, "this server has no tokenizer (a preset model); send token ids")
            ids = encode(check_text(p, field, limits))
        else:
            ids = token_ids(p, field, limits.vocab_size)
        sp, explicit = _openai_sampling(f, limits, "max_tokens", 16)
        req = Request(prompt_ids=list(ids), sampling=sp, adapter=lora)
        items.append(Item(finish_item(req, field, limits, explicit), lp))
    return Call(items, batched=batched, stream=f.bool("stream"), model=f.str("model", served),
                include_usage=_include_usage(f))


CHAT_ROLES = ("system", "user", "assistant", "tool", "developer", "function")


def messages(v: Any) -> list[dict[str, str]]:
    """OpenAI chat messages -> [{'role', 'content'}] with string contents (text parts are joined)."""
    if not isinstance(v, list) or not v:
        raise fail("messages", f"must be a non-empty list of {{'role', 'content'}} objects, got {short(v)}")
    out = []
    for i, m in enumerate(v):
        mf = Fields(m, f"messages[{i}]")
        role = m.get("role")
        if not isinstance(role, str) or role.lower() not in CHAT_ROLES:
            raise fail(mf.name("role"), f"must be one of {', '.join(CHAT_ROLES)}; got {short(role)}")
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                pf = Fields(part, f"{mf.name('content')}[{j}]")
                if pf.d.get("type") != "text" or not isinstance(pf.d.get("text"), str):
                    raise fail(pf.where, "only text parts {'type': 'text', 'text': '...'} are supported, got "
                                         f"{short(part)}")
                parts.append(part["text"])
            content = "".join(parts)
        elif content is None and role == "assistant":
            content = ""
        if not isinstance(content, str):
            raise fail(mf.name("content"), f"must be a string or a list of text parts, got {type_name(content)} "
                                           f"{short(content)}")
        out.append({"role": role.lower(), "content": content})
    return out


def chat(body: Any, limits: Limits, render: Callable[[list[dict[str, str]]], list[int]] | None, served: str,
         adapters: Sequence[str]) -> Call:
    """POST /v1/chat/completions (ChatCompletionRequest)."""
    f = Fields(body, "")
    f.unsupported(OPENAI_UNSUPPORTED)
    msgs = messages(f.d.get("messages"))
    adapter = resolve_model(f, served, adapters)
    lora = adapter_name(f.d.get("lora_path"), "lora_path") or adapter
    if render is None:
        raise fail("messages", "this server has no tokenizer / chat template (a preset model); use /generate with "
                               "input_ids")
    try:
        check_text("".join(m["content"] for m in msgs), "messages", limits)
        ids = render(msgs)
    except (ValueError, KeyError, TypeError) as e:  # a template that refuses these messages
        raise fail("messages", f"the chat template could not render them: {short(str(e), 300)}") from None
    sp, explicit = _openai_sampling(f, limits, ("max_completion_tokens", "max_tokens"), None)
    top = f.int("top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
    lp = Logprobs(top=top, with_text=True) if f.bool("logprobs") else None
    req = Request(prompt_ids=list(ids), sampling=sp, adapter=lora, rid=f.str("rid"))
    return Call([Item(finish_item(req, "messages", limits, explicit), lp)], stream=f.bool("stream"),
                model=f.str("model", served), include_usage=_include_usage(f))


def _include_usage(f: Fields) -> bool:
    so = f.d.get("stream_options")
    return so is not None and Fields(so, "stream_options").bool("include_usage")


def lora_load(body: Any) -> tuple[str, str]:
    """POST /load_lora_adapter (LoadLoRAAdapterReqInput): lora_name, lora_path; pinned is accepted."""
    f = Fields(body, "")
    f.bool("pinned")
    name, path = f.str("lora_name"), f.str("lora_path")
    if name is None or path is None:
        raise fail("lora_name" if name is None else "lora_path", "is required: send {'lora_name': NAME, "
                                                                 "'lora_path': PEFT_DIR}")
    return name, path


def lora_unload(body: Any) -> str:
    f = Fields(body, "")
    name = f.str("lora_name")
    if name is None:
        raise fail("lora_name", "is required: send {'lora_name': NAME}")
    return name
