"""Worker-pool throughput (NetHack, MiniHack, crafter:reference): env steps/s with random valid text actions, per
worker count.

  python -m automem_jax.bench.envs_nle --env=nethack --workers=1,4,16 --steps=20000 --json_out=FILE
  python -m automem_jax.bench.envs_nle --env=minihack --task=MiniHack-MazeWalk-9x9-v0 --small
  python -m automem_jax.bench.envs_nle --env=crafter:reference --workers=1,4,16 --steps=20000

Each row: {"env", "task", "mode", "num_workers", "num_envs", "steps_per_s", "render_us_per_obs", "scaling"} where
`scaling` = steps_per_s / (num_workers * steps_per_s of the same mode at the smallest worker count / its workers)
(goal >= 0.8). Finished episodes are reset with fresh seeds (resets are counted in the time, not in the steps).
Modes (`--modes`):
  lockstep   what the agent does today: one batched step of every env, then a second round trip resetting the
             finished ones (every worker waits for the slowest; most idle through the reset round);
  fused      the same batches, but the finished envs' resets ride along with the next step's round trip
             (`NLEPoolTextEnv.step_and_reset`; a finished env sits out one batch);
  pipelined  pool capacity: each worker gets its next request as soon as it answers (no lockstep), resets ride
             along; the parent only moves messages.
`render_us_per_obs` is measured in the workers (random play revisits screens, so the language-observation cache
hits often); `render_uncached_us` is the renderer alone with its cache cleared, over 200 observations of one game.
`bench/envs.py --env=nethack|minihack|crafter:reference` dispatches here (no `render_uncached_us` for Crafter).
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import random
import time
from typing import Sequence

from absl import app, flags
from automem_jax.fileio import atomic_write_json



def define_flags() -> None:
    """Our flags, defined only when this module is the program (bench/envs.py defines its own and calls `run`)."""
    flags.DEFINE_enum("env", "nethack", POOL_ENVS, "env family")
    flags.DEFINE_string("task", None, "task id (default NetHackChallenge-v0 / MiniHack-MazeWalk-9x9-v0)")
    flags.DEFINE_list("workers", None, "worker counts (default 1,4,16 capped at the CPU count; --small: 1,2)")
    flags.DEFINE_list("modes", "lockstep,fused,pipelined", "lockstep | fused | pipelined (see the module doc)")
    flags.DEFINE_integer("envs_per_worker", 8, "env slots per worker process")
    flags.DEFINE_integer("steps", 20_000, "env steps timed per worker count (summed over the batch)")
    flags.DEFINE_string("boxoban_levels_dir", None, "Boxoban levels (hard/, medium/train/) for Boxoban tasks")
    flags.DEFINE_bool("small", False, "quick CPU check: workers 1,2, 2 envs per worker, 400 steps")
    flags.DEFINE_string("json_out", None, "also write the JSON here (atomically)")


POOL_ENVS = ["nethack", "minihack", "crafter:reference"]
DEFAULT_TASKS = {"nethack": "NetHackChallenge-v0", "minihack": "MiniHack-MazeWalk-9x9-v0",
                 "crafter:reference": "reference"}


def _make_env(env: str, task: str, num_envs: int, num_workers: int, boxoban_levels_dir: str | None):
    if env == "crafter:reference":
        from automem_jax.envs.crafter_reference import CrafterReferenceTextEnv
        return CrafterReferenceTextEnv(num_envs, num_workers=num_workers)
    if env == "nethack":
        from automem_jax.envs.nethack import NetHackTextEnv
        return NetHackTextEnv(num_envs, task=task, num_workers=num_workers)
    from automem_jax.envs.minihack import MiniHackTextEnv
    return MiniHackTextEnv(task, num_envs, num_workers=num_workers, boxoban_levels_dir=boxoban_levels_dir)


def measure(env: str, task: str, num_workers: int, envs_per_worker: int, steps: int,
            boxoban_levels_dir: str | None = None, seed: int = 0, mode: str = "lockstep") -> dict:
    """Steps/s of one pool size with random valid actions (episodes refilled as they end)."""
    if mode not in ("lockstep", "fused", "pipelined"):
        raise ValueError(f"mode must be lockstep, fused or pipelined, got {mode!r}")
    rng = random.Random(seed)
    num_envs = num_workers * envs_per_worker
    text_env = _make_env(env, task, num_envs, num_workers, boxoban_levels_dir)
    try:
        next_seed = 1000 * num_workers
        text_env.reset(list(range(next_seed, next_seed + num_envs)))
        next_seed += num_envs
        names = text_env.action_names
        finished: list[int] = []

        def batch() -> int:
            nonlocal next_seed, finished
            actions = [None if i in finished else rng.choice(names) for i in range(num_envs)]
            seeds = dict(zip(finished, range(next_seed, next_seed + len(finished))))
            next_seed += len(finished)
            if mode == "fused":
                results, _ = text_env.step_and_reset(actions, seeds)
            else:
                results = text_env.step(actions)
            finished = [i for i, r in enumerate(results) if r is not None and r.done]
            if mode == "lockstep" and finished:
                text_env.reset(list(range(next_seed, next_seed + len(finished))), indices=finished)
                next_seed += len(finished)
                finished = []
            return sum(r is not None for r in results)

        if mode == "pipelined":
            done_steps, elapsed, render_us = _pipelined(text_env, steps, rng, next_seed)
        else:
            for _ in range(3):  # warm-up: first messages, lazy tables
                batch()
            text_env._render_s, text_env._render_n = 0.0, 0
            done_steps, t0 = 0, time.perf_counter()
            while done_steps < steps:
                done_steps += batch()
            elapsed = time.perf_counter() - t0
            render_us = text_env.render_us_per_obs
        return {"env": env, "task": task, "mode": mode, "num_workers": num_workers, "num_envs": num_envs,
                "steps": done_steps, "seconds": round(elapsed, 3), "steps_per_s": round(done_steps / elapsed, 1),
                "render_us_per_obs": round(render_us, 1), "worker_restarts": text_env.pool.restarts}
    finally:
        text_env.close()


def _pipelined(text_env, steps: int, rng: random.Random, next_seed: int) -> tuple[int, float, float]:
    """Keep every worker busy: a worker's next request (random keys; resets for its finished slots) goes out as
    soon as its reply arrives. Returns (steps, seconds, render us/obs)."""
    pool, keys = text_env.pool, text_env.action_keys
    finished: set[int] = set()

    def ops(w: int) -> list:
        nonlocal next_seed
        out = []
        for s in pool.worker_slots[w]:
            if s in finished:
                out.append((s, "reset", next_seed))
                next_seed += 1
            else:
                out.append((s, "step", rng.choice(keys)))
        finished.difference_update(pool.worker_slots[w])
        return out

    def drain(until: int, timed: bool) -> tuple[int, float, int]:
        n = render_s = obs = 0
        while n < until:
            for w, reply in pool.collect(60.0):
                for (s, kind, _), (_, r) in zip(pending[w], reply):
                    n += kind == "step"
                    render_s, obs = render_s + r.render_s, obs + 1
                    if r.done:
                        finished.add(s)
                pending[w] = ops(w)
                if n < until or not timed:
                    pool.submit(w, pending[w])
                else:
                    pending[w] = None
        return n, render_s, obs

    pending: dict[int, list | None] = {}
    for w in range(pool.num_workers):
        pending[w] = ops(w)
        pool.submit(w, pending[w])
    drain(3 * text_env.num_envs, False)  # warm-up
    t0 = time.perf_counter()
    n, render_s, obs = drain(steps, True)
    elapsed = time.perf_counter() - t0
    while any(p is not None for p in pending.values()):  # let in-flight requests finish before closing
        for w, _ in pool.collect(60.0):
            pending[w] = None
    return n, elapsed, 1e6 * render_s / max(1, obs)


def render_uncached_us(env: str, task: str, n: int = 200, seed: int = 0) -> float:
    """The renderer alone (language-observation cache cleared each time) over `n` observations of random play."""
    from automem_jax.envs import nle_common, nle_text
    family = "nethack" if env == "nethack" else "minihack"
    raw = nle_common.make_raw_env(family, task)
    rng = random.Random(seed)
    try:
        nle_common.seed_nle(raw, seed)
        obs, _ = raw.reset()
        keep = []
        while len(keep) < n:
            obs, _, term, trunc, _ = raw.step(rng.randrange(len(raw.unwrapped.actions)))
            keep.append({k: v.copy() for k, v in obs.items()})
            if term or trunc:
                obs, _ = raw.reset()
        nle_text.render_hybrid(keep[0])  # build the glyph/offset tables outside the timing
        t0 = time.perf_counter()
        for o in keep:
            nle_text._LANG_CACHE.clear()
            nle_text.render_hybrid(o)
        return 1e6 * (time.perf_counter() - t0) / n
    finally:
        raw.close()


def _device() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), platform.machine())
    except OSError:
        model = platform.machine()
    return f"{model} ({os.cpu_count()} cores)"




def run_benchmark(env: str, worker_counts: Sequence[int], steps: int, json_out: str | None, *,
                  task: str | None = None, envs_per_worker: int = 8,
                  boxoban_levels_dir: str | None = None,
                  modes: Sequence[str] = ("lockstep", "fused", "pipelined")) -> list[dict]:
    """One row per worker count (plus `scaling` vs the smallest count); prints and optionally writes the JSON."""
    task = task or DEFAULT_TASKS[env]
    rows = []
    for mode in modes:
        mode_rows = [measure(env, task, int(w), envs_per_worker, steps, boxoban_levels_dir, mode=mode)
                     for w in worker_counts]
        base = mode_rows[0]["steps_per_s"] / mode_rows[0]["num_workers"]
        for r in mode_rows:
            r["scaling"] = round(r["steps_per_s"] / (r["num_workers"] * base), 3)
        rows += mode_rows
    try:
        jax_version = importlib.metadata.version("jax")
    except importlib.metadata.PackageNotFoundError:
        jax_version = None
    payload = {"bench": "envs_nle", "device": _device(), "jax_version": jax_version,
               "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "render_uncached_us": None if env == "crafter:reference" else round(render_uncached_us(env, task), 1),
               "figures": rows}
    print(json.dumps(payload, indent=2))
    if json_out:
        atomic_write_json(json_out, payload)
    return rows


def run(flag_values=None) -> list[dict]:
    """Entry point for `bench/envs.py` (pass its parsed FLAGS; missing flags take our defaults) and `main`."""
    fv = flags.FLAGS if flag_values is None else flag_values
    get = lambda name, default=None: getattr(fv, name, default)  # noqa: E731
    env = get("env", "nethack")
    small = bool(get("small", False))
    cpus = os.cpu_count() or 1
    if get("workers"):
        workers = [int(w) for w in get("workers")]
    else:
        workers = [1, 2] if small else ([w for w in (1, 4, 16) if w <= cpus] or [1])
    epw = 2 if small else int(get("envs_per_worker") or 8)
    steps = 400 if small else int(get("steps") or 20_000)
    modes = get("modes") or ("lockstep", "fused", "pipelined")
    return run_benchmark(env, workers, steps, get("json_out"), task=get("task"), envs_per_worker=epw,
                         boxoban_levels_dir=get("boxoban_levels_dir"), modes=[str(m) for m in modes])


def main(argv: Sequence[str]) -> None:
    del argv
    run()


if __name__ == "__main__":
    define_flags()
    app.run(main)
