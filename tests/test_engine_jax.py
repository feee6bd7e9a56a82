"""JaxEngine on CPU with a tiny random Decoder: batching equivalence, stops, sampling, adapters, prefix reuse."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from automem_jax.engine.base import Request, SamplingParams
from automem_jax.engine.jax_engine import JaxEngine
from automem_jax.engine.sampling import RowSampling, find_stop_string, sample
from automem_jax.models import lora as lora_lib
from automem_jax.models.config import tiny_config
from automem_jax.models.decoder import Decoder
from engine_standin import ByteTokenizer

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=10)


def _model(num_slots: int = 0, seed: int = 0) -> Decoder:
    model = Decoder(tiny_config(), dtype=jnp.float32, rngs=nnx.Rngs(seed))
    if num_slots:
        lora_lib.apply_lora(model, lora_lib.LoRAConfig(rank=4, alpha=8, num_slots=num_slots), nnx.Rngs(1))
    return model


def _engine(model=None, **kw) -> JaxEngine:
    kw = dict(max_batch=4, max_seq_len=128, decode_steps=4, min_window=128, min_prefill_bucket=64,
              cache_dtype=jnp.float32,
              stop_at_eos=False) | kw
    return JaxEngine(model if model is not None else _model(), tokenizer=ByteTokenizer(), **kw)


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 256, size=int(rng.integers(3, 40))).tolist() for _ in range(n)]


def _reference_greedy(model: Decoder, prompt: list[int], n: int) -> list[int]:
    """Greedy by full recomputation with no cache (independent of the engine)."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(jnp.argmax(model.logits(jnp.asarray([ids]))[0, -1])))
    return ids[len(prompt):]


@pytest.fixture(scope="module")
def engine() -> JaxEngine:
    return _engine()


def test_greedy_one_by_one_equals_batched_and_continuous(engine):
    prompts = _prompts(9)  # more requests than max_batch=4: slots are refilled as rows finish
    params = [dataclass_replace(GREEDY, max_new_tokens=3 + i % 5) for i in range(9)]
    one = [engine.generate([Request(prompt_ids=p, sampling=s)])[0] for p, s in zip(prompts, params)]
    many = engine.generate([Request(prompt_ids=p, sampling=s, rid=str(i))
                            for i, (p, s) in enumerate(zip(prompts, params))])
    assert [c.token_ids for c in one] == [c.token_ids for c in many]
    assert [c.rid for c in many] == [str(i) for i in range(9)]
    assert [c.completion_tokens for c in many] == [s.max_new_tokens for s in params]
    assert all(c.finish_reason == "length" for c in many)
    assert one[0].token_ids == _reference_greedy(engine.model, prompts[0], len(one[0].token_ids))


def dataclass_replace(obj, **kw):
    import dataclasses
    return dataclasses.replace(obj, **kw)


def test_no_recompiles_after_warmup(engine):
    engine.generate([Request(prompt_ids=p, sampling=GREEDY) for p in _prompts(6, seed=1)])
    before = dict(engine.compile_counts)
    assert before["decode"] >= 1 and before["prefill"] >= 1
    for seed in (2, 3):  # new prompts, lengths, reuse patterns: same buckets, so nothing compiles
        engine.generate([Request(prompt_ids=p, sampling=GREEDY) for p in _prompts(6, seed=seed)])
    assert dict(engine.compile_counts) == before


def test_stop_ids_and_stop_strings(engine):
    prompt = _prompts(1, seed=3)[0]
    base = engine.generate([Request(prompt_ids=prompt, sampling=dataclass_replace(GREEDY, max_new_tokens=12))])[0]
    stop_id = base.token_ids[4]
    first = base.token_ids.index(stop_id)
    c = engine.generate([Request(prompt_ids=prompt, sampling=dataclass_replace(
        GREEDY, max_new_tokens=12, stop_token_ids=(stop_id,)))])[0]
    assert c.finish_reason == "stop" and c.token_ids == base.token_ids[:first + 1]
    # a stop string made of the decoded text of tokens 3..4: text ends right before it
    tok = ByteTokenizer()
    full = tok.decode(base.token_ids)
    stop = tok.decode(base.token_ids[3:5])
    if stop:
        c = engine.generate([Request(prompt_ids=prompt, sampling=dataclass_replace(
            GREEDY, max_new_tokens=12, stop=(stop,)))])[0]
        assert c.finish_reason == "stop"
        assert c.text == full[:full.find(stop)] and stop not in c.text
        assert c.meta["matched_stop"] == stop


def test_find_stop_string():
    assert find_stop_string("abc<|END|>x", ("<|END|>", "x")) == 3
    assert find_stop_string("abc", ("d",)) == -1


def test_sampling_topk1_is_greedy_and_seeds_reproduce(engine):
    prompts = _prompts(3, seed=5)
    greedy = engine.generate([Request(prompt_ids=p, sampling=GREEDY) for p in prompts])
    topk1 = engine.generate([Request(prompt_ids=p, sampling=SamplingParams(temperature=1.0, top_k=1,
                                                                          max_new_tokens=10)) for p in prompts])
    assert [c.token_ids for c in greedy] == [c.token_ids for c in topk1]
    seeded = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=10, seed=7)
    a = engine.generate([Request(prompt_ids=prompts[0], sampling=seeded)])[0]
    # same seed in a different batch position and batch size -> same tokens
    b = engine.generate([Request(prompt_ids=prompts[1], sampling=GREEDY),
                         Request(prompt_ids=prompts[0], sampling=seeded)])[1]
    c = engine.generate([Request(prompt_ids=prompts[0], sampling=dataclass_replace(seeded, seed=8))])[0]
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_sample_top_p_keeps_only_nucleus():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 64))
    params = RowSampling(jnp.ones((64,)), jnp.zeros((64,), jnp.int32), jnp.full((64,), 0.7),
                         jax.vmap(lambda i: jax.random.key_data(jax.random.key(i)))(jnp.arange(64)))
    toks = np.asarray(sample(logits, params, jnp.zeros((64,), jnp.int32)))
    assert set(toks.tolist()) <= {0, 1} and len(set(toks.tolist())) == 2


def test_static_sampling_modes_equal_auto_mode():
    """The engine's static modes (chosen on the host from the live rows) pick the tokens the on-device cond would."""
    from automem_jax.engine.sampling import mode_for
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.standard_normal((6, 50)) * 3, jnp.float32)
    keys = jax.vmap(lambda i: jax.random.key_data(jax.random.key(i)))(jnp.arange(6))
    step = jnp.arange(6, dtype=jnp.int32)
    cases = [(np.zeros(6), np.zeros(6, int), np.ones(6), "greedy"),
             (np.array([0, 1, 0.7, 0, 1.3, 1]), np.zeros(6, int), np.ones(6), "sample"),
             (np.array([0, 1, 0.7, 0, 1.3, 1]), np.array([0, 3, 0, 0, 0, 1]), np.array([1, 1, 0.8, 1, 1, 1]),
              "filter")]
    for temp, top_k, top_p, want in cases:
        assert mode_for(temp, top_k, top_p) == want
        params = RowSampling(jnp.asarray(temp, jnp.float32), jnp.asarray(top_k, jnp.int32),
                             jnp.asarray(top_p, jnp.float32), keys)
        auto = np.asarray(sample(logits, params, step))
        static = np.asarray(jax.jit(sample, static_argnums=3)(logits, params, step, want))
        assert (auto == static).all(), want
    with pytest.raises(ValueError, match="mode must be one of"):
        sample(logits, params, step, "beam")


def test_errors_are_per_request(engine):
    ok = _prompts(1)[0]
    out = engine.generate([Request(prompt_ids=[5] * 200, sampling=GREEDY), Request(prompt_ids=ok, sampling=GREEDY),
                           Request(prompt_ids=ok, sampling=GREEDY, adapter="nope"),
                           Request(prompt_ids=[300], sampling=GREEDY)])
    assert out[0].finish_reason == "error" and "max_seq_len is 128" in out[0].error
    assert out[1].finish_reason == "length"
    assert out[2].finish_reason == "error" and "unknown adapter 'nope'" in out[2].error
    assert out[3].finish_reason == "error" and "vocab_size" in out[3].error


def _run(engine, prompts, reuse: bool):
    engine.min_reuse_tokens = 16 if reuse else 10_000  # 10_000: prefix reuse off
    try:
        return engine.generate([Request(prompt_ids=p, sampling=GREEDY) for p in prompts])
    finally:
        engine.min_reuse_tokens = 16


def test_prefix_reuse_same_tokens_and_cached_count(engine):
    head = _prompts(1, seed=9)[0] + list(range(3, 60))
    prompts = [head + [10 + i, 20 + i, 30 + i] for i in range(3)]
    want = _run(engine, prompts, reuse=False)
    got = _run(engine, prompts, reuse=True)
    assert [c.token_ids for c in got] == [c.token_ids for c in want]
    assert all(c.cached_tokens == 0 for c in want) and min(c.cached_tokens for c in got) >= 48
    # multi-turn: a prompt that extends a finished conversation reuses that slot's KV (suffix-only prefill)
    turn2 = prompts[2] + got[2].token_ids + [40, 41, 42]
    c2 = _run(engine, [turn2], reuse=True)[0]
    r2 = _run(engine, [turn2], reuse=False)[0]
    assert c2.token_ids == r2.token_ids
    assert c2.cached_tokens == len(prompts[2]) + len(got[2].token_ids) - 1


def test_release_memory_drops_the_cache_and_the_next_call_rebuilds_it():
    """A LoRA trainer in the same process gets the KV cache's memory (the crafter_gpu run ran out of it while
    training with 48 GB of cache resident); the next generate call rebuilds an empty cache and prefixes start
    over."""
    eng = _engine()
    head = _prompts(1, seed=9)[0] + list(range(3, 60))
    before = _run(eng, [head + [7]], reuse=True)[0]
    assert _run(eng, [head + [8]], reuse=True)[0].cached_tokens >= 48
    eng.release_memory()
    assert eng.runner.cache is None and eng.runner.state is None
    after = _run(eng, [head + [7]], reuse=True)[0]
    assert after.token_ids == before.token_ids and after.cached_tokens == 0  # nothing retained survived
    assert eng.runner.cache is not None


def test_head_reused_in_place_and_copied_in_one_prefill_program():
    """Requests sharing a cached head, one taking the head's slot in place and the others copying the head from it,
    run in ONE prefill program (the copied entries are not the ones the in-place row rewrites) and give the
    no-reuse tokens."""
    eng = _engine()
    head = _prompts(1, seed=11)[0] + list(range(3, 70))
    eng.generate([Request(prompt_ids=head + [7], sampling=GREEDY)])
    prompts = [head + [10 + i, 20 + i, 30 + i] for i in range(4)]
    calls = eng.stats["prefill_calls"]
    got = eng.generate([Request(prompt_ids=p, sampling=GREEDY) for p in prompts])
    assert eng.stats["prefill_calls"] - calls == 1
    assert len({c.cached_tokens for c in got}) == 1 and got[0].cached_tokens >= 64
    want = _run(_engine(), prompts, reuse=False)
    assert [c.token_ids for c in got] == [c.token_ids for c in want]


def test_reused_head_with_a_bucket_running_past_the_cache():
    """A suffix whose padded bucket runs past max_seq_len (35 cached + a 70-token suffix padded to 128 > 128
    entries): the prefill writes a window-aligned span (the head's entries rewritten unchanged) and the reply
    matches no reuse."""
    head = _prompts(1, seed=17)[0][:20] + list(range(3, 18))   # 35 tokens
    prompt = head + list(range(100, 170))                      # 105 tokens: suffix 70 -> bucket 128
    sp = SamplingParams(temperature=0.0, max_new_tokens=6)
    want = _engine(min_prefill_bucket=16).generate([Request(prompt_ids=prompt, sampling=sp)])[0]
    eng = _engine(min_prefill_bucket=16)
    eng.generate([Request(prompt_ids=head + [7], sampling=sp)])
    got = eng.generate([Request(prompt_ids=prompt, sampling=sp)])[0]
    assert got.cached_tokens == 35 and got.token_ids == want.token_ids  # the whole head (match extends past blocks)


def test_prefill_calls_are_capped_by_attention_window_entries():
    """max_prefill_window_tokens bounds rows x window per prefill call (the K/V windows a call gathers): 5 prompts
    of window 128 under a 256 cap run as 2 + 2 + 1 rows, with the uncapped engine's tokens."""
    prompts = [p[:30] for p in _prompts(5, seed=13)]
    want = _engine().generate([Request(prompt_ids=p, sampling=GREEDY) for p in prompts])
    for cap in (dict(max_prefill_window_tokens=256), dict(max_prefill_tokens=128)):  # windows; new tokens (2x64)
        eng = _engine(max_batch=8, **cap)
        got = eng.generate([Request(prompt_ids=p, sampling=GREEDY) for p in prompts])
        assert eng.stats["prefill_calls"] == 3
        assert [c.token_ids for c in got] == [c.token_ids for c in want]


def test_chat_messages_use_template(engine):
    msgs = [{"role": "user", "content": "hi"}]
    a = engine.generate([Request(messages=msgs, sampling=GREEDY)])[0]
    b = engine.generate([Request(prompt_ids=ByteTokenizer().apply_chat_template(msgs), sampling=GREEDY)])[0]
    assert a.token_ids == b.token_ids and a.prompt_tokens == b.prompt_tokens


def test_chat_prompts_encoded_in_one_batch_and_bad_messages_fail_alone(tiny_llama_dir):
    """A generate call's chat requests are rendered one by one and encoded in one batch (the real tokenizer's
    `apply_chat_template_batch`): the same ids as one at a time; a request whose messages do not render fails
    alone with the reason, the others complete."""
    eng = JaxEngine(str(tiny_llama_dir), max_batch=4, max_seq_len=128, decode_steps=2, dtype=jnp.float32)
    tok = eng.tokenizer
    calls = []
    orig = tok.apply_chat_template_batch
    tok.apply_chat_template_batch = lambda convs, **kw: calls.append(len(convs)) or orig(convs, **kw)
    good = [[{"role": "user", "content": f"craft a table, step {i}"}] for i in range(3)]
    sp = SamplingParams(temperature=0.0, max_new_tokens=3)
    out = eng.generate([Request(messages=m, sampling=sp) for m in good]
                       + [Request(messages=[{"content": "no role"}], sampling=sp)])
    assert calls == [3]  # the malformed request is refused before rendering (engine/validation.check_messages)
    assert out[3].finish_reason == "error" and "request.messages" in out[3].error and "messages[0]" in out[3].error
    for m, c in zip(good, out[:3]):
        ids = tok.apply_chat_template(m)
        assert c.finish_reason == "length" and c.prompt_tokens == len(ids)
        assert eng.generate([Request(prompt_ids=ids, sampling=sp)])[0].token_ids == c.token_ids


def test_stand_in_tokenizer_without_batch_encode_fails_bad_messages_alone(engine):
    """Tokenizers without `apply_chat_template_batch` encode chat requests one at a time; a malformed request
    fails alone."""
    out = engine.generate([Request(messages=[{"role": "user", "content": "hi"}], sampling=GREEDY),
                           Request(messages=[{"content": "no role"}], sampling=GREEDY)])
    assert out[0].finish_reason == "length" and out[1].finish_reason == "error"
    assert "request.messages" in out[1].error


def test_adapters_per_request(tmp_path, engine):
    eng = _engine(_model(num_slots=2), max_loras=2)  # same base weights (seed 0) as `engine`, plus 2 LoRA slots
    prompts = _prompts(3, seed=11)
    plain = engine.generate([Request(prompt_ids=p, sampling=GREEDY) for p in prompts])  # a model without LoRA
    # adapter with zero B == base; trained-looking adapter (random B) differs from base
    src = _model(num_slots=2)  # same LoRA shapes as the engine model: no new compiles
    lora_lib.export_peft(src, tmp_path / "zero", base_model_name_or_path="tiny")
    for proj in lora_lib.lora_targets(src):
        var = getattr(src.layers, proj).lora_b
        var[...] = jax.random.normal(jax.random.key(3), var[...].shape) * 0.5
    lora_lib.export_peft(src, tmp_path / "rand", base_model_name_or_path="tiny")
    eng.load_adapter("zero", str(tmp_path / "zero"))
    eng.load_adapter("rand", str(tmp_path / "rand"))
    mixed = eng.generate([Request(prompt_ids=prompts[i % 3], sampling=GREEDY, adapter=[None, "zero", "rand"][i // 3])
                          for i in range(9)])
    assert [c.token_ids for c in mixed[:3]] == [c.token_ids for c in plain]  # base rows == model without LoRA
    assert [c.token_ids for c in mixed[3:6]] == [c.token_ids for c in plain]  # zero-B adapter == base
    assert [c.token_ids for c in mixed[6:]] != [c.token_ids for c in plain]
    eng.unload_adapter("rand")
    out = eng.generate([Request(prompt_ids=prompts[0], sampling=GREEDY, adapter="rand")])[0]
    assert out.finish_reason == "error" and "unknown adapter" in out.error


def test_unstacked_layers_decode_same_tokens_and_follow_adapter_loads(tmp_path):
    """Straight-line decode layers on per-layer weights (the GPU default) give the scan's tokens, also after a LoRA
    load (the per-layer copies are rebuilt from the updated model)."""
    prompts = _prompts(5, seed=21)
    src = _model(num_slots=1)
    for proj in lora_lib.lora_targets(src):
        var = getattr(src.layers, proj).lora_b
        var[...] = jax.random.normal(jax.random.key(4), var[...].shape) * 0.5
    lora_lib.export_peft(src, tmp_path / "rand", base_model_name_or_path="tiny")
    outs = {}
    for unstacked in (False, True):
        eng = _engine(_model(num_slots=1), max_loras=1, unstack_layers=unstacked)
        assert eng.runner.unstacked == unstacked
        base = eng.generate([Request(prompt_ids=p, sampling=GREEDY) for p in prompts])
        eng.load_adapter("rand", str(tmp_path / "rand"))
        tuned = eng.generate([Request(prompt_ids=p, sampling=GREEDY, adapter="rand") for p in prompts])
        outs[unstacked] = ([c.token_ids for c in base], [c.token_ids for c in tuned])
    assert outs[True] == outs[False]
    assert outs[False][0] != outs[False][1]  # the adapter changed the tokens in both


def test_decode_steps_the_live_rows_only():
    """On a CPU a decode call steps only the live slots (bucketed to powers of two): one request on a 4-slot engine
    costs one row per call, not four, and gets the tokens of stepping every slot."""
    prompts = _prompts(3, seed=31)
    everyone = _engine(decode_rows="all")
    want = everyone.generate([Request(prompt_ids=p, sampling=GREEDY) for p in prompts])
    assert everyone.stats["decode_rows"] == 4 * everyone.stats["decode_calls"]
    eng = _engine()
    assert eng.runner.live_rows  # the CPU default
    one = eng.generate([Request(prompt_ids=prompts[0], sampling=GREEDY)])
    assert eng.stats["decode_rows"] == eng.stats["decode_calls"] > 0
    two = eng.generate([Request(prompt_ids=p, sampling=GREEDY) for p in prompts[1:]])
    assert [c.token_ids for c in one + two] == [c.token_ids for c in want]


def test_engine_options_one_config_and_removed_options_warn():
    """JaxEngine takes an EngineConfig and/or its fields; an unknown option is an error that lists the known ones;
    options measurement removed are accepted with a DeprecationWarning and ignored."""
    from automem_jax.engine.config import EngineConfig
    cfg = EngineConfig(max_batch=3, max_seq_len=96, decode_steps=2, stop_at_eos=False, cache_dtype="float32")
    eng = JaxEngine(_model(), config=cfg, min_window=64)
    assert (eng.max_batch, eng.max_seq_len, eng.decode_steps) == (3, 96, 2)
    assert eng.engine_config == EngineConfig.of(cfg, min_window=64) and eng.window_buckets == [64, 96]
    assert eng.max_loras == 0  # a model without LoRA slots: none to load adapters into
    with pytest.raises(ValueError, match=r"unknown \['max_batches'\]; known: .*max_batch"):
        JaxEngine(_model(), max_batches=3)
    with pytest.warns(DeprecationWarning, match="decode_unroll"):
        eng = JaxEngine(_model(), max_batch=2, max_seq_len=64, decode_unroll=2, prefill_command_buffer=True)
    assert eng.max_batch == 2
