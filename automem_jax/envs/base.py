"""The TextEnv seam: batched text environments shared by Crafter, MiniHack and NetHack.

Every env family subclasses `BatchedTextEnv` and implements three hooks; action validation, BALROG's
invalid-action fallback + feedback text, holding finished envs, and episode bookkeeping live here
once, so no family repeats them.

Validation is BALROG's (`EnvWrapper.check_action_validity`): the candidate must be an exact member of the action
names, else the env's default action runs, the candidate is kept in `failed_candidates` and the next observation
carries BALROG's feedback text. Lenient repair (case, quotes, diagonals, ...) is a spec option applied by the agent
before the env sees the candidate (`memory/action_repair.py`), never here.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

# BALROG's evaluator prefixes the next long-term context with exactly this text (balrog/evaluator.py).
INVALID_ACTION_FEEDBACK = ("\n\nYour previous output did not contain a valid action. Defaulted to action: {action}"
                           "\n\nObservation:\n")


@dataclasses.dataclass
class Observation:
    text: str  # BALROG long-term context (what the agent sees of the world)
    status: str  # BALROG short-term context (status / inventory)
    done: bool = False
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Step:
    observation: Observation
    reward: float
    done: bool
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class EpisodeStats:
    """Bookkeeping for the episode running in one env slot."""

    seed: int
    steps: int = 0
    total_reward: float = 0.0
    progression: float = 0.0  # running value in [0, 1], BALROG's definition for the env
    invalid_actions: int = 0  # == len(failed_candidates)
    done: bool = False
    status: str = "running"  # running | done | truncated | crashed
    failed_candidates: list[str] = dataclasses.field(default_factory=list)  # BALROG: the invalid candidates, raw
    action_frequency: dict[str, int] = dataclasses.field(default_factory=dict)  # BALROG: executed action -> count


@runtime_checkable
class TextEnv(Protocol):
    family: str  # "crafter" | "minihack" | "nethack"
    task: str  # e.g. "crafter", "MiniHack-MazeWalk-9x9-v0", "NetHackChallenge-v0"
    num_envs: int
    action_names: list[str]
    default_action: str

    def instruction(self) -> str: ...
    def reset(self, seeds: Sequence[int], indices: Sequence[int] | None = None) -> list[Observation]: ...
    def step(self, actions: Sequence[str | None]) -> list[Step | None]: ...
    def progression(self, index: int) -> float: ...
    def episode(self, index: int) -> EpisodeStats: ...
    def close(self) -> None: ...


def resolve_action(action: str | None, action_names: Sequence[str] | Mapping[str, int],
                   default: str) -> tuple[str, bool]:
    """BALROG's validity check: (action, True) when `action` is an exact member of the names, else (default, False).

    No stripping or case folding: " Noop" and "noop" are invalid, as in BALROG. `action_names` may be a
    name->index mapping so the lookup is O(1) (NetHack has 248 names).
    """
    if action is not None and action in action_names:
        return action, True
    return default, False


class BatchedTextEnv(abc.ABC):
    """Shared driver. Subclasses implement `_reset_envs`, `_step_envs`, `_progression_of` and `instruction`.

    `step(actions)` takes one entry per env slot; `None` holds that env (not stepped, result `None`), which is how
    the agent keeps finished or waiting envs out of a batched step.
    """

    family: str = ""
    task: str = ""
    action_names: list[str] = []
    default_action: str = ""

    def __init__(self, num_envs: int):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.num_envs = num_envs
        self._episodes: list[EpisodeStats | None] = [None] * num_envs
        self._action_index = {name: i for i, name in enumerate(self.action_names)}

    # ----- hooks -----
    @abc.abstractmethod
    def instruction(self) -> str: ...

    @abc.abstractmethod
    def _reset_envs(self, seeds: Sequence[int], indices: Sequence[int]) -> list[Observation]:
        """Reset the given env slots with the given seeds; return their first observations."""

    @abc.abstractmethod
    def _step_envs(self, action_ids: Sequence[int | None]) -> list[Step | None]:
        """Step every slot whose action id is not None (ids index `action_names`)."""

    @abc.abstractmethod
    def _progression_of(self, index: int, step: Step | None) -> float:
        """Running progression of the episode in slot `index`, after `step` (None right after reset)."""

    def close(self) -> None:  # pragma: no cover - families with resources override
        pass

    # ----- driver -----
    def reset(self, seeds: Sequence[int], indices: Sequence[int] | None = None) -> list[Observation]:
        indices = list(range(self.num_envs)) if indices is None else list(indices)
        if len(seeds) != len(indices):
            raise ValueError(f"reset: got {len(seeds)} seeds for {len(indices)} env slots")
        for i in indices:
            if not 0 <= i < self.num_envs:
                raise IndexError(f"reset: env index {i} outside [0, {self.num_envs})")
        obs = self._reset_envs([int(s) for s in seeds], indices)
        for i, s in zip(indices, seeds):
            self._episodes[i] = EpisodeStats(seed=int(s))
            self._episodes[i].progression = self._progression_of(i, None)
        return obs

    def step(self, actions: Sequence[str | None]) -> list[Step | None]:
        if len(actions) != self.num_envs:
            raise ValueError(f"step: expected {self.num_envs} actions (None holds an env), got {len(actions)}")
        ids: list[int | None] = []
        executed: list[tuple[str, bool] | None] = []
        for i, a in enumerate(actions):
            ep = self._episodes[i]
            if a is None or ep is None or ep.done:
                ids.append(None)
                executed.append(None)
                continue
            name, valid = resolve_action(a, self._action_index, self.default_action)
            ids.append(self._action_index[name])
            executed.append((name, valid))
        steps = self._step_envs(ids)
        for i, st in enumerate(steps):
            if st is None or executed[i] is None:
                continue
            name, valid = executed[i]
            ep = self._episodes[i]
            ep.steps += 1
            ep.total_reward += float(st.reward)
            ep.action_frequency[name] = ep.action_frequency.get(name, 0) + 1
            if not valid:
                ep.invalid_actions += 1
                ep.failed_candidates.append(str(actions[i]))
                st.observation.text = INVALID_ACTION_FEEDBACK.format(action=name) + st.observation.text
            st.info.update(executed_action=name, valid_action=valid)
            ep.progression = max(ep.progression, self._progression_of(i, st)) if self._monotone_progression else \
                self._progression_of(i, st)
            if st.done:
                ep.done = True
                ep.status = st.info.get("status", "done")
            st.info.setdefault("progression", ep.progression)
        return steps

    # Crafter and NetHack progression never decreases; MiniHack's is "success on the final step".
    _monotone_progression: bool = True

    def progression(self, index: int) -> float:
        ep = self._episodes[index]
        return 0.0 if ep is None else ep.progression

    def episode(self, index: int) -> EpisodeStats:
        ep = self._episodes[index]
        if ep is None:
            raise RuntimeError(f"env slot {index} has not been reset")
        return ep
