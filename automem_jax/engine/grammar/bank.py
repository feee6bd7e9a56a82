"""The engine's grammars: compiled automata cached by regex, laid out in one set of device tables.

Each grammar owns a range of global states in the shared [S, C] tables (after DEAD and FREE) and one row of the
[G, V] token-class table. Capacities grow in powers of two, so the programs that read the tables recompile only a
few times; a grammar unused by the current generate call may be evicted (least recently used first) to make room.
Global state ids never move while a grammar is loaded, so rows keep their state across table rebuilds.
"""
from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Any, Sequence

import jax
import numpy as np

from automem_jax.engine.grammar.automaton import UNREACHABLE, GrammarError, GrammarLimits, TokenAutomaton, \
    compile_regex
from automem_jax.engine.grammar.device import DEAD, FREE, NO_GRAMMAR, GrammarTables
from automem_jax.engine.grammar.vocab import TokenVocab, vocab_for


@dataclasses.dataclass(frozen=True)
class GrammarConfig:
    """Constrained decoding limits of one engine."""

    limits: GrammarLimits = GrammarLimits()
    max_grammars: int = 31  # grammars loaded at once (one [V] token-class row each on the device)
    max_total_states: int = 1 << 16  # global states over all loaded grammars
    cache_size: int = 256  # compiled automata kept on the host (re-loading one skips its compile)


@dataclasses.dataclass
class Loaded:
    gid: int  # row in token_class
    base: int  # global id of its state 0
    automaton: TokenAutomaton

    @property
    def initial(self) -> int:
        return self.base

    @property
    def min_tokens(self) -> int:
        return self.automaton.min_tokens


def _pow2(n: int, lo: int) -> int:
    out = lo
    while out < n:
        out *= 2
    return out


class GrammarBank:
    def __init__(self, vocab: TokenVocab, config: GrammarConfig = GrammarConfig()):
        if not 1 <= config.limits.max_classes < 1 << 15:
            raise ValueError(f"GrammarConfig.limits.max_classes must be in [1, 32767], got {config.limits.max_classes}")
        self.vocab, self.config = vocab, config
        self._compiled: collections.OrderedDict[str, TokenAutomaton] = collections.OrderedDict()
        self._loaded: collections.OrderedDict[str, Loaded] = collections.OrderedDict()  # LRU order
        self._in_use: set[str] = set()
        self._tables: GrammarTables | None = None
        self._dirty = True
        self._lock = threading.Lock()
        self.stats: collections.Counter[str] = collections.Counter()

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, eos_ids: Sequence[int], vocab_size: int,
                      config: GrammarConfig = GrammarConfig()) -> "GrammarBank":
        if tokenizer is None or not eos_ids:
            raise GrammarError("constrained decoding needs an engine with a tokenizer and an EOS id (it walks each "
                               "token's bytes and ends replies at EOS)")
        return cls(vocab_for(tokenizer, eos_ids, vocab_size), config)

    # ------------------------------------------------------------------ host side
    def request(self, regex: str, max_new: int) -> tuple[int, int]:
        """(grammar id, initial global state) for a request of at most max_new tokens; GrammarError if the regex
        cannot be loaded or no reply it accepts fits in max_new tokens."""
        loaded = self.acquire(regex)
        if loaded.min_tokens > max_new:
            raise GrammarError(f"no reply it accepts fits in max_new_tokens={max_new} (the shortest takes "
                               f"{loaded.min_tokens} tokens); raise max_new_tokens or loosen the regex")
        return loaded.gid, loaded.initial

    def begin_call(self) -> None:
        """A generate call starts: grammars loaded for earlier calls may be evicted again."""
        self._in_use.clear()

    def acquire(self, regex: str) -> Loaded:
        """Load `regex` (compiling it on first use) for the current call; GrammarError if it cannot be."""
        with self._lock:
            if regex in self._loaded:
                self._loaded.move_to_end(regex)
                self._in_use.add(regex)
                return self._loaded[regex]
            automaton = self._compile(regex)
            gid = self._free_gid()
            base = self._free_range(automaton.num_states)
            loaded = Loaded(gid, base, automaton)
            self._loaded[regex] = loaded
            self._in_use.add(regex)
            self._dirty = True
            return loaded

    def precompile(self, regex: str) -> None:
        """Compile `regex` into the host cache without holding the bank while it compiles (outlines-core releases
        the GIL): a server calls this on the request's thread, so a slow regex delays only its own request, not the
        engine's. GrammarError if it is refused."""
        with self._lock:
            if regex in self._compiled:
                return
        automaton = compile_regex(regex, self.vocab, self.config.limits)
        with self._lock:
            self._store(regex, automaton)

    def _compile(self, regex: str) -> TokenAutomaton:
        if regex in self._compiled:
            self._compiled.move_to_end(regex)
            return self._compiled[regex]
        automaton = compile_regex(regex, self.vocab, self.config.limits)
        self._store(regex, automaton)
        return automaton

    def _store(self, regex: str, automaton: TokenAutomaton) -> None:
        self.stats["compiles"] += 1
        self.stats["compile_s"] += automaton.build_s
        self._compiled[regex] = automaton
        while len(self._compiled) > self.config.cache_size:
            self._compiled.popitem(last=False)

    def _evict_one(self, what: str) -> None:
        for regex in self._loaded:  # least recently used first
            if regex not in self._in_use:
                del self._loaded[regex]
                self._dirty = True
                return
        raise GrammarError(f"no room for another grammar ({what}): the {len(self._loaded)} grammars of this call "
                           "fill the engine's grammar tables; send fewer distinct regexes per call or raise "
                           "GrammarConfig.max_grammars / max_total_states")

    def _free_gid(self) -> int:
        while True:
            used = {g.gid for g in self._loaded.values()}
            for gid in range(1, self.config.max_grammars + 1):
                if gid not in used:
                    return gid
            self._evict_one(f"max_grammars={self.config.max_grammars}")

    def _free_range(self, n: int) -> int:
        """First fit in [2, max_total_states) among the loaded grammars' ranges."""
        if n + 2 > self.config.max_total_states:
            raise GrammarError(f"grammar has {n} states; the engine's tables hold {self.config.max_total_states}")
        while True:
            start = 2
            for lo, hi in sorted((g.base, g.base + g.automaton.num_states) for g in self._loaded.values()):
                if lo - start >= n:
                    return start
                start = max(start, hi)
            if self.config.max_total_states - start >= n:
                return start
            self._evict_one(f"max_total_states={self.config.max_total_states}")

    # ---------------------------------------------------------------- device side
    def tables(self) -> GrammarTables:
        """Device tables holding every loaded grammar (rebuilt only after a change)."""
        with self._lock:
            if self._tables is None or self._dirty:
                self._tables = jax.device_put(self._build())
                self._dirty = False
                self.stats["table_builds"] += 1
            return self._tables

    def _build(self) -> GrammarTables:
        loaded = list(self._loaded.values())
        n_states = max([2] + [g.base + g.automaton.num_states for g in loaded])
        n_classes = max([1] + [g.automaton.num_classes for g in loaded])
        n_grammars = max([1] + [g.gid + 1 for g in loaded])
        s_cap, c_cap, g_cap = _pow2(n_states, 64), _pow2(n_classes, 16), _pow2(n_grammars, 2)
        nxt = np.full((s_cap, c_cap), DEAD, np.int32)
        need = np.full((s_cap, c_cap), UNREACHABLE, np.int32)
        nxt[FREE], need[FREE] = FREE, 0
        # int16 classes (limits.max_classes < 2**15): the [B, V] gather of a masked step reads half the bytes
        token_class = np.zeros((g_cap, self.vocab.vocab_size), np.int16)  # grammar 0 (none): every token class 0
        for g in loaded:
            a = g.automaton
            s, c = a.num_states, a.num_classes
            local = a.next
            nxt[g.base:g.base + s, :c] = np.where(local >= 0, local + g.base, DEAD)
            need[g.base:g.base + s, :c] = np.where(local >= 0, a.dist[np.maximum(local, 0)], UNREACHABLE)
            token_class[g.gid] = a.token_class
        assert NO_GRAMMAR == 0
        return GrammarTables(next=nxt, need=need, token_class=token_class)

    def describe(self) -> dict[str, Any]:
        """Sizes for benchmarks and logs."""
        t = self.tables()
        return {"grammars": len(self._loaded), "table_shapes": {k: list(getattr(t, k).shape) for k in
                                                                ("next", "need", "token_class")},
                "device_bytes": int(sum(getattr(t, k).nbytes for k in ("next", "need", "token_class")))}
