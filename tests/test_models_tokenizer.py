"""Tokenizer: chat rendering equals transformers', assistant mask, clear errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from automem_jax.models import load_tokenizer
from automem_jax.models.tokenizer import TokenizerError

MSGS = [{"role": "system", "content": "You play Crafter."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Next action?"},
        {"role": "assistant", "content": "<action>move north</action>"}]


def test_chat_matches_transformers(tiny_llama_dir):
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok = load_tokenizer(tiny_llama_dir)
    for gen in (True, False):
        text = ref.apply_chat_template(MSGS[:2] if gen else MSGS, tokenize=False, add_generation_prompt=gen)
        assert tok.render_chat(MSGS[:2] if gen else MSGS, add_generation_prompt=gen) == text
        assert tok.apply_chat_template(MSGS[:2] if gen else MSGS, add_generation_prompt=gen) == \
            ref(text, add_special_tokens=False)["input_ids"]
    assert tok.encode("hello world") == ref("hello world", add_special_tokens=False)["input_ids"]
    assert tok.decode(tok.encode("Move north, then craft.")) == "Move north, then craft."
    assert (tok.bos_token_id, tok.eos_token_ids, tok.pad_token_id) == (1, (2,), 2)
    assert tok.vocab_size == len(ref)


def test_assistant_mask_covers_replies_and_end_of_turn(tiny_llama_dir):
    tok = load_tokenizer(tiny_llama_dir)
    ids, mask = tok.encode_chat_with_mask(MSGS)
    assert ids == tok.apply_chat_template(MSGS, add_generation_prompt=False)
    assert len(mask) == len(ids) and set(mask) == {0, 1}
    masked = tok.decode([i for i, m in zip(ids, mask) if m])
    assert masked == "Paris.<|im_end|><action>move north</action><|im_end|>"
    # a conversation without assistant turns has an all-zero mask
    assert set(tok.encode_chat_with_mask(MSGS[:2])[1]) == {0}


def test_tokenizer_errors(tiny_llama_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_llama_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(TokenizerError, match="no chat template.*tokenizer_config.json"):
        load_tokenizer(d)
    tok = load_tokenizer(d, require_chat_template=False)
    assert tok.encode("abc")
    with pytest.raises(TokenizerError, match="no chat template"):
        tok.render_chat(MSGS)
    (d / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert load_tokenizer(d).render_chat(MSGS[:2]) == "You play Crafter.What is the capital of France?"
    with pytest.raises(TokenizerError, match=r"messages\[0\]"):
        load_tokenizer(d).render_chat([{"content": "no role"}])
    (d / "tokenizer.json").unlink()
    with pytest.raises(TokenizerError, match="tokenizer.json not found"):
        load_tokenizer(d)


def test_chat_template_batch_equals_one_at_a_time(tiny_llama_dir):
    tok = load_tokenizer(tiny_llama_dir)
    convs = [MSGS[:2], MSGS[:4], [{"content": "no role"}], MSGS[:1]]
    got = tok.apply_chat_template_batch(convs)
    assert got[0] == tok.apply_chat_template(MSGS[:2]) and got[1] == tok.apply_chat_template(MSGS[:4])
    assert got[3] == tok.apply_chat_template(MSGS[:1])
    assert isinstance(got[2], TokenizerError) and "messages[0]" in str(got[2])
    assert tok.apply_chat_template_batch([]) == []


def test_chat_batch_segment_cache_is_exact_and_bounded(tiny_llama_dir, monkeypatch):
    """apply_chat_template_batch encodes the pieces between added (special) tokens once (a repeated message is not encoded
    again) and gives exactly the ids of encoding each whole text, also for text that touches the special tokens,
    whitespace runs and non-ASCII; the cache keeps at most `segment_cache_tokens` tokens, dropping the least
    recently used (a piece every conversation shares stays)."""
    tok = load_tokenizer(tiny_llama_dir)
    rng = np.random.default_rng(0)
    words = ["move", " up", "\n\n", "  ", "é", "<|im_end|>", "<|im_start|>", "wood:", " 3", "\t", "ok."]
    convs = []
    for i in range(40):
        shared = {"role": "user", "content": "You play Crafter.\n\nGoal: survive."}
        own = {"role": "user", "content": "".join(rng.choice(words, size=int(rng.integers(0, 12))))}
        convs.append([shared, {"role": "assistant", "content": "".join(rng.choice(words, size=3))}, own][:1 + i % 3])
    encoded = []
    orig = tok.tokenizer.encode_batch
    monkeypatch.setattr(tok.tokenizer, "encode_batch", lambda texts, **k: encoded.extend(texts) or orig(texts, **k),
                        raising=False)
    got = tok.apply_chat_template_batch(convs)
    assert got == [tok.apply_chat_template(c) for c in convs]
    assert encoded.count("user\nYou play Crafter.\n\nGoal: survive.") == 1  # a piece is encoded once
    encoded.clear()
    assert tok.apply_chat_template_batch(convs[:3]) == got[:3] and not encoded  # all cached now
    tok.segment_cache_tokens = 40
    assert tok.apply_chat_template_batch(convs) == got
    assert 0 < tok._segment_tokens == sum(map(len, tok._segments.values())) <= 40
    encoded.clear()
    assert tok.apply_chat_template_batch(convs[:1]) == got[:1] and not encoded  # the shared piece was kept


def test_segment_cache_turns_itself_off_where_the_split_is_not_exact():
    """A pre-tokenizer that marks only the text's first word (Metaspace, prepend_scheme="first") encodes a piece
    after a special token differently alone: the first calls' check sees it and every text is encoded whole."""
    import tokenizers
    from tokenizers import models, pre_tokenizers, trainers

    from automem_jax.models.tokenizer import Tokenizer
    raw = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    raw.train_from_iterator(["hello world", "world hello", "hi"] * 10, trainers.BpeTrainer(
        vocab_size=60, special_tokens=["<unk>", "<|im_start|>", "<|im_end|>"], show_progress=False))
    tok = Tokenizer(raw, chat_template="{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")
    convs = [[{"role": "user", "content": "hello world"}], [{"role": "user", "content": "world hi"}]]
    assert tok.apply_chat_template_batch(convs) == [tok.apply_chat_template(c) for c in convs]
    assert tok._split is None  # the check found the difference and switched the cache off
