"""Tiny random models for tests: Hugging Face directories written without torch, and in-memory decoders."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from automem_jax.models import st_io
from automem_jax.models.config import ModelConfig, tiny_config
from automem_jax.models.weights import tensor_maps

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2 (as SmolLM2)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.", "What is the capital of France? The capital of France is Paris.",
    "You are an agent playing a game. Move north, south, east or west.", "<memory>append notes.md: found wood</memory>",
    "Inventory: wood 2, stone 1. Health 9/9. The agent collects resources and crafts tools.",
    "user assistant system action plan log read write search", "0123456789 ()[]{}<>:;,.!?'\"-_/\\|@#$%^&*+=~`",
]


def tiny_tokenizer(vocab_size: int = 320) -> tokenizers.Tokenizer:
    """Byte-level BPE (GPT-2 style, like SmolLM2/Qwen) trained on a few fixed sentences; deterministic."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok


def write_tokenizer_files(out_dir: Path, tok: tokenizers.Tokenizer, *, chat_template: str | None = CHATML_TEMPLATE,
                          max_length: int = 512) -> None:
    added = {str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                        "single_word": False, "special": True} for t in SPECIAL_TOKENS}
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
           "pad_token": "<|im_end|>", "unk_token": None, "model_max_length": max_length,
           "clean_up_tokenization_spaces": False, "added_tokens_decoder": added,
           "additional_special_tokens": list(SPECIAL_TOKENS[1:])}
    if chat_template is not None:
        cfg["chat_template"] = chat_template
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))


def random_hf_tensors(config: ModelConfig, seed: int = 0, dtype=np.float32, std: float = 0.2) -> dict[str, np.ndarray]:
    """HF-named random weights for `config` (norm weights near 1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for tmap in tensor_maps(config):
        is_norm = tmap.hf_name.endswith("norm.weight")
        for name in tmap.names(config.num_layers):
            w = rng.standard_normal(tmap.hf_shape, dtype=np.float32) * (0.1 if is_norm else std)
            out[name] = (w + 1.0 if is_norm else w).astype(dtype)
    return out


def save_tiny_hf_model(out_dir: str | os.PathLike, arch: str = "llama", seed: int = 0, *,
                       config: ModelConfig | None = None, chat_template: str | None = CHATML_TEMPLATE) -> Path:
    """Write a tiny random HF model dir (config.json, model.safetensors, tokenizer files, generation_config.json).

    arch: "llama" (untied, no bias) or "qwen2" (tied, q/k/v bias). Token ids: 0 <|endoftext|>, 1 <|im_start|> (bos),
    2 <|im_end|> (eos, pad).
    """
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"save_tiny_hf_model: arch must be 'llama' or 'qwen2', got {arch!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer()
    if config is None:
        vocab = -(-tok.get_vocab_size() // 64) * 64
        config = tiny_config(vocab_size=vocab, bos_token_id=1, eos_token_ids=(2,), pad_token_id=2,
                             attention_bias=arch == "qwen2", tie_word_embeddings=arch == "qwen2")
    (out_dir / "config.json").write_text(json.dumps(config.to_hf(arch), indent=2))
    (out_dir / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": config.bos_token_id, "eos_token_id": list(config.eos_token_ids),
         "pad_token_id": config.pad_token_id}, indent=2))
    st_io.write(out_dir / "model.safetensors", random_hf_tensors(config, seed), metadata={"format": "pt"})
    write_tokenizer_files(out_dir, tok, chat_template=chat_template)
    return out_dir


def tiny_decoder(seed: int, *, bias: bool = False, vocab_size: int = 256):
    """A tiny random bf16 `Decoder`; with `bias`, q/k/v biases drawn at random (they are zero-initialised, which
    would leave their wiring untested)."""
    import jax.numpy as jnp
    from automem_jax.models.loader import random_model
    model = random_model(tiny_config(vocab_size=vocab_size, attention_bias=bias), dtype=jnp.bfloat16, seed=seed)
    if bias:
        rng = np.random.default_rng(seed)
        for p in (model.layers.q_proj, model.layers.k_proj, model.layers.v_proj):
            p.bias[...] = jnp.asarray(rng.standard_normal(p.bias.shape), jnp.bfloat16)
    return model
