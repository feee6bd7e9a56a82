"""summary.json as BALROG computes it (`balrog/utils.py: collect_and_summarize_results`), percent units.

Per task: mean progression and SE = population std / sqrt(n) (0 when n = 1).
Per env: mean and SE over *all* the env's episodes pooled (not combined from its task SEs), mean steps, episodes,
the task table, and input/output token totals.
Top level: `average_progress` = unweighted mean of the env means, `standard_error` = sqrt(sum env SE^2) / n_envs,
`total_input_tokens`, `total_output_tokens`, and the `client` and `agent` descriptions.

Why this matters for multi-task envs (MiniHack, 8 tasks x 5 episodes): the env's SE pools the 40 episodes, so it
includes the spread *between* tasks. Combining task SEs as sqrt(sum SE_task^2) / n_tasks (what this module did
before) is the SE of a stratified mean and leaves that spread out: with one task 5/5, one 3/5 and six 0/5 it gives
2.74 where BALROG reports 6.32. The env mean is episode-weighted as in BALROG (equal to the mean of task means when
every task plays the same number of episodes).

Beyond BALROG (extra keys, BALROG's are all present): `invalid_actions` per task/env/overall (the count of
BALROG's per-episode `failed_candidates`), `average_steps` per task, `episodes_played` overall.
"""
from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from typing import Any, Iterable, Mapping


def _get(r: Any, name: str, default: Any = None) -> Any:
    if isinstance(r, Mapping):
        return r.get(name, default)
    return getattr(r, name, default)


def _tokens(r: Any, name: str, stats_key: str) -> int:
    v = _get(r, name)
    if v is None:  # records written before the field existed keep the count in stats
        v = (_get(r, "stats") or {}).get(stats_key, 0)
    return int(v or 0)


def _invalid(r: Any) -> int:
    return int(_get(r, "invalid_actions", 0) or 0) or len(_get(r, "failed_candidates") or [])


def mean_se(values: list[float]) -> tuple[float, float]:
    """BALROG's mean and SE: population std / sqrt(n); SE 0 for a single value (and mean 0 for none)."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    return mean, std / math.sqrt(n)


def summarize(results: Iterable[Any], *, client: Mapping[str, Any] | None = None,
              agent: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """results: EpisodeResult objects or dicts with env, task, progression, steps (+ optional input_tokens,
    output_tokens, failed_candidates / invalid_actions)."""
    by_env: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        by_env[str(_get(r, "env"))][str(_get(r, "task"))].append(r)
    environments: dict[str, Any] = {}
    for env in sorted(by_env):
        tasks = {}
        for task in sorted(by_env[env]):
            eps = by_env[env][task]
            mean, se = mean_se([100.0 * float(_get(e, "progression")) for e in eps])
            tasks[task] = {"progression_percentage": mean, "standard_error": se, "episodes_played": len(eps),
                           "average_steps": sum(int(_get(e, "steps", 0) or 0) for e in eps) / len(eps),
                           "invalid_actions": sum(_invalid(e) for e in eps)}
        eps = [e for t in sorted(by_env[env]) for e in by_env[env][t]]
        mean, se = mean_se([100.0 * float(_get(e, "progression")) for e in eps])
        environments[env] = {
            "progression_percentage": mean, "standard_error": se,
            "average_steps": sum(int(_get(e, "steps", 0) or 0) for e in eps) / len(eps),
            "episodes_played": len(eps), "tasks": tasks,
            "input_tokens": sum(_tokens(e, "input_tokens", "prompt_tokens") for e in eps),
            "output_tokens": sum(_tokens(e, "output_tokens", "completion_tokens") for e in eps),
            "invalid_actions": sum(t["invalid_actions"] for t in tasks.values()),
        }
    n_envs = len(environments)
    return {
        "average_progress": sum(e["progression_percentage"] for e in environments.values()) / n_envs if n_envs else 0.0,
        "standard_error": math.sqrt(sum(e["standard_error"] ** 2 for e in environments.values())) / n_envs
        if n_envs else 0.0,
        "environments": environments,
        "total_input_tokens": sum(e["input_tokens"] for e in environments.values()),
        "total_output_tokens": sum(e["output_tokens"] for e in environments.values()),
        "client": dict(client) if client is not None else None,
        "agent": dict(agent) if agent is not None else None,
        "episodes_played": sum(e["episodes_played"] for e in environments.values()),
        "invalid_actions": sum(e["invalid_actions"] for e in environments.values()),
    }


def agent_description(spec: Any, memory_adapter: str | None = None, action_adapter: str | None = None
                      ) -> dict[str, Any]:
    """BALROG's `agent` block for our agent: which scaffold, spec and adapters produced the episodes."""
    memory = spec.mode == "memory"
    return {"type": "automem" if memory else "naive", "spec": spec.name, "spec_version": spec.version,
            "phases": [p.name for p in spec.phases], "max_text_history": None if memory else spec.history_length,
            "memory_adapter": memory_adapter, "action_adapter": action_adapter,
            "two_role": memory and memory_adapter is not None, "action_repair": list(spec.action_repair)}


def client_description(engine: Any, sampling: Any, client: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """BALROG's `client` block: `client` (e.g. backend, model, URL from the config) plus the sampling settings as
    `generate_kwargs` (BALROG's `max_tokens` = our max_new_tokens)."""
    out = {"client_name": type(engine).__name__} | dict(client or {})
    s = dataclasses.asdict(sampling) if dataclasses.is_dataclass(sampling) else dict(sampling or {})
    kwargs = {"temperature": s.get("temperature"), "top_p": s.get("top_p"), "top_k": s.get("top_k"),
              "max_tokens": s.get("max_new_tokens"), "seed": s.get("seed")}
    out["generate_kwargs"] = {k: v for k, v in kwargs.items() if v is not None} | dict(out.get("generate_kwargs", {}))
    return out
