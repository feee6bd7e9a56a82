"""summary.json against a port of BALROG's own computation (tests/balrog_reference.py), fed the same outcomes."""
from __future__ import annotations

import math
import random

import pytest

from automem_jax.agent.summary import mean_se, summarize
from balrog_reference import balrog_summary, write_balrog_episodes

AGENT = {"type": "automem", "spec": "crafter_v0"}
CLIENT = {"client_name": "sglang", "model_id": "Qwen2.5-32B-Instruct"}


def _episodes(rng: random.Random) -> list[dict]:
    """Crafter (one task, fractional progression), MiniHack (8 tasks, binary, unequal counts, a task with one
    episode), NetHack (small fractions)."""
    eps = []
    for s in range(10):
        eps.append({"env": "crafter", "task": "default", "progression": rng.randrange(23) / 22})
    for t in range(8):
        for s in range(1 if t == 7 else rng.choice([3, 5, 6])):
            eps.append({"env": "minihack", "task": f"MiniHack-Task{t}-v0", "progression": float(rng.random() < 0.3)})
    for s in range(5):
        eps.append({"env": "nle", "task": "NetHackChallenge-v0", "progression": rng.choice([0.0, 0.0154, 0.0291])})
    for i, e in enumerate(eps):
        e.update(seed=i, steps=rng.randrange(1, 2000), input_tokens=rng.randrange(10 ** 6),
                 output_tokens=rng.randrange(10 ** 4))
    return eps


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_summary_equals_balrog_port(tmp_path, seed):
    eps = _episodes(random.Random(seed))
    write_balrog_episodes(tmp_path, eps, AGENT, CLIENT)
    ref = balrog_summary(tmp_path)
    ours = summarize(eps, client=CLIENT, agent=AGENT)
    for key in ("average_progress", "standard_error"):
        assert ours[key] == pytest.approx(ref[key], rel=1e-12, abs=1e-12), key
    assert (ours["total_input_tokens"], ours["total_output_tokens"], ours["client"], ours["agent"]) == \
        (ref["total_input_tokens"], ref["total_output_tokens"], ref["client"], ref["agent"])
    assert sorted(ours["environments"]) == sorted(ref["environments"])
    for env, r in ref["environments"].items():
        o = ours["environments"][env]
        for key, value in r.items():
            if key == "tasks":
                assert sorted(o["tasks"]) == sorted(value)
                for task, rt in value.items():
                    for k, v in rt.items():
                        assert o["tasks"][task][k] == pytest.approx(v, rel=1e-12, abs=1e-12), (env, task, k)
            else:
                assert o[key] == pytest.approx(value, rel=1e-12, abs=1e-12), (env, key)


def test_minihack_se_pools_episodes_not_task_ses():
    """The case that gave 2.74 here and 6.32 in BALROG: 8 tasks x 5 episodes, one task 5/5, one 3/5, six 0/5."""
    wins = {"Corridor-R3": 5, "MazeWalk-9x9": 3}
    tasks = ["Boxoban-Hard", "Boxoban-Medium", "MazeWalk-9x9", "MazeWalk-15x15", "Corridor-R3", "CorridorBattle-Dark",
             "Quest-Easy", "Quest-Medium"]
    eps = [{"env": "minihack", "task": f"MiniHack-{t}-v0", "seed": 42 + s, "steps": 50,
            "progression": float(s < wins.get(t, 0))} for t in tasks for s in range(5)]
    m = summarize(eps)["environments"]["minihack"]
    assert m["progression_percentage"] == pytest.approx(20.0)
    assert round(m["standard_error"], 2) == 6.32 == round(100 * math.sqrt(0.2 * 0.8 / 40), 2)
    # the stratified SE this module used to report, sqrt(sum task SE^2) / n_tasks: it drops between-task spread
    task_se = [t["standard_error"] for t in m["tasks"].values()]
    assert round(math.sqrt(sum(se ** 2 for se in task_se)) / len(task_se), 2) == 2.74


def test_mean_se_edge_cases_and_invalid_counts():
    assert mean_se([]) == (0.0, 0.0) and mean_se([0.7]) == (0.7, 0.0)  # BALROG: SE 0 for one episode
    assert mean_se([0.0, 1.0]) == (0.5, 0.5 / math.sqrt(2))
    eps = [{"env": "crafter", "task": "default", "progression": 0.5, "steps": 3, "failed_candidates": ["Fly", "x"]},
           {"env": "crafter", "task": "default", "progression": 0.5, "steps": 5, "invalid_actions": 1}]
    s = summarize(eps)
    assert s["invalid_actions"] == 3 and s["environments"]["crafter"]["tasks"]["default"]["invalid_actions"] == 3
    assert s["client"] is None and s["agent"] is None and s["environments"]["crafter"]["average_steps"] == 4
    assert summarize([])["average_progress"] == 0.0 and summarize([])["environments"] == {}
