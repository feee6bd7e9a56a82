"""MiniHack autopickup: off by default (BALROG), on in configs/minihack.py (AutoMem's paper configs), and it changes
the game: walking onto an apple picks it up only when on."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("minihack")

from automem_jax.envs import make  # noqa: E402
from automem_jax.orchestrate import config as cfg_lib  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASK = "MiniHack-Navigation-Custom-v0"


def apple_level() -> str:
    """A 5x3 room: the player at the west end, an apple one step east of it, stairs down at the east end."""
    from minihack import LevelGenerator
    lvl = LevelGenerator(w=5, h=3)
    lvl.set_start_pos((0, 1))
    lvl.add_object("apple", "%", place=(1, 1))
    lvl.add_goal_pos((4, 1))
    return lvl.get_des()


def step_onto_apple(env) -> tuple[str, str]:
    try:
        env.reset([0])
        step = env.step(["east"])[0]
        return step.observation.text, step.observation.status
    finally:
        env.close()


def minihack_config():
    spec = importlib.util.spec_from_file_location("cfg_minihack", REPO / "configs" / "minihack.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return cfg_lib.validate(mod.get_config())


def test_default_leaves_items_on_the_floor():
    assert cfg_lib.base_config().env_kwargs.minihack.autopickup is False
    text, status = step_onto_apple(make(f"minihack:{TASK}", 1, num_workers=1,
                                        env_kwargs={"des_file": apple_level()}))
    assert "You see here an apple." in text and "apple" not in status


def test_paper_config_turns_autopickup_on_and_the_agent_picks_the_apple_up(tmp_path):
    from automem_jax.orchestrate.real_parts import RealParts
    c = minihack_config()
    assert c.env_kwargs.minihack.autopickup is True
    c.num_envs = 1
    c.env_kwargs.minihack.env_kwargs = {"des_file": apple_level()}
    env = RealParts(c, tmp_path, model=object()).env(f"minihack:{TASK}")  # the config's path to envs.make
    text, status = step_onto_apple(env)
    assert "- an apple." in text.split("language observation:")[0]  # NetHack's pickup message, e.g. "i - an apple."
    assert "an apple" in status and "You see here" not in text
