"""Decoder: parity with transformers (fp32), KV-cache / packed-segment equivalence, loader errors."""
from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from automem_jax.models import KVCache, Decoder, LoadError, load_model, tiny_config
from automem_jax.models.loader import random_model
from automem_jax.models.config import ConfigError, ModelConfig, PRESETS
from automem_jax.models.sharding import make_mesh

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

HF_KW = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, vocab_size=256, max_position_embeddings=512)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def save_hf(arch: str, out_dir) -> "torch.nn.Module":
    torch.manual_seed(0)
    if arch == "llama":  # untied, Llama-3 rope scaling (original context 64 so scaling matters at T=100)
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            **HF_KW, rope_parameters=LLAMA3_ROPE, tie_word_embeddings=False))
    else:                # tied embeddings, q/k/v bias
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**HF_KW, tie_word_embeddings=True))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    model.save_pretrained(out_dir)
    return model.eval()


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def hf_pair(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"hf_{request.param}")
    hf = save_hf(request.param, out)
    return request.param, out, hf


def test_parity_with_transformers(hf_pair):
    arch, path, hf = hf_pair
    ids = np.random.RandomState(0).randint(0, 256, (2, 100))
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    ours = load_model(path, dtype=jnp.float32)
    assert ours.config.attention_bias == (arch == "qwen2")
    assert ours.config.tie_word_embeddings == (arch == "qwen2")
    out = np.asarray(ours.logits(ids))
    assert out.dtype == np.float32 and out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def _row_logits(model, ids):
    return np.asarray(model.logits(jnp.asarray(ids)[None]))[0]


def test_cache_prefill_and_decode_equal_full_forward():
    cfg = tiny_config(attention_bias=True)
    model = random_model(cfg, dtype=jnp.float32)
    rng = np.random.RandomState(1)
    lens, total = [5, 8], 12
    seqs = [rng.randint(3, 256, total) for _ in lens]
    # right-padded prefill with per-row lengths; pads sit at later positions and get overwritten
    prompt = np.zeros((2, 8), np.int32)
    for r, n in enumerate(lens):
        prompt[r, :n] = seqs[r][:n]
    pos = np.broadcast_to(np.arange(8), (2, 8)).astype(np.int32)
    cache = KVCache.init(cfg, 2, 16, jnp.float32)
    step = nnx.jit(lambda m, t, p, c: m(t, p, cache=c))
    logits, cache = step(model, prompt, pos, cache)
    got = [[np.asarray(logits[r, :n])] for r, n in enumerate(lens)]
    cur = list(lens)
    for _ in range(4):  # rows decode at different positions
        toks = np.array([[seqs[r][cur[r]]] for r in range(2)], np.int32)
        logits, cache = step(model, toks, np.array([[c] for c in cur], np.int32), cache)
        for r in range(2):
            got[r].append(np.asarray(logits[r]))
            cur[r] += 1
    for r in range(2):
        full = _row_logits(model, seqs[r][:cur[r]])
        np.testing.assert_allclose(np.concatenate(got[r]), full, atol=1e-5)


def test_segment_ids_pack_independent_sequences():
    cfg = tiny_config()
    model = random_model(cfg, dtype=jnp.float32)
    a, b = np.arange(10, 16), np.arange(40, 44)
    tokens = np.concatenate([a, b])[None]
    positions = np.concatenate([np.arange(6), np.arange(4)])[None]
    segs = np.array([[1] * 6 + [2] * 4])
    logits, cache = model(tokens, positions, segment_ids=segs)
    assert cache is None
    np.testing.assert_allclose(np.asarray(logits[0, :6]), _row_logits(model, a), atol=1e-5)
    np.testing.assert_allclose(np.asarray(logits[0, 6:]), _row_logits(model, b), atol=1e-5)


def test_bf16_close_to_fp32_and_hidden_lm_head_split():
    cfg = tiny_config()
    m32 = random_model(cfg, dtype=jnp.float32)
    m16 = random_model(cfg, dtype=jnp.bfloat16)
    ids = np.random.RandomState(0).randint(0, 256, (2, 12))
    pos = np.broadcast_to(np.arange(12), ids.shape)
    h = m16.hidden(ids, pos)
    assert h.dtype == jnp.bfloat16 and m16.final_norm[...].dtype == jnp.float32
    l16 = m16.lm_head(h)
    assert l16.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(l16), np.asarray(m32.logits(ids)), atol=0.05)


def test_sharded_load_matches_single_device(tiny_qwen2_dir):
    if len(jax.devices()) < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
    mesh = make_mesh(data=1, fsdp=4, tensor=2)
    sharded = load_model(tiny_qwen2_dir, dtype=jnp.float32, mesh=mesh)
    kernel = sharded.layers.q_proj.kernel[...]
    assert kernel.sharding.spec[:3] == (None, "fsdp", "tensor")
    assert len(kernel.addressable_shards) == 8
    plain = load_model(tiny_qwen2_dir, dtype=jnp.float32)
    ids = np.random.RandomState(0).randint(0, 256, (2, 9))
    np.testing.assert_allclose(np.asarray(sharded.logits(ids)), np.asarray(plain.logits(ids)), atol=1e-5)


def test_presets_and_from_hf():
    assert set(PRESETS) >= {"smollm2_135m", "qwen2p5_0p5b", "qwen2p5_1p5b", "qwen2p5_7b", "qwen2p5_32b",
                            "llama3p1_8b"}
    assert 130e6 < PRESETS["smollm2_135m"].num_params < 140e6
    assert 7.0e9 < PRESETS["qwen2p5_7b"].num_params < 7.8e9
    cfg = ModelConfig.from_hf(PRESETS["llama3p1_8b"].to_hf("llama"))
    assert cfg == PRESETS["llama3p1_8b"]
    hf = transformers.Qwen2Config(**HF_KW).to_dict()  # transformers 5 writes rope_parameters
    assert ModelConfig.from_hf(hf).attention_bias and ModelConfig.from_hf(hf).rope_theta == 10000.0


@pytest.mark.parametrize("patch,match", [
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "supported model_type"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type 'yarn'"),
    ({"num_attention_heads": None}, "num_attention_heads"),
])
def test_bad_config_errors(tiny_llama_dir, tmp_path, patch, match):
    d = tmp_path / "m"
    shutil.copytree(tiny_llama_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(patch)
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises((LoadError, ConfigError), match=match):
        load_model(d)


def test_missing_files_and_shape_mismatch(tiny_llama_dir, tmp_path):
    with pytest.raises(LoadError, match="neither a model directory nor a preset"):
        load_model(tmp_path / "nope")
    d = tmp_path / "m"
    shutil.copytree(tiny_llama_dir, d)
    (d / "model.safetensors").rename(d / "weights.bin")
    with pytest.raises(LoadError, match=r"no \*.safetensors.*weights.bin"):
        load_model(d)
    (d / "weights.bin").rename(d / "model.safetensors")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LoadError, match=r"gate_proj.weight.*shape \(128, 64\).*implies \(96, 64\)"):
        load_model(d)
    (d / "config.json").unlink()
    with pytest.raises(LoadError, match="config.json not found"):
        load_model(d)


def test_bad_call_shapes():
    model = random_model(tiny_config(), dtype=jnp.float32)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        model(np.zeros((2, 3), np.int32), np.zeros((2, 4), np.int32))
    cache = KVCache.init(model.config, 3, 8, jnp.float32)
    with pytest.raises(ValueError, match="cache batch 3"):
        model(np.zeros((2, 3), np.int32), np.zeros((2, 3), np.int32), cache=cache)
