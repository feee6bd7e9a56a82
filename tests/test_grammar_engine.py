"""JaxEngine constrained decoding (SamplingParams.regex) with a tiny random Decoder: every reply matches, budgets,
refusals, unconstrained rows untouched, greedy unchanged where it already matched."""
from __future__ import annotations

import dataclasses
import re

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from automem_jax.engine.base import Request, SamplingParams
from automem_jax.engine.jax_engine import JaxEngine
from automem_jax.models.config import tiny_config
from automem_jax.models.decoder import Decoder
from engine_standin import ByteTokenizer

ACTION = r"<\|ACTION\|>(?:Noop|Move West|Make Wood Pickaxe)<\|END\|>"
OPS = r"[^<]*(?:<\|SEARCH\|>(?:notes\.txt|log\.txt)\|[^<\n|]+<\|END\|>[ \n]*)*" + ACTION


class GrammarByteTokenizer(ByteTokenizer):
    """ids 2..255: printable ASCII as itself, every other id as the ASCII text "#NNN" (so every reply is text)."""

    TOKENS = [None, None] + [bytes([i]) if 32 <= i < 127 or i == 10 else f"#{i:03d}".encode() for i in range(2, 256)]

    def token_bytes(self):
        return list(self.TOKENS)

    def decode(self, ids):
        return b"".join(self.TOKENS[i] for i in ids if 2 <= i < 256).decode()


@pytest.fixture(scope="module")
def engine() -> JaxEngine:
    model = Decoder(tiny_config(), dtype=jnp.float32, rngs=nnx.Rngs(0))
    return JaxEngine(model, tokenizer=GrammarByteTokenizer(), max_batch=8, max_seq_len=256, decode_steps=4,
                     min_window=128, min_prefill_bucket=64, cache_dtype=jnp.float32)


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 256, size=int(rng.integers(3, 30))).tolist() for _ in range(n)]


def _run(engine, prompts, **sp):
    return engine.generate([Request(prompt_ids=p, sampling=SamplingParams(**sp), rid=f"r{i}")
                            for i, p in enumerate(prompts)])


def test_every_sampled_reply_matches(engine):
    outs = _run(engine, _prompts(8), temperature=1.0, max_new_tokens=40, regex=OPS, seed=3)
    for c in outs:  # ends at EOS, or at the token budget in an accepting state
        assert re.fullmatch(OPS, c.text), c.text
        assert (c.finish_reason, c.token_ids[-1]) == ("stop", 0) or (c.finish_reason, len(c.token_ids)) == (
            "length", 40), c
    # top-k / top-p rows filter among the allowed tokens only
    outs = _run(engine, _prompts(8, 1), temperature=0.8, top_k=5, top_p=0.9, max_new_tokens=40, regex=ACTION)
    assert all(re.fullmatch(ACTION, c.text) for c in outs)


def test_budget_forces_the_reply_closed_in_time(engine):
    # free text could run forever; with 8 tokens left the grammar only allows what still reaches "!" and EOS
    for max_new in (1, 3, 9):
        for c in _run(engine, _prompts(8, max_new), temperature=1.0, max_new_tokens=max_new, regex=r"[a-z ]*!"):
            assert re.fullmatch(r"[a-z ]*!", c.text) and len(c.token_ids) <= max_new, (max_new, c)


def test_refused_regexes_finish_with_a_clear_error(engine):
    bad, short, ok = _run(engine, _prompts(3, 2), max_new_tokens=4, regex=None)[:0] or engine.generate([
        Request(prompt_ids=[5, 6, 7], sampling=SamplingParams(regex="(ab", max_new_tokens=8), rid="LOG/3"),
        Request(prompt_ids=[5, 6, 7], sampling=SamplingParams(regex="a{10}", max_new_tokens=5), rid="PLAN/1"),
        Request(prompt_ids=[5, 6, 7], sampling=SamplingParams(regex="a{3}", temperature=0, max_new_tokens=5))])
    assert bad.finish_reason == "error" and "request LOG/3: sampling.regex refused" in bad.error
    assert "does not compile" in bad.error
    assert short.finish_reason == "error" and "max_new_tokens=5" in short.error and "takes 10 tokens" in short.error
    assert ok.text == "aaa" and ok.finish_reason == "stop"


def test_unconstrained_rows_unchanged_and_grammar_program_compiled_only_when_needed(engine):
    prompts = _prompts(8, 7)
    greedy = dict(temperature=0.0, max_new_tokens=24)
    alone = _run(engine, prompts, **greedy)
    decodes = engine.compile_counts["decode"]
    again = _run(engine, prompts, **greedy)
    assert engine.compile_counts["decode"] == decodes  # a plain call reuses the plain program
    mixed = engine.generate([Request(prompt_ids=p, sampling=SamplingParams(
        **greedy, regex=ACTION if i % 2 else None)) for i, p in enumerate(prompts)])
    decodes = engine.compile_counts["decode"]
    assert _run(engine, prompts, **greedy)[0].token_ids == alone[0].token_ids
    assert engine.compile_counts["decode"] == decodes  # plain calls keep running the program without tables
    assert engine._grammar_tables([None]) is None
    for i, (a, b, m) in enumerate(zip(alone, again, mixed)):
        assert a.token_ids == b.token_ids
        if i % 2:
            assert re.fullmatch(ACTION, m.text)
        else:
            assert m.token_ids == a.token_ids  # FREE rows of a masked program: every token allowed


def test_greedy_unchanged_where_the_unconstrained_reply_matched(engine):
    prompts = _prompts(8, 11)
    plain = _run(engine, prompts, temperature=0.0, max_new_tokens=10)
    texts = [c.text if min(c.token_ids) >= 2 else None for c in plain]  # 0 = EOS, 1 = special (no text)
    # a grammar that accepts each unconstrained reply among other replies
    regex = "|".join(re.escape(t) for t in texts if t) + r"|zz[a-z]*"
    constrained = _run(engine, prompts, temperature=0.0, max_new_tokens=10, regex=regex)
    assert sum(t is not None for t in texts) >= 2
    for c, p, t in zip(constrained, plain, texts):
        if t is not None:
            assert c.token_ids == p.token_ids
        else:
            assert re.fullmatch(regex, c.text)
