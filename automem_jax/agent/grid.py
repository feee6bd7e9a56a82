"""Grid primitives over BALROG's ASCII map (NLE / MiniHack): a per-tile visit tracker and a glyph navigator.

The spec turns them on as derived fields (`kind: visits`, `kind: navigator`) and sets their parameters; the rest of
the scaffold reads their outputs through notices and gates. Coordinates are BALROG's cursor `(x=col, y=row)`; the
map block is the text after the `map:` line, whose first line is screen row 1, so the player sits at map line y-1.
"""
from __future__ import annotations

import collections
from typing import Any, Sequence

# (name, dx, dy) with y growing southwards, as on screen.
OFFSETS = (("north", 0, -1), ("south", 0, 1), ("east", 1, 0), ("west", -1, 0),
           ("northeast", 1, -1), ("northwest", -1, -1), ("southeast", 1, 1), ("southwest", -1, 1))
_DELTA = {n: (dx, dy) for n, dx, dy in OFFSETS}
NEIGHBOURS = {"north": ("northeast", "northwest"), "south": ("southeast", "southwest"),
              "east": ("northeast", "southeast"), "west": ("northwest", "southwest"),
              "northeast": ("north", "east"), "northwest": ("north", "west"),
              "southeast": ("south", "east"), "southwest": ("south", "west")}
PERPENDICULAR = {"north": ("east", "west"), "south": ("east", "west"), "east": ("north", "south"),
                 "west": ("north", "south"), "northeast": ("northwest", "southeast"),
                 "northwest": ("northeast", "southwest"), "southeast": ("northeast", "southwest"),
                 "southwest": ("northwest", "southeast")}
DEFAULT_BLOCKED = "-| "  # walls and solid rock (blank)
DEFAULT_HAZARDS = "}^"  # water/lava and traps


def map_lines(text: str) -> list[str]:
    """The lines after a `map:` line (BALROG NLE text), else every line."""
    lines = text.split("\n")
    for i, ln in enumerate(lines):
        if ln.strip() == "map:":
            return lines[i + 1:]
    return lines


def locate(lines: Sequence[str], pos: Any) -> tuple[int, int] | None:
    """(row, col) of the player: the cursor position when given and it shows '@', else the first map-like '@'."""
    if isinstance(pos, dict) and isinstance(pos.get("x"), int) and isinstance(pos.get("y"), int):
        r, c = pos["y"] - 1, pos["x"]
        if 0 <= r < len(lines) and 0 <= c < len(lines[r]) and lines[r][c] == "@":
            return r, c
    for r, ln in enumerate(lines):
        s = ln.rstrip()
        if "@" in s and len(s) >= 3 and sum(ch.isalpha() for ch in s if ch != "@") / len(s) < 0.5:
            return r, s.index("@")
    return None


def _at(lines: Sequence[str], r: int, c: int) -> str | None:
    return lines[r][c] if 0 <= r < len(lines) and 0 <= c < len(lines[r]) else None


def neighbour_chars(lines: Sequence[str], row: int, col: int) -> dict[str, str | None]:
    return {n: _at(lines, row + dy, col + dx) for n, dx, dy in OFFSETS}


def classify(chars: dict[str, str | None], blocked: str, hazards: str) -> tuple[list[str], list[str]]:
    """(passable directions, hazard directions) in compass order; off-map counts as blocked."""
    passable = [d for d, ch in chars.items() if ch is not None and ch not in blocked and ch not in hazards]
    danger = [d for d, ch in chars.items() if ch is not None and ch in hazards]
    return passable, danger


def direction_to(dx: int, dy: int) -> str:
    """Compass word of an offset by its signs (AutoMem's `_offset_to_direction`)."""
    return ("north" if dy < 0 else "south" if dy > 0 else "") + ("east" if dx > 0 else "west" if dx < 0 else "") \
        or "here"


class VisitTracker:
    """Visit counts per tile; remembers which moves failed from the current tile (position unchanged after it)."""

    def __init__(self, path_len: int = 10):
        self.visits: dict[tuple[int, int], int] = collections.Counter()
        self.pos: tuple[int, int] | None = None
        self.failed: set[str] = set()
        self.path: collections.deque = collections.deque(maxlen=path_len)

    def update(self, pos: tuple[int, int], last_action: str | None) -> None:
        if self.pos == pos:
            move = _compass(last_action)
            if move:
                self.failed.add(move)
        else:
            self.failed.clear()
        self.pos = pos
        self.visits[pos] += 1
        self.path.append(pos)

    def value(self, passable: list[str], forced_after: int, least_after: int) -> dict[str, Any]:
        if self.pos is None:
            return {"here": 0, "tiles": 0, "passable": passable, "unvisited": [], "visited": {},
                    "least_visited": None, "forced": None, "path": []}
        x, y = self.pos
        around = {d: self.visits.get((x + _DELTA[d][0], y + _DELTA[d][1]), 0) for d in passable}
        unvisited = [d for d in passable if around[d] == 0]
        seen = {d: n for d, n in around.items() if n > 0}
        least = min(seen, key=lambda d: (seen[d], passable.index(d))) if seen else None
        here = self.visits.get(self.pos, 0)
        forced = None
        if here >= forced_after:
            options = [d for d in passable if d not in self.failed] or list(passable)
            fresh = [d for d in options if around[d] == 0]
            if fresh:
                forced = fresh[0]
            elif here >= least_after:
                tried = {d: around[d] for d in options if around[d] > 0}
                forced = min(tried, key=lambda d: (tried[d], options.index(d))) if tried else None
        return {"here": here, "tiles": len(self.visits), "passable": passable, "unvisited": unvisited,
                "visited": seen, "least_visited": least, "forced": forced,
                "path": [f"({px},{py})" for px, py in self.path]}


def _compass(action: str | None) -> str | None:
    if not action:
        return None
    w = action.lower().split()
    return w[-1] if w and w[-1] in _DELTA else None


def navigate(lines: Sequence[str], row: int, col: int, glyph: str, blocked: str, hazards: str,
             detour_hazards: int) -> dict[str, Any]:
    """Where the nearest `glyph` is (Chebyshev distance) and how to head for it, with a hazard detour."""
    passable, danger = classify(neighbour_chars(lines, row, col), blocked, hazards)
    best = None
    for r, ln in enumerate(lines):
        c = ln.find(glyph)
        while c >= 0:
            d = max(abs(r - row), abs(c - col))
            if d > 0 and (best is None or d < best[0]):
                best = (d, c - col, r - row)
            c = ln.find(glyph, c + 1)
    out: dict[str, Any] = {"found": best is not None, "adjacent": False, "distance": None, "direction": None,
                           "toward": [], "detour": [], "passable": passable, "hazards": danger}
    if best is None:
        return out
    dist, dx, dy = best
    direction = direction_to(dx, dy)
    goalward = (direction,) + NEIGHBOURS[direction]
    out.update(adjacent=dist == 1, distance=dist, direction=direction,
               toward=[d for d in goalward if d in passable])
    if sum(d in danger for d in goalward) >= detour_hazards:
        perp = PERPENDICULAR[direction]
        out["detour"] = [d for d in perp if d in passable] or list(perp)
    return out
