"""Regex -> token automaton (engine/grammar): token bytes, classes, accepting states, budgets, refusals."""
from __future__ import annotations

import re

import numpy as np
import pytest

from automem_jax.engine.grammar import GrammarBank, GrammarConfig, GrammarError, GrammarLimits, TokenVocab, \
    check_regex, compile_regex, token_bytes_of
from automem_jax.engine.grammar.device import DEAD, FREE
from automem_jax.models.testing import tiny_tokenizer
from automem_jax.models.tokenizer import Tokenizer


def _byte_vocab(extra: dict[int, bytes] | None = None, size: int = 300) -> TokenVocab:
    """ids 0 (EOS) and 1 special, 2..255 single bytes, then `extra` multi-byte tokens."""
    tb: list[bytes | None] = [None, None] + [bytes([i]) for i in range(2, 256)] + [None] * (size - 256)
    for i, b in (extra or {}).items():
        tb[i] = b
    return TokenVocab(tuple(tb), (0,), size)


def _ids(text: str) -> list[int]:
    return list(text.encode())


def _accepts(a, ids) -> bool:
    s = a.walk(ids)
    return s >= 0 and bool(a.accepting[s])


def test_repetition_continues_after_an_accepting_point():
    # outlines-core 0.2.14 alone drops the second "ab" (a token one byte past a match); the end marker fixes it
    a = compile_regex("(?:ab)+", _byte_vocab())
    assert _accepts(a, _ids("ab")) and _accepts(a, _ids("abab")) and _accepts(a, _ids("ababab"))
    assert a.walk(_ids("aba")) >= 0 and not _accepts(a, _ids("aba")) and a.walk(_ids("abb")) == -1
    ops = compile_regex(r"[^<]*(?:<\|S\|>[a-z]+<\|END\|>[^<]*)+", _byte_vocab())
    assert _accepts(ops, _ids("hm <|S|>ab<|END|>\n<|S|>c<|END|>"))
    assert not _accepts(ops, _ids("hm")) and ops.walk(_ids("<|S|>A")) == -1


def test_multibyte_tokens_distances_and_eos():
    vocab = _byte_vocab({256: b"<|", 257: b"|>", 258: b"DONE", 259: b"\xe2\x96", 260: b"\x81"})
    a = compile_regex(r"x?<\|DONE\|>|é▁", vocab)
    assert _accepts(a, [256, 258, 257]) and _accepts(a, _ids("<|DONE|>")) and _accepts(a, _ids("x<|DONE|>"))
    assert a.min_tokens == 3  # "<|" "DONE" "|>" (the other branch takes 4: two bytes of é, then ▁ in 2 tokens)
    assert _accepts(a, list("é".encode()) + [259, 260])  # "▁" split inside its UTF-8 bytes
    eos_class = a.token_class[0]
    s = a.walk([256, 258, 257])
    assert a.next[s, eos_class] == s and a.next[0, eos_class] == -1  # EOS only where the reply may end
    assert 1 not in a.allowed(0) and 299 not in a.allowed(0)  # special / unknown ids never allowed
    # tokens behaving alike everywhere share a class: every byte outside "x<é▁" is allowed nowhere (class 0)
    assert a.token_class[ord("q")] == a.token_class[ord("Z")] == 0 and a.num_classes < 30


def test_classes_match_per_token_walks():
    rng = np.random.default_rng(0)
    vocab = _byte_vocab({256 + i: bytes(rng.choice(list(b"ab|<>x"), size=rng.integers(2, 4)).tolist())
                         for i in range(40)})
    a = compile_regex(r"(?:<a\|b>|x+)*a", vocab)
    ref = re.compile(r"(?:<a\|b>|x+)*a")
    for _ in range(300):  # random token strings: walk agrees with Python's regex on full and prefix matches
        ids = rng.integers(2, 296, size=rng.integers(1, 6)).tolist()
        text = b"".join(vocab.token_bytes[i] for i in ids).decode("latin-1")
        assert _accepts(a, ids) == bool(ref.fullmatch(text)), text


def test_hf_byte_level_token_bytes_round_trip():
    tok = Tokenizer(tiny_tokenizer())
    tb = token_bytes_of(tok)
    assert tb[:3] == [None, None, None]  # the special tokens
    for i in range(3, len(tb)):
        assert tb[i] == tok.decode([i]).encode("utf-8", "surrogateescape") or b"\xef\xbf\xbd" in tok.decode(
            [i]).encode(), i


def test_refusals_name_the_problem():
    vocab = _byte_vocab()
    with pytest.raises(GrammarError, match="does not compile"):
        compile_regex("(ab", vocab)
    with pytest.raises(GrammarError, match="look-around"):
        check_regex("(?=a)b")
    with pytest.raises(GrammarError, match="over the cap of 100"):
        compile_regex("a{500}", vocab, GrammarLimits(max_states=100))
    with pytest.raises(GrammarError, match="accepts no reply"):
        check_regex("[^\\s\\S]")
    with pytest.raises(GrammarError, match="no reply this tokenizer can spell"):
        compile_regex("x", TokenVocab(tuple([None, None] + [b"y"]), (0,), 8))
    assert check_regex("^abc$") == check_regex("abc")  # anchors are implied


def test_bank_lays_out_grammars_and_evicts_only_unused_ones():
    bank = GrammarBank(_byte_vocab(), GrammarConfig(max_grammars=2))
    g1, s1 = bank.request("a+", 4)
    g2, s2 = bank.request("b+c", 4)
    assert {g1, g2} == {1, 2} and s1 >= 2 and s2 >= 2 and s1 != s2
    t = bank.tables()
    assert t.next.shape[0] >= 64 and np.all(np.asarray(t.next[FREE]) == FREE) and np.all(np.asarray(t.next[DEAD]) == 0)
    tc = np.asarray(t.token_class)
    nxt = np.asarray(t.next)
    assert nxt[s2, tc[g2, ord("b")]] != DEAD and nxt[s2, tc[g2, ord("c")]] == DEAD
    with pytest.raises(GrammarError, match="fill the engine's grammar tables"):
        bank.request("x", 4)  # both loaded grammars are used by this call
    bank.begin_call()
    g3, _ = bank.request("x", 4)
    assert g3 == g1  # the least recently used grammar made room
    with pytest.raises(GrammarError, match="max_new_tokens=2"):
        bank.request("abc", 2)


def test_sentencepiece_style_token_bytes():
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x0A>": 3, "<0xC3>": 4, "▁a": 5, "b": 6, "▁": 7}
    tok = tokenizers.Tokenizer(models.BPE(vocab, [], unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    assert token_bytes_of(tok) == [None, None, None, b"\n", b"\xc3", b" a", b"b", b" "]
