"""Token log-probabilities of a token sequence under the engine's model (SGLang's `return_logprob`).

One forward pass over the whole sequence (prompt + reply) gives, at every position t >= 1, the log-probability of
token t given tokens < t and the top-k alternatives there. Why a separate pass rather than values kept from decode:
the fused decode program returns only token ids (one host sync per k tokens), and logprobs are asked for rarely;
scoring afterwards costs one prefill-sized forward per request that asks, nothing for the others.

As SGLang does by default, the distribution is the one the request sampled from: logits divided by its
temperature (temperature 0, greedy, uses 1), before top-k / top-p.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@dataclasses.dataclass(frozen=True)
class TokenLogprobs:
    """Scores of positions 1..n of a sequence of n+1 tokens (position 0 has no prediction)."""

    token: np.ndarray  # f32 [n]: log-probability of the token at each position
    top_ids: np.ndarray  # i32 [n, k]: the k most likely tokens there, most likely first (k = 0: empty)
    top: np.ndarray  # f32 [n, k]: their log-probabilities


def _bucket(n: int, lo: int = 16) -> int:
    b = lo
    while b < n:
        b *= 2
    return b


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("top_k",))
def _score(graphdef: nnx.GraphDef, params: nnx.State, tokens: jax.Array, adapter: jax.Array,
           temperature: jax.Array, *, top_k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    model = nnx.merge(graphdef, params)
    positions = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None]
    h = model.hidden(tokens, positions, adapter_ids=adapter)
    logits = model.lm_head(h)[0, :-1].astype(jnp.float32) / temperature  # [T-1, V]: predicts tokens 1..T-1
    logp = jax.nn.log_softmax(logits, axis=-1)
    chosen = jnp.take_along_axis(logp, tokens[0, 1:, None], axis=-1)[:, 0]
    if top_k == 0:
        empty = jnp.zeros((logp.shape[0], 0))
        return chosen, empty.astype(jnp.int32), empty
    top, ids = jax.lax.top_k(logp, top_k)
    return chosen, ids.astype(jnp.int32), top


def score(graphdef: nnx.GraphDef, params: nnx.State, tokens: np.ndarray, *, adapter_id: int = -1,
          temperature: float = 1.0, top_k: int = 0, vocab_size: int) -> TokenLogprobs:
    """Scores of `tokens` (>= 2 ids). The sequence is padded to a power-of-two length and top_k to a power of two
    (at most the vocabulary), so few programs compile; padding after the last token changes no earlier score
    (causal attention)."""
    tokens = np.asarray(tokens, np.int32)
    n = len(tokens)
    if n < 2:
        raise ValueError(f"scoring needs at least 2 tokens, got {n}")
    padded = np.zeros((1, _bucket(n)), np.int32)
    padded[0, :n] = tokens
    k = 0 if top_k <= 0 else min(_bucket(top_k, 1), vocab_size)
    temp = np.float32(temperature if temperature > 0 else 1.0)
    chosen, ids, top = jax.device_get(_score(graphdef, params, padded, np.asarray([adapter_id], np.int32), temp,
                                             top_k=k))
    return TokenLogprobs(token=np.asarray(chosen[:n - 1]), top_ids=np.asarray(ids[:n - 1, :top_k]),
                         top=np.asarray(top[:n - 1, :top_k]))
