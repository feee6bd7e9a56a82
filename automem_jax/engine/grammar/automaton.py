"""A regular expression compiled over a tokenizer's vocabulary into dense token-automaton tables.

outlines-core (Rust) builds the index: the regex's byte-level DFA walked with every token's bytes gives, per DFA
state, the tokens allowed there and the state each leads to. Here it becomes numpy tables the device can gather from:
- tokens that behave alike in every state share a class (a grammar over tags and names has a few hundred classes
  among 49k-152k tokens), so the transition table is [states, classes], not [states, vocab];
- `dist[s]`: the fewest tokens from s to an accepting state, so decoding can refuse any token after which the
  reply could no longer be completed within its remaining token budget (bounded replies without counted
  repetition, which would multiply the states);
- EOS ids form their own class, allowed in accepting states only.
State 0 is the initial state; -1 in `next` = not allowed.
"""
from __future__ import annotations

import dataclasses
import re
import time

import numpy as np

from automem_jax.engine.grammar.vocab import SENTINEL, SENTINEL_REGEX, TokenVocab

UNREACHABLE = 1 << 30  # dist of a state from which no accepting state can be reached
MAX_REGEX_CHARS = 1 << 16
_UNSPELLABLE = "no reply this tokenizer can spell matches the regex"


class GrammarError(ValueError):
    """A regex cannot be used for constrained decoding (does not compile, or its automaton is over the cap)."""


@dataclasses.dataclass(frozen=True)
class TokenAutomaton:
    regex: str
    next: np.ndarray  # i32 [S, C]: next state per (state, token class); -1 = token not allowed
    token_class: np.ndarray  # i32 [V]: class of each token id (V = the model's vocab size)
    dist: np.ndarray  # i32 [S]: fewest tokens to an accepting state (UNREACHABLE if none)
    accepting: np.ndarray  # bool [S]
    build_s: float = 0.0

    @property
    def num_states(self) -> int:
        return int(self.next.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.next.shape[1])

    @property
    def min_tokens(self) -> int:
        """Length in tokens of the shortest reply the regex accepts (EOS not counted)."""
        return int(self.dist[0])

    def allowed(self, state: int) -> np.ndarray:
        """Token ids allowed in `state` (host side; tests and debugging)."""
        return np.flatnonzero(self.next[state][self.token_class] >= 0)

    def walk(self, ids) -> int:
        """State after feeding token ids from the initial state; -1 as soon as one is not allowed."""
        s = 0
        for t in ids:
            s = int(self.next[s, self.token_class[int(t)]])
            if s < 0:
                return -1
        return s


@dataclasses.dataclass(frozen=True)
class GrammarLimits:
    """Caps on one compiled grammar (the engine's device tables hold several)."""

    max_states: int = 4096  # byte-level DFA states (an upper bound on the token automaton's)
    max_classes: int = 4096  # token classes
    max_program: int = 1 << 16  # RE2 program instructions (outlines-core builds ~1 s at the cap)


_BYTE_VOCAB = None
_BYTE_SENTINEL_ID = 256


def _byte_vocab():
    global _BYTE_VOCAB
    if _BYTE_VOCAB is None:
        from outlines_core import Vocabulary
        table = {bytes([b]): [b] for b in range(256)}
        table[SENTINEL] = [_BYTE_SENTINEL_ID]
        _BYTE_VOCAB = Vocabulary(257, table)
    return _BYTE_VOCAB


def _anchored(regex: str) -> str:
    """The regex the index compiles: the whole reply must match (a leading ^ / trailing $ are implied and
    dropped), followed by the end marker."""
    body = regex[1:] if regex.startswith("^") else regex
    if body.endswith("$") and not body.endswith("\\$"):
        body = body[:-1]
    return f"(?:{body}){SENTINEL_REGEX}"


def _index(regex: str, vocabulary, incompatible: str):
    from outlines_core import Index
    try:
        return Index(_anchored(regex), vocabulary)
    except Exception as e:  # outlines-core raises ValueError/RuntimeError with terse texts
        if "incompatible" in str(e):  # a state no token can leave: the regex needs text no token spells
            raise GrammarError(incompatible) from None
        try:
            re.compile(regex)
            why = str(e)
        except re.error as pe:
            why = f"{pe} ({e})"
        raise GrammarError(f"regex does not compile: {why}; use the common regex subset (classes, groups, "
                           "alternation, * + ? {m,n}; no look-around or back-references)") from None


# \w \d and their negations, unescaped: Rust's regex (outlines-core) reads them as Unicode classes, RE2 as ASCII
_PERL_CLASS = re.compile(r"(?<!\\)((?:\\\\)*)\\([wWdD])")
_UNICODE_CLASS = {"w": r"\pL", "W": r"\PL", "d": r"\p{Nd}", "D": r"\P{Nd}"}


def _check_program_size(regex: str, max_program: int) -> None:
    """Refuse in milliseconds what outlines-core would take seconds to minutes to build before its state count
    could be checked: counted repetitions over 1000 or of large (Unicode) classes. RE2's compiled program of the
    regex, with \\w and \\d read as Unicode classes, bounds the DFA's build; a syntax RE2 lacks but Rust's regex has
    (class set operations) is left to outlines-core."""
    import re2
    unicode_read = _PERL_CLASS.sub(lambda m: m.group(1) + _UNICODE_CLASS[m.group(2)], regex)
    opts = re2.Options()
    opts.log_errors, opts.max_mem = False, 64 << 20
    try:
        size = re2.compile(unicode_read, options=opts).programsize
    except re2.error as e:
        msg = e.args[0].decode() if e.args and isinstance(e.args[0], bytes) else str(e)
        if "repetition" in msg or "too large" in msg:
            raise GrammarError(f"regex is too large to compile ({msg}); keep counted repetitions {{m,n}} at most "
                               "1000 (nested ones multiply) and repeat small classes, not \\w or \\p{..}") from None
        return
    if size > max_program:
        raise GrammarError(f"regex compiles to {size} instructions, over the cap of {max_program}; shorten it "
                           "(fewer alternatives, smaller counted repetitions {m,n}, ASCII classes like [a-z] "
                           "rather than \\w or \\p{..})")


def check_regex(regex: str, limits: GrammarLimits = GrammarLimits()) -> int:
    """Compile `regex` to its byte-level DFA (fast, any tokenizer) and return its state count; GrammarError if it
    does not compile, accepts nothing, or exceeds limits.max_program (checked first, in milliseconds) or
    limits.max_states."""
    if not isinstance(regex, str) or not regex:
        raise GrammarError("regex must be a non-empty string")
    if len(regex) > MAX_REGEX_CHARS:
        raise GrammarError(f"regex has {len(regex)} characters, over the {MAX_REGEX_CHARS} cap")
    _check_program_size(regex, limits.max_program)
    index = _index(regex, _byte_vocab(), "regex accepts no reply (its language is empty)")
    transitions = index.get_transitions()
    states = {s for s, row in transitions.items() if row.keys() - {_BYTE_SENTINEL_ID, 257}}
    states |= {n for row in transitions.values() for t, n in row.items() if t < 256}
    finals = set(index.get_final_states())
    if not any(row.get(_BYTE_SENTINEL_ID) in finals for row in transitions.values()):
        raise GrammarError("regex accepts no reply (its language is empty)")
    if len(states) > limits.max_states:
        raise GrammarError(f"regex automaton has {len(states)} states, over the cap of {limits.max_states}; "
                           "shorten the grammar (fewer alternatives, no large counted repetitions {m,n})")
    return len(states)


def _class_of_tokens(tok: np.ndarray, src: np.ndarray, dst: np.ndarray, vocab_size: int) -> np.ndarray:
    """Class id per token (0 = allowed nowhere): tokens with the same set of (state, next) edges share a class.
    Edge sets are hashed (two independent 64-bit sums) and the grouping is verified exactly by the caller."""
    mix = (src.astype(np.uint64) << np.uint64(32)) | dst.astype(np.uint64)
    h1 = np.zeros(vocab_size, np.uint64)
    h2 = np.zeros(vocab_size, np.uint64)
    with np.errstate(over="ignore"):
        k1 = mix * np.uint64(0x9E3779B97F4A7C15)
        k1 ^= k1 >> np.uint64(29)
        k2 = (mix + np.uint64(0x632BE59BD9B4E019)) * np.uint64(0xBF58476D1CE4E5B9)
        k2 ^= k2 >> np.uint64(31)
        if len(tok):  # per-token sums by sorting (np.add.at is ~50x slower on millions of edges)
            order = np.argsort(tok, kind="stable")
            sorted_tok = tok[order]
            starts = np.flatnonzero(np.r_[True, sorted_tok[1:] != sorted_tok[:-1]])
            h1[sorted_tok[starts]] = np.add.reduceat(k1[order], starts)
            h2[sorted_tok[starts]] = np.add.reduceat(k2[order], starts)
    count = np.bincount(tok, minlength=vocab_size)
    sig = np.stack([h1, h2, count.astype(np.uint64)], axis=1)
    sig[count == 0] = 0  # every token allowed nowhere: one signature, sorted first (class 0)
    _, inverse = np.unique(sig, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1).astype(np.int32)
    if count.min() > 0:  # no token is allowed nowhere: keep class 0 as the empty class anyway
        inverse += 1
    return inverse


def compile_regex(regex: str, vocab: TokenVocab, limits: GrammarLimits = GrammarLimits()) -> TokenAutomaton:
    """The token automaton of `regex` over `vocab` (GrammarError on a bad or oversized regex)."""
    t0 = time.perf_counter()
    check_regex(regex, limits)
    index = _index(regex, vocab.outlines, _UNSPELLABLE)
    init = index.get_initial_state()
    srcs, toks, dsts = [], [], []
    for s, row in index.get_transitions().items():
        srcs.append(np.full(len(row), s, np.int64))
        toks.append(np.fromiter(row.keys(), np.int64, len(row)))
        dsts.append(np.fromiter(row.values(), np.int64, len(row)))
    src, tok, dst = (np.concatenate(a) if a else np.zeros(0, np.int64) for a in (srcs, toks, dsts))
    # outlines-core 0.2.14 drops a token that ends one byte past an accepting position (regex-automata reports a
    # match one byte late, and the index keeps such a state only if it matches at the end of input), which cuts
    # every repetition after its first accepting point. The regex is therefore compiled followed by an end marker
    # no reply contains, so no state inside it is a match state; a state accepts iff the marker's token leads from
    # it to a final state.
    marker = tok == vocab.sentinel_id
    finals = np.asarray(sorted(index.get_final_states()), np.int64)
    accepting_raw = np.unique(src[marker & np.isin(dst, finals)])
    keep = ~marker & ~np.isin(tok, list(vocab.eos_ids))
    keep[keep] = ~vocab.has_sentinel[tok[keep]]
    src, tok, dst = src[keep], tok[keep], dst[keep]
    live = _reachable(init, src, dst)  # states entered only through the marker are dropped with it
    keep = np.isin(src, live)
    src, tok, dst = src[keep], tok[keep], dst[keep]
    accepting_raw = accepting_raw[np.isin(accepting_raw, live)]
    raw = np.unique(np.concatenate([[init], src, dst, accepting_raw]))
    raw = np.concatenate([[init], raw[raw != init]])  # the initial state becomes 0
    order = np.argsort(raw)
    renumber = lambda a: order[np.searchsorted(raw[order], a)].astype(np.int64)  # noqa: E731
    src, dst = renumber(src), renumber(dst)
    n_states = len(raw)
    if n_states > limits.max_states:
        raise GrammarError(f"regex token automaton has {n_states} states, over the cap of {limits.max_states}")
    token_class = _class_of_tokens(tok, src, dst, vocab.vocab_size)
    eos_class = int(token_class.max()) + 1
    token_class[np.asarray(vocab.eos_ids, np.int64)] = eos_class
    n_classes = eos_class + 1
    if n_classes > limits.max_classes:
        raise GrammarError(f"regex splits the vocabulary into {n_classes} token classes, over the cap of "
                           f"{limits.max_classes}; shorten the grammar")
    nxt = np.full((n_states, n_classes), -1, np.int32)
    nxt[src, token_class[tok]] = dst
    # exact check of the hashed grouping: every token's edges are its class's, and as many
    edges_per_token = np.bincount(tok, minlength=vocab.vocab_size)
    edges_per_class = (nxt >= 0).sum(axis=0)
    if not (np.array_equal(nxt[src, token_class[tok]], dst.astype(np.int32))
            and np.array_equal(edges_per_class[token_class[tok]], edges_per_token[tok])):
        raise AssertionError("token classes merged tokens with different transitions (hash collision)")
    accepting = np.zeros(n_states, bool)
    accepting[renumber(accepting_raw)] = True
    nxt[accepting, eos_class] = np.flatnonzero(accepting)
    dist = _distances(nxt, accepting)
    if dist[0] >= UNREACHABLE:
        raise GrammarError(_UNSPELLABLE)
    return TokenAutomaton(regex=regex, next=nxt, token_class=token_class, dist=dist, accepting=accepting,
                          build_s=time.perf_counter() - t0)


def _reachable(init: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """States reachable from `init` over the edges src -> dst."""
    span = int(max(src.max(initial=0), dst.max(initial=0), init)) + 1
    pairs = np.unique(src * span + dst)  # 1-D: unique rows of [src, dst] sort ~50x slower
    succ: dict[int, list[int]] = {}
    for a, b in zip((pairs // span).tolist(), (pairs % span).tolist()):
        succ.setdefault(a, []).append(b)
    seen, todo = {init}, [init]
    while todo:
        for b in succ.get(todo.pop(), ()):
            if b not in seen:
                seen.add(b)
                todo.append(b)
    return np.asarray(sorted(seen), np.int64)


def _distances(nxt: np.ndarray, accepting: np.ndarray) -> np.ndarray:
    """Fewest tokens from each state to an accepting one (Bellman-Ford sweeps over the [S, C] table)."""
    dist = np.where(accepting, 0, UNREACHABLE).astype(np.int64)
    allowed = nxt >= 0
    target = np.where(allowed, nxt, 0)
    while True:
        via = np.where(allowed, dist[target] + 1, UNREACHABLE).min(axis=1, initial=UNREACHABLE)
        new = np.minimum(dist, np.minimum(via, UNREACHABLE))
        if np.array_equal(new, dist):
            return dist.astype(np.int32)
        dist = new
