"""Rollouts side by side: env slot ranges, one engine batch for several rollouts, and the real parts' rollout_many
(the evaluation's rows share the engine instead of queueing behind each other)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_fakes import LineWorldEnv
from automem_jax.agent import EnvJob, Rollout, read_jsonl, run_episodes, run_together
from automem_jax.engine.scripted import ScriptedEngine
from automem_jax.envs import SlotRange, slot_ranges
from automem_jax.memory import load_spec
from automem_jax.orchestrate.parts import RolloutCall
from automem_jax.orchestrate.real_parts import build_parts
from test_agent import scripted
from test_main_integration import config as integration_config
from test_main_integration import scripted as integration_scripted

SPECS = Path(__file__).resolve().parents[1] / "configs" / "specs"


def test_slot_ranges_fit_or_share_in_proportion():
    env = LineWorldEnv(8)
    assert [(r.start, r.num_envs) for r in slot_ranges(env, [3, 2])] == [(0, 3), (3, 2)]
    assert [(r.start, r.num_envs) for r in slot_ranges(env, [8, 4, 4])] == [(0, 4), (4, 2), (6, 2)]
    assert sum(r.num_envs for r in slot_ranges(env, [1, 1, 1, 1, 1, 100])) <= 8
    with pytest.raises(ValueError, match="config.num_envs"):
        slot_ranges(env, [1] * 9)
    with pytest.raises(ValueError, match="demand must be >= 1"):
        slot_ranges(env, [2, 0])
    with pytest.raises(ValueError, match=r"slots \[6, 10\) do not fit in lineworld's 8"):
        SlotRange(env, 6, 4)


def test_a_slot_range_is_its_own_env_on_the_shared_slots():
    env = LineWorldEnv(4)
    a, b = SlotRange(env, 0, 2), SlotRange(env, 2, 2)
    assert [o.text for o in a.reset([1, 2])] == ["You stand at cell 1 of 5.", "You stand at cell 2 of 5."]
    b.reset([13], [1])  # range b's slot 1 is the env's slot 3
    assert env.seed_of == [1, 2, 0, 13] and b.episode(1).seed == 13 and a.episode(0).seed == 1
    steps = b.step([None, "Move East"])
    assert steps[0] is None and steps[1].observation.text == "You stand at cell 4 of 5."
    assert env.executed == [(3, 13, "Move East", 0.0)]  # only that slot moved; a's episodes are untouched
    b.step([None, "Do"])
    assert b.progression(1) == 0.5 and a.progression(0) == 0.0
    with pytest.raises(ValueError, match="expected 2 actions"):
        a.step(["Do"] * 4)
    with pytest.raises(IndexError, match=r"env index 2 outside \[0, 2\)"):
        a.reset([5], [2])


def _plays(results) -> dict[int, list[tuple]]:
    return {r.seed: [(x["step"], x["phase"], x.get("executed_action"), x.get("reward"))
                     for x in read_jsonl(r.trace_path)] for r in results}


def test_rollouts_side_by_side_play_as_they_would_alone(tmp_path):
    """Two rollouts (different specs, seed lists) on one 3-slot env: 4 + 2 episodes get 2 + 1 slots, queue in
    them, share every generate call, and play exactly what each plays alone."""
    v0, v5 = load_spec(SPECS / "crafter_v0.yaml"), load_spec(SPECS / "crafter_v5.yaml")
    engine = ScriptedEngine(scripted)
    env = LineWorldEnv(3, horizon=4)
    ra, rb = slot_ranges(env, [4, 2])
    rollouts = [Rollout([EnvJob(ra, [1, 2, 3, 4])], engine, v0, tmp_path / "a", run_id="a", max_steps=10,
                        sampling=engine_sampling()),
                Rollout([EnvJob(rb, [5, 6])], engine, v5, tmp_path / "b", run_id="b", max_steps=10,
                        sampling=engine_sampling())]
    together = run_together(rollouts)
    assert max(engine.batches) == 3  # both rollouts' slots in one call
    assert sorted(r.seed for r in together[0]) == [1, 2, 3, 4] and sorted(r.seed for r in together[1]) == [5, 6]
    alone_a = run_episodes([EnvJob(LineWorldEnv(2, horizon=4), [1, 2, 3, 4])], ScriptedEngine(scripted), v0,
                           tmp_path / "alone_a", run_id="a", max_steps=10, sampling=engine_sampling())
    alone_b = run_episodes([EnvJob(LineWorldEnv(1, horizon=4), [5, 6])], ScriptedEngine(scripted), v5,
                           tmp_path / "alone_b", run_id="b", max_steps=10, sampling=engine_sampling())
    assert _plays(together[0]) == _plays(alone_a) and _plays(together[1]) == _plays(alone_b)
    assert {r.seed: r.progression for r in together[0] + together[1]} == {
        r.seed: r.progression for r in alone_a + alone_b}
    assert {x["spec"] for x in read_jsonl(tmp_path / "b" / "episodes.jsonl")} == {"crafter_v5"}
    with pytest.raises(ValueError, match="same engine"):
        run_together([Rollout([EnvJob(LineWorldEnv(1), [1])], ScriptedEngine(scripted), v0, tmp_path / "c",
                              run_id="c", max_steps=2, sampling=engine_sampling()), rollouts[0]])


def engine_sampling():
    from automem_jax.engine.base import SamplingParams
    return SamplingParams(seed=0)


def test_real_parts_rollout_many_shares_one_env_and_the_engine(tmp_path):
    c = integration_config()
    c.num_envs = 6
    made: list[LineWorldEnv] = []

    def make_env(name, n):
        made.append(LineWorldEnv(n, horizon=5))
        return made[-1]

    engine = ScriptedEngine(integration_scripted)
    parts = build_parts(c, tmp_path, engine=engine, make_env=make_env)
    calls = [RolloutCall(spec=load_spec(str(SPECS / name)), seeds=[100, 101, 102], out_dir=tmp_path / label,
                         run_id=label, desc=label) for label, name in (("v0", "crafter_v0.yaml"),
                                                                        ("none", "nomemory.yaml"))]
    results = parts.rollout_many(calls)
    assert len(made) == 1 and max(engine.batches) == 6  # one 6-slot env; both rows in one generate call
    assert [sorted(r.seed for r in rs) for rs in results] == [[100, 101, 102]] * 2
    for call in calls:
        assert load_spec(str(call.out_dir / "spec.yaml")).name == call.spec.name
        summary = json.loads((call.out_dir / "summary.json").read_text())
        assert summary["environments"]["crafter"]["episodes_played"] == 3
        assert summary["client"]["client_name"] == "ScriptedEngine"
    alone = build_parts(c, tmp_path / "alone", engine=ScriptedEngine(integration_scripted),
                        make_env=lambda name, n: LineWorldEnv(n, horizon=5))
    for call, rs in zip(calls, results):
        again = alone.rollout(RolloutCall(spec=call.spec, seeds=call.seeds, out_dir=tmp_path / "alone" / call.run_id,
                                          run_id=call.run_id))
        assert {r.seed: r.progression for r in rs} == {r.seed: r.progression for r in again}
        assert _plays(rs) == _plays(again)
