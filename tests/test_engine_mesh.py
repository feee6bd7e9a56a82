"""One engine over a mesh of the host's devices (8 CPU devices here): greedy replies, with LoRA rows and reused
prompt heads mixed in, equal one device's on data-, tensor- and data x tensor-parallel meshes; a model larger than
one device's memory budget loads and runs sharded."""
from __future__ import annotations

import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from automem_jax.engine.base import Request, SamplingParams
from automem_jax.engine.jax_engine import JaxEngine
from automem_jax.models import lora as lora_lib
from automem_jax.models.config import tiny_config
from automem_jax.models.loader import load_model
from automem_jax.models.testing import save_tiny_hf_model

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8,
                                reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
# 8 query / 4 kv heads: tensor parallelism up to 4 shards every head axis
CONFIG = tiny_config(num_heads=8, num_kv_heads=4, attention_bias=True)
ENGINE = dict(max_batch=8, max_seq_len=128, decode_steps=4, min_window=128, min_prefill_bucket=64,
              max_loras=2, max_lora_rank=4, dtype="float32", stop_at_eos=False)
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=6)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny HF model dir, a random LoRA adapter for it, and the requests: 12 prompts (more than the slots) on the
    base model and the adapter, 4 of them sharing a 40-token head that an earlier reply left in a slot."""
    root = tmp_path_factory.mktemp("mesh")
    model_dir = save_tiny_hf_model(root / "model", arch="qwen2", config=CONFIG, seed=3)
    src = load_model(model_dir, dtype=jnp.float32, lora=lora_lib.LoRAConfig(rank=4, alpha=8, num_slots=1))
    for proj in lora_lib.lora_targets(src):
        var = getattr(src.layers, proj).lora_b
        var[...] = jax.random.normal(jax.random.key(5), var[...].shape) * 0.5
    lora_lib.export_peft(src, root / "rand", base_model_name_or_path="tiny")
    rng = np.random.default_rng(0)
    head = rng.integers(3, 200, 40).tolist()
    prompts = [rng.integers(3, 200, int(rng.integers(3, 30))).tolist() for _ in range(8)]
    prompts += [head + [7 + i, 9] for i in range(4)]
    requests = [Request(prompt_ids=p, sampling=GREEDY, adapter=None if i % 3 else "rand")
                for i, p in enumerate(prompts)]
    return model_dir, root / "rand", head, requests


def _replies(setup, **mesh):
    model_dir, adapter, head, requests = setup
    eng = JaxEngine(str(model_dir), mesh=mesh, **ENGINE)
    eng.load_adapter("rand", str(adapter))
    eng.generate([Request(prompt_ids=head + [5], sampling=GREEDY)])  # the head stays in a slot
    return eng.generate(requests), eng


@pytest.fixture(scope="module")
def one_device(setup):
    return [c.token_ids for c in _replies(setup)[0]]


@pytest.mark.parametrize("data,tensor", [(8, 1), (4, 2), (1, 4)])
def test_greedy_replies_equal_one_device(setup, one_device, data, tensor):
    got, eng = _replies(setup, data=data, tensor=tensor)
    assert [c.token_ids for c in got] == one_device
    assert dict(eng.runner.mesh.shape) == {"data": data, "tensor": tensor}
    assert eng.runner.cache.k.sharding.spec[1] == ("data" if data > 1 else None)  # slots over the replicas
    if tensor > 1:  # weights and KV heads over the tensor axis
        assert "tensor" in eng.runner.cache.k.sharding.spec and "tensor" in str(
            eng.model.layers.q_proj.kernel[...].sharding.spec)
    if data < 8:  # replicas of 2+ slots: the shared head was reused (in place, or copied within its replica)
        assert sum(c.cached_tokens for c in got) >= 40


def _bytes_per_device(arrays) -> dict:
    """Bytes of the distinct device buffers behind `arrays`, per device. A buffer is counted once: the pieces a
    global array is assembled from, and the shard views a scan creates, share their buffers with it."""
    out: dict = {}
    seen: set = set()
    for a in arrays:
        try:
            shards = [(s.device, s.data.unsafe_buffer_pointer(), s.data.nbytes) for s in a.addressable_shards]
        except RuntimeError:  # deleted (donated) while we looked
            continue
        for device, ptr, n in shards:
            if (device, ptr) not in seen:
                seen.add((device, ptr))
                out[device] = out.get(device, 0) + n
    return out


def test_a_model_over_one_devices_budget_loads_sharded(tmp_path):
    """Budget one device to half of the model's weights: over a tensor=4 mesh the engine loads the model straight
    onto its shards (each device's peak, sampled while loading, stays under the budget) and replies as the whole
    model on one device does."""
    cfg = tiny_config(vocab_size=512, hidden_size=256, intermediate_size=1024, num_heads=8, num_kv_heads=4,
                      head_dim=32)
    model_dir = save_tiny_hf_model(tmp_path / "model", config=cfg, seed=1)
    whole = load_model(model_dir, dtype=jnp.float32)
    total = sum(x.nbytes for x in jax.tree.leaves(nnx.state(whole)))
    budget = total // 2
    prompts = [Request(prompt_ids=list(range(5, 25)), sampling=GREEDY)]
    want = JaxEngine(whole, max_batch=1, max_seq_len=64, dtype="float32", stop_at_eos=False).generate(prompts)
    del whole
    before = {id(a) for a in jax.live_arrays()}
    peak: dict = {}
    done = threading.Event()

    def sample():  # per-device bytes of the arrays created since `before`, every few milliseconds
        while not done.is_set():
            now = _bytes_per_device([a for a in jax.live_arrays() if id(a) not in before])
            for d, n in now.items():
                peak[d] = max(peak.get(d, 0), n)
            time.sleep(0.002)

    watcher = threading.Thread(target=sample)
    watcher.start()
    try:
        eng = JaxEngine(str(model_dir), mesh={"tensor": 4}, max_batch=1, max_seq_len=64, max_loras=0,
                        dtype="float32", stop_at_eos=False)
    finally:
        done.set()
        watcher.join()
    placed = _bytes_per_device(jax.tree.leaves(eng.runner.params))
    assert len(placed) == 4 and max(placed.values()) < budget < total, (placed, budget, total)
    assert max(peak.values()) < budget + eng.runner.cache.k.nbytes, (peak, budget)  # the cache: 2 x 1/4 per device
    assert [c.token_ids for c in eng.generate(prompts)] == [c.token_ids for c in want]


def test_constrained_streamed_and_scored_requests_on_a_mesh_equal_one_device():
    """The scheduler's other device work on a (data=2, tensor=2) mesh: regex-constrained rows (the grammar tables
    replicated into every replica's programs) beside free rows, tokens streamed through on_tokens (one request
    cancelled by its hook) and scoring, all as on one device."""
    import collections
    import re

    from automem_jax.models.decoder import Decoder
    from test_grammar_engine import ACTION, GrammarByteTokenizer
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, 256, int(rng.integers(3, 20))).tolist() for _ in range(6)]

    def run(**mesh):
        model = Decoder(tiny_config(), dtype=jnp.float32, rngs=nnx.Rngs(0))
        eng = JaxEngine(model, tokenizer=GrammarByteTokenizer(), max_batch=4, max_seq_len=128, decode_steps=4,
                        min_window=128, min_prefill_bucket=64, cache_dtype=jnp.float32, mesh=mesh)
        seen = collections.defaultdict(list)

        def hook(i, ids):  # request 5 is cancelled once it has 8 tokens
            seen[i].extend(ids)
            return i != 5 or len(seen[i]) < 8

        out = eng.generate([Request(prompt_ids=p, sampling=SamplingParams(
            temperature=0.0, max_new_tokens=24, regex=ACTION if i % 2 == 0 else None)) for i, p in enumerate(prompts)],
            on_tokens=hook)
        return out, seen, eng.score(prompts[0] + out[0].token_ids, top_k=2)

    want, want_seen, want_scores = run()
    got, seen, scores = run(data=2, tensor=2)
    assert [c.token_ids for c in got] == [c.token_ids for c in want]
    assert all(re.fullmatch(ACTION, c.text) for c in got[::2]), [c.text for c in got[::2]]
    # tokens arrive per call (the first, then decode_steps=4 at a time): the hook stops request 5 after 9
    assert got[5].finish_reason == "error" and got[5].meta["cancelled"] and len(got[5].token_ids) == 9
    assert dict(seen) == dict(want_seen) and all(seen[i] == got[i].token_ids for i in range(6))
    np.testing.assert_allclose(scores.token, want_scores.token, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(scores.top_ids, want_scores.top_ids)
