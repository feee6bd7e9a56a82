"""The batched TextEnv over a worker pool, shared by every CPU-bound family (NetHack, MiniHack, reference Crafter).

Families differ only in hooks: the spec their workers build, the action table, the instruction, progression, and
how a finished slot's result reads as "done" or "truncated".
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from automem_jax.envs.base import BatchedTextEnv, Observation, Step
from automem_jax.envs.worker_pool import SlotResult, SlotSpec, WorkerPool

CRASHED_TEXT = "The game crashed; this episode is over."


def default_num_workers(num_envs: int) -> int:
    return max(1, min(num_envs, os.cpu_count() or 1))


class PoolTextEnv(BatchedTextEnv):
    """Subclasses set `family`, `default_action` and implement `instruction`, `_progression_of`, `_actions`;
    `_end_status` tells a finished slot's status when the family has its own signal for truncation."""

    def __init__(self, spec: SlotSpec, num_envs: int, num_workers: int | None, *, task: str, start_method: str,
                 step_timeout: float, reset_timeout: float):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.task = task
        self.num_workers = default_num_workers(num_envs) if num_workers is None else int(num_workers)
        self.pool = WorkerPool(spec, num_envs, self.num_workers, start_method=start_method,
                               step_timeout=step_timeout, reset_timeout=reset_timeout)
        try:
            self.action_names, self.action_keys = self._actions()
        except Exception:
            self.pool.close()
            raise
        if self.default_action not in self.action_names:
            self.pool.close()
            raise ValueError(f"{task}: default action {self.default_action!r} is not among its actions "
                             f"{self.action_names}")
        super().__init__(num_envs)
        self._last: list[SlotResult | None] = [None] * num_envs
        self._render_s, self._render_n = 0.0, 0
        self._fused_seeds: dict[int, int] = {}  # resets riding along with the next step's round trip
        self._fused_results: dict[int, SlotResult] = {}

    def _actions(self) -> tuple[list[str], list[tuple[int, ...]]]:
        raise NotImplementedError

    def _end_status(self, r: SlotResult) -> str:
        return "truncated" if r.truncated and not r.terminated else "done"

    # ----- conversions -----
    def _observation(self, r: SlotResult) -> Observation:
        self._render_s += r.render_s
        self._render_n += 1
        return Observation(text=r.text, status=r.status, done=r.done, info=dict(r.info))

    def _crashed_step(self, i: int, error: str) -> Step:
        last = self._last[i]
        obs = Observation(text=CRASHED_TEXT, status=last.status if last else "", done=True,
                          info={"error": error})
        return Step(obs, 0.0, True, {"status": "crashed", "error": error})

    # ----- BatchedTextEnv hooks -----
    def _reset_envs(self, seeds: Sequence[int], indices: Sequence[int]) -> list[Observation]:
        fused, self._fused_results = self._fused_results, {}
        results = fused if all(i in fused for i in indices) else self.pool.reset(dict(zip(indices, seeds)))
        obs = []
        for i in indices:
            r = results[i]
            if r.crashed:
                raise RuntimeError(f"{self.task}: reset of env {i} failed:\n{r.error}")
            self._last[i] = r
            obs.append(self._observation(r))
        return obs

    def _step_envs(self, action_ids: Sequence[int | None]) -> list[Step | None]:
        request = {i: self.action_keys[a] for i, a in enumerate(action_ids) if a is not None}
        fused = self._fused_seeds
        results, lost = {}, set()
        if request or fused:
            results, self._fused_results, lost = self.pool.step_reset(request, fused)
            lost -= set(fused)
        steps: list[Step | None] = [None] * self.num_envs
        for i, r in results.items():
            if r.crashed:
                steps[i] = self._crashed_step(i, r.error)
                continue
            self._last[i] = r
            info: dict[str, Any] = {"status": self._end_status(r)} if r.done else {}
            info.update(self._step_info(r))
            steps[i] = Step(self._observation(r), r.reward, r.done, info)
        # Held slots on a crashed worker lost their game too: end those episodes here (the driver only books
        # stepped slots) and hand back a crashed Step so the caller sees it.
        for i in sorted(lost - set(results)):
            ep = self._episodes[i]
            if ep is not None and not ep.done:
                ep.done, ep.status = True, "crashed"
                steps[i] = self._crashed_step(i, "worker crashed while this env was held")
        return steps

    def step_and_reset(self, actions: Sequence[str | None], resets: Mapping[int, int]
                       ) -> tuple[list[Step | None], list[Observation]]:
        """`step(actions)` plus `reset(seeds, indices)` of the `resets` slots (index -> seed) in ONE round trip to
        the workers, so a batch with finished episodes costs one lockstep wait instead of two (a reset is ~5 ms of
        NetHack, ~20 steps). Reset slots must not be stepped. Returns (steps, first observations in `resets`
        order); the bookkeeping is exactly that of `step` followed by `reset`."""
        resets = {int(i): int(s) for i, s in resets.items()}
        for i in resets:
            if not 0 <= i < self.num_envs:
                raise IndexError(f"step_and_reset: env index {i} outside [0, {self.num_envs})")
            ep = self._episodes[i]
            if actions[i] is not None and ep is not None and not ep.done:
                raise ValueError(f"step_and_reset: env {i} is both stepped and reset; give it action None")
        self._fused_seeds = resets
        try:
            steps = self.step(actions)
        except BaseException:
            self._fused_results = {}
            raise
        finally:
            self._fused_seeds = {}
        return steps, (self.reset(list(resets.values()), list(resets)) if resets else [])

    def _step_info(self, r: SlotResult) -> dict[str, Any]:
        """What of a step's result goes into `Step.info` (the family's extras by default)."""
        return dict(r.info)

    # ----- extras -----
    @property
    def render_us_per_obs(self) -> float:
        return 1e6 * self._render_s / max(1, self._render_n)

    def close(self) -> None:
        self.pool.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
