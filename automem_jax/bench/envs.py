"""Env throughput. Crafter (Craftax-Classic on the accelerator) here; NetHack/MiniHack in `envs_nle`.

  python -m automem_jax.bench.envs --env=crafter --num_envs=1024,4096,16384 --json_out=FILE
  python -m automem_jax.bench.envs --env=crafter --small          # quick CPU check
  python -m automem_jax.bench.envs --env=nethack|minihack|crafter:reference ...  # bench/envs_nle.py (worker pool)

Crafter rows `{"env": "crafter", "impl", "num_envs", "steps_per_s", ...}`, random actions, each impl stepping
`--scan_steps` batched steps inside one jitted lax.scan, best of `--repeats` (ours: mean over `--ours_scans`
scans, so the periodic pool refills are counted). Every row is printed and the JSON file rewritten (atomically)
as soon as it is measured, so a killed run keeps what it measured. All impls of one N start from the same
worlds, made by one compiled generator (`CraftaxCore.jit_worlds`), which also makes the pools:
  * builtin_auto_reset: Craftax `auto_reset=True` env.step (symbolic obs kept alive in the carry);
  * no_reset: Craftax `auto_reset=False` env.step, never reset (the ceiling the issue quotes; obs kept alive);
  * no_reset_stateonly: our raw step (no symbolic obs, which the text env never needs), never reset;
  * ours: our step + pooled seed-deterministic resets (envs/crafter_pool.py); counts only steps of live envs;
  * ours_text: the full CraftaxTextEnv.step (device step + tables + host strings), a Python loop.
Plus text observations rendered per second at `--text_envs` (device tables + transfer + host strings) and
compile seconds (first call minus a steady call) per impl.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import time
from typing import Callable, Sequence

import numpy as np
from absl import app, flags
from automem_jax.fileio import atomic_write_json

flags.DEFINE_enum("env", "crafter", ["crafter", "nethack", "minihack", "crafter:reference"], "env family")
flags.DEFINE_list("num_envs", ["1024", "4096", "16384"], "crafter batch sizes")
flags.DEFINE_list("impls", ["builtin_auto_reset", "no_reset", "no_reset_stateonly", "ours", "ours_text"],
                  "crafter impls to time")
flags.DEFINE_integer("scan_steps", 50, "batched steps per jitted scan")
flags.DEFINE_integer("repeats", 2, "timed scans per impl (best is reported)")
flags.DEFINE_integer("builtin_scan_steps", 10, "builtin impls: steps per scan (world generation makes each step "
                     "slow, so a short scan is already long)")
flags.DEFINE_integer("warmup_steps", 200, "ours: untimed steps first, so episodes end and resets reach steady state")
flags.DEFINE_integer("ours_scans", 8, "ours: timed scans (mean; spans several pool refills)")
flags.DEFINE_integer("text_steps", 10, "ours_text: agent steps timed")
flags.DEFINE_integer("text_step_max_envs", 4096, "ours_text only at num_envs <= this (a Python agent loop)")
flags.DEFINE_integer("text_envs", 4096, "envs for the text-render throughput (0: skip)")
flags.DEFINE_float("pool_frac", 0.25, "ours: reset pool size as a fraction of num_envs")
flags.DEFINE_integer("pool_min", 2048, "ours: smallest pool (refills are latency-bound: fewer, bigger is cheaper)")
flags.DEFINE_string("compile_cache_dir", None, "JAX persistent compilation cache (reruns skip compiles)")
flags.DEFINE_integer("max_episode_steps", 2000, "episode limit (BALROG)")
flags.DEFINE_bool("small", False, "quick CPU check: 8 and 32 envs, 10-step scans, 32 text envs")
flags.DEFINE_string("json_out", None, "also write the JSON here (atomically)")
# Passed through to bench/envs_nle.py for --env=nethack|minihack|crafter:reference.
flags.DEFINE_string("task", None, "nethack/minihack task id")
flags.DEFINE_list("workers", None, "nethack/minihack worker counts")
flags.DEFINE_integer("envs_per_worker", 8, "nethack/minihack env slots per worker")
flags.DEFINE_integer("steps", 20_000, "nethack/minihack env steps timed per worker count")
flags.DEFINE_string("boxoban_levels_dir", None, "MiniHack Boxoban levels")
FLAGS = flags.FLAGS


def _block(x):
    import jax
    return jax.block_until_ready(x)


def time_jitted(fn: Callable, carry, repeats: int):
    """(carry, compile_s, best_s): the first call compiles; later calls are timed."""
    t0 = time.perf_counter()
    carry = _block(fn(carry))
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        carry = _block(fn(carry))
        best = min(best, time.perf_counter() - t0)
    return carry, max(0.0, first - best), best


def _random_actions(key, n):
    import jax
    import jax.numpy as jnp
    return jax.random.randint(key, (n,), 0, 17, dtype=jnp.int32)


def seed_worlds(first_seed: int, n: int):
    """Slots for seeds first_seed..first_seed+n-1 through the one compiled generator (shared by every impl)."""
    import jax.numpy as jnp
    from automem_jax.envs.craftax import craftax_core
    lo = jnp.arange(first_seed, first_seed + n, dtype=jnp.uint32)
    return craftax_core().jit_worlds(jnp.stack([lo, jnp.zeros_like(lo)], axis=1))


def bench_builtin(n: int, auto_reset: bool, scan_steps: int, repeats: int, limit: int, slots=None) -> dict:
    import jax
    import jax.numpy as jnp
    from craftax.craftax_env import make_craftax_env_from_name
    env = make_craftax_env_from_name("Craftax-Classic-Symbolic-v1", auto_reset=auto_reset)
    params = env.default_params.replace(max_timesteps=limit)
    key = jax.random.PRNGKey(0)
    states = (seed_worlds(0, n) if slots is None else slots).state  # same EnvState type as env.reset's
    obs_shape = jax.eval_shape(jax.vmap(lambda s: env.get_obs(s)), states)
    obs = jnp.zeros(obs_shape.shape, obs_shape.dtype)  # overwritten by the first step

    def one(carry, _):
        states, obs, key = carry
        key, k_act, k_step = jax.random.split(key, 3)
        obs, states, _, _, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(k_step, n), states, _random_actions(k_act, n), params)
        return (states, obs, key), None  # obs in the carry: XLA cannot drop the symbolic render

    run = jax.jit(lambda c: jax.lax.scan(one, c, None, length=scan_steps)[0], donate_argnums=0)
    _, compile_s, best = time_jitted(run, (states, obs, key), repeats)
    return {"steps_per_s": n * scan_steps / best, "compile_s": compile_s, "obs": True}


def bench_stateonly(n: int, scan_steps: int, repeats: int, limit: int, slots=None) -> dict:
    import jax
    from automem_jax.envs.craftax import craftax_core
    core = craftax_core()
    slots = seed_worlds(0, n) if slots is None else slots

    def one(carry, _):
        slots, key = carry
        key, k = jax.random.split(key)
        slots = core.step_states(slots, _random_actions(k, n), limit)[0]
        return (slots, key), None

    run = jax.jit(lambda c: jax.lax.scan(one, c, None, length=scan_steps)[0], donate_argnums=0)
    _, compile_s, best = time_jitted(run, (slots, jax.random.PRNGKey(0)), repeats)
    return {"steps_per_s": n * scan_steps / best, "compile_s": compile_s, "obs": False}


def pool_size_for(n: int, pool_frac: float, pool_min: int) -> int:
    return max(2, max(pool_min, int(n * pool_frac)) // 2 * 2)


def bench_ours(n: int, scan_steps: int, scans: int, limit: int, pool_frac: float, warmup_steps: int = 0,
               slots=None, pool_min: int = 0):
    """Mean over `scans` timed scans (pool refills happen every C/episodes-per-step steps, so best-of would
    pick a scan without one)."""
    import jax
    from automem_jax.envs import crafter_pool
    from automem_jax.envs.craftax import craftax_core
    core = craftax_core()
    pool = pool_size_for(n, pool_frac, pool_min)
    slots = seed_worlds(0, n) if slots is None else slots
    runner = jax.jit(crafter_pool.runner_from)(slots, seed_worlds(n, pool))
    run = jax.jit(lambda r: crafter_pool.rollout(core, r, scan_steps, limit), donate_argnums=0)
    t0 = time.perf_counter()
    runner = _block(run(runner))
    first = time.perf_counter() - t0
    for _ in range(-(-warmup_steps // scan_steps) - 1):
        runner = run(runner)
    runner = _block(runner)
    s0, e0 = int(runner.stepped), int(runner.episodes)
    t0 = time.perf_counter()
    for _ in range(max(1, scans)):
        runner = run(runner)
    runner = _block(runner)
    total = time.perf_counter() - t0
    stepped, episodes = int(runner.stepped) - s0, int(runner.episodes) - e0
    per_scan = total / max(1, scans)
    row = {"steps_per_s": stepped / total, "compile_s": max(0.0, first - per_scan), "obs": False,
           "pool_size": pool, "held_frac": 1.0 - stepped / (n * scan_steps * max(1, scans)),
           "episodes_per_step": episodes / (scan_steps * max(1, scans)), "timed_steps": scan_steps * max(1, scans)}
    return row, runner


def bench_text_step(n: int, steps: int, limit: int) -> dict:
    """CraftaxTextEnv.step as the agent loop calls it: random action strings, finished slots reset."""
    from automem_jax.envs.craftax import CraftaxTextEnv
    env = CraftaxTextEnv(num_envs=n, max_episode_steps=limit)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    env.reset(list(range(n)))
    env.step([env.action_names[a] for a in rng.integers(0, 17, n)])
    compile_s = time.perf_counter() - t0
    next_seed, t_step, t_reset = n, 0.0, 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        out = env.step([env.action_names[a] for a in rng.integers(0, 17, n)])
        t_step += time.perf_counter() - t0
        done = [i for i, s in enumerate(out) if s is not None and s.done]
        if done:
            t0 = time.perf_counter()
            env.reset(list(range(next_seed, next_seed + len(done))), done)
            t_reset += time.perf_counter() - t0
            next_seed += len(done)
    return {"steps_per_s": n * steps / t_step, "compile_s": compile_s, "obs": True,
            "reset_s_total": t_reset, "ms_per_batched_step": 1e3 * t_step / steps}


def bench_text_render(slots, repeats: int) -> dict:
    import jax
    from automem_jax.envs import crafter_text as ct
    from automem_jax.envs.craftax import craftax_core
    tables_fn = craftax_core().jit_tables
    renderer = ct.TextRenderer()
    n = int(slots.steps.shape[0])
    _block(tables_fn(slots))
    renderer.render(jax.device_get(tables_fn(slots)))  # warm the status cache as a running env would
    dev, host = float("inf"), float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        t = jax.device_get(tables_fn(slots))
        t1 = time.perf_counter()
        renderer.render(t)
        t2 = time.perf_counter()
        dev, host = min(dev, t1 - t0), min(host, t2 - t1)
    return {"num_envs": n, "obs_per_s": n / (dev + host), "device_s": dev, "host_s": host,
            "host_us_per_obs": 1e6 * host / n}





@dataclasses.dataclass
class CrafterConfig:
    sizes: Sequence[int]
    impls: Sequence[str]
    scan_steps: int = 50
    repeats: int = 2
    builtin_scan_steps: int = 10
    ours_scans: int = 8
    warmup_steps: int = 200
    text_steps: int = 10
    text_step_max_envs: int = 4096
    text_envs: int = 4096
    pool_frac: float = 0.25
    pool_min: int = 2048
    limit: int = 2000


def run_crafter(cfg: CrafterConfig, json_out: str | None) -> dict:
    import jax
    known = {"builtin_auto_reset", "no_reset", "no_reset_stateonly", "ours", "ours_text"}
    if set(cfg.impls) - known:
        raise ValueError(f"--impls: unknown {sorted(set(cfg.impls) - known)}; choose from {sorted(known)}")
    rows: list[dict] = []
    from automem_jax.bench import common as bench_common  # lazy: --env=nethack needs no JAX

    payload = {**bench_common.header("envs"), "env": "crafter",
               "craftax_version": importlib.metadata.version("craftax"),
               "config": dataclasses.asdict(cfg), "complete": False,
               "figures": {"rows": rows, "text_render": None}}

    def emit(row: dict) -> None:  # print and persist each figure as soon as it exists
        print(json.dumps(row), flush=True)
        if json_out:
            atomic_write_json(json_out, payload)

    text_slots = None
    for n in cfg.sizes:
        by_impl: dict[str, dict] = {}
        slots = None  # one set of start worlds per N, shared by every impl (donated scans get copies)
        for impl in cfg.impls:
            if impl == "ours_text" and n > cfg.text_step_max_envs:
                continue
            if impl != "ours_text" and slots is None:
                slots = _block(seed_worlds(0, n))
            fresh = None if slots is None else jax.tree.map(lambda x: x.copy(), slots)
            if impl == "builtin_auto_reset":
                r = bench_builtin(n, True, cfg.builtin_scan_steps, 1, cfg.limit, fresh)
            elif impl == "no_reset":
                r = bench_builtin(n, False, cfg.scan_steps, cfg.repeats, cfg.limit, fresh)
            elif impl == "no_reset_stateonly":
                r = bench_stateonly(n, cfg.scan_steps, cfg.repeats, cfg.limit, fresh)
            elif impl == "ours":
                r, runner = bench_ours(n, cfg.scan_steps, cfg.ours_scans, cfg.limit, cfg.pool_frac,
                                       cfg.warmup_steps, fresh, cfg.pool_min)
                for ref in ("no_reset", "no_reset_stateonly", "builtin_auto_reset"):
                    if ref in by_impl:
                        r[f"vs_{ref}"] = r["steps_per_s"] / by_impl[ref]["steps_per_s"]
                if n == cfg.text_envs:
                    text_slots = runner.slots
            else:
                r = bench_text_step(n, cfg.text_steps, cfg.limit)
            by_impl[impl] = r
            rows.append({"env": "crafter", "impl": impl, "num_envs": n, **r})
            emit(rows[-1])
    if cfg.text_envs > 0:
        if text_slots is None:  # played states for the render benchmark
            _, runner = bench_ours(cfg.text_envs, cfg.scan_steps, 1, cfg.limit, cfg.pool_frac,
                                   pool_min=cfg.pool_min)
            text_slots = runner.slots
        payload["figures"]["text_render"] = bench_text_render(text_slots, max(3, cfg.repeats))
        emit({"env": "crafter", "text_render": payload["figures"]["text_render"]})
    payload["complete"] = True
    print(json.dumps(payload))
    if json_out:
        atomic_write_json(json_out, payload)
    return payload


def main(argv: Sequence[str]) -> None:
    del argv
    if FLAGS.env in ("nethack", "minihack", "crafter:reference"):
        from automem_jax.bench import envs_nle  # lazy: Crafter runs need no NLE
        envs_nle.run(FLAGS)
        return
    if FLAGS.compile_cache_dir:
        import jax
        jax.config.update("jax_compilation_cache_dir", FLAGS.compile_cache_dir)
    cfg = CrafterConfig(
        sizes=[int(x) for x in FLAGS.num_envs], impls=FLAGS.impls, scan_steps=FLAGS.scan_steps,
        repeats=FLAGS.repeats, builtin_scan_steps=FLAGS.builtin_scan_steps, ours_scans=FLAGS.ours_scans,
        warmup_steps=FLAGS.warmup_steps, text_steps=FLAGS.text_steps, text_step_max_envs=FLAGS.text_step_max_envs,
        text_envs=FLAGS.text_envs, pool_frac=FLAGS.pool_frac, pool_min=FLAGS.pool_min,
        limit=FLAGS.max_episode_steps)
    if FLAGS.small:
        cfg = dataclasses.replace(cfg, sizes=[8, 32], scan_steps=10, builtin_scan_steps=5, ours_scans=2, repeats=2,
                                  text_steps=3, text_envs=32, warmup_steps=0, pool_min=16)
    run_crafter(cfg, FLAGS.json_out)


if __name__ == "__main__":
    app.run(main)
