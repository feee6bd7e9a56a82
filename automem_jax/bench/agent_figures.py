"""The agent benchmark's figures (bench.agent): one timed run's, and the mean over repeats with its standard error.

Apart from bench/agent.py, which defines absl flags at import, so tests can import these with other benchmarks."""
from __future__ import annotations

import statistics


def run_figures(results, summary: dict, wall: float) -> dict:
    """One timed run's figures: its results, its summary.json, its wall clock."""
    decisions = sum(r.steps for r in results)
    total = lambda key: sum(r.stats.get(key, 0) for r in results)  # noqa: E731
    calls = summary["model_calls"]
    return {"decisions_per_s": decisions / wall, "decisions": decisions, "wall_s": wall,
            "model_calls": calls, "calls_per_decision": calls / max(decisions, 1),
            "prompt_tokens_per_s": total("prompt_tokens") / wall,
            "completion_tokens_per_s": total("completion_tokens") / wall,
            "completion_tokens_per_decision": total("completion_tokens") / max(decisions, 1),
            "mean_prompt_tokens_per_call": total("prompt_tokens") / max(calls, 1),
            "cached_prompt_fraction": total("cached_tokens") / max(total("prompt_tokens"), 1),
            "engine_errors": total("engine_errors"),  # e.g. a prompt over max_seq_len
            "fallback_actions": total("fallbacks"),
            "generate_s": summary["generate_s"], "env_step_s": summary["env_step_s"],
            "agent_overhead_s": wall - summary["generate_s"] - summary["env_step_s"]}


def mean_figures(runs: list[dict], warmup_s: float) -> dict:
    """The timed runs' figures averaged, with each run's decisions/s and their standard error (None for one run)."""
    rates = [f["decisions_per_s"] for f in runs]
    return {**{key: sum(f[key] for f in runs) / len(runs) for key in runs[0]},
            "decisions_per_s_se": statistics.stdev(rates) / len(rates) ** 0.5 if len(rates) > 1 else None,
            "decisions_per_s_runs": rates, "warmup_s": warmup_s}
