"""Trace files: one JSON line per agent turn (per episode), episodes.jsonl summaries, summary.json.

Turn lines and episodes.jsonl lines are appended with one write + flush each; `read_jsonl` ignores a last line
without its newline, so a reader running beside the writer never sees half a record, and `EpisodeLog` drops such a
line when a resumed run reopens the file. That is what makes a killed run resumable: an episode counts as finished
only once its whole line is in episodes.jsonl. summary.json is rewritten through a temp file + rename (atomic).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator
from automem_jax.fileio import atomic_write_text

TRACE_FIELDS = (
    "run_id", "spec", "spec_version", "adapter", "env", "task", "seed", "episode", "step", "phase", "iteration",
    "messages", "completion", "finish_reason", "ops", "op_results", "errors", "action", "executed_action", "valid",
    "reward", "done", "progression", "prompt_tokens", "completion_tokens", "cached_tokens",
)
# The turn that commits a step's action also has: raw_action (the model's text, or the fallback), action (after the
# spec's action_repair: the candidate the env validated), executed_action (BALROG's validated action), valid,
# action_source (model | fallback). Two roles: the memory role's last PLAN turn has stripped_action.




def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete lines of a JSONL file (a trailing partial line, from a writer mid-write, is skipped)."""
    return list(iter_jsonl(path))


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file, split at line ends only (not str.splitlines: JSON strings written with
    ensure_ascii=False hold U+2028 and U+0085 raw); a bad complete line is a ValueError naming file and line."""
    path = Path(path)
    if not path.exists():
        return
    with path.open("r", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.endswith("\n"):
                return
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e}); remove or repair that line") from e


class TraceWriter:
    """Append-only JSONL for one episode. Opened with truncation: a restarted episode starts a fresh trace."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("w", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


class EpisodeLog:
    """episodes.jsonl: one line per finished episode, appended with one write + flush (as the turn lines). A line
    a kill cut short is dropped when the log is opened again (the file is rewritten without it, atomically), so an
    episode counts as finished only once its whole line is in the file. (Rewriting the whole file on every
    addition cost O(episodes^2): 10 s of json.dumps for 1024 episodes.)"""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list[dict[str, Any]] = read_jsonl(self.path)
        if _torn_tail(self.path):
            atomic_write_text(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.records))

    def finished(self) -> set[tuple[str, str, int]]:
        return {(r["env"], r["task"], int(r["seed"])) for r in self.records}

    def add(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
        self.records.append(record)


def _torn_tail(path: Path) -> bool:
    """Whether a non-empty file's last byte is not a newline (a line a kill cut short); reads that byte only."""
    try:
        with path.open("rb") as f:
            if f.seek(0, os.SEEK_END) == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False


def write_summary_json(path: str | os.PathLike, summary: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    atomic_write_text(path, json.dumps(summary | (extra or {}), indent=2) + "\n")


def turn_records(paths: Iterable[str | os.PathLike]) -> Iterator[dict[str, Any]]:
    """Every turn record of several trace files, in file order (for the proficiency loop's selection)."""
    for p in paths:
        yield from iter_jsonl(p)
