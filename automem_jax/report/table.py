"""results.md: rows = systems (baseline no-memory, spec v0, accepted revisions, +LoRA), columns = per-env
progression % ± SE on the test seeds, then the BALROG average; optionally a second, clearly labelled table of the
same systems on AutoMem's evaluation seeds (the paper's protocol), so a run's numbers line up with the paper's."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping, Sequence

from automem_jax.report.summary import Row, atomic_write_text

ROW_TITLES = {"baseline": "baseline (no memory)"}


def env_columns(rows: Sequence[Row]) -> list[str]:
    """Env columns in first-seen order across rows."""
    cols: list[str] = []
    for r in rows:
        cols.extend(e for e in r.envs if e not in cols)
    return cols


def fmt(mean: float, se: float) -> str:
    return f"{mean:.2f} ± {se:.2f}"


def render_table(rows: Sequence[Row]) -> str:
    cols = env_columns(rows)
    head = ["system", *cols, "average"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in rows:
        cells = [ROW_TITLES.get(r.kind, r.label) if r.kind == "baseline" else r.label]
        for c in cols:
            f = r.envs.get(c)
            cells.append(fmt(f.mean, f.se) if f else "–")
        cells.append(fmt(r.average, r.average_se))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclasses.dataclass
class PaperTable:
    """The systems on AutoMem's evaluation seeds (family -> seeds), with caveats to print under the table."""

    rows: Sequence[Row]
    seeds: Mapping[str, Sequence[int]]
    notes: Sequence[str] = ()

    def seeds_text(self) -> str:
        return ", ".join(f"{fam} {min(s)}–{max(s)}" + (" per task" if fam == "minihack" else "")
                         for fam, s in self.seeds.items() if s)


def _episodes_line(rows: Sequence[Row]) -> str:
    episodes = {c: max((r.envs[c].episodes for r in rows if c in r.envs), default=0) for c in env_columns(rows)}
    return "Episodes per env: " + ", ".join(f"{k} {v}" for k, v in episodes.items())


def write_results_md(path: str | os.PathLike, rows: Sequence[Row], *, title: str = "Results",
                     notes: Sequence[str] = (), paper: PaperTable | None = None,
                     sections: Sequence[tuple[str, str]] = ()) -> Path:
    """`sections`: (heading, markdown) pairs after the main table (paired comparisons, wall times)."""
    body = [f"# {title}", "",
            "Progression % ± SE (BALROG: population std / sqrt(n) over each env's episodes) on held-out test "
            "seeds; average = unweighted mean over envs (BALROG).", "", render_table(rows), "", _episodes_line(rows),
            ""]
    body.extend(f"- {n}" for n in notes)
    for heading, text in sections:
        if text:
            body += ["", f"## {heading}", "", text]
    if paper is not None:
        body += ["", "## On AutoMem's evaluation seeds (the paper's protocol, for comparison with its tables)", "",
                 f"The same systems on the seeds AutoMem evaluated and accepted on ({paper.seeds_text()}). "
                 "Not our result: the table above, on seeds no loop decided on, is.", ""]
        if paper.rows:
            body += [render_table(paper.rows), "", _episodes_line(paper.rows), ""]
        else:
            body += ["(not evaluated yet)", ""]
        body.extend(f"- {n}" for n in paper.notes)
    return atomic_write_text(path, "\n".join(body).rstrip() + "\n")
