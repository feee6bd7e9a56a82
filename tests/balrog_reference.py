"""BALROG's summary computation (balrog-ai/BALROG `balrog/utils.py: collect_and_summarize_results`), ported for tests.

It reads what BALROG's evaluator writes: `<out>/<env>/<task>/<task>_run_NN.json` per episode (fields `task`,
`progression` as a fraction, `num_steps`, `input_tokens`, `output_tokens`, `agent`, `client`) and returns BALROG's
summary dict. Kept as BALROG structures it (fractions until the end, the env pools all its episodes), so a test can
feed the same outcomes here and to `automem_jax.agent.summary.summarize` and compare every field.
"""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any


def write_balrog_episodes(out_dir: Path, episodes: list[dict[str, Any]], agent: dict, client: dict) -> None:
    """Episode dicts (env, task, progression, steps, input_tokens, output_tokens) -> BALROG's per-episode JSONs."""
    runs: dict[tuple[str, str], int] = defaultdict(int)
    for ep in episodes:
        key = (ep["env"], ep["task"])
        path = out_dir / ep["env"] / ep["task"] / f"{ep['task']}_run_{runs[key]:02d}.json"
        runs[key] += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"task": ep["task"], "progression": ep["progression"], "num_steps": ep["steps"],
                                    "input_tokens": ep["input_tokens"], "output_tokens": ep["output_tokens"],
                                    "agent": agent, "client": client}))


def _pop_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n if n else 0.0
    std = math.sqrt(sum((x - mean) ** 2 for x in values) / n) if n > 1 else 0.0
    return mean, (std / math.sqrt(n) if n > 1 else 0.0)


def balrog_summary(output_dir: Path) -> dict[str, Any]:
    per_env: dict[str, list[dict]] = defaultdict(list)
    for env_name in os.listdir(output_dir):
        env_dir = os.path.join(output_dir, env_name)
        if not os.path.isdir(env_dir):
            continue
        for root, _dirs, files in os.walk(env_dir):
            for f in files:
                if f.endswith(".json") and not f.endswith("_summary.json") and f != "summary.json":
                    with open(os.path.join(root, f)) as fh:
                        per_env[env_name].append(json.load(fh))
    env_means, envs, agent, client = [], {}, None, None
    total_in = total_out = 0
    for env_name, episodes in per_env.items():
        tasks: dict[str, list[dict]] = defaultdict(list)
        for ep in episodes:
            if agent is None and "agent" in ep and "client" in ep:
                agent, client = ep["agent"], ep["client"]
            tasks[ep.get("task")].append(ep)
        mean, se = _pop_se([ep.get("progression", 0.0) for ep in episodes])
        env_means.append(mean)
        n_in = sum(ep.get("input_tokens", 0) for ep in episodes)
        n_out = sum(ep.get("output_tokens", 0) for ep in episodes)
        total_in, total_out = total_in + n_in, total_out + n_out
        task_table = {}
        for task, runs in tasks.items():
            t_mean, t_se = _pop_se([r.get("progression", 0.0) for r in runs])
            task_table[task] = {"progression_percentage": 100 * t_mean, "standard_error": 100 * t_se,
                                "episodes_played": len(runs)}
        envs[env_name] = {"progression_percentage": 100 * mean, "standard_error": 100 * se,
                          "average_steps": sum(ep.get("num_steps", 0) for ep in episodes) / len(episodes),
                          "episodes_played": len(episodes), "tasks": task_table, "input_tokens": n_in,
                          "output_tokens": n_out}
    n = len(env_means)
    return {
        "average_progress": 100 * sum(env_means) / n if n else 0.0,
        "standard_error": math.sqrt(sum(e["standard_error"] ** 2 for e in envs.values())) / n if n else 0.0,
        "environments": envs,  # BALROG's summary.json keeps 3 keys per env; the rest is its <env>_summary.json
        "total_input_tokens": total_in, "total_output_tokens": total_out, "client": client, "agent": agent,
    }
