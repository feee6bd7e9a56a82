"""In-process JAX generation engine: continuous batching over a static-shape, slot-based KV cache.

This module is the scheduler (requests, slots, admission, prefix index, stops); engine/runner.py holds the model,
the cache and the compiled programs, over one device or a mesh of this host's devices.

Why slot-based (one cache row per running sequence, [L, max_batch, max_seq_len, Hkv, D]) rather than paged:
- the model's cache contract is a dense per-row cache, so attention stays a plain masked einsum that XLA runs near
  HBM bandwidth on any backend (GPU, TPU, CPU) with no custom paged-attention kernel;
- every program has static shapes: prefill compiles once per (rows, prompt bucket, window), or packed
  (engine/packed_prefill.py: the prompts of a call end to end as 64-token rows, on a GPU) once per row count, and
  decode once per (window, steps); decode reads only the first `window` cache entries (a power-of-two bucket over
  the live context), which recovers most of what paging saves on short contexts;
- prefix reuse works at slot granularity: a finished slot keeps its KV keyed by its token ids (multi-turn chats that
  append reuse it in place and prefill only the suffix), and a shared head is copied from any slot of the same
  replica that holds it (a small device-to-device copy program, `steps.copy_rows`); the prefill then reads and
  writes its slots of the full cache in place, writing only the new tokens' KV.
The cost is memory: a slot reserves max_seq_len even for short requests, so size max_seq_len to the workload.

Per loop iteration the host admits queued requests into free slots (packed or bucketed prefill), then
dispatches one fused decode program of `decode_steps` tokens for all slots and reads back only the [B, k] token ids:
one host sync per k tokens. Stop ids and max_new_tokens are enforced on device; stop strings on the host.

Data parallelism (EngineConfig.mesh.data = R): slot s belongs to replica s // (max_batch / R). A request goes to
the replica whose free slot holds its longest cached head (the head stays on its replica), else to the replica with
the most free slots; every prefill and copy call carries the same number of rows per replica (runner.py).
"""
from __future__ import annotations

import collections
import itertools
import threading
import time
import warnings
from typing import Any, Callable, Hashable, Sequence

import jax
import numpy as np
from absl import logging

from automem_jax.engine import grammar as grammar_lib
from automem_jax.engine import packed_prefill, scoring, steps
from automem_jax.engine import requests as requests_lib
from automem_jax.engine.base import Completion, EngineError, Request
from automem_jax.engine.config import EngineConfig
from automem_jax.engine.prefix_cache import PrefixIndex
from automem_jax.engine.replicas import FreeSlots, block_rows, pad_blocks
from automem_jax.engine.runner import NUM_STOP_IDS, ModelRunner, load, make_mesh
from automem_jax.engine.requests import Seq
from automem_jax.engine.sampling import request_key
from automem_jax.engine.validation import RequestLimits, check_request, failed_completion

OnTokens = Callable[[int, list[int]], bool]  # generate's streaming hook: (request index, new ids) -> keep going

# JaxEngine options of earlier versions that measurement rejected (docs/PERFORMANCE.md): accepted, warned, ignored
_REMOVED_OPTIONS = ("kv_cache_cls", "decode_unroll", "command_buffer", "decode_xla_options",
                    "prefill_command_buffer", "prefill_unstacked", "prefill_xla_options")


def _pow2_buckets(lo: int, hi: int) -> list[int]:
    out, b = [], lo
    while b < hi:
        out.append(b)
        b *= 2
    return out + [hi]


def _bucket(value: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if value <= b:
            return b
    raise ValueError(f"{value} exceeds the largest bucket {buckets[-1]}")


class JaxEngine:
    """Engine protocol over a models.Decoder. See module docstring for the design."""

    def __init__(self, model: Any, *, tokenizer: Any = None, config: EngineConfig | None = None,
                 grammar: grammar_lib.GrammarConfig | None = None, **options: Any):
        """model: a models.Decoder, (Decoder, tokenizer), or an HF directory / preset name (loaded onto the engine's
        mesh, with config.max_loras LoRA slots). config: EngineConfig (defaults); `options`: EngineConfig fields
        that replace the config's (max_batch=..., mesh={"data": 4}, ...). grammar: limits of constrained decoding
        (engine/grammar)."""
        removed = [name for name in _REMOVED_OPTIONS if options.pop(name, None) is not None]
        if removed:
            warnings.warn(f"JaxEngine options {removed} are gone (measured without gain, docs/PERFORMANCE.md); "
                          "ignored", DeprecationWarning, stacklevel=2)
        config = EngineConfig.of(config, **options)
        if isinstance(model, (tuple, list)):
            model, tokenizer = model
        mesh = make_mesh(config)
        if isinstance(model, str):
            model, loaded_tok = load(model, config, mesh)
            tokenizer = tokenizer if tokenizer is not None else loaded_tok
        self.engine_config = config
        self.model, self.tokenizer = model, tokenizer
        self.config = model.config
        self.runner = ModelRunner(model, config, mesh)
        max_batch, max_seq_len = config.max_batch, config.max_seq_len
        self.max_batch, self.max_seq_len, self.decode_steps = max_batch, max_seq_len, config.decode_steps
        lora = getattr(model, "lora_config", None)  # a model passed in brings its own LoRA slots (or none)
        self.max_loras = min(config.max_loras, lora.num_slots if lora is not None else 0)
        self.max_prefill_tokens = config.max_prefill_tokens
        self.max_prefill_window_tokens = config.max_prefill_window_tokens
        self.min_reuse_tokens = max(1, config.min_reuse_tokens)
        self.packed_prefill_block = config.packed_prefill_block
        eos = tuple(getattr(self.config, "eos_token_ids", ()) or ())
        if tokenizer is not None:
            eos = tuple(dict.fromkeys(eos + tuple(getattr(tokenizer, "eos_token_ids", ()) or ())))
        self.eos_ids = eos if config.stop_at_eos else ()
        # what every request is checked against before it is placed (engine/validation.py; the server uses it too)
        self.limits = RequestLimits(vocab_size=self.config.vocab_size, max_stop_ids=NUM_STOP_IDS,
                                    eos_ids=self.eos_ids)
        self.prefill_buckets = _pow2_buckets(min(config.min_prefill_bucket, max_seq_len), max_seq_len)
        self.window_buckets = _pow2_buckets(min(config.min_window, max_seq_len), max_seq_len)
        self.replicas, self.slots_per_replica = self.runner.replicas, self.runner.slots_per_replica
        self.index = PrefixIndex(max_batch, config.prefix_block)
        self._slot_seq: list[Seq | None] = [None] * max_batch
        self._slot_used = [0] * max_batch  # last-use tick, for LRU eviction of retained prefixes
        self._force_done = np.zeros((max_batch,), bool)
        self._tick = itertools.count(1)
        self._adapters: dict[str, int] = {}
        self._adapter_gen = itertools.count()
        self._adapter_salt: dict[str, Hashable] = {}
        self._rng = np.random.default_rng(config.seed)
        self._lock = threading.Lock()
        self._on_tokens: OnTokens | None = None
        self.grammar_config = grammar or grammar_lib.GrammarConfig()
        self.grammars: grammar_lib.GrammarBank | None = None  # built at the first request with a regex
        self._grammar_lock = threading.Lock()
        self.stats = collections.Counter()

    # ---------------------------------------------------------------- public API
    def generate(self, requests: Sequence[Request], on_tokens: OnTokens | None = None) -> list[Completion]:
        """on_tokens(i, ids): called (on this thread, under the engine lock: keep it short) with each batch of
        tokens request i newly produced; returning False cancels the request (its slot is freed at the next decode
        call and its Completion is an error "cancelled"). A server streams replies and drops requests of clients
        that went away this way."""
        with self._lock:
            self._on_tokens = on_tokens  # set by every call: a stale one is never used
            self.runner.ensure_cache()
            t0 = time.perf_counter()
            results: list[Completion | None] = [None] * len(requests)
            chats = requests_lib.chat_prompts(self.tokenizer, requests)
            if self.grammars is not None:
                self.grammars.begin_call()
            seqs = []
            for i, req in enumerate(requests):
                try:
                    seqs.append(self._prepare(i, req, chats.get(i)))
                except Exception as e:  # a bad request fails alone, before anything is placed
                    results[i] = failed_completion(req, e)
            self.stats["prepare_s"] += time.perf_counter() - t0
            pending = collections.deque(seqs)
            try:
                while pending or any(s is not None for s in self._slot_seq):
                    if pending and any(s is None for s in self._slot_seq):
                        self._admit(pending)
                    if any(s is not None for s in self._slot_seq):
                        self._decode_round()
            except BaseException:
                self._release()
                raise
            t1 = time.perf_counter()
            for seq in seqs:
                try:
                    results[seq.index] = requests_lib.completion(seq, self.tokenizer)
                except Exception as e:  # e.g. the tokenizer cannot decode its tokens: that request fails alone
                    results[seq.index] = failed_completion(seq.req, e)
            self.stats["complete_s"] += time.perf_counter() - t1
            self.stats["generate_s"] += time.perf_counter() - t0
            return results  # type: ignore[return-value]

    def load_adapter(self, name: str, path: str) -> None:
        from automem_jax.models import lora as lora_lib
        with self._lock:
            if name in self._adapters:
                raise EngineError(f"adapter {name!r} is already loaded; unload it first or use a fresh name")
            used = set(self._adapters.values())
            free = [s for s in range(self.max_loras) if s not in used]
            if not free:
                raise EngineError(f"cannot load adapter {name!r}: all max_loras={self.max_loras} slots are in use "
                                  f"({sorted(self._adapters)}); unload one or raise max_loras")
            try:
                lora_lib.import_peft(self.model, path, slot=free[0])
            except (OSError, ValueError, KeyError) as e:
                raise EngineError(f"cannot load adapter {name!r} from {path}: {e}") from e
            self.runner.refresh_params()
            self._adapters[name] = free[0]
            self._adapter_salt[name] = ("adapter", name, next(self._adapter_gen))

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            if name not in self._adapters:
                raise EngineError(f"adapter {name!r} is not loaded (loaded: {sorted(self._adapters)})")
            del self._adapters[name]
            del self._adapter_salt[name]  # its prefix-cache entries can never match again

    @property
    def adapters(self) -> dict[str, int]:
        return dict(self._adapters)

    def score(self, token_ids: Sequence[int], *, adapter: str | None = None, temperature: float = 1.0,
              top_k: int = 0) -> scoring.TokenLogprobs:
        """Log-probabilities of positions 1.. of `token_ids` (a prompt and its reply) under the model (or a loaded
        adapter) at `temperature`, and the top_k alternatives at each (engine/scoring.py)."""
        with self._lock:
            if adapter is not None and adapter not in self._adapters:
                raise EngineError(f"unknown adapter {adapter!r} (loaded: {sorted(self._adapters)})")
            return scoring.score(self.runner.graphdef, self.runner.params, np.asarray(token_ids, np.int32),
                                 adapter_id=-1 if adapter is None else self._adapters[adapter],
                                 temperature=temperature, top_k=top_k, vocab_size=self.config.vocab_size)

    def prepare_grammar(self, regex: str) -> None:
        """Compile `regex` for this engine's tokenizer on the caller's thread, without the engine lock: the server
        calls it before submitting, so a slow grammar delays only its own request. GrammarError if refused."""
        self._grammar_bank().precompile(regex)

    def _grammar_bank(self) -> grammar_lib.GrammarBank:
        with self._grammar_lock:  # built at the first regex, from the engine thread or a server's request thread
            if self.grammars is None:
                self.grammars = grammar_lib.GrammarBank.for_tokenizer(
                    self.tokenizer, self.eos_ids, self.config.vocab_size, self.grammar_config)
            return self.grammars

    def flush_cache(self) -> bool:
        """Forget every retained prefix (SGLang's /flush_cache); False, doing nothing, while a generate call runs."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._forget_prefixes()
        finally:
            self._lock.release()
        return True

    def release_memory(self) -> None:
        """Drop the KV cache and decode state (max_batch x max_seq_len rows: 48 GB for crafter_gpu) until the next
        call needs them, forgetting every retained prefix: a LoRA trainer in the same process needs that memory."""
        with self._lock:
            self._forget_prefixes()
            self.runner.close()

    def _forget_prefixes(self) -> None:
        for slot in range(self.max_batch):
            self.index.clear(slot)

    def close(self) -> None:
        self.runner.close()

    @property
    def compile_counts(self) -> collections.Counter:
        """Programs compiled so far, by kind (prefill, copy, decode)."""
        return self.runner.compile_counts

    # ------------------------------------------------------- stepping by hand (benchmarks: decode alone, timed)
    def admit(self, requests: Sequence[Request]) -> None:
        """Prepare and prefill `requests` into free slots without decoding them (EngineError if one fails or if
        there are more than free slots); `runner.decode` then steps them, `generate` finishes them."""
        with self._lock:
            self.runner.ensure_cache()
            chats = requests_lib.chat_prompts(self.tokenizer, requests)
            seqs = collections.deque(self._prepare(i, r, chats.get(i)) for i, r in enumerate(requests))
            if len(seqs) > sum(s is None for s in self._slot_seq):
                raise EngineError(f"admit: {len(seqs)} requests for {sum(s is None for s in self._slot_seq)} free "
                                  "slots")
            self._admit(seqs)

    def window_for(self, extent: int) -> int:
        """The decode attention window (a bucket) that covers cache entries [0, extent)."""
        return _bucket(min(extent, self.max_seq_len), self.window_buckets)

    def live_sampling_mode(self) -> str:
        """The static sampling mode a decode round over the live rows uses."""
        return requests_lib.sampling_mode([s for s in self._slot_seq if s is not None])

    # ---------------------------------------------------------------- request preparation

    def _prepare(self, index: int, req: Request, chat_ids: Any = None) -> Seq:
        """chat_ids: the request's chat prompt from `requests.chat_prompts` (token ids, or the exception rendering
        it)."""
        check_request(req, self.limits)
        sp = req.sampling
        if req.messages is not None:
            if self.tokenizer is None:
                raise EngineError("request has chat messages but the engine has no tokenizer; send prompt_ids")
            if chat_ids is None:
                chat_ids = requests_lib.chat_prompts(self.tokenizer, [req]).get(0)
            if isinstance(chat_ids, Exception):
                raise EngineError(f"request.messages: {chat_ids}")
            prompt = chat_ids
        else:
            prompt = req.prompt_ids
        try:  # one C-level conversion (not a Python int() per token): this runs for every request
            prompt = np.asarray(prompt, np.int64)
        except (TypeError, ValueError, OverflowError) as e:
            raise EngineError(f"request.prompt_ids must be a flat list of token ids: {e}") from e
        if prompt.ndim != 1 or not prompt.size:
            raise EngineError("request.prompt_ids must be a non-empty flat list of token ids; send at least one token")
        vocab = self.config.vocab_size
        if prompt.min() < 0 or prompt.max() >= vocab:
            raise EngineError(f"request.prompt_ids has ids outside [0, vocab_size={vocab})")
        if len(prompt) > self.max_seq_len - 1:
            raise EngineError(f"prompt has {len(prompt)} tokens but max_seq_len is {self.max_seq_len} (prompt + 1 "
                              "new token must fit); shorten the prompt or start the engine with a larger max_seq_len")
        if req.adapter is None:
            adapter_id, salt = -1, ("base",)
        elif req.adapter not in self._adapters:
            raise EngineError(f"unknown adapter {req.adapter!r} (loaded: {sorted(self._adapters)}); "
                              "load it with load_adapter(name, path) first")
        else:
            adapter_id, salt = self._adapters[req.adapter], self._adapter_salt[req.adapter]
        stop_ids = tuple(dict.fromkeys(tuple(int(t) for t in sp.stop_token_ids) + self.eos_ids))
        seed = sp.seed if sp.seed is not None else int(self._rng.integers(0, 2**63))
        max_new = min(sp.max_new_tokens, self.max_seq_len - len(prompt))
        seq = Seq(index, req, np.asarray(prompt, np.int32), adapter_id, salt, max_new, stop_ids,
                  request_key(seed), time.perf_counter())
        if sp.regex is not None:  # constrained decoding: compiled on first use (engine/grammar)
            try:
                seq.gid, seq.gstate = self._grammar_bank().request(sp.regex, max_new)
            except grammar_lib.GrammarError as e:
                raise EngineError(f"request {req.rid or index}: sampling.regex refused: {e}") from None
        return seq

    def _release(self) -> None:
        """Undo a generate call that raised: free its slots (every live slot is the call's: calls hold the lock
        and run until their slots are free) and their prefix-index entries (their KV may be half written), and stop
        their device rows at the next decode. A cache or state that a failed program consumed (a program that fails
        while running has deleted its donated inputs) is rebuilt, dropping every retained prefix."""
        for slot, seq in enumerate(self._slot_seq):
            if seq is not None:
                self._slot_seq[slot] = None
                self.index.clear(slot)
        self._force_done[:] = True  # harmless on done rows; a row admitted later clears its flag
        if self.runner.rebuild_if_consumed():
            logging.warning("engine: a failed program consumed the KV cache; rebuilt it (prefixes dropped)")
            self._forget_prefixes()

    # ---------------------------------------------------------------- scheduling
    def _admit(self, pending: collections.deque) -> None:
        """Assign queued requests to free slots (reusing cached prefixes) and prefill them, in dependency groups."""
        t0 = time.perf_counter()
        free = FreeSlots(sorted((s for s in range(self.max_batch) if self._slot_seq[s] is None),
                                 key=lambda s: self._slot_used[s]), self.replicas, self.slots_per_replica)
        group_of: dict[int, int] = {}
        stable_of: dict[int, int] = {}  # slot prefilled this round -> its leading entries valid before the round
        groups: dict[int, list[Seq]] = collections.defaultdict(list)
        while pending and free:
            seq = pending.popleft()
            keys = self.index.chain(seq.salt, seq.prompt)  # hashed once, for match and set
            src, n = self.index.match(seq.prompt, seq.salt, prefer=free, keys=keys)
            n = min(n, len(seq.prompt) - 1)
            if n < self.min_reuse_tokens:
                src, n = -1, 0
            if src >= 0 and src in free:
                dst = src
            else:  # a head is copied within its replica only
                dst = free.first(self._replica(src)) if src >= 0 else -1
                if dst < 0:
                    src, n = -1, 0
                    dst = free.first()
            free.remove(dst)
            src = dst if src < 0 else src
            # A head copied from a slot prefilled in this same round waits for that prefill, unless the tokens it
            # needs were already in that slot before the round (a slot reused in place keeps its first `cached`
            # entries: reading them before or after its prefill gives the same KV).
            group = 0
            if src != dst and src in group_of and n > stable_of[src]:
                group = group_of[src] + 1
            group_of[dst] = group
            stable_of[dst] = n if src == dst else 0
            seq.slot, seq.src, seq.cached = dst, src, n
            self.index.set(dst, seq.prompt, seq.salt, keys=keys)
            self._slot_seq[dst] = seq
            self._slot_used[dst] = next(self._tick)
            self._force_done[dst] = False
            groups[group].append(seq)
        firsts = []
        for g in sorted(groups):
            firsts += self._prefill_group(groups[g])
        t1 = time.perf_counter()
        fetched = jax.device_get([f for *_, f in firsts])
        # host time to plan and dispatch the prefills vs time blocked on their results (engine telemetry)
        self.stats["prefill_host_s"] += t1 - t0
        self.stats["prefill_wait_s"] += time.perf_counter() - t1
        for (seqs, rows, _), toks in zip(firsts, fetched):
            for seq, i in zip(seqs, rows):
                self._accept(seq, [int(toks[i])])

    def _replica(self, slot: int) -> int:
        return slot // self.slots_per_replica

    def _by_replica(self, items: Sequence, slot_of=lambda s: s.slot) -> list[list]:
        out: list[list] = [[] for _ in range(self.replicas)]
        for item in items:
            out[self._replica(slot_of(item))].append(item)
        return out

    def _prefill_group(self, seqs: list[Seq]) -> list[tuple[list[Seq], list[int], jax.Array]]:
        """Prefill calls for one dependency group: (the call's seqs, each one's row in its output, first tokens)."""
        if self.runner.packed_prefill:
            block = self.packed_prefill_block
            by_replica = self._by_replica(seqs)
            plans = [packed_prefill.plan([len(s.prompt) - s.cached for s in part],
                                         max(1, self.max_prefill_tokens // block), block) for part in by_replica]
            return [self._run_prefill_packed([[part[i] for i in plan[k]] if k < len(plan) else []
                                              for part, plan in zip(by_replica, plans)])
                    for k in range(max(len(plan) for plan in plans))]
        plans = []
        for seq in seqs:
            # pad tokens may run past max_seq_len: the prefill then writes a window-aligned span instead
            tb = _bucket(len(seq.prompt) - seq.cached, self.prefill_buckets)
            plans.append((tb, seq.cached, seq))
        plans.sort(key=lambda p: (p[0], p[1]))  # by bucket, then cached length: rows of similar windows together
        out = []
        for tb, group in itertools.groupby(plans, key=lambda p: p[0]):
            cap = max(1, self.max_prefill_tokens // tb)
            chunk: list = []
            rows: collections.Counter[int] = collections.Counter()  # the chunk's rows per replica
            for plan in group:
                # A call holds its rows' attention windows (rows x window entries per layer): cap it too, or a
                # call of many short suffixes over long cached heads gathers tens of GB (512 rows x 2048 entries
                # x 30 layers of SmolLM2 K/V = 24 GB, more than an H100 has left beside a 48 GB cache).
                r = self._replica(plan[2].slot)
                per_replica = max(rows[r] + 1, max(rows.values(), default=0))
                full = rows[r] == cap or (chunk and _bucket(per_replica, _pow2_buckets(1, cap)) *
                                          self._prefill_window(tb, plan[1]) > self.max_prefill_window_tokens)
                if full:
                    out.append(self._run_prefill(tb, chunk))
                    chunk, rows = [], collections.Counter()
                chunk.append(plan)
                rows[r] += 1
            out.append(self._run_prefill(tb, chunk))
        return out

    def _prefill_window(self, tb: int, max_start: int) -> int:
        """Cache entries a prefill call of bucket tb reads: its rows' longest start + tb, bucketed."""
        return _bucket(min(max_start + tb, self.max_seq_len), self.window_buckets)

    def _run_prefill(self, tb: int, chunk: list[tuple[int, int, Seq]]):
        by_replica = self._by_replica(chunk, lambda p: p[2].slot)
        n = _bucket(max(map(len, by_replica)), _pow2_buckets(1, max(1, self.max_prefill_tokens // tb)))
        rows = pad_blocks(by_replica, n)  # per replica: duplicates of its last row, or null rows (None)
        seqs = [p[2] for part in by_replica for p in part]
        tokens = np.zeros((len(rows), tb), np.int32)
        start = np.full((len(rows),), self.max_seq_len, np.int32)  # null rows: past the cache, they write nothing
        length, dst = np.ones((len(rows),), np.int32), np.full((len(rows),), -1, np.int32)
        for i, plan in enumerate(rows):
            if plan is not None:
                _, st, seq = plan
                suffix = seq.prompt[st:]
                tokens[i, :len(suffix)] = suffix
                start[i], length[i], dst[i] = st, len(suffix), seq.slot
        window = self._prefill_window(tb, max(p[1] for p in chunk))
        new_rows = self._new_rows([None if p is None else p[2] for p in rows])
        self._copy_heads(seqs)
        self._count_prefill(seqs, tokens.size)
        t0 = time.perf_counter()
        first = self.runner.prefill(dst, tokens, start, length, new_rows, window=window,
                                    sampling_mode=requests_lib.sampling_mode(seqs),
                                    grammar=self._grammar_tables(seqs))
        # host time inside the jitted call: compiles, launching the program's kernels (hundreds per prefill) or
        # waiting for the GPU; the agent benchmark shows it close to the prefill's GPU time
        self.stats["prefill_dispatch_s"] += time.perf_counter() - t0
        return seqs, block_rows(by_replica, n), first  # first: [rows] incl. pad rows (no eager slice op)

    def _run_prefill_packed(self, chunk: list[list[Seq]]):
        """One packed call; chunk: the requests of each replica (the same row count for all, `pack(rows=...)`)."""
        block = self.packed_prefill_block
        need = [sum(packed_prefill.rows_needed(len(s.prompt) - s.cached, block) for s in part) for part in chunk]
        n = max(packed_prefill.rows_bucket(x) for x in need if x)
        parts = [packed_prefill.pack([s.prompt[s.cached:] for s in part], [s.cached for s in part],
                                     [s.slot for s in part], [s.adapter_id for s in part], park=self.max_seq_len,
                                     block=block, rows=n) if part else packed_prefill.idle(n, self.max_seq_len, block)
                 for part in chunk]
        blocks = packed_prefill.concat(parts)
        req = pad_blocks(chunk, n)  # request arrays padded to the row count too, as the rows are
        start, length, dst = (np.asarray(v, np.int32) for v in zip(
            *[(0, 1, -1) if s is None else (s.cached, len(s.prompt) - s.cached, s.slot) for s in req]))
        seqs = [s for part in chunk for s in part]
        self._copy_heads(seqs)
        self._count_prefill(seqs, blocks.tokens.size)
        t0 = time.perf_counter()
        first = self.runner.prefill_packed(dst, start, length, blocks, self._new_rows(req),
                                           sampling_mode=requests_lib.sampling_mode(seqs),
                                           grammar=self._grammar_tables(seqs))
        self.stats["prefill_dispatch_s"] += time.perf_counter() - t0  # as in _run_prefill
        return seqs, block_rows(chunk, n), first

    def _count_prefill(self, seqs: list[Seq], padded: int) -> None:
        self.stats["prefill_calls"] += 1
        self.stats["prefill_tokens"] += int(sum(len(s.prompt) - s.cached for s in seqs))
        self.stats["prefill_padded_tokens"] += padded  # tokens the call's layers run on, padding included

    def _copy_heads(self, seqs: list[Seq]) -> None:
        """Copy each shared head (the first `cached` entries of slot src) into the request's slot where they
        differ: one small program (pairs per replica padded to a power of two, window bucketed to the longest
        head)."""
        pairs = [(s.src, s.slot, s.cached) for s in seqs if s.src != s.slot and s.cached > 0]
        if not pairs:
            return
        by_replica = self._by_replica(pairs, lambda p: p[1])
        m = _bucket(max(map(len, by_replica)), _pow2_buckets(1, self.slots_per_replica))
        picked = [(-1, -1, 0) if p is None else p for p in pad_blocks(by_replica, m)]
        window = _bucket(max(p[2] for p in pairs), self.window_buckets)
        self.stats["head_copies"] += len(pairs)
        self.runner.copy_rows(np.asarray([p[0] for p in picked], np.int32),
                              np.asarray([p[1] for p in picked], np.int32), window=window)

    def _new_rows(self, seqs: list[Seq | None]) -> steps.NewRows:
        """The device parameters of prefilled rows (None: a null row, NewRows.idle's)."""
        rows = steps.NewRows.idle(len(seqs), NUM_STOP_IDS)
        live = [i for i, s in enumerate(seqs) if s is not None]
        if not live:
            return rows
        got = [seqs[i] for i in live]
        for i, s in zip(live, got):
            rows.stop_ids[i, :len(s.stop_ids)] = s.stop_ids
        rows.max_new[live] = [s.max_new for s in got]
        rows.adapter[live] = [s.adapter_id for s in got]
        rows.gstate[live] = [s.gstate for s in got]
        rows.gid[live] = [s.gid for s in got]
        sampling = rows.sampling
        sampling.temperature[live] = [s.req.sampling.temperature for s in got]
        sampling.top_k[live] = [s.req.sampling.top_k for s in got]
        sampling.top_p[live] = [s.req.sampling.top_p for s in got]
        sampling.key[live] = [s.key for s in got]
        return rows

    def _grammar_tables(self, seqs: Sequence[Seq | None]) -> grammar_lib.GrammarTables | None:
        """The grammar tables if one of these rows is constrained, else None (the program variant without masks)."""
        if self.grammars is None or not any(s is not None and s.gid for s in seqs):
            return None
        return self.grammars.tables()

    def _decode_round(self) -> None:
        k = self.decode_steps
        extent = 1
        for seq in self._slot_seq:
            if seq is not None:  # next write position + k steps (done rows and free slots are parked)
                extent = max(extent, len(seq.prompt) + len(seq.dev_tokens) + k)
        window = self.window_for(extent)
        rows = self._decode_rows()
        slots = np.arange(self.max_batch) if rows is None else rows
        # numpy: transferred with the call; free slots among the rows are finished first (a stop string's row)
        force = self._force_done[slots] | np.asarray([self._slot_seq[s] is None for s in slots])
        self._force_done[slots] = False
        mode = self.live_sampling_mode()
        t0 = time.perf_counter()
        grammar = self._grammar_tables(self._slot_seq)
        out = np.asarray(jax.device_get(self.runner.decode(force, num_steps=k, window=window, sampling_mode=mode,
                                                           rows=rows, grammar=grammar)))
        t1 = time.perf_counter()
        self.stats["decode_calls"] += 1
        self.stats["decode_rows"] += len(slots)
        self.stats["decode_s"] += t1 - t0  # dispatch + device time of the fused decode call (engine telemetry)
        for i, slot in enumerate(slots):
            seq = self._slot_seq[slot]
            if seq is not None:
                row = out[i]
                self._accept(seq, [int(t) for t in row[row >= 0]])
        self.stats["accept_s"] += time.perf_counter() - t1  # host: stop ids / strings, finishing rows

    def _decode_rows(self) -> np.ndarray | None:
        """The slots a decode call steps: None (all) unless the runner steps live rows only; then each replica's
        live slots, padded with its free ones to a power of two (the same count for every replica)."""
        if not self.runner.live_rows:
            return None
        live = self._by_replica([s for s in range(self.max_batch) if self._slot_seq[s] is not None], lambda s: s)
        n = _bucket(max(map(len, live)), _pow2_buckets(1, self.slots_per_replica))
        if n == self.slots_per_replica:
            return None
        rows = []
        for r, part in enumerate(live):
            taken = set(part)
            free = (s for s in range(r * self.slots_per_replica, (r + 1) * self.slots_per_replica) if s not in taken)
            rows += part + list(itertools.islice(free, n - len(part)))
        return np.asarray(rows, np.int32)

    def _accept(self, seq: Seq, toks: list[int]) -> None:
        """Record tokens the device produced for `seq`; finish it on stop id, length, stop string or when the
        generate call's on_tokens hook cancels it."""
        seq.dev_tokens += toks
        if seq.done:
            return
        reported = len(seq.out)
        reason = requests_lib.stop_reason(seq, toks, self.tokenizer)
        if self._on_tokens is not None and not self._notify(seq, seq.out[reported:]) and reason is None:
            reason = ("abort", "cancelled by the caller")
        if reason is not None:
            self._finish(seq, reason)

    def _notify(self, seq: Seq, new: list[int]) -> bool:
        try:
            return self._on_tokens(seq.index, new) is not False
        except Exception:  # a broken hook cancels its request, never the batch
            logging.exception("engine: on_tokens hook failed; cancelling request %d", seq.index)
            return False

    def _finish(self, seq: Seq, reason: tuple[str, Any]) -> None:
        seq.done, seq.reason = True, reason
        seq.latency = time.perf_counter() - seq.t0
        slot = seq.slot
        if reason[0] in ("stop_str", "abort"):
            self._force_done[slot] = True  # the device does not know; stop the row at the next decode call
        # the slot keeps its KV: every token fed so far (the last sampled token was never fed); the index hashes
        # only the blocks past the prompt it already holds for this slot
        self.index.set(slot, np.concatenate([seq.prompt, np.asarray(seq.dev_tokens[:-1], np.int32)]), seq.salt)
        self._slot_seq[slot] = None
        self._slot_used[slot] = next(self._tick)
