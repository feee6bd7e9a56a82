"""The experiment's resume record: which phases finished and what they decided, written atomically.

A phase is marked done only after all its work is on disk, and every phase is itself resumable (rollouts skip
finished episodes, the structure loop keeps its history, training restarts from orbax checkpoints), so a kill at any
point loses at most the unfinished part of one phase and never repeats a finished one.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from automem_jax.report.summary import atomic_write_text

STATE_VERSION = 1


def _fresh() -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "completed": [],  # phase names, in completion order
        "incumbent": None,  # {"version": "v0", "path": ".../specs/v0.yaml"}
        "specs": [],  # accepted specs in order, v0 first: [{"version", "path", "epoch"}]
        "adapter": None,  # accepted LoRA: {"name", "dir", "round", "selection_score"}
        "rounds": {},  # proficiency round -> {"accepted", "adapter_dir", "candidate", "incumbent", ...}
        "revisions": {},  # structure epoch -> {"accepted", "version", ...}
        "rows": {},  # evaluation label -> report.Row json (held-out test seeds)
        "paper_rows": {},  # evaluation label -> report.Row json on AutoMem's evaluation seeds (report.paper_table)
        "scores": {},  # tag -> mean selection-seed progression (cache; rollouts resume anyway)
        "seed_scores": {},  # hash of (spec, adapter, seeds) -> {"tag", "scores": {seed: progression}} (reuse)
        "timings": {},  # phase -> {"wall_s", "resumed", "episodes", "steps", "model_calls", ...} (report)
    }


PATH_KEYS = ("path", "dir", "adapter_dir")  # values that are files of the run: stored relative to the workdir


def _map_paths(node: Any, fn) -> Any:
    if isinstance(node, dict):
        return {k: fn(v) if k in PATH_KEYS and isinstance(v, str) and v else _map_paths(v, fn)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_map_paths(v, fn) for v in node]
    return node


class RunState:
    """state.json of a workdir. Paths inside the workdir are stored relative to it, so a copied or moved workdir
    (or one resumed from another directory) still finds its specs and adapters."""

    def __init__(self, path: str | os.PathLike, data: dict[str, Any]):
        self.path = Path(path)
        self.data = data

    @classmethod
    def load(cls, workdir: str | os.PathLike) -> "RunState":
        path = Path(workdir) / "state.json"
        if not path.exists():
            return cls(path, _fresh())
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:  # only possible if edited by hand: writes are atomic
            raise ValueError(f"{path} is not valid JSON ({e}); delete it to restart the experiment") from None
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"{path}: state version {data.get('version')!r}, expected {STATE_VERSION}; "
                             "use a fresh --workdir")
        merged = _fresh()
        def absolute(v: str) -> str:  # a cwd-relative path of an older state.json stays as it was
            inside = Path(workdir) / v
            return v if os.path.isabs(v) or (not inside.exists() and Path(v).exists()) else str(inside)
        merged.update(_map_paths(data, absolute))
        return cls(path, merged)

    def save(self) -> None:
        root = self.path.parent.resolve()

        def relative(v: str) -> str:
            try:
                return Path(v).resolve().relative_to(root).as_posix()
            except ValueError:  # outside the workdir (a user's adapter): kept as given
                return v
        atomic_write_text(self.path, json.dumps(_map_paths(self.data, relative), indent=2) + "\n")

    def done(self, phase: str) -> bool:
        return phase in self.data["completed"]

    def mark_done(self, phase: str) -> None:
        if phase not in self.data["completed"]:
            self.data["completed"].append(phase)
        self.save()

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(self.data)
