"""Tokenizer (HF `tokenizers` fast tokenizer) + chat templates rendered with jinja2 the way transformers does.

`encode_chat_with_mask` marks the assistant's tokens: each assistant turn's span is the text that rendering
messages[:i+1] adds over rendering messages[:i] with the generation prompt (so the mask covers exactly what the model
would generate: the content and its end-of-turn token, not the role header).
"""
from __future__ import annotations

import collections
import json
import os
import re
import threading
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.ext
import jinja2.sandbox
import tokenizers
from absl import logging


class TokenizerError(ValueError):
    pass


Message = Mapping[str, Any]
# Default tokens of chat text pieces (between special tokens) kept encoded by `apply_chat_template_batch`, the least recently
# used dropped first (a shared system prompt stays however many one-off pieces pass through), as Python lists, which
# the prompts are assembled from without conversions (~36 bytes a token).
SEGMENT_CACHE_TOKENS = 1 << 22


class _GenerationTag(jinja2.ext.Extension):
    """Accept transformers' `{% generation %}...{% endgeneration %}` markers (rendered as their body)."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _raise(message: str):
    raise TokenizerError(f"chat template: {message}")


def _compile_template(source: str) -> jinja2.Template:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols, _GenerationTag])
    env.filters["tojson"] = lambda x, indent=None, separators=None, sort_keys=False, ensure_ascii=False: json.dumps(
        x, indent=indent, separators=separators, sort_keys=sort_keys, ensure_ascii=ensure_ascii)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TokenizerError(f"chat template does not parse (line {e.lineno}): {e.message}") from None


def _token_str(value: Any) -> str | None:
    if isinstance(value, Mapping):
        return value.get("content")
    return value


class Tokenizer:
    def __init__(self, tokenizer: tokenizers.Tokenizer, *, chat_template: str | None = None,
                 bos_token: str | None = None, eos_token: str | None = None, pad_token: str | None = None,
                 extra_eos_token_ids: Sequence[int] = (), name: str = "",
                 segment_cache_tokens: int = SEGMENT_CACHE_TOKENS):
        self.tokenizer = tokenizer
        self.segment_cache_tokens = segment_cache_tokens
        self.name = name
        self.chat_template = chat_template
        self._template = _compile_template(chat_template) if chat_template else None
        self.bos_token, self.eos_token = bos_token, eos_token
        self.pad_token = pad_token or eos_token
        eos = [self.token_to_id(eos_token)] if eos_token else []
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys([i for i in eos if i is not None] +
                                                                 [int(i) for i in extra_eos_token_ids]))
        self.bos_token_id = self.token_to_id(bos_token) if bos_token else None
        self.pad_token_id = self.token_to_id(self.pad_token) if self.pad_token else None
        if self.pad_token_id is None and self.eos_token_ids:
            self.pad_token_id = self.eos_token_ids[0]
        self._added, self._split = _added_token_splitter(tokenizer)
        self._segments: collections.OrderedDict[str, list[int]] = collections.OrderedDict()
        self._segment_tokens = 0
        self._checks_left = 8  # calls whose first text is also encoded whole, to confirm the split is exact
        self._segments_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------ basics
    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------------------------------------- chat
    def render_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True, **kwargs) -> str:
        if self._template is None:
            raise TokenizerError(f"tokenizer {self.name!r} has no chat template (expected 'chat_template' in "
                                 "tokenizer_config.json, or chat_template.jinja / chat_template.json)")
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
                raise TokenizerError(f"messages[{i}] must be a dict with 'role' and 'content', got {m!r}")
        return self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos_token or "", eos_token=self.eos_token or "",
                                     pad_token=self.pad_token or "", **kwargs)

    def apply_chat_template(self, messages: Sequence[Message], add_generation_prompt: bool = True,
                            **kwargs) -> list[int]:
        return self.encode(self.render_chat(messages, add_generation_prompt, **kwargs))

    def apply_chat_template_batch(self, conversations: Sequence[Sequence[Message]],
                                  add_generation_prompt: bool = True) -> list[list[int] | TokenizerError]:
        """`apply_chat_template` of many conversations: the templates render one by one, the texts are encoded in
        one `encode_batch` (the tokenizers library spreads it over threads; a ~1k-token prompt takes ~2 ms to
        encode on one core), minus the pieces a segment cache already holds (`_encode_texts`). A conversation that
        does not render gets its TokenizerError in its place."""
        texts: list[str | TokenizerError] = []
        for messages in conversations:
            try:
                texts.append(self.render_chat(messages, add_generation_prompt))
            except TokenizerError as e:
                texts.append(e)
        with self._segments_lock:
            encoded = iter(self._encode_texts([t for t in texts if isinstance(t, str)]))
        return [t if isinstance(t, TokenizerError) else next(encoded) for t in texts]

    def _encode_texts(self, texts: list[str]) -> list[list[int]]:
        """`encode` of many chat texts through a segment cache: each text is split at its added tokens (the chat
        template's special tokens), which the tokenizer splits out first, before normalising or pre-tokenising
        anything, so the pieces between them encode independently (the same ids as the whole text). Pieces seen
        before (a conversation's earlier messages, a shared instruction) are not encoded again; the new ones go
        through one `encode_batch`."""
        if self._split is None:  # no split is known exact for this tokenizer: whole texts
            return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]
        parts = [self._split.split(t) for t in texts]  # [piece, added token, piece, ..., piece]
        new = list(dict.fromkeys(p for ps in parts for p in ps[0::2] if p and p not in self._segments))
        for piece, enc in zip(new, self.tokenizer.encode_batch(new, add_special_tokens=False)):
            self._segments[piece] = enc.ids
            self._segment_tokens += len(enc.ids)
        out = []
        for ps in parts:
            ids: list[int] = []
            for i, p in enumerate(ps):
                if p:
                    if i % 2 == 0:
                        self._segments.move_to_end(p)  # recently used: evicted last
                        ids += self._segments[p]
                    else:
                        ids += self._added[p]
            out.append(ids)
        while self._segment_tokens > self.segment_cache_tokens and self._segments:  # least recently used first
            self._segment_tokens -= len(self._segments.popitem(last=False)[1])
        if texts and self._checks_left > 0:  # e.g. a pre-tokenizer that marks only the text's first word differs
            self._checks_left -= 1
            if self.encode(texts[0]) != out[0]:
                logging.warning("tokenizer %s: text split at special tokens encodes differently; segment cache off",
                                self.name)
                self._split, self._segments, self._segment_tokens = None, collections.OrderedDict(), 0
                return self._encode_texts(texts)
        return out

    def encode_chat_with_mask(self, messages: Sequence[Message], **kwargs) -> tuple[list[int], list[int]]:
        """(ids, mask) for a whole conversation; mask=1 on the assistant's own tokens (content + end of turn)."""
        full = self.render_chat(messages, add_generation_prompt=False, **kwargs)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prefix = self.render_chat(messages[:i], add_generation_prompt=True, **kwargs)
            upto = self.render_chat(messages[:i + 1], add_generation_prompt=False, **kwargs)
            if not (full.startswith(upto) and upto.startswith(prefix)):
                raise TokenizerError("encode_chat_with_mask: the chat template does not render conversations "
                                     "incrementally (rendering messages[:i] is not a prefix of messages[:i+1]); "
                                     "the assistant mask cannot be derived from it")
            end = len(upto.rstrip())  # the turn's trailing newline is template glue, not generated text
            spans.append((len(prefix), end))
        enc = self.tokenizer.encode(full, add_special_tokens=False)
        mask = [0] * len(enc.ids)
        for t, (s, e) in enumerate(enc.offsets):
            if any(a <= s and e <= b and e > s for a, b in spans):
                mask[t] = 1
        return list(enc.ids), mask


def _added_token_splitter(tokenizer: tokenizers.Tokenizer) -> tuple[dict[str, list[int]], re.Pattern | None]:
    """The added tokens the tokenizer matches on the raw text (not normalised; special or not) as {content: [id]},
    and a regex splitting text at them as it does (leftmost, longest first); None where one of them strips
    whitespace around it or matches single words only: splitting the raw text there could change the ids. (Tokens
    matched on normalised text are matched inside each piece, as they are inside the tokenizer's own pieces.)"""
    raw = [(i, t) for i, t in tokenizer.get_added_tokens_decoder().items() if not t.normalized]
    added = {t.content: [i] for i, t in raw}
    if not added or any(t.lstrip or t.rstrip or t.single_word for _, t in raw):
        return added, None
    return added, re.compile("(" + "|".join(re.escape(c) for c in sorted(added, key=len, reverse=True)) + ")")


def _load_chat_template(model_dir: Path, tok_cfg: Mapping[str, Any]) -> str | None:
    tpl = tok_cfg.get("chat_template")
    if tpl is None and (model_dir / "chat_template.jinja").is_file():
        tpl = (model_dir / "chat_template.jinja").read_text()
    if tpl is None and (model_dir / "chat_template.json").is_file():
        tpl = json.loads((model_dir / "chat_template.json").read_text()).get("chat_template")
    if isinstance(tpl, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in tpl}
        tpl = named.get("default") or next(iter(named.values()), None)
    return tpl


def load_tokenizer(path: str | os.PathLike, *, require_chat_template: bool = True) -> Tokenizer:
    """Tokenizer from a HF model dir: tokenizer.json (+ tokenizer_config.json, generation_config.json)."""
    model_dir = Path(path)
    tj = model_dir / "tokenizer.json"
    if not tj.is_file():
        raise TokenizerError(f"{model_dir}: tokenizer.json not found (only fast tokenizers are supported; save one "
                             "with transformers' tokenizer.save_pretrained)")
    try:
        tok = tokenizers.Tokenizer.from_file(str(tj))
    except Exception as e:  # tokenizers raises a bare Exception on a malformed file
        raise TokenizerError(f"{tj}: cannot be read by the tokenizers library ({e})") from None
    cfg_path = model_dir / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    template = _load_chat_template(model_dir, tok_cfg)
    if template is None and require_chat_template:
        raise TokenizerError(f"{model_dir}: no chat template (expected a 'chat_template' field in "
                             "tokenizer_config.json, or chat_template.jinja / chat_template.json)")
    extra_eos: list[int] = []
    for fname in ("generation_config.json", "config.json"):
        p = model_dir / fname
        if p.is_file():
            eos = json.loads(p.read_text()).get("eos_token_id")
            if eos is not None:
                extra_eos += [eos] if isinstance(eos, int) else list(eos)
    return Tokenizer(tok, chat_template=template, bos_token=_token_str(tok_cfg.get("bos_token")),
                     eos_token=_token_str(tok_cfg.get("eos_token")), pad_token=_token_str(tok_cfg.get("pad_token")),
                     extra_eos_token_ids=extra_eos, name=str(model_dir))
