"""The batched TextEnv over NLE worker slots, shared by NetHack and MiniHack (they differ only in hooks)."""
from __future__ import annotations

from typing import Any

from automem_jax.envs.nle_pool import BL_DEPTH, BL_XLVL, EnvSpec
from automem_jax.envs.pool_env import PoolTextEnv
from automem_jax.envs.worker_pool import SlotResult

ABORTED = -1  # nle.env.base.NLE.StepStatus.ABORTED


class NLEPoolTextEnv(PoolTextEnv):
    """Subclasses set `family`, `default_action` and implement `instruction`, `_progression_of`, `_actions`."""

    def __init__(self, spec: EnvSpec, num_envs: int, num_workers: int | None, *, start_method: str,
                 step_timeout: float, reset_timeout: float):
        super().__init__(spec, num_envs, num_workers, task=spec.task, start_method=start_method,
                         step_timeout=step_timeout, reset_timeout=reset_timeout)

    def _end_status(self, r: SlotResult) -> str:
        # NLE ends a capped episode with end_status ABORTED (-1), which BALROG reports as truncated.
        return "truncated" if r.info.get("end_status") == ABORTED else super()._end_status(r)

    def _step_info(self, r: SlotResult) -> dict[str, Any]:
        return {"end_status": r.info.get("end_status", 0), "message": r.info.get("message", "")}

    def blstats(self, index: int) -> tuple[int, ...]:
        last = self._last[index]
        return last.info.get("blstats", ()) if last is not None else ()

    def dlvl_xlvl(self, index: int) -> tuple[int, int]:
        b = self.blstats(index)
        return (int(b[BL_DEPTH]), int(b[BL_XLVL])) if b else (1, 1)
