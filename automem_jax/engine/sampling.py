"""Token sampling as pure jitted functions over a batch of rows, each with its own parameters and seed.

Every row carries its own temperature / top-k / top-p and a raw PRNG key; the key of step `t` of a request is
`fold_in(request_key, t)`, so a seeded request samples the same tokens whatever batch or slot it lands in.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

_NEG_INF = -1e30


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class RowSampling:
    """Per-row sampling parameters, device arrays of leading dim B."""

    temperature: jax.Array  # f32 [B]; 0 = greedy
    top_k: jax.Array  # i32 [B]; 0 = off
    top_p: jax.Array  # f32 [B]; 1 = off
    key: jax.Array  # u32 [B, 2] raw threefry key data of the request

    @staticmethod
    def zeros(batch: int) -> "RowSampling":
        return RowSampling(jnp.zeros((batch,), jnp.float32), jnp.zeros((batch,), jnp.int32),
                           jnp.ones((batch,), jnp.float32), jnp.zeros((batch, 2), jnp.uint32))


def request_key(seed: int) -> np.ndarray:
    """Raw u32[2] key data for a request seed (host side, no device round trip)."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    return np.array([seed >> 32, seed & 0xFFFFFFFF], dtype=np.uint32)


def _filter_top_k_top_p(logits: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Mask logits [B, V] outside each row's top-k and top-p nucleus (exact; one sort per row)."""
    vocab = logits.shape[-1]
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]  # descending
    # top-k: threshold = k-th largest logit
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    kth = jnp.take_along_axis(sorted_logits, (k - 1)[:, None], axis=-1)
    # top-p: smallest prefix of sorted probabilities whose mass reaches p (the crossing token is kept)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = mass_before < top_p[:, None]
    n_keep = jnp.maximum(jnp.sum(keep_sorted, axis=-1), 1)
    pth = jnp.take_along_axis(sorted_logits, (n_keep - 1)[:, None], axis=-1)
    threshold = jnp.maximum(kth, pth)
    return jnp.where(logits >= threshold, logits, _NEG_INF)


MODES = ("auto", "greedy", "sample", "filter")


def mode_for(temperature: np.ndarray, top_k: np.ndarray, top_p: np.ndarray) -> str:
    """The static sampling mode that serves these rows (host side, from the rows that are live)."""
    hot = np.asarray(temperature) > 0.0
    if not hot.any():
        return "greedy"
    return "filter" if bool((hot & ((np.asarray(top_k) > 0) | (np.asarray(top_p) < 1.0))).any()) else "sample"


def sample(logits: jax.Array, params: RowSampling, step: jax.Array, mode: str = "auto") -> jax.Array:
    """Next token per row. logits f32 [B, V]; step i32 [B] = index of the token being generated in its request.

    mode (static): "greedy" (every row that matters has temperature 0: one argmax), "sample" (no top-k/top-p),
    "filter" (some row uses top-k/top-p), or "auto" (decided on device with lax.cond). The engine passes a static
    mode: on GPU every cond costs a device->host sync of its predicate and splits the program for CUDA graphs.
    """
    if mode not in MODES:
        raise ValueError(f"sample: mode must be one of {MODES}, got {mode!r}")
    logits = logits.astype(jnp.float32)
    greedy_tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if mode == "greedy":
        return greedy_tokens

    def row_noise(key_data, t):
        key = jax.random.fold_in(jax.random.wrap_key_data(key_data, impl="threefry2x32"), t)
        return jax.random.gumbel(key, logits.shape[-1:], jnp.float32)

    def stochastic(logits):
        scaled = logits / jnp.maximum(params.temperature, 1e-6)[:, None]
        if mode == "filter":
            scaled = _filter_top_k_top_p(scaled, params.top_k, params.top_p)
        elif mode == "auto":  # the sort is only paid for when some row asks for top-k/top-p
            needs_filter = jnp.any(((params.top_k > 0) | (params.top_p < 1.0)) & (params.temperature > 0.0))
            scaled = jax.lax.cond(needs_filter, _filter_top_k_top_p, lambda x, *_: x, scaled, params.top_k,
                                  params.top_p)
        gumbel = jax.vmap(row_noise)(params.key, step)
        return jnp.argmax(scaled + gumbel, axis=-1).astype(jnp.int32)

    if mode == "auto":
        # An all-greedy batch pays one argmax pass over the [B, V] logits: the scaling, the optional sort and the
        # B x V noise draw sit in the branch it skips (a branch returning [B] ids, so the logits are not copied).
        sampled = jax.lax.cond(jnp.all(params.temperature <= 0.0), lambda x: greedy_tokens, stochastic, logits)
    else:
        sampled = stochastic(logits)
    return jnp.where(params.temperature <= 0.0, greedy_tokens, sampled)


def is_stop(tokens: jax.Array, stop_ids: jax.Array) -> jax.Array:
    """tokens i32 [B], stop_ids i32 [B, N] padded with -1 -> bool [B]."""
    return jnp.any((tokens[:, None] == stop_ids) & (stop_ids >= 0), axis=-1)


def find_stop_string(text: str, stops: tuple[str, ...], search_from: int = 0) -> int:
    """Index in `text` of the earliest stop string starting at or after `search_from` - len(stop) + 1, or -1.

    The host checks only the decoded tail (text that could contain a stop newly completed by the last tokens).
    """
    best = -1
    for stop in stops:
        if not stop:
            continue
        idx = text.find(stop, max(0, search_from - len(stop) + 1))
        if idx >= 0 and (best < 0 or idx < best):
            best = idx
    return best
