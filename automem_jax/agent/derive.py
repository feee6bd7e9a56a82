"""Derived fields: the values a spec's `runtime.fields` declare, computed once per step from the observation and the
episode so far (parsers, previous values, diffs, counters, windows, detectors, grid primitives).

`FieldEngine.step(builtins)` takes the built-in values (step, text, status, last_action, ...; see
memory/runtime_spec.BUILTIN_FIELDS) and returns them together with every declared field, evaluated in dependency
order. All parsing is family-agnostic: each parser recognises both BALROG's Crafter and NLE wordings.
"""
from __future__ import annotations

import collections
import re
from typing import Any, Mapping

from automem_jax.agent import grid
from automem_jax.memory.expr import DefaultMap
from automem_jax.memory.runtime_spec import FieldSpec, RuntimeSpec

HISTORY = 50  # length of the built-in `actions` / `effects` windows
_CRAFTER_ITEM = re.compile(r"^-\s+([A-Za-z_ ]+?):\s*(\d+)\s*$")
_NLE_ITEM = re.compile(r"^([A-Za-z$]):\s+(.+?)\s*$")
_CRAFTER_SEEN = re.compile(r"^-\s+(.+?)\s+(\d+)\s+steps?\s+to\s+your\s+(\S+)\s*$")
_CRAFTER_FACING = re.compile(r"You face (.+?) at your front")
_NLE_SEEN = re.compile(r"^(.+?) (adjacent|very near|near|very far|far) ((?:north|south|east|west)\S*.*)$")
_NLE_DISTANCE = {"adjacent": 1, "very near": 2, "near": 3, "far": 4, "very far": 5}
_POSITION = re.compile(r"\(x=(\d+),\s*y=(\d+)\)")
_MESSAGE = re.compile(r"(?:^|\n)message:\n(.*?)(?:\n\n|\Z)", re.DOTALL)


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def parse_inventory(text: str) -> DefaultMap:
    """Crafter `- wood: 2` -> {wood: 2} (missing items read 0); NLE `a: a +1 long sword` -> {a: '...'}."""
    counts: dict[str, Any] = {}
    letters: dict[str, Any] = {}
    for ln in text.splitlines():
        s = ln.strip()
        m = _CRAFTER_ITEM.match(s)
        if m:
            counts[_key(m.group(1))] = int(m.group(2))
            continue
        m = _NLE_ITEM.match(s)
        if m and not s.startswith(("message:", "inventory:", "cursor:", "map:")):
            letters[m.group(1)] = m.group(2)
    return DefaultMap(counts, missing=0) if counts or not letters else DefaultMap(letters)


def parse_entities(text: str) -> DefaultMap:
    """name -> {distance, direction}, the closest instance of each (Crafter `You see:` lines, NLE language lines)."""
    out: dict[str, dict[str, Any]] = {}

    def add(name: str, dist: int, direction: str) -> None:
        k = _key(name)
        if k and (k not in out or dist < out[k]["distance"]):
            out[k] = {"distance": dist, "direction": direction}

    for ln in text.splitlines():
        s = ln.strip()
        m = _CRAFTER_SEEN.match(s)
        if m:
            add(m.group(1), int(m.group(2)), m.group(3))
            continue
        m = _NLE_SEEN.match(s)
        if m:
            add(m.group(1), _NLE_DISTANCE[m.group(2)], re.split(r"[ ,]", m.group(3))[0])
    m = _CRAFTER_FACING.search(text)
    if m and m.group(1) != "nothing":
        add(m.group(1), 0, "front")
    return DefaultMap(out)


def parse_position(text: str) -> dict[str, int] | None:
    m = _POSITION.search(text)
    return {"x": int(m.group(1)), "y": int(m.group(2))} if m else None


def parse_message(text: str) -> str:
    m = _MESSAGE.search(text)
    return m.group(1).strip() if m else ""


def _convert(raw: str | None, typ: str, default: Any) -> Any:
    if typ == "bool":
        return raw is not None
    if raw is None:
        return default
    try:
        return int(raw) if typ == "int" else float(raw) if typ == "float" else raw
    except ValueError:
        return default


def _diff(cur: Any, prev: Any) -> dict[str, Any]:
    if not isinstance(cur, dict) or not isinstance(prev, dict):
        return {"gained": DefaultMap(missing=0), "lost": DefaultMap(missing=0), "changed": False}
    gained, lost = {}, {}
    for k in list(prev) + [k for k in cur if k not in prev]:
        a, b = prev.get(k, 0), cur.get(k, 0)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            if b > a:
                gained[k] = b - a
            elif b < a:
                lost[k] = a - b
    return {"gained": DefaultMap(gained, 0), "lost": DefaultMap(lost, 0), "changed": bool(gained or lost)}


class FieldEngine:
    """Per-episode state of a spec's derived fields. `actions` = the env's action names (for is_action)."""

    def __init__(self, runtime: RuntimeSpec | None):
        self.runtime = runtime
        self.fields: dict[str, FieldSpec] = {f.name: f for f in runtime.fields} if runtime else {}
        self.reset()

    def reset(self) -> None:
        self.prev: dict[str, Any] = {}
        self.counters: dict[str, int] = collections.defaultdict(int)
        self.windows: dict[str, collections.deque] = {}
        self.trackers: dict[str, grid.VisitTracker] = {}
        self.actions: collections.deque = collections.deque(maxlen=HISTORY)
        self.effects: collections.deque = collections.deque(maxlen=HISTORY)
        self.values: dict[str, Any] = {}

    def step(self, builtins: Mapping[str, Any], action_names: tuple[str, ...] = ()) -> dict[str, Any]:
        """Values of the built-ins and every declared field for this step (call once per step, in order)."""
        v = dict(builtins)
        if v.get("step", 0) > 0 and v.get("last_action"):
            self.actions.append(v["last_action"])
            self.effects.append(bool(v.get("changed")))
        v["actions"], v["effects"] = list(self.actions), list(self.effects)
        for name in (self.runtime.order if self.runtime else ()):
            v[name] = self._compute(self.fields[name], v, action_names)
        self.prev = dict(v)
        self.values = v
        return v

    def _compute(self, f: FieldSpec, v: dict[str, Any], acts: tuple[str, ...]) -> Any:
        k = f.kind
        src = v.get(f.get("source", {"regex": "observation", "inventory": "status"}.get(k, "text")))
        src = src if isinstance(src, str) else ""
        if k == "regex":
            m = f.regex.search(src)
            raw = None if m is None else m.group(f.get("group", 1))
            return _convert(raw, f.get("type", "str"), f.get("default"))
        if k == "inventory":
            return parse_inventory(src)
        if k == "entities":
            return parse_entities(src)
        if k == "position":
            return parse_position(src)
        if k == "expr":
            out = f.exprs["expr"].eval(v, acts)
            return f.get("default") if out is None else out
        if k == "previous":
            return self.prev.get(f.get("of"), f.get("default")) if self.prev else f.get("default")
        if k == "diff":
            return _diff(v.get(f.get("of")), self.prev.get(f.get("of")) if self.prev else None)
        if k in ("streak", "since", "count"):
            return self._counter(f, f.exprs["when"].truth(v, acts), v.get("step", 0))
        if k == "window":
            w = self.windows.setdefault(f.name, collections.deque(maxlen=f.get("size")))
            w.append(v.get(f.get("of")))
            return list(w)
        if k == "repetition":
            return _repetition(list(self.actions)[-f.get("size", 8):], list(self.effects)[-f.get("size", 8):])
        if k == "oscillation":
            return _oscillation(list(self.actions), f.get("size", 6), f.get("moves_only", False))
        if k == "visits":
            return self._visits(f, v, src, acts)
        if k == "navigator":
            lines = grid.map_lines(src)
            at = grid.locate(lines, None)
            if at is None:
                return None
            return grid.navigate(lines, *at, f.get("glyph", ">"), f.get("blocked", grid.DEFAULT_BLOCKED),
                                 f.get("hazards", grid.DEFAULT_HAZARDS), f.get("detour_hazards", 2))
        raise AssertionError(f"unhandled kind {k}")  # runtime_spec.FIELD_KINDS lists exactly these

    def _counter(self, f: FieldSpec, now: bool, step: int) -> int:
        c = self.counters
        if f.kind == "streak":
            c[f.name] = c[f.name] + 1 if now else 0
        elif f.kind == "count":
            c[f.name] += now
        else:  # since: steps since the condition last held
            last = f"{f.name}#last"
            if now:
                c[last] = step + 1  # stored +1 so 0 means "never"
            return 0 if now else step - (c[last] - 1 if c[last] else 0)
        return c[f.name]

    def _visits(self, f: FieldSpec, v: dict[str, Any], src: str, acts: tuple[str, ...]) -> dict[str, Any]:
        tracker = self.trackers.setdefault(f.name, grid.VisitTracker())
        lines = grid.map_lines(src)
        pos = v.get(f.get("position"))
        at = grid.locate(lines, pos)
        blocked, hazards = f.get("blocked", grid.DEFAULT_BLOCKED), f.get("hazards", grid.DEFAULT_HAZARDS)
        passable = grid.classify(grid.neighbour_chars(lines, *at), blocked, hazards)[0] if at else []
        when = f.exprs.get("when")
        if isinstance(pos, dict) and (when is None or when.truth(v, acts)):
            tracker.update((pos["x"], pos["y"]), v.get("last_action"))
        return tracker.value(passable, f.get("forced_after", 4), f.get("least_visited_after", 5))


def _repetition(actions: list[str], effects: list[bool]) -> dict[str, Any]:
    if not actions:
        return {"action": None, "repeats": 0, "failures": 0}
    last = actions[-1]
    same = [e for a, e in zip(actions, effects) if a == last]
    return {"action": last, "repeats": len(same), "failures": sum(not e for e in same)}


def _oscillation(actions: list[str], size: int, moves_only: bool) -> dict[str, Any]:
    from automem_jax.memory.expr import FUNCTIONS

    direction = FUNCTIONS["direction"][2]
    seq = [a for a in actions if direction(a)] if moves_only else actions
    recent = seq[-size:]
    return {"reversals": FUNCTIONS["reversals"][2](recent), "distinct": len(set(recent)),
            "moves": sum(direction(a) is not None for a in recent), "recent": recent}
