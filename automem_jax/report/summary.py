"""summary.json: one row per evaluated system (baseline, spec v0, accepted revisions, +LoRA) on the test seeds.

The statistics (per-env mean progression, SE = population std/sqrt(n), BALROG average and overall SE) come from
`automem_jax.agent.summary.summarize`; this module only arranges its output into rows and writes them.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence
from automem_jax.fileio import atomic_write_bytes, atomic_write_text  # noqa: F401 (re-exported)

# reference: a spec evaluated beside the run and never selected (config.extra_eval_specs, e.g. the hand-written
# crafter_v5): plotted as a line, not as a point of AutoMem's progression
ROW_KINDS = ("baseline", "spec", "lora", "reference")


@dataclasses.dataclass
class EnvFigure:
    mean: float  # progression, percent
    se: float  # standard error, percent
    episodes: int


@dataclasses.dataclass
class Row:
    """One evaluated system: e.g. label "v0" kind "spec", label "v2+LoRA" kind "lora"."""

    label: str
    kind: str
    envs: dict[str, EnvFigure]
    average: float  # BALROG average_progress, percent
    average_se: float
    episodes: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    balrog: dict[str, Any] = dataclasses.field(default_factory=dict)  # summarize() output, verbatim

    def __post_init__(self):
        if self.kind not in ROW_KINDS:
            raise ValueError(f"row {self.label!r}: kind must be one of {ROW_KINDS}, got {self.kind!r}")


def _field(obj: Any, name: str) -> Any:
    return obj[name] if isinstance(obj, dict) else getattr(obj, name)


def episode_records(results: Iterable[Any]) -> list[dict[str, Any]]:
    """The per-episode lines of a row (EpisodeResult objects or dicts), sorted, one per (env, task, seed)."""
    recs = {}
    for r in results:
        key = (str(_field(r, "env")), str(_field(r, "task")), int(_field(r, "seed")))
        recs[key] = {"env": key[0], "task": key[1], "seed": key[2],
                     "progression": float(_field(r, "progression")), "steps": int(_field(r, "steps")),
                     "status": str(_field(r, "status"))}
    return [recs[k] for k in sorted(recs)]


def figures_from_summary(summary: dict[str, Any]) -> tuple[dict[str, EnvFigure], float, float]:
    """Read per-env figures and the average from summarize()'s BALROG-form dict (percent units)."""
    try:
        envs = {name: EnvFigure(mean=float(v["progression_percentage"]), se=float(v["standard_error"]),
                                episodes=int(v["episodes_played"]))
                for name, v in summary["environments"].items()}
        return envs, float(summary["average_progress"]), float(summary["standard_error"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"summary has no BALROG field {e}; got keys {sorted(summary)}") from None


def make_row(label: str, kind: str, results: Sequence[Any], summarize: Callable[[list], dict]) -> Row:
    episodes = episode_records(results)
    balrog = summarize(list(results))
    envs, avg, se = figures_from_summary(balrog)
    return Row(label=label, kind=kind, envs=envs, average=avg, average_se=se, episodes=episodes, balrog=balrog)


def row_to_json(row: Row) -> dict[str, Any]:
    return dataclasses.asdict(row)


def row_from_json(d: dict[str, Any]) -> Row:
    d = dict(d)
    d["envs"] = {k: EnvFigure(**v) for k, v in d["envs"].items()}
    return Row(**d)






def write_summary(path: str | os.PathLike, rows: Sequence[Row], *, meta: dict[str, Any] | None = None,
                  paper: Any = None) -> Path:
    """summary.json: {"rows": [...], "best": label, "meta": {...}}; each row carries its BALROG summary. With a
    report.table.PaperTable, also "paper": {"seeds", "rows", "notes"} (AutoMem's evaluation seeds)."""
    doc = {
        "rows": [row_to_json(r) for r in rows],
        "best": max(rows, key=lambda r: r.average).label if rows else None,
        "meta": meta or {},
    }
    if paper is not None:
        doc["paper"] = {"seeds": {k: list(v) for k, v in paper.seeds.items()},
                        "rows": [row_to_json(r) for r in paper.rows], "notes": list(paper.notes)}
    return atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=False) + "\n")
