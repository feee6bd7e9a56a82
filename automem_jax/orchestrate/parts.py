"""The parts the experiment drives, behind one small interface.

`Parts` is a bundle of callables; `experiment.Experiment` only calls these, so its schedule and resume logic are
tested with stand-ins (tests/test_main.py) and run for real with `real_parts.build_parts(config)`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence


@dataclasses.dataclass
class RolloutCall:
    spec: Any  # a loaded MemorySpec (whatever parts.load_spec returns)
    seeds: list[int]  # this host's seeds; every env/task in the config plays each of them
    out_dir: Path  # traces + episode summaries; finished episodes here are skipped on resume
    run_id: str
    adapter: str | None = None  # LoRA adapter for the memory phases (None = base model)
    desc: str = "rollout"  # progress-bar label
    # env family -> this host's seeds for that family, overriding `seeds` (AutoMem's evaluation seeds differ per
    # family: Crafter 42-51, MiniHack and NetHack 42-46); None = every env plays `seeds`
    seeds_by_family: dict[str, list[int]] | None = None

    def seeds_for(self, family: str) -> list[int]:
        if self.seeds_by_family is not None and family in self.seeds_by_family:
            return list(self.seeds_by_family[family])
        return list(self.seeds)


@dataclasses.dataclass
class Revision:
    """Outcome of one structure revision (loops.structure.StructureLoop.run)."""

    accepted: bool
    version: str  # the new spec's version if accepted, else the incumbent's
    spec_path: str  # YAML of the spec to use from now on
    candidate_score: float | None = None
    incumbent_score: float | None = None
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)


ScoreFn = Callable[[Any, list[int], str], dict[int, float]]


@dataclasses.dataclass
class Parts:
    load_spec: Callable[[str], Any]  # path -> spec
    spec_version: Callable[[Any], str]  # spec -> "v0", "v1", ...
    rollout: Callable[[RolloutCall], list[Any]]  # -> EpisodeResult-like (env, task, seed, progression, ...)
    revise: Callable[[Any, Sequence[Path], Path, ScoreFn], Revision]  # (incumbent, trace dirs, history, score)
    train: Callable[[Sequence[Path], Path, int], str | None]  # (trace dirs, round dir, round) -> adapter dir
    load_adapter: Callable[[str, str], None]  # (name, PEFT dir) into the engine
    summarize: Callable[[list[Any]], dict]  # BALROG summary (agent.summary.summarize)
    close: Callable[[], None] = lambda: None
