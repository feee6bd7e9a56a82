"""crafter:reference: the crafter 1.8.3 package in worker processes, checked against the package itself driven the
way BALROG drives it (frames drawn, text from BALROG's describe_frame: tests/balrog_crafter.py)."""
from __future__ import annotations

import os
import random
import signal
import time

import balrog_crafter
import numpy as np
import pytest

crafter = pytest.importorskip("crafter")

from automem_jax.envs import crafter_text as ct  # noqa: E402
from automem_jax.envs import make  # noqa: E402
from automem_jax.envs.crafter_reference import (CrafterReferenceTextEnv, CrafterSpec,  # noqa: E402
                                                balrog_crafter_class, make_crafter_env)
from automem_jax.envs.worker_pool import alive  # noqa: E402


@pytest.fixture(scope="module")
def env():
    e = make("crafter:reference", 3, num_workers=2)
    assert isinstance(e, CrafterReferenceTextEnv) and e.family == "crafter" and e.task == "reference"
    yield e
    e.close()


class BalrogDriven:
    """crafter.Env as AutoMem's evaluator and BALROG's CrafterLanguageWrapper run it: a fresh env per seed, frames
    drawn (256 px), reset + Noop, one more frame per step; text and progression from the package's own info.
    (Its chunks keep insertion order, as in the workers: the plain package replays a seed differently in every
    process, see crafter_reference.py.)"""

    def __init__(self, seed: int):
        self.env = make_crafter_env(CrafterSpec(pixels=True), seed=seed)
        assert isinstance(self.env, crafter.Env) and self.env.pixels
        self.env.reset()
        self.info = self._step(0)[2]
        names = [None] * 19
        for name, i in list(self.env._world._mat_ids.items()) + list(self.env._sem_view._obj_ids.items()):
            names[i] = name.__name__.lower() if isinstance(name, type) else str(name)
        self.names, self.player_id = names, names.index("player")

    def _step(self, action: int):
        _, reward, done, info = self.env.step(action)
        self.env.render()
        return reward, done, info

    def step(self, action: int):
        reward, done, self.info = self._step(action)
        return reward, done

    def text(self) -> tuple[str, str]:
        p = self.env._player
        return balrog_crafter.describe_frame(self.info["semantic"], self.info["player_pos"], p.facing, p.sleeping,
                                             self.info["inventory"], self.names, self.player_id)

    def progression(self) -> float:
        return sum(v > 0 for v in self.info["achievements"].values()) / 22


def test_text_and_progression_follow_the_package_over_played_steps(env):
    """200 steps of a scripted random policy, night included: the pooled env (another process, frames skipped,
    env reused across seeds) gives the text, status, reward, done flag and progression that BALROG reads off the
    package's own info at every step."""
    ref = BalrogDriven(seed=7)
    obs = env.reset([7], indices=[0])[0]
    assert (obs.text, obs.status) == ref.text()
    rng = random.Random(3)
    nights = 0
    for t in range(200):
        a = rng.choice(ct.ACTIONS[:11]) if rng.random() < 0.8 else "Do"
        step = env.step([a, None, None])[0]
        reward, done = ref.step(ct.ACTIONS.index(a))
        nights += ref.env._world.daylight < 0.5
        assert (step.observation.text, step.observation.status) == ref.text(), f"step {t + 1}"
        assert step.reward == pytest.approx(reward) and step.done == done
        assert env.progression(0) == pytest.approx(ref.progression())
        if done:
            break
    assert nights > 0, "the episode never reached night: the frames' random numbers went unchecked"
    assert env.progression(0) > 0  # the policy unlocked something, so progression was compared on a real value


def test_reset_is_seed_deterministic_and_reuses_envs_faithfully(env):
    a, b, c = env.reset([42, 42, 43])
    assert (a.text, a.status) == (b.text, b.status) and a.text != c.text
    env.step(["Move West", "Do", "Noop"])
    again = env.reset([42], indices=[2])[0]  # a worker's env, reused for another seed's episode
    assert again.text == a.text == BalrogDriven(seed=42).text()[0]
    assert env.episode(2).steps == 0 and env.progression(2) == 0.0


def test_frames_draw_the_same_random_numbers_without_pixels():
    """A night frame draws noise from the world's RNG; skipping the pixels must leave the RNG where a frame does."""
    cls = balrog_crafter_class()
    fast, full = make_crafter_env(CrafterSpec(), seed=5), make_crafter_env(CrafterSpec(pixels=True), seed=5)
    assert isinstance(fast, cls) and not fast.pixels and full.pixels
    for e in (fast, full):
        e.reset()
    for daylight in (0.9, 0.2):
        fast._world.daylight = full._world.daylight = daylight
        assert fast.render() is None and full.render().shape == (256, 256, 3)
        a, b = fast._world.random.get_state(), full._world.random.get_state()
        assert a[2] == b[2] and np.array_equal(a[1], b[1]), daylight
    fast._world.daylight = 0.2
    before = fast._world.random.get_state()[2]
    fast.render()
    assert fast._world.random.get_state()[2] != before  # at night the numbers are really drawn


def test_episode_truncates_at_max_episode_steps():
    e = CrafterReferenceTextEnv(1, num_workers=1, max_episode_steps=3)
    try:
        e.reset([1])
        steps = [e.step(["Noop"])[0] for _ in range(3)]
        assert [s.done for s in steps] == [False, False, True]
        assert steps[-1].info["status"] == "truncated" and e.episode(0).status == "truncated"
        assert len(steps[-1].info["achievements"]) == 22
    finally:
        e.close()


def test_killed_worker_ends_its_episodes_as_crashed_and_is_replaced(env):
    env.reset([1, 2, 3])
    pids = env.pool.worker_pids()
    victim = env.pool.worker_of(0)
    os.kill(pids[victim], signal.SIGKILL)
    time.sleep(0.2)
    steps = env.step(["Noop", "Noop", "Noop"])
    lost = set(env.pool.worker_slots[victim])
    for i in range(3):
        crashed = steps[i].info.get("status") == "crashed"
        assert crashed == (i in lost), i
    assert env.pool.restarts >= 1 and not alive(pids[victim])
    obs = env.reset([1, 2, 3])  # the replacement worker plays again
    assert all(o.text.startswith("You see") for o in obs)


def test_bad_options_name_the_field():
    with pytest.raises(ValueError, match="view must be"):
        CrafterSpec(view=(7, 7))
    with pytest.raises(ValueError, match="unique_items"):
        CrafterSpec(unique_items=False)
    with pytest.raises(ValueError, match="max_episode_steps"):
        CrafterSpec(max_episode_steps=0)
    with pytest.raises(TypeError, match="reset_noop"):
        CrafterReferenceTextEnv(1, reset_noop=False)
    with pytest.raises(ValueError, match="crafter:reference"):
        make("crafter:bogus", 1)


def test_prompts_state_the_running_engines_recipes(env):
    p = env.instruction()
    # BALROG's own prompt, verbatim, for the package BALROG ran
    for line in ("Make Wood Pickaxe: craft a wood pickaxe with a nearby table and wood in inventory,",
                 "Make Stone Pickaxe: craft a stone pickaxe with a nearby table, wood, and stone in inventory,",
                 "Make Iron Pickaxe: craft an iron pickaxe with a nearby table and furnace, wood, coal, and iron in "
                 "inventory,",
                 "Make Iron Sword: craft an iron sword with a nearby table and furnace, wood, coal, and iron in "
                 "inventory.\n\nThese are the game achievements you can get:"):
        assert line in p
    q = ct.instruction_prompt(ct.CRAFTAX_CLASSIC_RECIPES)
    assert q.replace(", iron, and stone in", ", and iron in") == p  # only the iron tools' stone differs


def test_crafter_recipes_are_the_packages(env):
    """The recipes the prompt states are what the package does (measured, fast: no Craftax here)."""
    from automem_jax.bench.crafter_probes import CrafterProbe
    from automem_jax.bench.crafter_rules import MAKES, recipe
    probe = CrafterProbe()
    for action in MAKES:
        got = recipe(probe, action)
        stations, materials = ct.CRAFTER_RECIPES.make[action]
        assert got["stations"] == sorted(stations) and got["uses"] == {m: 1 for m in materials}, action


@pytest.mark.slow
def test_rule_differences_measured_on_both_packages():
    """docs/ENVS.md's table, measured on crafter 1.8.3 and Craftax-Classic 1.6.1 in matching situations."""
    from automem_jax.bench.crafter_probes import CraftaxProbe, CrafterProbe
    from automem_jax.bench.crafter_rules import MAKES, differences, measure, worlds
    a, b = CrafterProbe(), CraftaxProbe()
    names = [f"recipe/{m}" for m in MAKES] + ["recipe/Place Furnace", "recipe/Place Table", "collecting",
                                              "surfaces", "creatures", "plants"]
    r = measure([a, b], names)
    for engine, recipes in (("crafter", ct.CRAFTER_RECIPES), ("craftax-classic", ct.CRAFTAX_CLASSIC_RECIPES)):
        for action in MAKES:  # each prompt states its engine's recipes
            stations, materials = recipes.make[action]
            got = r[f"recipe/{action}"][engine]
            assert got["stations"] == sorted(stations) and got["uses"] == {m: 1 for m in materials}, (engine, action)
    assert r["recipe/Place Furnace"]["crafter"]["needs"] == {"stone": 4}
    assert r["recipe/Place Furnace"]["craftax-classic"]["needs"] == {"stone": 1}
    table = r["recipe/Place Table"]
    assert table["crafter"]["uses"] == table["craftax-classic"]["uses"] == {"wood": 2}
    for engine in ("crafter", "craftax-classic"):  # a mined tree turns to grass in both packages
        assert r["collecting"][engine]["tree"] == {"needs": "none", "gives": {"wood": 1}, "leaves": "grass",
                                                   "second_do_gives": {"wood": 0}}
    assert "lava" in r["surfaces"]["craftax-classic"]["Place Table"]
    assert "lava" not in r["surfaces"]["crafter"]["Place Table"]
    assert r["creatures"]["craftax-classic"]["zombie"]["hit_gives_wake_up"]
    assert not r["creatures"]["crafter"]["zombie"]["hit_gives_wake_up"]
    ripe = r["plants"]
    assert (ripe["crafter"]["ripe_after_steps"], ripe["craftax-classic"]["ripe_after_steps"]) == (301, 599)
    found = {d["what"] for d in differences(r)}
    assert found >= {"recipe/Place Furnace/needs/stone", "recipe/Make Iron Pickaxe/uses/stone"}
    w = worlds(a, b, [42])["per_seed"][0]
    assert w["equal_cells"] < 0.5 and w["facing_crafter"] == (0, 1) and w["facing_craftax"] == (0, -1)
    assert w["cow_crafter"] > 3 and w["cow_craftax"] == 0  # crafter starts with creatures, Craftax-Classic without


def test_config_takes_the_reference_env_but_not_beside_craftax():
    from automem_jax.orchestrate import config as cfg_lib
    c = cfg_lib.base_config()
    c.envs = ("crafter:reference", "nethack")
    assert cfg_lib.expand_envs(cfg_lib.validate(c).envs) == ["crafter:reference", "nethack"]
    c.envs = ("crafter", "crafter:reference")  # both are env "crafter" in BALROG's summary: they would pool
    with pytest.raises(cfg_lib.ConfigError, match=r"config.envs: .*pool into one 'crafter' env.*two runs"):
        cfg_lib.validate(c)
