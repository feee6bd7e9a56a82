"""What every JAX benchmark's JSON starts with, and how it is emitted (DESIGN.md: device, jax_version, timestamp)."""
from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any, Callable

import jax

from automem_jax.fileio import atomic_write_text


def header(bench: str) -> dict[str, Any]:
    dev = jax.devices()[0]
    return {"bench": bench, "device": dev.device_kind, "platform": dev.platform, "num_devices": jax.device_count(),
            "jax_version": jax.__version__,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def emit(result: dict[str, Any], json_out: str | None) -> None:
    """Print the result and, if asked, write it atomically (a killed run never leaves half a file)."""
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if json_out:
        atomic_write_text(json_out, text + "\n")


def host_profile(fn: Callable[[], Any], top: int = 25) -> tuple[Any, dict[str, list[dict]]]:
    """cProfile of one fn() call -> (its result, {"by_own_time": top functions, "by_cum_time": top functions}):
    where the host's time goes."""
    import cProfile
    import pstats
    prof = cProfile.Profile()
    prof.enable()
    try:
        out = fn()
    finally:
        prof.disable()
    stats = pstats.Stats(prof).stats  # {(file, line, name): (calls, prim calls, own s, cum s, callers)}

    def rows(key: int) -> list[dict]:
        ranked = sorted(stats.items(), key=lambda kv: -kv[1][key])[:top]
        return [{"fn": f"{Path(f).name}:{line}:{name}", "calls": c[0], "own_ms": round(c[2] * 1e3, 2),
                 "cum_ms": round(c[3] * 1e3, 2)} for (f, line, name), c in ranked]
    return out, {"by_own_time": rows(2), "by_cum_time": rows(3)}


def gpu_profile(fn: Callable[[], Any], log_dir: Path, steps: int, runs: int = 2) -> dict:
    """Run fn `runs` times under the JAX profiler -> per `steps`: GPU kernel time and calls by kernel name (top 40),
    kernel count, busy time (summed kernel durations), and the wall time of the runs (busy / wall: how much of the
    time the GPU had work)."""
    import collections
    import gzip
    import time
    log_dir.mkdir(parents=True, exist_ok=True)
    with jax.profiler.trace(str(log_dir), create_perfetto_trace=True):
        t0 = time.perf_counter()
        for _ in range(runs):
            fn()
        wall = time.perf_counter() - t0
    trace = sorted(log_dir.rglob("perfetto_trace.json.gz"))[-1]
    events = json.loads(gzip.decompress(trace.read_bytes()))
    events = events["traceEvents"] if isinstance(events, dict) else events
    gpu_pids = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
                and "gpu" in str(e.get("args", {}).get("name", "")).lower()}
    by_name, calls = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("pid") in gpu_pids:
            by_name[e.get("name", "?")[:90]] += float(e.get("dur", 0))
            calls[e.get("name", "?")[:90]] += 1
    busy = sum(by_name.values())
    top = by_name.most_common(40)
    return {"kernels": sum(calls.values()) / steps, "busy_us": busy / steps, "wall_us": wall * 1e6 / steps,
            "top_us": {n: round(d / steps, 2) for n, d in top},
            "top_calls": {n: round(calls[n] / steps, 2) for n, _ in top}}
