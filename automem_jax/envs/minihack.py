"""BALROG's MiniHack tasks as a batched TextEnv over NLE worker processes."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from automem_jax.envs import nle_common
from automem_jax.envs.base import Step
from automem_jax.envs.nle_env import NLEPoolTextEnv
from automem_jax.envs.nle_pool import EnvSpec
from automem_jax.envs.progression import minihack_progression

BALROG_TASKS = (
    "MiniHack-Boxoban-Hard-v0", "MiniHack-Boxoban-Medium-v0", "MiniHack-MazeWalk-9x9-v0",
    "MiniHack-MazeWalk-15x15-v0", "MiniHack-Corridor-R3-v0", "MiniHack-CorridorBattle-Dark-v0",
    "MiniHack-Quest-Easy-v0", "MiniHack-Quest-Medium-v0",
)

BOXOBAN_HELP = ("Boxoban levels are not shipped with minihack: pass boxoban_levels_dir=DIR holding hard/*.txt and "
                "medium/train/*.txt (the full set: https://github.com/deepmind/boxoban-levels, Apache-2.0; a subset "
                "sits in the project's shared/data/boxoban-levels)")


class MiniHackTextEnv(NLEPoolTextEnv):
    """BALROG MiniHack: 100-step cap, step penalty -0.01, autopickup off, the env's actions intersected with
    BALROG's 33 names, goal line per task. Progression: 1 if the last step's reward >= 1.

    `autopickup=True` is AutoMem's paper setting (its scaffolds' config.yaml `minihack_kwargs.autopickup: True`;
    configs/minihack.py sets it through `config.env_kwargs.minihack.autopickup`): walking onto an item picks it up.
    """

    family = "minihack"
    default_action = "north"
    _monotone_progression = False  # success on the final step, not a running max

    def __init__(self, task: str, num_envs: int, num_workers: int | None = None, *,
                 boxoban_levels_dir: str | Path | None = None, autopickup: bool = False,
                 env_kwargs: dict[str, Any] | None = None, start_method: str = "forkserver",
                 step_timeout: float = 60.0, reset_timeout: float = 300.0, render: bool = True):
        if not task.startswith("MiniHack-"):
            raise ValueError(f"task must be a MiniHack task id such as 'MiniHack-MazeWalk-9x9-v0', got {task!r}")
        levels = None
        if "boxoban" in task.lower():
            if boxoban_levels_dir is None:
                raise ValueError(f"{task}: {BOXOBAN_HELP}")
            path = Path(boxoban_levels_dir).expanduser().resolve()
            sub = "hard" if "hard" in task.lower() else "medium/train"
            if not any((path / sub).glob("*.txt")):
                raise ValueError(f"{task}: boxoban_levels_dir={str(path)!r} has no {sub}/*.txt. {BOXOBAN_HELP}")
            levels = str(path)
        overrides = {"autopickup": bool(autopickup), **(env_kwargs or {})}
        spec = EnvSpec("minihack", task, tuple(sorted(overrides.items())), levels, render)
        super().__init__(spec, num_envs, num_workers, start_method=start_method, step_timeout=step_timeout,
                         reset_timeout=reset_timeout)

    def _actions(self):
        return nle_common.minihack_actions(self.pool.action_keys())

    def instruction(self) -> str:
        return nle_common.minihack_instruction(self.task, self.action_names)

    def _progression_of(self, index: int, step: Step | None) -> float:
        return 0.0 if step is None else minihack_progression([step.reward])
