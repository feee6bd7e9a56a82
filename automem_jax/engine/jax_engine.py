"""In-process JAX generation engine: continuous batching over a static-shape, slot-based KV cache.

Why slot-based (one cache row per running sequence, [L, max_batch, max_seq_len, Hkv, D]) rather than paged:
- the Decoder's cache contract is a dense per-row cache, so attention stays a plain masked einsum that XLA runs near
  HBM bandwidth on any backend (GPU, TPU, CPU) with no custom paged-attention kernel;
- every program has static shapes: prefill compiles once per (rows, prompt bucket, window), or packed
  (engine/packed_prefill.py: the prompts of a call end to end as 64-token rows, on a GPU) once per row count, and
  decode once per (window, steps); decode reads only the first `window` cache entries (a power-of-two bucket over
  the live context), which recovers most of what paging saves on short contexts;
- prefix reuse works at slot granularity: a finished slot keeps its KV keyed by its token ids (multi-turn chats that
  append reuse it in place and prefill only the suffix), and a shared head is copied from any slot that holds it
  (a small device-to-device copy program, `steps.copy_rows`); the prefill then reads and writes its slots of the
  full cache in place, writing only the new tokens' KV.
The cost is memory: a slot reserves max_seq_len even for short requests, so size max_seq_len to the workload.

Per loop iteration the host admits queued requests into free slots (packed or bucketed prefill), then
dispatches one fused decode program of `decode_steps` tokens for all slots and reads back only the [B, k] token ids:
one host sync per k tokens. Stop ids and max_new_tokens are enforced on device; stop strings on the host.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import threading
import time
from typing import Any, Callable, Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from automem_jax.engine import grammar as grammar_lib
from automem_jax.engine import packed_prefill, programs, scoring, steps
from automem_jax.engine.base import Completion, EngineError, Request
from automem_jax.engine.prefix_cache import PrefixIndex
from automem_jax.engine.sampling import RowSampling, find_stop_string, mode_for, request_key
from automem_jax.engine.validation import RequestLimits, check_messages, check_request, failed_completion

_NUM_STOP_IDS = 8
OnTokens = Callable[[int, list[int]], bool]  # generate's streaming hook: (request index, new ids) -> keep going


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


@dataclasses.dataclass
class _Seq:
    index: int
    req: Request
    prompt: np.ndarray
    adapter_id: int
    salt: Hashable
    max_new: int
    stop_ids: tuple[int, ...]
    key: np.ndarray
    t0: float
    slot: int = -1
    src: int = -1
    cached: int = 0
    gid: int = grammar_lib.device.NO_GRAMMAR  # constrained decoding (sampling.regex): grammar id, initial state
    gstate: int = grammar_lib.device.FREE
    dev_tokens: list[int] = dataclasses.field(default_factory=list)  # every token the device produced
    out: list[int] = dataclasses.field(default_factory=list)  # tokens reported
    done: bool = False


class JaxEngine:
    """Engine protocol over a models.Decoder. See module docstring for the design."""

    def __init__(self, model: Any, *, tokenizer: Any = None, max_batch: int = 32, max_seq_len: int = 2048,
                 max_loras: int = 0, max_lora_rank: int = 16, lora_alpha: float | None = None,
                 lora_target_modules: Sequence[str] | None = None, decode_steps: int = 8,
                 max_prefill_tokens: int = 1 << 15, max_prefill_window_tokens: int = 1 << 18,
                 min_prefill_bucket: int = 16, min_window: int = 128,
                 dtype: Any = jnp.bfloat16, cache_dtype: Any = jnp.bfloat16, stop_at_eos: bool = True,
                 prefix_block: int = 16, min_reuse_tokens: int = 16, seed: int = 0, kv_cache_cls: Any = None,
                 decode_unroll: int | bool = 1, command_buffer: bool | str | None = None,
                 decode_xla_options: dict[str, Any] | None = None, unstack_layers: bool | None = None,
                 prefill_command_buffer: bool | str = False, prefill_unstacked: bool = False,
                 prefill_xla_options: dict[str, Any] | None = None, packed_prefill: bool | None = None,
                 packed_prefill_block: int = packed_prefill.BLOCK, grammar: grammar_lib.GrammarConfig | None = None):
        if isinstance(model, (tuple, list)):
            model, tokenizer = model
        if isinstance(model, str):
            model, loaded_tok = _load(model, dtype, max_loras, max_lora_rank, lora_alpha, lora_target_modules, seed)
            tokenizer = tokenizer if tokenizer is not None else loaded_tok
        if max_batch < 1 or max_seq_len < 2 or decode_steps < 1 or max_prefill_tokens < 1:
            raise ValueError(f"JaxEngine: need max_batch>=1, max_seq_len>=2, decode_steps>=1, max_prefill_tokens>=1; "
                             f"got {max_batch}, {max_seq_len}, {decode_steps}, {max_prefill_tokens}")
        self.model, self.tokenizer = model, tokenizer
        self.config = model.config
        self.max_batch, self.max_seq_len, self.decode_steps = max_batch, max_seq_len, decode_steps
        # new tokens (rows x prompt bucket) per prefill call: each call carries fixed host work whatever its size
        # (planning, its head-copy program, ~1250 thunk launches), so fewer, larger calls win; on the agent
        # benchmark (H100, 1024 envs) 32k ran 212 calls instead of 676 at 8k: 201 instead of 177 decisions/s
        self.max_loras, self.max_prefill_tokens = max_loras, max_prefill_tokens
        self.max_prefill_window_tokens = max_prefill_window_tokens  # rows x attention window per prefill call
        self.min_reuse_tokens = max(1, min_reuse_tokens)
        eos = tuple(getattr(self.config, "eos_token_ids", ()) or ())
        if tokenizer is not None:
            eos = tuple(dict.fromkeys(eos + tuple(getattr(tokenizer, "eos_token_ids", ()) or ())))
        self.eos_ids = eos if stop_at_eos else ()
        self.prefill_buckets = _pow2_buckets(min(min_prefill_bucket, max_seq_len), max_seq_len)
        self.window_buckets = _pow2_buckets(min(min_window, max_seq_len), max_seq_len)
        if kv_cache_cls is None:
            from automem_jax.models.decoder import KVCache as kv_cache_cls  # noqa: N813
        # kept to rebuild the cache and state if a failed program consumed them (see _release)
        self._fresh_cache = functools.partial(kv_cache_cls.init, self.config, max_batch, max_seq_len, cache_dtype)
        self.cache = self._fresh_cache()
        self.state = steps.DecodeState.init(max_batch, _NUM_STOP_IDS)
        # what every request is checked against before it is placed (engine/validation.py; the server uses it too)
        self.limits = RequestLimits(vocab_size=self.config.vocab_size, max_stop_ids=_NUM_STOP_IDS,
                                    eos_ids=self.eos_ids)
        self._graphdef, self._params = nnx.split(model)
        # Decode runs the layers as straight-line code on per-layer weight buffers (no weight-slice copies per
        # step, see Decoder.hidden) at the price of a second copy of the layer weights; default on GPU only.
        self.unstack_layers = programs.default_unstack(model) if unstack_layers is None else unstack_layers
        self._layer_params = None
        self._refresh_layer_params()
        self.compile_counts: collections.Counter[str] = collections.Counter()
        # Prefill program options (bench.generate --prefill_variants): CUDA graphs of its kernels (no gain measured:
        # the host time of a reuse call was eager device ops and prefix-index work, not launches), and
        # straight-line layers on the decode path's per-layer weights (prefill_unstacked; needs unstack_layers).
        # The layer scan stays the default: on the H100 it gave the better prefix reuse (3.1x vs 2.9x SmolLM2,
        # 4.8x vs 4.2x Qwen) and agent benchmark (171 vs 117 decisions/s straight-line with graphs, 155 vs 105
        # without, session 7) and warms up faster (138 vs 209-259 s of agent warm-up, compiles included).
        self.prefill_unstacked = bool(prefill_unstacked and self.unstack_layers)
        prefill_options = programs.program_options(
            programs.GPU_KERNEL_COMMAND_BUFFER if prefill_command_buffer is True else prefill_command_buffer,
            prefill_xla_options)
        self._prefill = jax.jit(self._counted("prefill", steps.prefill), static_argnums=(0,),
                                static_argnames=("window", "sampling_mode"), donate_argnames=("cache", "state"),
                                compiler_options=prefill_options)
        # Packed prefill (engine/packed_prefill.py): None = whenever the model's prefill reads heads in place
        self.packed_prefill, self.packed_prefill_block = packed_prefill, packed_prefill_block
        self._prefill_packed = jax.jit(self._counted("prefill", steps.prefill_packed), static_argnums=(0,),
                                       static_argnames=("sampling_mode",), donate_argnames=("cache", "state"),
                                       compiler_options=prefill_options)
        # the head copy (2 row writes per copied row) runs before its prefill: graphs for both or neither
        self._copy = jax.jit(self._counted("copy", steps.copy_rows), static_argnames=("window",),
                             donate_argnames=("cache",), compiler_options=prefill_options)
        if command_buffer is None:  # default: CUDA graphs of the straight-line kernels of a step (bench: -4..12%)
            command_buffer = programs.GPU_KERNEL_COMMAND_BUFFER if self.unstack_layers else False
        self.decode_unroll, self.command_buffer = decode_unroll, command_buffer
        self._decode = jax.jit(
            self._counted("decode", functools.partial(steps.decode, unroll=decode_unroll)), static_argnums=(0,),
            static_argnames=("num_steps", "window", "sampling_mode"), donate_argnames=("cache", "state"),
            compiler_options=programs.program_options(command_buffer, decode_xla_options))
        self.index = PrefixIndex(max_batch, prefix_block)
        self._slot_seq: list[_Seq | None] = [None] * max_batch
        self._slot_used = [0] * max_batch  # last-use tick, for LRU eviction of retained prefixes
        self._force_done = np.zeros((max_batch,), bool)
        self._tick = itertools.count(1)
        self._adapters: dict[str, int] = {}
        self._adapter_gen = itertools.count()
        self._adapter_salt: dict[str, Hashable] = {}
        self._rng = np.random.default_rng(seed)
        self.grammar_config = grammar or grammar_lib.GrammarConfig()
        self.grammars: grammar_lib.GrammarBank | None = None  # built at the first request with a regex
        self._lock = threading.Lock()
        self._on_tokens: OnTokens | None = None
        self.stats = collections.Counter()

    # ---------------------------------------------------------------- public API
    def generate(self, requests: Sequence[Request], on_tokens: OnTokens | None = None) -> list[Completion]:
        """on_tokens(i, ids): called (on this thread, under the engine lock: keep it short) with each batch of
        tokens request i newly produced; returning False cancels the request (its slot is freed at the next decode
        call and its Completion is an error "cancelled"). A server streams replies and drops requests of clients
        that went away this way."""
        with self._lock:
            self._on_tokens = on_tokens  # set by every call: a stale one is never used
            t0 = time.perf_counter()
            results: list[Completion | None] = [None] * len(requests)
            chats = self._chat_prompts(requests)
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
                    results[seq.index] = self._completion(seq)
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
            self._params = nnx.state(self.model)
            self._refresh_layer_params()
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
            return scoring.score(self._graphdef, self._params, np.asarray(token_ids, np.int32),
                                 adapter_id=-1 if adapter is None else self._adapters[adapter],
                                 temperature=temperature, top_k=top_k, vocab_size=self.config.vocab_size)

    def flush_cache(self) -> bool:
        """Forget every retained prefix (SGLang's /flush_cache); False, doing nothing, while a generate call runs."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            for slot in range(self.max_batch):
                self.index.clear(slot)
        finally:
            self._lock.release()
        return True

    def close(self) -> None:
        self.cache = None
        self.state = None

    # ---------------------------------------------------------------- request preparation
    def _counted(self, name: str, fn):
        @functools.wraps(fn)
        def traced(*args, **kwargs):
            self.compile_counts[name] += 1  # runs at trace time only: counts compiled programs
            return fn(*args, **kwargs)
        return traced

    def _chat_prompts(self, requests: Sequence[Request]) -> dict[int, Any]:
        """Token ids (or the rendering error) of the chat requests, by request index: one batched encode when the
        tokenizer has `apply_chat_template_batch` (models.tokenizer.Tokenizer), else one request at a time."""
        if self.tokenizer is None:
            return {}
        out: dict[int, Any] = {}
        chat, convs = [], []
        for i, r in enumerate(requests):
            if getattr(r, "messages", None) is None:
                continue
            try:
                check_messages(r.messages)
            except EngineError as e:
                out[i] = e
                continue
            convs.append(list(r.messages))
            chat.append(i)
        batch = getattr(self.tokenizer, "apply_chat_template_batch", None)
        if batch is not None:
            try:
                return out | dict(zip(chat, batch(convs, add_generation_prompt=True)))
            except Exception:  # a template error that fails the whole batch: render one by one to find whose
                logging.warning("engine: batched chat rendering failed; rendering %d requests one by one", len(chat))
        for i, conv in zip(chat, convs):
            try:
                out[i] = list(self.tokenizer.apply_chat_template(conv, add_generation_prompt=True))
            except Exception as e:  # malformed messages (or a template that refuses them): this request fails alone
                out[i] = e
        return out

    def _prepare(self, index: int, req: Request, chat_ids: Any = None) -> _Seq:
        """chat_ids: the request's chat prompt from `_chat_prompts` (token ids, or the exception rendering it)."""
        check_request(req, self.limits)
        sp = req.sampling
        if req.messages is not None:
            if self.tokenizer is None:
                raise EngineError("request has chat messages but the engine has no tokenizer; send prompt_ids")
            if chat_ids is None:
                chat_ids = self._chat_prompts([req]).get(0)
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
        seq = _Seq(index, req, np.asarray(prompt, np.int32), adapter_id, salt, max_new, stop_ids,
                   request_key(seed), time.perf_counter())
        if sp.regex is not None:  # constrained decoding: compiled on first use (engine/grammar)
            try:
                if self.grammars is None:
                    self.grammars = grammar_lib.GrammarBank.for_tokenizer(
                        self.tokenizer, self.eos_ids, self.config.vocab_size, self.grammar_config)
                seq.gid, seq.gstate = self.grammars.request(sp.regex, max_new)
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
        if any(x.is_deleted() for x in jax.tree.leaves((self.cache, self.state)) if isinstance(x, jax.Array)):
            logging.warning("engine: a failed program consumed the KV cache; rebuilding it (prefixes dropped)")
            self.cache, self.state = self._fresh_cache(), steps.DecodeState.init(self.max_batch, _NUM_STOP_IDS)
            for slot in range(self.max_batch):
                self.index.clear(slot)

    # ---------------------------------------------------------------- scheduling
    def _admit(self, pending: collections.deque) -> None:
        """Assign queued requests to free slots (reusing cached prefixes) and prefill them, in dependency groups."""
        t0 = time.perf_counter()
        # free slots, least recently used first, as an ordered set: O(1) membership (match's `prefer`) and removal
        # (a list and a set per request were O(slots) each: ~1M steps for a 1024-request round)
        free = dict.fromkeys(sorted((s for s in range(self.max_batch) if self._slot_seq[s] is None),
                                    key=lambda s: self._slot_used[s]))
        group_of: dict[int, int] = {}
        stable_of: dict[int, int] = {}  # slot prefilled this round -> its leading entries valid before the round
        groups: dict[int, list[_Seq]] = collections.defaultdict(list)
        while pending and free:
            seq = pending.popleft()
            keys = self.index.chain(seq.salt, seq.prompt)  # hashed once, for match and set
            src, n = self.index.match(seq.prompt, seq.salt, prefer=free, keys=keys)
            n = min(n, len(seq.prompt) - 1)
            if n < self.min_reuse_tokens:
                src, n = -1, 0
            if src >= 0 and src in free:
                dst = src
            else:
                dst = next(iter(free))  # least recently used free slot
            del free[dst]
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
        fetched = jax.device_get([f for _, f in firsts])
        # host time to plan and dispatch the prefills vs time blocked on their results (engine telemetry)
        self.stats["prefill_host_s"] += t1 - t0
        self.stats["prefill_wait_s"] += time.perf_counter() - t1
        for (seqs, _), toks in zip(firsts, fetched):
            for seq, tok in zip(seqs, toks):
                self._accept(seq, [int(tok)])

    def _prefill_group(self, seqs: list[_Seq]) -> list[tuple[list[_Seq], jax.Array]]:
        packed = self.packed_prefill
        if packed is None:  # a model without the in-place prefill kernel (or not a Decoder) prefills row by row
            packed = getattr(self.model, "packed_rows_supported", lambda: False)()
        if packed:
            block = self.packed_prefill_block
            calls = packed_prefill.plan([len(s.prompt) - s.cached for s in seqs],
                                        max(1, self.max_prefill_tokens // block), block)
            return [([seqs[i] for i in call], self._run_prefill_packed([seqs[i] for i in call])) for call in calls]
        plans = []
        for seq in seqs:
            # pad tokens may run past max_seq_len: the Decoder then writes a window-aligned span instead
            tb = _bucket(len(seq.prompt) - seq.cached, self.prefill_buckets)
            plans.append((tb, seq.cached, seq))
        plans.sort(key=lambda p: (p[0], p[1]))  # by bucket, then cached length: rows of similar windows together
        out = []
        for tb, group in itertools.groupby(plans, key=lambda p: p[0]):
            cap = max(1, self.max_prefill_tokens // tb)
            chunk: list = []
            for plan in group:
                # A call holds its rows' attention windows (rows x window entries per layer): cap it too, or a
                # call of many short suffixes over long cached heads gathers tens of GB (512 rows x 2048 entries
                # x 30 layers of SmolLM2 K/V = 24 GB, more than an H100 has left beside a 48 GB cache).
                full = len(chunk) == cap or (chunk and _bucket(len(chunk) + 1, _pow2_buckets(1, cap)) *
                                             self._prefill_window(tb, plan[1]) > self.max_prefill_window_tokens)
                if full:
                    out.append(([p[2] for p in chunk], self._run_prefill(tb, chunk)))
                    chunk = []
                chunk.append(plan)
            out.append(([p[2] for p in chunk], self._run_prefill(tb, chunk)))
        return out

    def _prefill_window(self, tb: int, max_start: int) -> int:
        """Cache entries a prefill call of bucket tb reads: its rows' longest start + tb, bucketed."""
        return _bucket(min(max_start + tb, self.max_seq_len), self.window_buckets)

    def _run_prefill(self, tb: int, chunk: list[tuple[int, int, _Seq]]) -> jax.Array:
        n = _bucket(len(chunk), _pow2_buckets(1, max(1, self.max_prefill_tokens // tb)))
        rows = [chunk[min(i, len(chunk) - 1)] for i in range(n)]  # pad with exact duplicates of the last row
        tokens = np.zeros((n, tb), np.int32)
        start, length, src, dst = (np.zeros((n,), np.int32) for _ in range(4))
        for i, (_, st, seq) in enumerate(rows):
            suffix = seq.prompt[st:]
            tokens[i, :len(suffix)] = suffix
            start[i], length[i], src[i], dst[i] = st, len(suffix), seq.src, seq.slot
        window = self._prefill_window(tb, int(start.max()))
        new_rows = self._new_rows([r[2] for r in rows])
        self._copy_heads(src[:len(chunk)], dst[:len(chunk)], start[:len(chunk)])
        self._count_prefill([p[2] for p in chunk], tokens.size)
        t0 = time.perf_counter()
        self.cache, self.state, first = self._prefill(
            self._graphdef, self._params, self.cache, self.state, dst, tokens, start, length, new_rows,
            window=window,
            sampling_mode=_sampling_mode([r[2] for r in rows]),
            layer_params=self._layer_params if self.prefill_unstacked else None,
            grammar=self._grammar_tables([r[2] for r in rows]))
        # host time inside the jitted call: compiles, launching the program's kernels (hundreds per prefill) or
        # waiting for the GPU; the agent benchmark shows it close to the prefill's GPU time
        self.stats["prefill_dispatch_s"] += time.perf_counter() - t0
        return first  # [n] incl. pad rows: the caller zips it with the chunk's seqs (no eager slice op)

    def _run_prefill_packed(self, chunk: list[_Seq]) -> jax.Array:
        blocks = packed_prefill.pack([s.prompt[s.cached:] for s in chunk], [s.cached for s in chunk],
                                     [s.slot for s in chunk], [s.adapter_id for s in chunk], park=self.max_seq_len,
                                     block=self.packed_prefill_block)
        n = blocks.rows.shape[0]  # request arrays padded to the row count too, with duplicates of the last request
        req = [chunk[min(i, len(chunk) - 1)] for i in range(n)]
        start, length, src, dst = (np.asarray(v, np.int32) for v in zip(
            *[(s.cached, len(s.prompt) - s.cached, s.src, s.slot) for s in req]))
        self._copy_heads(src[:len(chunk)], dst[:len(chunk)], start[:len(chunk)])
        self._count_prefill(chunk, blocks.tokens.size)
        t0 = time.perf_counter()
        self.cache, self.state, first = self._prefill_packed(
            self._graphdef, self._params, self.cache, self.state, dst, start, length, blocks, self._new_rows(req),
            sampling_mode=_sampling_mode(req),
            layer_params=self._layer_params if self.prefill_unstacked else None,
            grammar=self._grammar_tables(req))
        self.stats["prefill_dispatch_s"] += time.perf_counter() - t0  # as in _run_prefill
        return first

    def _count_prefill(self, seqs: list[_Seq], padded: int) -> None:
        self.stats["prefill_calls"] += 1
        self.stats["prefill_tokens"] += int(sum(len(s.prompt) - s.cached for s in seqs))
        self.stats["prefill_padded_tokens"] += padded  # tokens the call's layers run on, padding included

    def _copy_heads(self, src: np.ndarray, dst: np.ndarray, cached: np.ndarray) -> None:
        """Copy each shared head (the first cached[i] entries of slot src[i]) into dst[i] where they differ: one
        small program (rows padded to a power of two, window bucketed to the longest head)."""
        copy = np.flatnonzero((src != dst) & (cached > 0))
        if not len(copy):
            return
        m = _bucket(len(copy), _pow2_buckets(1, self.max_batch))
        pick = copy[np.minimum(np.arange(m), len(copy) - 1)]  # pad with exact duplicates of the last pair
        window = _bucket(int(cached[copy].max()), self.window_buckets)
        self.stats["head_copies"] += len(copy)
        self.cache = self._copy(self.cache, src[pick], dst[pick], window=window)

    def _new_rows(self, seqs: list[_Seq]) -> steps.NewRows:
        stop_ids = np.full((len(seqs), _NUM_STOP_IDS), -1, np.int32)
        for i, s in enumerate(seqs):
            stop_ids[i, :len(s.stop_ids)] = s.stop_ids
        sp = [s.req.sampling for s in seqs]
        # numpy leaves: the jitted call transfers them with its arguments (a jnp.asarray per field was an eager
        # device op each, ~0.2 ms apiece on a GPU host)
        sampling = RowSampling(
            temperature=np.asarray([p.temperature for p in sp], np.float32),
            top_k=np.asarray([p.top_k for p in sp], np.int32),
            top_p=np.asarray([p.top_p for p in sp], np.float32),
            key=np.stack([s.key for s in seqs]))
        return steps.NewRows(max_new=np.asarray([s.max_new for s in seqs], np.int32), stop_ids=stop_ids,
                             adapter=np.asarray([s.adapter_id for s in seqs], np.int32), sampling=sampling,
                             gstate=np.asarray([s.gstate for s in seqs], np.int32),
                             gid=np.asarray([s.gid for s in seqs], np.int32))

    def _grammar_tables(self, seqs: Sequence[_Seq | None]) -> grammar_lib.GrammarTables | None:
        """The grammar tables if one of these rows is constrained, else None (the program variant without masks)."""
        if self.grammars is None or not any(s is not None and s.gid for s in seqs):
            return None
        return self.grammars.tables()

    def _decode_round(self) -> None:
        k = self.decode_steps
        extent = 1
        for slot, seq in enumerate(self._slot_seq):
            if seq is not None:  # next write position + k steps
                extent = max(extent, len(seq.prompt) + len(seq.dev_tokens) + k)
            elif not steps.PARK_DONE_ROWS:  # unparked, a free slot writes at its retained length (parked: nothing)
                extent = max(extent, len(self.index.tokens(slot)) + 1)
        window = _bucket(min(extent, self.max_seq_len), self.window_buckets)
        force = self._force_done.copy()  # numpy: transferred with the call (reset below)
        self._force_done[:] = False
        mode = _sampling_mode([s for s in self._slot_seq if s is not None])
        t0 = time.perf_counter()
        out = np.asarray(jax.device_get(self._run_decode(force, k, window, mode)))
        t1 = time.perf_counter()
        self.stats["decode_calls"] += 1
        self.stats["decode_s"] += t1 - t0  # dispatch + device time of the fused decode call (engine telemetry)
        for slot in range(self.max_batch):
            seq = self._slot_seq[slot]
            if seq is not None:
                row = out[slot]
                self._accept(seq, [int(t) for t in row[row >= 0]])
        self.stats["accept_s"] += time.perf_counter() - t1  # host: stop ids / strings, finishing rows

    def _run_decode(self, force: jax.Array, num_steps: int, window: int, sampling_mode: str = "auto") -> jax.Array:
        """One fused decode call over all slots (updates cache and state); tokens [B, num_steps]."""
        self.cache, self.state, out = self._decode(self._graphdef, self._params, self.cache, self.state, force,
                                                   num_steps=num_steps, window=window, sampling_mode=sampling_mode,
                                                   layer_params=self._layer_params,
                                                   grammar=self._grammar_tables(self._slot_seq))
        return out

    def _refresh_layer_params(self) -> None:
        from automem_jax.models.decoder import Decoder, unstack_layers
        self._layer_params = None  # drop the old copy before making the new one
        if self.unstack_layers and isinstance(self.model, Decoder):
            self._layer_params = unstack_layers(self.model)

    def _accept(self, seq: _Seq, toks: list[int]) -> None:
        """Record tokens the device produced for `seq`; finish it on stop id, length, stop string or when the
        generate call's on_tokens hook cancels it."""
        seq.dev_tokens += toks
        if seq.done:
            return
        reported = len(seq.out)
        stop_set = set(seq.stop_ids)
        reason = None
        for t in toks:
            seq.out.append(t)
            if t in stop_set:
                reason = ("stop", t)
                break
            if len(seq.out) >= seq.max_new:
                reason = ("length", None)
                break
        stops = seq.req.sampling.stop
        if stops and self.tokenizer is not None:
            ids = seq.out[:-1] if reason and reason[0] == "stop" else seq.out
            text = self._decode_text(ids)
            idx = find_stop_string(text, tuple(stops))
            if idx >= 0:
                matched = next(s for s in stops if text.startswith(s, idx))
                seq.out = self._trim_to_stop(ids, idx + len(matched))
                reason = ("stop_str", matched)
        if self._on_tokens is not None and not self._notify(seq, seq.out[reported:]) and reason is None:
            reason = ("abort", "cancelled by the caller")
        if reason is not None:
            self._finish(seq, reason)

    def _notify(self, seq: _Seq, new: list[int]) -> bool:
        try:
            return self._on_tokens(seq.index, new) is not False
        except Exception:  # a broken hook cancels its request, never the batch
            logging.exception("engine: on_tokens hook failed; cancelling request %d", seq.index)
            return False

    def _decode_text(self, ids: list[int]) -> str:
        try:  # SGLang's default: special tokens are not part of the text
            return self.tokenizer.decode(ids, skip_special_tokens=True)
        except TypeError:
            return self.tokenizer.decode(ids)

    def _trim_to_stop(self, ids: list[int], end: int) -> list[int]:
        """Shortest prefix of ids whose decoded text reaches `end` chars (the token completing the stop string)."""
        lo, hi = 1, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(self._decode_text(ids[:mid])) >= end:
                hi = mid
            else:
                lo = mid + 1
        return ids[:hi]

    def _finish(self, seq: _Seq, reason: tuple[str, Any]) -> None:
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

    def _completion(self, seq: _Seq) -> Completion:
        kind, matched = seq.reason
        ids = list(seq.out)
        if kind == "abort":
            return Completion(text="", token_ids=ids, finish_reason="error", error=f"request {matched}",
                              prompt_tokens=len(seq.prompt), completion_tokens=len(ids), cached_tokens=seq.cached,
                              rid=seq.req.rid, meta={"cancelled": True})
        text_ids = ids[:-1] if kind == "stop" else ids
        text = self._decode_text(text_ids) if self.tokenizer is not None else ""
        if kind == "stop_str":
            idx = find_stop_string(text, (matched,))
            text = text[:idx] if idx >= 0 else text
        return Completion(text=text, token_ids=ids, finish_reason="length" if kind == "length" else "stop",
                          prompt_tokens=len(seq.prompt), completion_tokens=len(ids), cached_tokens=seq.cached,
                          rid=seq.req.rid, meta={"matched_stop": matched, "e2e_latency": seq.latency,
                                                 "adapter": seq.req.adapter})


def _sampling_mode(seqs: Sequence[_Seq]) -> str:
    """Static sampling mode for a program over these live rows (sampling.mode_for): at most 3 programs per shape."""
    sp = [s.req.sampling for s in seqs]
    return mode_for(np.asarray([p.temperature for p in sp], np.float32), np.asarray([p.top_k for p in sp]),
                    np.asarray([p.top_p for p in sp], np.float32))


def _load(path: str, dtype, max_loras, max_lora_rank, lora_alpha, target_modules, seed):
    from pathlib import Path

    from automem_jax.models import loader
    lora = None
    if max_loras > 0:
        from automem_jax.models.lora import LoRAConfig
        kw = {} if target_modules is None else {"target_modules": tuple(target_modules)}
        lora = LoRAConfig(rank=max_lora_rank, alpha=lora_alpha or 2.0 * max_lora_rank, num_slots=max_loras, **kw)
    model = loader.load_model(path, dtype=dtype, lora=lora, seed=seed)
    tokenizer = None
    if Path(path).is_dir():
        from automem_jax.models.tokenizer import load_tokenizer
        tokenizer = load_tokenizer(path)
    else:
        logging.info("engine: %s is a preset (random weights, no tokenizer); send prompt_ids", path)
    return model, tokenizer
