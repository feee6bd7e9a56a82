"""Packed prefill (engine/packed_prefill.py): the layout, and the engine through it (prefill kernel in interpret
mode on CPU) against the row-per-request prefill."""
from __future__ import annotations

import numpy as np
import pytest

from automem_jax.engine import packed_prefill
from automem_jax.engine.base import Request, SamplingParams
from automem_jax.engine.jax_engine import JaxEngine
from automem_jax.kernels.config import KernelConfig, PrefillAttentionTiling
from automem_jax.models.testing import tiny_decoder

B = packed_prefill.BLOCK


def test_layout_rows_positions_lengths_and_last_tokens():
    suffixes = [np.arange(1, 2 * B + 6), np.arange(1, 4), np.arange(1, B + 1)]  # 2 rows + 5, 3 tokens, one full row
    out = packed_prefill.pack(suffixes, [10, 0, 7], [5, 2, 9], [-1, 0, 1], park=1000)
    assert out.tokens.shape == (8, B)  # 3 + 1 + 1 = 5 rows -> bucket 8
    np.testing.assert_array_equal(out.lengths, [B, B, 5, 3, B, 0, 0, 0])
    np.testing.assert_array_equal(out.first, [0, 0, 0, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(out.rows[:5], [5, 5, 5, 2, 9])
    np.testing.assert_array_equal(out.adapter[:6], [-1, -1, -1, 0, 1, -1])
    np.testing.assert_array_equal(out.positions[1], 10 + B + np.arange(B))  # request 0's second row
    np.testing.assert_array_equal(out.tokens.reshape(-1)[:2 * B + 5], suffixes[0])
    assert out.tokens[2, 5:].sum() == 0 and out.positions[3, 0] == 0 and out.positions[4, 0] == 7
    assert (out.positions[5:] >= 1000).all()  # pad rows write past the cache: dropped
    np.testing.assert_array_equal(out.last, [2 * B + 4, 3 * B + 2, 4 * B + B - 1] + [4 * B + B - 1] * 5)


def test_layout_of_random_calls_puts_every_token_at_its_position():
    rng = np.random.default_rng(0)
    for block in (16, 64):
        for _ in range(20):
            m = int(rng.integers(1, 30))
            suffixes = [rng.integers(0, 1000, int(rng.integers(1, 5 * block))) for _ in range(m)]
            starts, slots = rng.integers(0, 300, m), rng.integers(0, 64, m)
            out = packed_prefill.pack(suffixes, starts, slots, rng.integers(-1, 4, m), park=4096, block=block)
            flat_tok, flat_pos = out.tokens.reshape(-1), out.positions.reshape(-1)
            row = 0
            for i, suffix in enumerate(suffixes):
                k = packed_prefill.rows_needed(len(suffix), block)
                span = slice(row * block, row * block + len(suffix))
                np.testing.assert_array_equal(flat_tok[span], suffix)
                np.testing.assert_array_equal(flat_pos[span], starts[i] + np.arange(len(suffix)))
                assert (out.rows[row:row + k] == slots[i]).all() and (out.first[row:row + k] == row).all()
                assert out.lengths[row:row + k].sum() == len(suffix) and out.last[i] == span.stop - 1
                row += k
            assert (out.lengths[row:] == 0).all() and (out.positions[row:] >= 4096).all()


def test_row_buckets_and_call_plans():
    assert [packed_prefill.rows_bucket(n) for n in (1, 3, 64, 65, 129, 512)] == [1, 4, 64, 128, 192, 512]
    lengths = [B * 3, 10, B * 2, B * 9, 1]  # rows 3, 1, 2, 9, 1
    assert packed_prefill.plan(lengths, 6) == [[0, 1, 2], [3], [4]]  # the 9-row request alone, over the cap
    with pytest.raises(ValueError, match="at least one new token"):
        packed_prefill.pack([np.arange(3), np.arange(0)], [0, 0], [0, 1], [-1, -1], park=64)


# the prefill kernel interpreted on CPU, with one tile size for every layout, so the kernel sums in the same order
# in all of them (bf16 rounding of a different order flips greedy picks of a tiny random model)
KERNELS = KernelConfig(decode_attention="xla", prefill_attention="kernel", projections="xla", interpret=True,
                       prefill=PrefillAttentionTiling(block_t=16, block_s=16))


def test_replica_blocks_have_equal_rows_and_an_idle_replica_writes_nothing():
    """A data-parallel call packs each replica's requests to the same row count (`rows`); a replica without any
    gets idle rows (parked past the cache, length 0); `concat` lays the replicas' blocks one after the other."""
    a = packed_prefill.pack([np.arange(1, 20)], [7], [3], [-1], park=100, block=16, rows=4)
    assert a.tokens.shape == (4, 16)  # 2 rows needed, 4 asked for
    np.testing.assert_array_equal(a.lengths, [16, 3, 0, 0])
    both = packed_prefill.concat([a, packed_prefill.idle(4, 100, 16)])
    assert both.tokens.shape == (8, 16) and not both.tokens[4:].any()
    assert (both.lengths[4:] == 0).all() and (both.positions[4:] >= 100).all() and (both.rows[4:] == -1).all()
    np.testing.assert_array_equal(both.first, [0, 0, 2, 3, 0, 1, 2, 3])  # each block indexes its own rows
    np.testing.assert_array_equal(both.last[:4], [18] * 4)


def _engine(packed: bool | int, **kw) -> JaxEngine:
    if packed and packed is not True:
        kw["packed_prefill_block"] = packed
    kw = dict(max_batch=6, max_seq_len=512, decode_steps=4, min_window=128, min_prefill_bucket=16,
              stop_at_eos=False, kernels=KERNELS) | kw
    return JaxEngine(tiny_decoder(3), packed_prefill=bool(packed), **kw)


def test_engine_packed_prefill_gives_the_unpacked_tokens():
    """Prompts across row boundaries, more requests than slots, then a shared head (copied into other slots) and a
    conversation that continues in place: greedy tokens equal the row-per-request prefill through the same kernel,
    at 64- and 16-token rows; the padding counted is what the layout holds."""
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 250, size=n).tolist() for n in (5, B, B + 1, 150, 200, 33, 97, 64 * 3)]
    head = rng.integers(3, 250, size=90).tolist()
    shared = [head + rng.integers(3, 250, size=n).tolist() for n in (3, 70, 12)]
    sp = SamplingParams(temperature=0.0, max_new_tokens=6)
    got = []
    engines = {packed: _engine(packed) for packed in (True, 16, False)}
    for packed, eng in engines.items():
        first = eng.generate([Request(prompt_ids=p, sampling=sp) for p in prompts])
        eng.generate([Request(prompt_ids=head + [7], sampling=sp)])
        second = eng.generate([Request(prompt_ids=p, sampling=sp) for p in shared])
        turn2 = shared[1] + second[1].token_ids + [40, 41]
        third = eng.generate([Request(prompt_ids=turn2, sampling=sp)])
        got.append([c.token_ids for c in first + second + third])
        assert min(c.cached_tokens for c in second) >= 80 and third[0].cached_tokens >= len(shared[1])
    assert got[0] == got[2] and got[1] == got[2]
    real = engines[False].stats["prefill_tokens"]
    for packed in (True, 16):
        stats = engines[packed].stats
        assert stats["prefill_tokens"] == real < stats["prefill_padded_tokens"]
        assert stats["prefill_padded_tokens"] % (B if packed is True else 16) == 0
    # every request here is under 200 tokens: 16-token rows pad less than 64-token rows
    assert engines[16].stats["prefill_padded_tokens"] < engines[True].stats["prefill_padded_tokens"]
