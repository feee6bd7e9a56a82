"""Tokenizer: chat rendering equals transformers', assistant mask, clear errors."""
from __future__ import annotations

import json
import shutil

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
