"""bench.agent's figures: one timed run's from its results and summary, and the mean over repeats with an SE."""
from __future__ import annotations

import types

import pytest

from automem_jax.bench.agent_figures import mean_figures, run_figures


def _result(steps: int, **stats):
    return types.SimpleNamespace(steps=steps, stats=stats)


def test_run_figures_count_decisions_tokens_and_host_time():
    results = [_result(3, prompt_tokens=300, completion_tokens=30, cached_tokens=150, fallbacks=1),
               _result(1, prompt_tokens=100, completion_tokens=10, engine_errors=2)]
    f = run_figures(results, {"model_calls": 8, "generate_s": 1.5, "env_step_s": 0.25}, wall=2.0)
    assert f["decisions"] == 4 and f["decisions_per_s"] == 2.0 and f["calls_per_decision"] == 2.0
    assert f["prompt_tokens_per_s"] == 200.0 and f["completion_tokens_per_decision"] == 10.0
    assert f["mean_prompt_tokens_per_call"] == 50.0 and f["cached_prompt_fraction"] == pytest.approx(0.375)
    assert (f["engine_errors"], f["fallback_actions"]) == (2, 1)
    assert f["agent_overhead_s"] == pytest.approx(0.25)  # the wall clock less generation and env steps


def test_mean_figures_average_the_runs_and_give_the_standard_error():
    runs = [{"decisions_per_s": 250.0, "wall_s": 16.0}, {"decisions_per_s": 260.0, "wall_s": 15.0},
            {"decisions_per_s": 270.0, "wall_s": 14.0}]
    f = mean_figures(runs, warmup_s=40.0)
    assert f["decisions_per_s"] == 260.0 and f["wall_s"] == 15.0 and f["warmup_s"] == 40.0
    assert f["decisions_per_s_runs"] == [250.0, 260.0, 270.0]
    assert f["decisions_per_s_se"] == pytest.approx(10.0 / 3 ** 0.5)  # stdev 10 over sqrt(3)
    assert mean_figures(runs[:1], 1.0)["decisions_per_s_se"] is None  # one run has no spread to report
