"""Hostile requests and failing programs: a bad request fails alone, a failed call frees what it placed, and the
engine answers the next good request (issue 22, item 1)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from automem_jax.engine.base import EngineError, Request, SamplingParams
from automem_jax.engine.jax_engine import JaxEngine
from automem_jax.engine.validation import RequestLimits, check_messages, check_request, check_sampling
from automem_jax.models.config import tiny_config
from automem_jax.models.decoder import Decoder
from engine_standin import ByteTokenizer

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=6)
LIMITS = RequestLimits(vocab_size=256, max_stop_ids=8, eos_ids=(2,))


def _bad(**fields) -> SamplingParams:
    """SamplingParams with fields SamplingParams itself would refuse (as a replace or a server bug can build)."""
    sp = SamplingParams()
    for k, v in fields.items():
        object.__setattr__(sp, k, v)
    return sp


@pytest.mark.parametrize("fields, names", [
    (dict(stop_token_ids=(1099511627776,)), "stop_token_ids[0] must be in [0, 255]"),
    (dict(stop_token_ids=(3, -1)), "stop_token_ids[1]"),
    (dict(stop_token_ids=(256,)), "vocab_size=256"),
    (dict(stop_token_ids=(True,)), "stop_token_ids[0] must be an integer"),
    (dict(stop_token_ids=("3",)), "stop_token_ids[0] must be an integer"),
    (dict(stop_token_ids=3), "stop_token_ids must be a list"),
    (dict(stop_token_ids=tuple(range(3, 11))), "at most 7 ids"),
    (dict(stop=(1,)), "stop[0] must be a non-empty string, got int"),
    (dict(stop="\n"), "stop must be a list of strings"),
    (dict(stop=("ok", "")), "stop[1]"),
    (dict(stop=("x" * 5000,)), "stop[0] has 5000 characters"),
    (dict(temperature=float("nan")), "sampling.temperature"),
    (dict(temperature=float("inf")), "sampling.temperature"),
    (dict(temperature=1e39), "finite in float32"),
    (dict(temperature="1"), "temperature must be a number, got str"),
    (dict(temperature=True), "temperature must be a number, got bool"),
    (dict(top_p=float("nan")), "sampling.top_p"),
    (dict(top_p=0.0), "top_p must be in (0, 1]"),
    (dict(top_k=2**31), "sampling.top_k"),
    (dict(top_k=1.5), "top_k must be an integer"),
    (dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
    (dict(max_new_tokens=10**400), None),  # accepted: the engine caps it at the context left
    (dict(seed="7"), "seed must be an integer"),
    (dict(regex=5), "sampling.regex"),
])
def test_check_sampling_names_the_bad_field(fields, names):
    if names is None:
        check_sampling(_bad(**fields), LIMITS)
        return
    with pytest.raises(EngineError) as e:
        check_sampling(_bad(**fields), LIMITS)
    assert names in str(e.value) and len(str(e.value)) < 300


def test_check_request_limits_and_message_shapes():
    check_sampling(_bad(temperature=np.float32(0.5), top_k=np.int64(3), stop_token_ids=(np.int32(5),)), LIMITS)
    with pytest.raises(EngineError, match="max_new_tokens must be in"):
        check_sampling(SamplingParams(max_new_tokens=100), dataclasses.replace(LIMITS, max_new_tokens=64))
    with pytest.raises(EngineError, match="request.adapter must be an adapter name"):
        check_request(Request(prompt_ids=[3], adapter={"lora_path": "/x"}), LIMITS)
    with pytest.raises(EngineError, match="must be an engine Request"):
        check_request({"input_ids": [1]}, LIMITS)
    for msgs, names in (("hi", "non-empty list"), ([], "non-empty list"), ([5], r"messages\[0\] must be a dict"),
                        ([{"role": "user", "content": 5}], r"messages\[0\].content must be a string, got int"),
                        ([{"role": "user", "content": "a"}, {"role": None, "content": "b"}], r"messages\[1\].role"),
                        ([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "join text parts")):
        with pytest.raises(EngineError, match=names):
            check_messages(msgs)


class _FaultyDecoder(Decoder):
    """A Decoder whose engine programs fail where a `faults` entry (program, when, size) matches: program "prefill"
    (a prompt bucket of exactly `size` tokens) or "decode" (an attention window of `size`); when "trace" (the
    program fails to build) or "run" (it fails while running, after its inputs were donated). The faults act
    through the model's engine entry points (`_faulty_entry_points`)."""

    faults: tuple[tuple[str, str, int], ...] = ()


def _faulty(entry, program: str, size_of):
    """`entry` (models.prefill.prefill or models.decode.decode_step) failing where its model's faults say."""
    def run(model, *args, **kw):
        size = size_of(args, kw)
        hits = [when for prog, when, n in getattr(model, "faults", ()) if prog == program and n == size]
        if "trace" in hits:
            raise RuntimeError("injected fault while building the program")
        out, cache = entry(model, *args, **kw)
        if "run" in hits:
            jax.debug.callback(_raise, out.ravel()[0])
        return out, cache
    return run


def _raise(_x):
    raise RuntimeError("injected fault while the program runs")


@pytest.fixture
def _faulty_entry_points(monkeypatch):
    from automem_jax.engine import steps
    monkeypatch.setattr(steps, "prefill_rows", _faulty(steps.prefill_rows, "prefill",
                                                       lambda args, kw: args[0].tokens.shape[1]))
    monkeypatch.setattr(steps, "decode_step", _faulty(steps.decode_step, "decode", lambda args, kw: kw["window"]))


def _engine(faults=(), tokenizer=None, **kw) -> JaxEngine:
    model = _FaultyDecoder(tiny_config(), dtype=jnp.float32, rngs=nnx.Rngs(0))
    model.faults = faults
    kw = dict(max_batch=4, max_seq_len=256, decode_steps=4, min_window=128, min_prefill_bucket=64,
              cache_dtype=jnp.float32, stop_at_eos=False, packed_prefill=False) | kw
    return JaxEngine(model, tokenizer=tokenizer or ByteTokenizer(), **kw)


def _ids(eng: JaxEngine, prompts: list[list[int]], sp: SamplingParams = GREEDY) -> list[list[int]]:
    out = eng.generate([Request(prompt_ids=p, sampling=sp) for p in prompts])
    assert all(c.finish_reason == "length" for c in out), [c.error for c in out]
    return [c.token_ids for c in out]


def _claims(eng: JaxEngine, prompt: list[int]) -> list[int]:
    """Slots whose prefix-index entry says they hold KV for `prompt`."""
    return [s for s in range(eng.max_batch) if eng.index.tokens(s)[:len(prompt)].tolist() == prompt]


class _FlakyTokenizer(ByteTokenizer):
    fail = False

    def decode(self, ids):
        if self.fail:
            raise ValueError("injected tokenizer fault")
        return super().decode(ids)


@pytest.fixture(scope="module")
def flaky():
    tok = _FlakyTokenizer()
    return _engine(tokenizer=tok), tok


def test_bad_request_then_good_one_answers(flaky):
    """The issue's requests (a stop id past int32, an int stop string) fail alone with the field named and place
    nothing; a good request then answers as before; a mixed batch answers its good requests."""
    eng, _ = flaky
    prompts = [[3 + i, 40, 41, 42 + i] for i in range(3)]
    before = _ids(eng, prompts)
    for bad in (_bad(stop_token_ids=(1099511627776,), max_new_tokens=2), _bad(stop=(1,), max_new_tokens=2)):
        out = eng.generate([Request(prompt_ids=[1], sampling=bad)])[0]
        assert out.finish_reason == "error" and "sampling.stop" in out.error
        assert all(s is None for s in eng._slot_seq) and not _claims(eng, [1])
        assert _ids(eng, prompts[:1]) == before[:1]
    batch = [Request(prompt_ids=prompts[0], sampling=GREEDY, rid="a"),
             Request(prompt_ids=[1], sampling=_bad(temperature=float("nan")), rid="nan"),
             Request(prompt_ids=prompts[1], sampling=GREEDY, rid="b"),
             Request(prompt_ids=[1], sampling=GREEDY, adapter={"lora_path": "/etc"}, rid="dict"),
             Request(messages=[{"role": "user", "content": ["part"]}], sampling=GREEDY, rid="parts"),
             Request(messages=[{"role": None, "content": "hi"}], sampling=GREEDY, rid="role"),
             "not a request",
             Request(prompt_ids=prompts[2], sampling=GREEDY, rid="c")]
    out = eng.generate(batch)
    assert [c.rid for c in out] == ["a", "nan", "b", "dict", "parts", "role", None, "c"]
    errors = {c.rid: c.error for c in out if c.finish_reason == "error"}
    assert set(errors) == {"nan", "dict", "parts", "role", None}
    assert "sampling.temperature" in errors["nan"] and "request.adapter" in errors["dict"]
    assert "messages[0].content" in errors["parts"] and "messages[0].role" in errors["role"]
    assert [out[0].token_ids, out[2].token_ids, out[7].token_ids] == before


def test_failure_while_accepting_tokens_frees_the_slots(flaky):
    """A host-side failure after prefill (checking stop strings) frees the call's slots; a failure decoding the
    final text fails only its own request."""
    eng, tok = flaky
    p, q = [11, 12, 13, 14], [11, 12, 13, 15]
    before = _ids(eng, [p])
    tok.fail = True
    try:
        with pytest.raises(ValueError, match="injected tokenizer fault"):
            eng.generate([Request(prompt_ids=q, sampling=dataclasses.replace(GREEDY, stop=("zz",)))])
        assert all(s is None for s in eng._slot_seq) and not _claims(eng, q)
        out = eng.generate([Request(prompt_ids=p, sampling=GREEDY)])[0]  # no stop strings: only the text fails
        assert out.finish_reason == "error" and "ValueError: injected tokenizer fault" in out.error
    finally:
        tok.fail = False
    assert _ids(eng, [p]) == before


HEAD = list(range(100, 132))  # two 16-token blocks: requests below reuse or copy it from each other's slots


def test_failed_programs_free_their_slots_and_index_entries(_faulty_entry_points):
    """A call whose prefill fails to build, whose prefill fails while running (after the cache was donated to it)
    or whose decode fails to build raises; it leaves no slot held and no index entry for its requests (the
    consumed cache is rebuilt), and the engine then answers good requests as before."""
    eng = _engine(faults=(("prefill", "trace", 128), ("prefill", "run", 256), ("decode", "trace", 256)),
                  max_seq_len=512)
    good = [HEAD + [7, 8, 9, 10 + i] for i in range(2)]
    fresh = HEAD + [50, 51, 52, 53]
    before = _ids(eng, good + [fresh])
    long_run = dataclasses.replace(GREEDY, max_new_tokens=120)
    scenarios = (  # the failing request (its suffix past HEAD), its sampling, whether the cache is rebuilt
        (list(range(3, 83)), GREEDY, False),  # prefill bucket 128: the program does not build
        (list(range(3, 183)), GREEDY, True),  # prefill bucket 256: the program fails while running
        (list(range(3, 23)), long_run, False),  # a 256-entry decode window once the context passes 128
    )
    for suffix, sp, rebuilt in scenarios:
        with pytest.raises(RuntimeError, match="injected fault"):
            eng.generate([Request(prompt_ids=p, sampling=GREEDY) for p in good]
                         + [Request(prompt_ids=HEAD + suffix, sampling=sp)])
        assert all(s is None for s in eng._slot_seq)
        assert not _claims(eng, HEAD + suffix)
        if rebuilt:
            assert not _claims(eng, HEAD)
        assert _ids(eng, good) == before[:2]
        assert _ids(eng, [fresh]) == before[2:]


def test_fuzz_sampling_fields_are_refused_or_buildable():
    """2,000 random sampling parameters: each is refused with a sampling.<field> error, or everything the engine
    builds from it (device rows, seed key, stop-string search, sampling mode) builds."""
    import random
    from automem_jax.engine.sampling import find_stop_string, mode_for, request_key
    rng = random.Random(22)
    pool = [0, 1, -1, 2, 255, 256, 2**31, 2**63, 10**400, 0.0, 0.5, 1.0, 1.5, -0.5, float("nan"), float("inf"),
            1e39, True, None, "1", "", "x", b"x", (), (1,), ("a",), ("",), [3, 5], ("a", 2), np.int64(3),
            np.float32(0.7), {"a": 1}]
    fields = ["temperature", "top_p", "top_k", "max_new_tokens", "stop", "stop_token_ids", "seed", "regex"]
    refused = 0
    for _ in range(2000):
        sp = _bad(**{f: rng.choice(pool) for f in rng.sample(fields, rng.randint(1, 3))})
        try:
            check_sampling(sp, LIMITS)
        except EngineError as e:
            refused += 1
            assert str(e).startswith("sampling.") and len(str(e)) < 300
            continue
        with np.errstate(over="raise"):
            assert np.isfinite(np.asarray([sp.temperature, sp.top_p], np.float32)).all()
            np.asarray([sp.top_k], np.int32)
            np.asarray([int(t) for t in sp.stop_token_ids], np.int32)
        request_key(sp.seed if sp.seed is not None else 0)
        find_stop_string("some text", tuple(sp.stop))
        mode_for(np.asarray([sp.temperature], np.float32), np.asarray([sp.top_k]), np.asarray([sp.top_p]))
    assert 200 < refused < 2000
