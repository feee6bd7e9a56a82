"""Device side of constrained decoding: the tables every grammar of the engine shares, and the two per-token steps
(mask the logits, advance the state) that run inside the jitted prefill and fused decode programs.

Every row carries a global automaton state and a grammar id. State 0 is dead (nothing allowed), state 1 is FREE
(every token allowed, budget or not): a row without a grammar sits in FREE with grammar 0, whose token classes are
all 0, so a program that masks some rows masks the others to "everything" at no extra logic. A program with no
grammar row at all is compiled without these tables (the engine passes None) and does none of this work.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

DEAD, FREE = 0, 1
NO_GRAMMAR = 0
_NEG_INF = -1e30


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class GrammarTables:
    """next[s, c]: the global state after a token of class c in state s (DEAD if not allowed); need[s, c]: the fewest
    tokens that must follow such a token before the reply may end (dist of that next state); token_class[g, t]: the
    class of token t in grammar g."""

    next: jax.Array  # i32 [S, C]
    need: jax.Array  # i32 [S, C]
    token_class: jax.Array  # i32 [G, V]


def mask_logits(tables: GrammarTables, logits: jax.Array, state: jax.Array, grammar: jax.Array,
                budget: jax.Array) -> jax.Array:
    """logits [B, V] with every token a row's grammar forbids set to -inf: tokens not allowed in its state, and
    tokens after which the reply cannot reach an accepting state within `budget` [B] more tokens (tokens the
    request may still generate after this one)."""
    classes = tables.token_class[grammar]  # [B, V]
    need = jnp.take_along_axis(tables.need[state], classes, axis=1)  # [B, V]
    return jnp.where(need <= budget[:, None], logits, _NEG_INF)


def advance(tables: GrammarTables, state: jax.Array, grammar: jax.Array, tokens: jax.Array) -> jax.Array:
    """Each row's state after its sampled token."""
    cls = jnp.take_along_axis(tables.token_class[grammar], tokens[:, None], axis=1)[:, 0]
    return tables.next[state, cls]
