"""Cross-episode memory: the directory of files an env/task carries from one episode to the next, shared by the
episodes of that task that run at the same time, and the locks that keep concurrent writers from losing updates.

Save policy (three-way, per file, by lines; `base` = the files the episode started from):
- a file the episode did not change keeps the saved version (other episodes' edits and deletions stand);
- a file no other episode changed since takes the episode's version (its edits and deletions stand);
- a file both changed keeps the saved version and gets the lines the episode added (relative to its base, repeated
  lines counted) appended; lines the episode removed or rewrote stay as saved. No episode's added line is lost;
  a file one side deleted and the other changed is kept as changed.
Saves hold an exclusive lock on the directory and loads a shared one, so a load never sees half of a save and two
saves never interleave. Files keep their bytes: text is decoded with surrogateescape and encoded back the same way.
Caps are not applied to a merge; the next episode's writes are checked against them.
"""
from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import secrets
from pathlib import Path
from typing import Iterator

from automem_jax.memory.spec import FILE_NAME_RE

_TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def dir_lock(directory: str | os.PathLike, exclusive: bool = True) -> Iterator[None]:
    """flock on the directory itself (no lock file to leave behind or to delete by mistake): excludes other
    threads and processes that lock the same directory, released when the block ends or the process dies."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def decode(data: bytes) -> str:
    """File bytes as text that encodes back to the same bytes (invalid UTF-8 as lone surrogates)."""
    return data.decode("utf-8", errors="surrogateescape")


def encode(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogateescape")


def atomic_write(path: str, content: str, directory: str) -> None:
    """Write to a fresh temp file in `directory`, then rename over `path` (rename replaces a link, never follows)."""
    tmp = os.path.join(directory, f"{_TMP_PREFIX}{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(encode(content))
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def load(directory: str | os.PathLike) -> dict[str, str]:
    """The saved files (regular files with valid names; raw text), read under a shared lock."""
    directory = Path(directory)
    if not directory.is_dir():
        return {}
    with dir_lock(directory, exclusive=False):
        return _read(directory)


def _read(directory: Path) -> dict[str, str]:
    out = {}
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
            continue
        if FILE_NAME_RE.match(entry.name):
            out[entry.name] = decode(Path(entry.path).read_bytes())
    return out


def save(directory: str | os.PathLike, base: dict[str, str], ours: dict[str, str]) -> dict[str, str]:
    """Merge an episode's files (`ours`, started from `base`) into the directory; returns what it now holds."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with dir_lock(directory):
        theirs = _read(directory)
        merged = {}
        for name in sorted(set(base) | set(ours) | set(theirs)):
            text = merge_file(base.get(name), ours.get(name), theirs.get(name))
            if text is None:
                if name in theirs:
                    os.unlink(directory / name)
                continue
            if text != theirs.get(name):
                atomic_write(str(directory / name), text, str(directory))
            merged[name] = text
        return merged


def merge_file(base: str | None, ours: str | None, theirs: str | None) -> str | None:
    """One file's three-way merge (None = absent); see the module docstring for the policy."""
    if ours == base:
        return theirs
    if theirs == base:
        return ours
    if ours is None or theirs is None:  # one side deleted it, the other changed it: keep the change
        return theirs if ours is None else ours
    added = _added(split_lines(base or ""), split_lines(ours))
    if not added:
        return theirs
    sep = "\n" if theirs and not theirs.endswith("\n") else ""
    return theirs + sep + "".join(line + "\n" for line in added)


def split_lines(text: str) -> list[str]:
    """Lines split at "\\n" only (no other line breaks), without the final empty one."""
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def _added(base: list[str], ours: list[str]) -> list[str]:
    """Lines of `ours` beyond those of `base` (a multiset difference that keeps the order of `ours`)."""
    left = collections.Counter(base)
    out = []
    for line in ours:
        if left[line]:
            left[line] -= 1
        else:
            out.append(line)
    return out
