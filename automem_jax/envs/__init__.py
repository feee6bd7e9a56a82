"""Batched text environments: `make(name, num_envs, **kw) -> TextEnv` with name "crafter" (Craftax-Classic on the
accelerator, the fast default), "crafter:reference" (the crafter 1.8.3 package in CPU workers, BALROG's game),
"nethack" or "minihack:<task>"."""
from __future__ import annotations

from automem_jax.envs.base import (BatchedTextEnv, EpisodeStats, Observation, Step, TextEnv,
                                   resolve_action)


def make(name: str, num_envs: int, **kwargs) -> TextEnv:
    """Build a batched TextEnv. Imports are lazy so Crafter users need not import NLE and vice versa."""
    family, _, task = name.partition(":")
    if family == "crafter" and task == "reference":
        from automem_jax.envs.crafter_reference import CrafterReferenceTextEnv
        return CrafterReferenceTextEnv(num_envs, **kwargs)
    if family == "crafter":
        from automem_jax.envs.craftax import CraftaxTextEnv
        return CraftaxTextEnv(num_envs=num_envs, **({"task": task} if task else {}), **kwargs)
    if family == "nethack":
        from automem_jax.envs.nethack import NetHackTextEnv
        return NetHackTextEnv(num_envs=num_envs, **({"task": task} if task else {}), **kwargs)
    if family == "minihack":
        from automem_jax.envs.minihack import MiniHackTextEnv
        if not task:
            raise ValueError("minihack needs a task: make('minihack:MiniHack-MazeWalk-9x9-v0', ...)")
        return MiniHackTextEnv(task=task, num_envs=num_envs, **kwargs)
    raise ValueError(f"unknown env {name!r}: use 'crafter', 'crafter:reference', 'nethack' or "
                     "'minihack:<MiniHack task id>'")


__all__ = ["make", "TextEnv", "BatchedTextEnv", "Observation", "Step", "EpisodeStats", "resolve_action"]
