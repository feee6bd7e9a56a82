"""`crafter:reference`: the Python `crafter` package (1.8.3, the game BALROG and AutoMem ran) in the CPU worker pool.

`crafter` (Craftax-Classic on the accelerator) stays the fast default; this env gives numbers comparable with the
paper's and BALROG's: the package's own rules and worlds, driven exactly as BALROG's `CrafterLanguageWrapper`
drives it, with the same TextEnv seam (worker_pool / pool_env, shared with NetHack and MiniHack).

BALROG's protocol, reproduced here:
  * kwargs area (64, 64), view (9, 9), size (256, 256), reward on; BALROG's `max_episode_steps` 2000 agent steps.
  * seeding: AutoMem builds `crafter.Env(seed=s)` per episode and resets it once, so the world is
    `hash((s, 1)) % (2**31 - 1)`; a worker's env reused with `_seed = s, _episode = 0` reaches the same world.
  * reset = `env.reset()` then one Noop step (not counted as an agent step); text and status from that step's info.
  * frames: crafter draws one frame per step and BALROG's wrapper draws another; at night a frame draws noise from
    the world's RNG, so the frames change the game. Without `pixels` the same random numbers are drawn and
    dropped (a frame's pixels cost ~10 ms, its numbers ~0.5 ms): the game sees the same numbers either way.
  * determinism: crafter picks which creature to despawn by a set's iteration order (memory addresses), so the
    package itself replays a seed differently in every process; the chunks here keep insertion order instead,
    so a seed and its actions give one episode (the world is the package's, the rules unchanged).
  * text: BALROG's describe_frame (unique_items=True, precise_location=False, no skipped or edge-only items),
    through the renderer shared with Craftax-Classic (crafter_text); progression = achievements with count > 0 / 22.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Sequence

import numpy as np

from automem_jax.envs import crafter_text as ct
from automem_jax.envs.base import Step
from automem_jax.envs.pool_env import PoolTextEnv
from automem_jax.envs.progression import crafter_progression
from automem_jax.envs.worker_pool import SlotResult

CRAFTER_VERSION = "1.8.3"


@dataclasses.dataclass(frozen=True)
class CrafterSpec:
    """BALROG's crafter_kwargs (balrog/config/config.yaml); each worker builds one `crafter.Env` per slot."""

    area: tuple[int, int] = (64, 64)
    view: tuple[int, int] = (9, 9)
    size: tuple[int, int] = (256, 256)  # frame size: sets how many random numbers a night frame draws
    max_episode_steps: int = 2000
    unique_items: bool = True
    pixels: bool = False  # True: draw the frames (slow); False: draw only their random numbers
    family: str = "crafter"

    def __post_init__(self):
        for name in ("area", "view", "size"):
            v = getattr(self, name)
            if not (isinstance(v, (tuple, list)) and len(v) == 2 and all(int(x) >= 1 for x in v)):
                raise ValueError(f"crafter:reference {name} must be two positive ints, e.g. (64, 64); got {v!r}")
            object.__setattr__(self, name, (int(v[0]), int(v[1])))
        if self.view != (9, 9):
            raise ValueError(f"crafter:reference view must be (9, 9): BALROG's text reads the 9x7 window above the "
                             f"inventory rows; got {self.view}")
        if not self.unique_items:
            raise ValueError("crafter:reference implements BALROG's unique_items=True text only (one line per item "
                             "kind, its closest instance); drop unique_items=False")
        if int(self.max_episode_steps) < 1:
            raise ValueError(f"crafter:reference max_episode_steps must be >= 1, got {self.max_episode_steps}")

    def make_slot(self) -> "CrafterSlot":
        return CrafterSlot(self)


class InsertionOrderedSet(dict):
    """The set API crafter's chunks use (add, remove, iteration, len), iterated in insertion order."""

    def add(self, item) -> None:
        self[item] = None

    def remove(self, item) -> None:
        del self[item]


@functools.lru_cache(maxsize=1)
def balrog_crafter_class() -> type:
    """`crafter.Env` whose frames are optional (`pixels`) and whose episodes follow from the seed; imported lazily,
    in the worker processes only."""
    import collections

    import crafter
    from crafter import engine

    class OrderedChunksWorld(engine.World):
        # crafter keeps each chunk's creatures in a set, and despawning picks one by its index in that set's
        # iteration order, i.e. by memory address: the same seed and actions give different episodes from one
        # process to the next (bench/crafter_rules.py `replays`). Insertion order makes the pick reproducible.
        def reset(self, seed=None):
            super().reset(seed)
            self._chunks = collections.defaultdict(InsertionOrderedSet)

    class BalrogCrafter(crafter.Env):
        pixels = False

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._world.__class__ = OrderedChunksWorld  # the views hold this very world object

        def render(self, size=None):
            if self.pixels or size is not None:
                return super().render(size)
            self.draw_frame_noise()
            return None

        def draw_frame_noise(self) -> None:
            """The random numbers a frame draws: `LocalView._light` adds noise of the local view's pixel shape
            (grid * size // view) only while daylight < 0.5; nothing else in a frame touches the world's RNG."""
            if self._world.daylight < 0.5:
                unit = np.asarray(self._size) // self._view
                shape = tuple(int(v) for v in np.asarray(self._local_view._grid) * unit)
                self._world.random.uniform(32, 127, shape[:2])

    return BalrogCrafter


def make_crafter_env(spec: CrafterSpec, seed: int = 0):
    env = balrog_crafter_class()(area=spec.area, view=spec.view, size=spec.size, reward=True, seed=int(seed))
    env.pixels = spec.pixels
    return env


def reseed(env, seed: int) -> None:
    """Make the next `reset()` build the world of a fresh `crafter.Env(seed=seed)`'s first episode."""
    env._seed, env._episode = int(seed), 0


def crafter_tables(env, info: dict[str, Any]) -> dict[str, np.ndarray]:
    """Renderer tables from a step's info, as BALROG's describe_frame reads it."""
    inv = info["inventory"]
    return ct.tables_from_semantic(info["semantic"], info["player_pos"], env._player.facing,
                                   [inv[v] for v in ct.VITALS], [inv[k] for k in ct.INVENTORY],
                                   env._player.sleeping)


class CrafterSlot:
    """One crafter.Env in a worker. `info` of its results: achievement counts in `crafter_text.ACHIEVEMENTS` order."""

    def __init__(self, spec: CrafterSpec):
        self.spec = spec
        self.env = make_crafter_env(spec)
        self.renderer = ct.TextRenderer()
        self.steps = 0

    def _result(self, info: dict[str, Any], reward: float, done: bool) -> SlotResult:
        t0 = time.perf_counter()
        text, status = self.renderer.render(crafter_tables(self.env, info))[0]
        truncated = not done and self.steps >= self.spec.max_episode_steps
        counts = tuple(int(info["achievements"][a]) for a in ct.ACHIEVEMENTS)
        return SlotResult(text=text, status=status, reward=float(reward), terminated=bool(done), truncated=truncated,
                          info={"achievements": counts}, render_s=time.perf_counter() - t0)

    def action_keys(self) -> list[int]:
        return list(range(len(ct.ACTIONS)))

    def reset(self, seed: int) -> SlotResult:
        reseed(self.env, seed)
        self.env.reset()
        _, _, done, info = self.env.step(0)  # BALROG's reset Noop
        self.env.render()  # the wrapper's own frame of it
        self.steps = 0
        return self._result(info, 0.0, done)

    def step(self, keys: Sequence[int]) -> SlotResult:
        _, reward, done, info = self.env.step(int(keys[0]))
        self.env.render()
        self.steps += 1
        return self._result(info, reward, done)

    def close(self) -> None:
        pass


class CrafterReferenceTextEnv(PoolTextEnv):
    """N `crafter` 1.8.3 games in worker processes, rendered as BALROG's Crafter text; `make("crafter:reference")`.

    `crafter_kwargs` are `CrafterSpec` fields (BALROG's names: area, view, size, max_episode_steps, unique_items).
    """

    family = "crafter"
    default_action = "Noop"

    def __init__(self, num_envs: int, num_workers: int | None = None, *, start_method: str = "forkserver",
                 step_timeout: float = 60.0, reset_timeout: float = 300.0, **crafter_kwargs):
        fields = {f.name for f in dataclasses.fields(CrafterSpec)} - {"family"}
        unknown = sorted(set(crafter_kwargs) - fields)
        if unknown:
            raise TypeError(f"crafter:reference: unknown option(s) {unknown}; BALROG's crafter kwargs are "
                            f"{sorted(fields)}")
        spec = CrafterSpec(**crafter_kwargs)
        self.max_episode_steps = spec.max_episode_steps
        super().__init__(spec, num_envs, num_workers, task="reference", start_method=start_method,
                         step_timeout=step_timeout, reset_timeout=reset_timeout)

    def _actions(self) -> tuple[list[str], list[tuple[int, ...]]]:
        return list(ct.ACTIONS), [(i,) for i in range(len(ct.ACTIONS))]

    def instruction(self) -> str:
        return ct.instruction_prompt(ct.CRAFTER_RECIPES)

    def _step_info(self, r: SlotResult) -> dict[str, Any]:
        return {"achievements": [int(c > 0) for c in r.info["achievements"]]} if r.done else {}

    def achievements(self, index: int) -> np.ndarray:
        """bool [22] (`crafter_text.ACHIEVEMENTS` order) of slot `index`'s episode so far."""
        last = self._last[index]
        counts = last.info.get("achievements") if last is not None else None
        return np.asarray(counts, dtype=np.int64) > 0 if counts else np.zeros(len(ct.ACHIEVEMENTS), bool)

    def _progression_of(self, index: int, step: Step | None) -> float:
        return crafter_progression(self.achievements(index))
