"""The two jitted device programs of the JAX engine: bucketed prefill into cache slots, and a fused k-step decode.

Both are pure functions of (model params, KV cache, per-row decode state); the cache and state are donated so XLA
updates them in place. Shapes that vary (rows prefilled, prompt bucket, attention window, steps per call) are static
arguments from small bucket sets, so the number of compiled programs is bounded and fixed after warm-up.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from automem_jax.engine import grammar as grammar_lib
from automem_jax.engine.sampling import RowSampling, is_stop, sample
from automem_jax.kernels.config import KernelConfig
from automem_jax.models.decode import decode_step
from automem_jax.models.prefill import Chunk, prefill as prefill_rows


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeState:
    """Per-slot device state, leading dim = max_batch."""

    tokens: jax.Array  # i32 [B] next token to feed (last sampled)
    pos: jax.Array  # i32 [B] its position = cache index it will be written at
    done: jax.Array  # bool [B]
    gen: jax.Array  # i32 [B] tokens generated so far by the request
    max_new: jax.Array  # i32 [B]
    stop_ids: jax.Array  # i32 [B, NS], -1 padded
    adapter: jax.Array  # i32 [B], -1 = base
    sampling: RowSampling
    gstate: jax.Array  # i32 [B] grammar automaton state (grammar/device.py; FREE = no grammar)
    gid: jax.Array  # i32 [B] grammar id (0 = none)

    @staticmethod
    def init(batch: int, num_stop_ids: int) -> "DecodeState":
        return DecodeState(
            tokens=jnp.zeros((batch,), jnp.int32), pos=jnp.zeros((batch,), jnp.int32),
            done=jnp.ones((batch,), bool), gen=jnp.zeros((batch,), jnp.int32),
            max_new=jnp.ones((batch,), jnp.int32), stop_ids=jnp.full((batch, num_stop_ids), -1, jnp.int32),
            adapter=jnp.full((batch,), -1, jnp.int32), sampling=RowSampling.zeros(batch),
            gstate=jnp.full((batch,), grammar_lib.device.FREE, jnp.int32), gid=jnp.zeros((batch,), jnp.int32))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class NewRows:
    """Host-built parameters of the rows a prefill call installs (leading dim = n, the padded row count)."""

    max_new: jax.Array  # i32 [n]
    stop_ids: jax.Array  # i32 [n, NS]
    adapter: jax.Array  # i32 [n]
    sampling: RowSampling
    gstate: jax.Array  # i32 [n] initial grammar state (FREE = no grammar)
    gid: jax.Array  # i32 [n]

    @staticmethod
    def idle(n: int, num_stop_ids: int) -> "NewRows":
        """n null rows as host arrays (greedy, one token, no adapter, no grammar, never installed): padding rows of a
        prefill call, and shapes for lowering one. Numpy, not jnp: the jitted call transfers them with its
        arguments (a jnp array per field was an eager device op each, ~0.2 ms apiece on a GPU host)."""
        i32 = np.zeros((n,), np.int32)
        sampling = RowSampling(temperature=np.zeros((n,), np.float32), top_k=i32.copy(),
                               top_p=np.ones((n,), np.float32), key=np.zeros((n, 2), np.uint32))
        return NewRows(max_new=i32 + 1, stop_ids=np.full((n, num_stop_ids), -1, np.int32), adapter=i32 - 1,
                       sampling=sampling, gstate=i32 + grammar_lib.device.FREE,
                       gid=i32 + grammar_lib.device.NO_GRAMMAR)


def _with_kv(cache: Any, k: jax.Array, v: jax.Array) -> Any:
    return dataclasses.replace(cache, k=k, v=v)


def prefill(graphdef: nnx.GraphDef, params: nnx.State, cache: Any, state: DecodeState, dst: jax.Array,
            tokens: jax.Array, start: jax.Array, length: jax.Array, rows: NewRows,
            grammar: grammar_lib.GrammarTables | None = None, *, window: int, kernels: KernelConfig,
            sampling_mode: str = "auto") -> tuple[Any, DecodeState, jax.Array]:
    """Prefill `tokens` [n, T] (a prompt suffix, right-padded) at positions start+arange(T) into slots `dst`.

    Slot dst[i] already holds the KV of its first start[i] tokens (kept from an earlier turn, or copied there by
    `copy_rows`); the model reads and writes those slots of the full cache in place (only the new tokens are
    written; attention reads the first `window` entries). Samples each row's first token from position
    start+length-1 and installs the row's decode state. Duplicate pad rows repeat a real row exactly.
    `grammar`: the engine's grammar tables when some row is constrained (its first token is masked), else None.
    """
    model = nnx.merge(graphdef, params)
    t = tokens.shape[1]
    positions = start[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
    h, cache = prefill_rows(model, Chunk(tokens, positions, dst, length, adapter=rows.adapter), cache,
                            window=window, kernels=kernels)
    last = jnp.take_along_axis(h, (length - 1)[:, None, None], axis=1)  # [n, 1, D]: only the last logits are needed
    return (cache, *_install(model.lm_head(last)[:, 0], state, dst, start, length, rows, sampling_mode, grammar))


def prefill_packed(graphdef: nnx.GraphDef, params: nnx.State, cache: Any, state: DecodeState, dst: jax.Array,
                   start: jax.Array, length: jax.Array, blocks: Any, rows: NewRows,
                   grammar: grammar_lib.GrammarTables | None = None, *, kernels: KernelConfig,
                   sampling_mode: str = "auto") -> tuple[Any, DecodeState, jax.Array]:
    """As `prefill`, for requests packed as rows of a few tokens (engine/packed_prefill.py: `blocks`, a
    PackedBlocks of device arrays). Requests: dst/start/length [m] (m = the call's row count; pad requests repeat a
    real one), each request's last token at flat index blocks.last[i] of the [rows x block] output. Needs the
    in-place prefill kernel (kernels.prefill_attention resolved to "kernel"); `grammar` as in `prefill`."""
    model = nnx.merge(graphdef, params)
    chunk = Chunk(blocks.tokens, blocks.positions, blocks.rows, blocks.lengths, blocks.first, blocks.adapter)
    h, cache = prefill_rows(model, chunk, cache, kernels=kernels)
    last = h.reshape(-1, h.shape[-1])[blocks.last][:, None]  # [m, 1, D]
    return (cache, *_install(model.lm_head(last)[:, 0], state, dst, start, length, rows, sampling_mode, grammar))


def _install(logits: jax.Array, state: DecodeState, dst: jax.Array, start: jax.Array, length: jax.Array,
             rows: NewRows, sampling_mode: str,
             grammar: grammar_lib.GrammarTables | None) -> tuple[DecodeState, jax.Array]:
    """Sample each prefilled row's first token from its last logits and install its decode state in slot dst."""
    n = dst.shape[0]
    gstate = rows.gstate
    if grammar is not None:
        logits = grammar_lib.mask_logits(grammar, logits, gstate, rows.gid, rows.max_new - 1)
    first = sample(logits, rows.sampling, jnp.zeros((n,), jnp.int32), sampling_mode)
    if grammar is not None:
        gstate = grammar_lib.advance(grammar, gstate, rows.gid, first)
    done = is_stop(first, rows.stop_ids) | (rows.max_new <= 1)
    state = DecodeState(
        tokens=state.tokens.at[dst].set(first), pos=state.pos.at[dst].set(start + length),
        done=state.done.at[dst].set(done), gen=state.gen.at[dst].set(1),
        max_new=state.max_new.at[dst].set(rows.max_new), stop_ids=state.stop_ids.at[dst].set(rows.stop_ids),
        adapter=state.adapter.at[dst].set(rows.adapter),
        sampling=jax.tree.map(lambda a, b: a.at[dst].set(b), state.sampling, rows.sampling),
        gstate=state.gstate.at[dst].set(gstate), gid=state.gid.at[dst].set(rows.gid))
    return state, first


def copy_rows(cache: Any, src: jax.Array, dst: jax.Array, *, window: int) -> Any:
    """cache[:, dst[i], :window] = cache[:, src[i], :window] (a shared prompt head copied into a fresh slot before
    its suffix is prefilled there). Pad rows repeat a real pair exactly."""
    # the barrier materialises the source rows before any write, so the writes can stay in place (no copy of the
    # cache to keep the rows being read intact)
    k_rows, v_rows = jax.lax.optimization_barrier((cache.k[:, src, :window], cache.v[:, src, :window]))
    return _with_kv(cache, _put_rows(cache.k, k_rows, dst), _put_rows(cache.v, v_rows, dst))


def _put_rows(full: jax.Array, sub: jax.Array, dst: jax.Array) -> jax.Array:
    """full[:, dst[i], :W] = sub[:, i] for each row i (sub [L, n, W, ...], W <= full's length), in place.

    One dynamic_update_slice per row in a loop instead of a scatter: XLA's scatter wrote rows back at ~0.1 TB/s on
    an H100 (1.8 ms for 16 rows x 1104 entries of SmolLM2). Pad rows repeat a real row exactly, so writing them
    twice is harmless."""
    def body(i, full):
        return jax.lax.dynamic_update_slice_in_dim(full, jax.lax.dynamic_slice_in_dim(sub, i, 1, axis=1), dst[i],
                                                   axis=1)
    return jax.lax.fori_loop(0, dst.shape[0], body, full, unroll=True)  # n is static: no device loop to sync on


def decode(graphdef: nnx.GraphDef, params: nnx.State, cache: Any, state: DecodeState, rows: jax.Array | None,
           force_done: jax.Array, layer_params: tuple[nnx.State, ...] | None = None,
           grammar: grammar_lib.GrammarTables | None = None, *, num_steps: int, window: int, kernels: KernelConfig,
           sampling_mode: str = "auto") -> tuple[Any, DecodeState, jax.Array]:
    """Run `num_steps` decode steps for the slots `rows` (i32 [n], distinct; None: every slot) in one program;
    returns tokens [n, num_steps] (-1 = row done). force_done [n]: rows to finish before the first step.

    Attention reads only the first `window` cache entries (the host picks window > every row's write position),
    so decode cost tracks the live context, not max_seq_len, and stepping only the live slots (`rows`) makes it
    track the live rows too. The window is passed to the model rather than sliced out here: a sliced view would
    copy the window of every layer in and out on each call, while the model's per-layer read fuses into attention
    and the new K/V are written in place into the donated cache.
    Done rows (finished, or free slots) run parked at position `cache.max_len`: they write no cache entry (the
    decode kernel skips them, the XLA path drops the write), so they cost no KV bandwidth and need no window.
    `layer_params`: per-layer weights for straight-line layers (models/decode.py); `sampling_mode` (static) see
    sampling.sample: it must serve every row that is not done.
    `grammar`: the engine's grammar tables when some live row is constrained (every step's logits are masked by
    each row's automaton state and remaining budget, and the state advances on device), else None (no such work).
    """
    model = nnx.merge(graphdef, params)
    sub = state if rows is None else jax.tree.map(lambda a: a[rows], state)
    sub = dataclasses.replace(sub, done=sub.done | force_done)

    def step(i, carry):
        cache, st, out = carry
        pos = jnp.where(st.done, cache.max_len, st.pos)  # done rows parked (see above); their tokens are dropped
        logits, cache = decode_step(model, st.tokens[:, None], pos[:, None], cache, rows=rows, adapter_ids=st.adapter,
                                    window=window, kernels=kernels, layer_params=layer_params)
        logits = logits[:, -1]
        if grammar is not None:
            logits = grammar_lib.mask_logits(grammar, logits, st.gstate, st.gid, st.max_new - st.gen - 1)
        nxt = sample(logits, st.sampling, st.gen, sampling_mode)
        active = ~st.done
        finished = is_stop(nxt, st.stop_ids) | (st.gen + 1 >= st.max_new)
        out = out.at[:, i].set(jnp.where(active, nxt, -1))
        st = dataclasses.replace(
            st, tokens=jnp.where(active, nxt, st.tokens), pos=jnp.where(active, st.pos + 1, st.pos),
            gen=st.gen + active.astype(jnp.int32), done=st.done | (active & finished))
        if grammar is not None:
            st = dataclasses.replace(st, gstate=jnp.where(active, grammar_lib.advance(grammar, st.gstate, st.gid, nxt),
                                                          st.gstate))
        return cache, st, out

    out = jnp.full((sub.tokens.shape[0], num_steps), -1, jnp.int32)
    cache, sub, out = jax.lax.fori_loop(0, num_steps, step, (cache, sub, out))
    state = sub if rows is None else jax.tree.map(lambda a, b: a.at[rows].set(b), state, sub)
    return cache, state, out
