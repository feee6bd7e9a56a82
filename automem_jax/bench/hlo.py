"""Reading compiled engine programs: what a call launches (`hlo_thunks`), whether a program copies the KV cache,
and the memory check of the prefill and head-copy programs compiled at the agent benchmark's scale from shapes."""
from __future__ import annotations

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np

from automem_jax.engine.config import EngineConfig
from automem_jax.engine.jax_engine import JaxEngine

# (rows, prompt bucket, window) of the prefill programs the memory check compiles: a reuse call, the agent's
# first-turn prompts, and many short suffixes over long cached heads
PREFILL_MEMORY_SHAPES = ((16, 64, 2048), (8, 1024, 2048), (1, 1024, 1024), (1, 2048, 2048), (4, 2048, 2048),
                         (64, 128, 2048), (128, 16, 2048), (1, 16, 2048))


def check_prefill_memory(model, config: EngineConfig, max_batch: int = 1024, max_seq_len: int = 2048,
                         shapes=PREFILL_MEMORY_SHAPES) -> dict:
    """Compile (not run) the row-per-request prefill programs at the agent benchmark's scale from shapes only: XLA's
    temp memory, every op whose result is a whole cache buffer (in place, that is the one write per k/v; a `copy`
    means XLA duplicated the cache) and the program's thunks (`hlo_thunks`: what one call launches); the same for
    the head-copy program."""
    from automem_jax.engine import steps
    from automem_jax.engine.runner import NUM_STOP_IDS
    from automem_jax.models.kv_cache import KVCache
    cfg = model.config
    kv = jax.ShapeDtypeStruct((cfg.num_layers, max_batch, max_seq_len, cfg.num_kv_heads, cfg.head_dim), jnp.bfloat16)
    cache = KVCache(kv, kv)
    state = jax.eval_shape(lambda: steps.DecodeState.init(max_batch, NUM_STOP_IDS))
    out = {"max_batch": max_batch, "max_seq_len": max_seq_len, "programs": []}
    for rows, tb, window in shapes:
        eng = JaxEngine(model, config=EngineConfig.of(config, max_batch=rows, max_seq_len=tb + 16, stop_at_eos=False))
        try:
            i32 = np.zeros((rows,), np.int32)
            new_rows = steps.NewRows.idle(rows, NUM_STOP_IDS)
            compiled = eng.runner.lower_prefill(cache, state, i32, np.zeros((rows, tb), np.int32), i32, i32 + 1,
                                                new_rows, window=window, sampling_mode="greedy").compile()
            out["programs"].append({"rows": rows, "tokens": tb, "window": window, **_program_memory(compiled,
                                                                                                     kv.shape)})
        except Exception as e:  # noqa: BLE001 - reported, the other shapes still run
            out["programs"].append({"rows": rows, "tokens": tb, "window": window, "error": repr(e)[:1000]})
        finally:
            eng.close()
    rows, window = min(64, max_batch // 2), min(1024, max_seq_len)
    eng = JaxEngine(model, config=EngineConfig.of(config, max_batch=2, max_seq_len=32, stop_at_eos=False))
    try:
        idx = np.arange(rows, dtype=np.int32)
        compiled = eng.runner.lower_copy(cache, idx, idx + rows, window=window).compile()
        out["copy_rows"] = {"rows": rows, "window": window, **_program_memory(compiled, kv.shape)}
    except Exception as e:  # noqa: BLE001 - reported
        out["copy_rows"] = {"error": repr(e)[:1000]}
    finally:
        eng.close()
    return out


def _program_memory(compiled, cache_shape) -> dict:
    mem = compiled.memory_analysis()
    ops = whole_cache_ops(compiled.as_text(), cache_shape)
    return {"temp_bytes": getattr(mem, "temp_size_in_bytes", None), "alias_bytes": getattr(mem, "alias_size_in_bytes",
                                                                                           None),
            "cache_copies": count_copies(ops), "whole_cache_ops": ops[:12], "thunks": hlo_thunks(compiled.as_text())}


def whole_cache_ops(hlo_text: str, shape: tuple[int, ...]) -> list[str]:
    """The ops of a compiled program whose result is a whole bf16 cache buffer (parameters excluded), one line each:
    in place, that is the one write per k/v; a `copy` means XLA duplicated the cache."""
    result = "= bf16[" + ",".join(map(str, shape)) + "]"
    return [re.sub(r"\s+", " ", line.strip())[:200] for line in hlo_text.splitlines()
            if result in line and "parameter(" not in line]


def count_copies(ops: list[str]) -> int:
    return sum(" copy(" in o or " copy-start(" in o for o in ops)


_HLO_OP = re.compile(r"^\s+(?:ROOT )?\S+ = .*?\s([a-z][a-z0-9\-]*)\(")
_NO_THUNK = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all", "opt-barrier"}


def hlo_thunks(hlo_text: str) -> dict[str, dict[str, int]]:
    """Per computation run from the host (the entry and the bodies of the entry's while loops; deeper nesting is
    not followed), its instructions that become runtime thunks, by kind (fusion kind, custom-call target, copy,
    async start/done...): what a call launches, a loop body once per iteration. Computations are found by their
    unindented `name (...) -> ... {` header lines."""
    comps: dict[str, list[str]] = {}
    entry, lines = None, None
    for line in hlo_text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            head = line.split()
            name = head[1] if head[0] == "ENTRY" else head[0]
            entry = name if head[0] == "ENTRY" else entry
            comps[name] = lines = []
        elif lines is not None and line[:1].isspace():
            lines.append(line)
    if entry is None:
        return {}
    bodies = {m.group(1) for line in comps[entry] for m in [re.search(r"body=(%?[\w.\-]+)", line)] if m}
    out = {}
    for name in [entry] + [b for b in comps if b in bodies]:
        kinds: collections.Counter[str] = collections.Counter()
        for line in comps[name]:
            m = _HLO_OP.match(line)
            if not m or m.group(1) in _NO_THUNK:
                continue
            op = m.group(1)
            if op == "custom-call":
                t = re.search(r'custom_call_target="([^"]+)"', line)
                op = "custom-call:" + (t.group(1) if t else "?")
            elif op == "fusion":
                k = re.search(r"kind=(k\w+)", line)
                op = "fusion:" + (k.group(1) if k else "?")
            kinds[op] += 1
        out[name] = dict(kinds.most_common())
    return out
