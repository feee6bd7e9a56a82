"""Constrained decoding: a per-request regex compiled over the tokenizer's vocabulary (outlines-core builds the
index) into token-automaton tables the JAX engine masks logits with on the device, inside its jitted programs."""
from automem_jax.engine.grammar.automaton import GrammarError, GrammarLimits, TokenAutomaton, check_regex, \
    compile_regex
from automem_jax.engine.grammar.bank import GrammarBank, GrammarConfig
from automem_jax.engine.grammar.device import GrammarTables, advance, mask_logits
from automem_jax.engine.grammar.vocab import TokenVocab, token_bytes_of, vocab_for

__all__ = ["GrammarBank", "GrammarConfig", "GrammarError", "GrammarLimits", "GrammarTables", "TokenAutomaton",
           "TokenVocab", "advance", "check_regex", "compile_regex", "mask_logits", "token_bytes_of", "vocab_for"]
