"""NetHack/MiniHack envs as worker-pool slots: what a worker builds (`EnvSpec`) and how one env answers (`NLESlot`).

The process pool itself is family-agnostic (worker_pool.py); this module is the NLE side of it: key presses with
BALROG's AutoMore, NLE seeding, and the hybrid text rendered inside the worker.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

from automem_jax.envs.worker_pool import SlotResult

# blstats indices (nle.nethack.NLE_BL_*), kept here so the parent never needs to import nle.
BL_DEPTH, BL_XLVL, BL_TIME = 12, 18, 20


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """What each worker builds: `nle_common.make_raw_env(family, task, overrides, boxoban_levels_dir)`."""

    family: str  # "nethack" | "minihack"
    task: str
    overrides: tuple[tuple[str, Any], ...] = ()
    boxoban_levels_dir: str | None = None
    render: bool = True  # False: skip the text (benchmarking the bare env)

    def make_slot(self) -> "NLESlot":
        return NLESlot(self)


class NLESlot:
    """One NLE env inside a worker. `info` of its results: message, blstats, end_status."""

    def __init__(self, spec: EnvSpec):
        from automem_jax.envs import nle_common
        self.common = nle_common
        self.spec = spec
        self.env = nle_common.make_raw_env(spec.family, spec.task, dict(spec.overrides), spec.boxoban_levels_dir)

    def _result(self, obs, reward=0.0, term=False, trunc=False, info=None, message=None) -> SlotResult:
        from automem_jax.envs import nle_text
        t0 = time.perf_counter()
        text = status = ""
        if self.spec.render:
            text, status = nle_text.render_hybrid(obs, message)
        elif message is None:
            message = ""
        extras = {"end_status": int((info or {}).get("end_status", 0)), "blstats": tuple(obs["blstats"].tolist()),
                  "message": message or ""}
        return SlotResult(text=text, status=status, reward=float(reward), terminated=bool(term),
                          truncated=bool(trunc), info=extras, render_s=time.perf_counter() - t0)

    def action_keys(self) -> list[int]:
        return [int(a) for a in self.env.unwrapped.actions]

    def reset(self, seed: int) -> SlotResult:
        self.common.seed_nle(self.env, seed)
        obs, info = self.env.reset()
        return self._result(obs, info=info)

    def step(self, keys: Sequence[int]) -> SlotResult:
        actions = self.env.unwrapped.actions
        more = actions.index(self.common.MORE_KEY) if self.common.MORE_KEY in actions else None
        reward, messages = 0.0, []
        for key in keys:  # "00".."99" are two key presses; the episode may end after the first
            obs, r, term, trunc, info, msg = self.common.auto_more_step(self.env.step, actions.index(key), more)
            reward += r
            messages.append(msg)
            if term or trunc:
                break
        return self._result(obs, reward, term, trunc, info, messages[-1])

    def close(self) -> None:
        self.env.close()
