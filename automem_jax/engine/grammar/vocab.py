"""The bytes each token id stands for, from the tokenizer we already have (no hub download).

Constrained decoding walks a byte-level automaton over every token's bytes, so each id needs its exact bytes, not its
display string: a byte-level BPE token (GPT-2, SmolLM2, Qwen2.5) spells bytes as printable stand-in characters
(`Ġ` = space), and a SentencePiece-style one spells a space as `▁` and lone bytes as `<0x0A>`. Special tokens
(chat markers, EOS) get no bytes: a grammar never produces them; EOS is handled by the automaton itself.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import threading
import weakref
from typing import Any, Sequence

import numpy as np

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
# End marker appended to every regex (automaton.py says why): U+10FFFF, a noncharacter no reply contains.
SENTINEL = "\U0010FFFF".encode("utf-8")
SENTINEL_REGEX = r"\x{10FFFF}"


@functools.lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's bytes_to_unicode table, inverted: printable stand-in character -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = list(bs)
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(bs, cs)}


@dataclasses.dataclass(frozen=True)
class TokenVocab:
    """token_bytes[i]: the bytes of token i, or None (special, unused, or beyond the tokenizer). `eos_ids` end a
    reply (allowed in accepting states only). `vocab_size` is the model's logits width (may exceed the tokenizer's)."""

    token_bytes: tuple[bytes | None, ...]
    eos_ids: tuple[int, ...]
    vocab_size: int

    def __post_init__(self):
        if not self.eos_ids:
            raise ValueError("TokenVocab: constrained decoding needs at least one EOS id (a reply ends there)")
        if len(self.token_bytes) > self.vocab_size:
            raise ValueError(f"TokenVocab: {len(self.token_bytes)} token strings but vocab_size {self.vocab_size}")

    @functools.cached_property
    def fingerprint(self) -> str:
        """Identifies the vocabulary (cache key of compiled grammars)."""
        h = hashlib.sha256(repr((self.eos_ids, self.vocab_size)).encode())
        for b in self.token_bytes:
            h.update(b"\x00" if b is None else b"\x01" + len(b).to_bytes(4, "little") + b)
        return h.hexdigest()[:16]

    @property
    def sentinel_id(self) -> int:
        """Id of the synthetic end-marker token (one past the model's vocabulary; see automaton.py)."""
        return self.vocab_size

    @functools.cached_property
    def has_sentinel(self) -> "np.ndarray":
        """bool [V]: tokens whose bytes contain the end marker (never allowed by a grammar)."""
        return np.asarray([b is not None and SENTINEL in b for b in self.token_bytes]
                          + [False] * (self.vocab_size - len(self.token_bytes)), bool)

    @functools.cached_property
    def outlines(self) -> Any:
        """outlines_core.Vocabulary over the ids that have bytes, plus the end marker (built once; it indexes
        every regex)."""
        from outlines_core import Vocabulary
        table: dict[bytes, list[int]] = {}
        for i, b in enumerate(self.token_bytes):
            if b and i not in self.eos_ids:
                table.setdefault(b, []).append(i)
        table.setdefault(SENTINEL, []).append(self.sentinel_id)
        return Vocabulary(self.eos_ids[0], table)


def _hf_token_bytes(tok: Any) -> list[bytes | None]:
    """Bytes per id of a `tokenizers.Tokenizer` (byte-level BPE, or SentencePiece-style with byte fallback)."""
    spec = json.loads(tok.to_str())
    decoder = json.dumps(spec.get("decoder") or {}, ensure_ascii=False)
    special = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    vocab = tok.get_vocab(with_added_tokens=True)
    out: list[bytes | None] = [None] * (max(vocab.values()) + 1 if vocab else 0)
    byte_level = '"ByteLevel"' in decoder
    table = _byte_level_decoder()
    for text, i in vocab.items():
        if i in special:
            continue
        if byte_level and all(c in table for c in text):
            out[i] = bytes(table[c] for c in text)
            continue
        m = _BYTE_TOKEN.match(text)
        if m:
            out[i] = bytes([int(m.group(1), 16)])
        elif '"Metaspace"' in decoder or "▁" in decoder:  # SentencePiece: "▁" is a space
            out[i] = text.replace("▁", " ").encode("utf-8")
        else:  # a non-special added token, or a decoder we do not model: its plain text
            out[i] = text.encode("utf-8")
    return out


def token_bytes_of(tokenizer: Any) -> list[bytes | None]:
    """Bytes per token id: `tokenizer.token_bytes()` where the tokenizer provides it (test stand-ins), else from the
    HF `tokenizers.Tokenizer` inside models.tokenizer.Tokenizer (its `.tokenizer`) or given directly."""
    if hasattr(tokenizer, "token_bytes"):
        return list(tokenizer.token_bytes())
    inner = getattr(tokenizer, "tokenizer", tokenizer)
    if not hasattr(inner, "get_added_tokens_decoder"):
        raise TypeError(f"constrained decoding: cannot read token bytes from {type(tokenizer).__name__}; give the "
                        "engine a models.tokenizer.Tokenizer (or an object with token_bytes())")
    return _hf_token_bytes(inner)


_VOCABS: "weakref.WeakKeyDictionary[Any, dict[tuple, TokenVocab]]" = weakref.WeakKeyDictionary()
_VOCABS_LOCK = threading.Lock()


def vocab_for(tokenizer: Any, eos_ids: Sequence[int], vocab_size: int) -> TokenVocab:
    """The TokenVocab of a tokenizer (computed once per tokenizer object, eos set and width)."""
    key = (tuple(int(i) for i in eos_ids), int(vocab_size))
    with _VOCABS_LOCK:
        try:
            per_tok = _VOCABS.setdefault(tokenizer, {})
        except TypeError:  # not weak-referenceable: no cache
            per_tok = {}
        if key not in per_tok:
            per_tok[key] = TokenVocab(tuple(token_bytes_of(tokenizer)), key[0], key[1])
        return per_tok[key]
