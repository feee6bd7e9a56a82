"""BALROG's Crafter language wrapper, shared by both Crafter envs (numpy only: the reference env's workers import
it without JAX).

Two halves:
  * `window_tables(sem, valid, facing)`: reduces one env's 9x7 window of semantic ids to small integer tables
    (closest cell and first-seen cell of every semantic id, the faced id). Craftax-Classic calls it under jit on
    device (craftax.view_tables); the reference Crafter calls it with numpy on the package's semantic map
    (`tables_from_semantic`).
  * `TextRenderer`: builds BALROG's strings on the host from those tables, with every per-(item, cell) line and
    every status block cached, so rendering costs a few dict lookups and one join per env.

Format (balrog/environments/crafter/env.py, config: unique_items=True, precise_location=False, skip_items=[],
edge_only_items=[]):
  * Crafter's semantic map is indexed [x, y] (x east, y south); Craftax's map is [row, col] = [y, x].
  * Window: x in [px-4, px+4], y in [py-3, py+3] taken by numpy slicing, so a negative start (player within 4
    columns / 3 rows of the low edge) yields an EMPTY window, and the high edge clips it. Centre is (4, 3).
  * Cells are scanned x-outer (west to east), y-inner (north to south); the player cell is skipped. Each item keeps
    its closest instance (Manhattan distance; ties keep the first seen) and items are listed in first-seen order.
  * "- tree 3 steps to your north-west"; "1 step"; north/south before west/east, joined by "-".
  * "You face X at your front." with X the semantic name of the faced cell (grass included), "nothing" outside.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

# ----- BALROG's action space and prompt content -----
ACTIONS: tuple[str, ...] = (
    "Noop", "Move West", "Move East", "Move North", "Move South", "Do", "Sleep", "Place Stone", "Place Table",
    "Place Furnace", "Place Plant", "Make Wood Pickaxe", "Make Stone Pickaxe", "Make Iron Pickaxe",
    "Make Wood Sword", "Make Stone Sword", "Make Iron Sword",
)  # index == Crafter action id == Craftax-Classic `Action` value

# BALROG's descriptions (balrog/environments/crafter/__init__.py) of the actions whose rules both engines share.
ACTION_DESCRIPTIONS: dict[str, str] = {
    "Noop": "do nothing",
    "Move West": "move west on flat ground",
    "Move East": "move east on flat ground",
    "Move North": "move north on flat ground",
    "Move South": "move south on flat ground",
    "Do": "Multiuse action to collect material, drink from lake and hit creature in front",
    "Sleep": "sleep when energy level is below maximum",
    "Place Stone": "place a stone in front",
    "Place Table": "place a table",
    "Place Furnace": "place a furnace",
    "Place Plant": "place a plant",
}  # the Make actions' descriptions come from the running engine's `Recipes`

# Craftax-Classic `Achievement` order (index i == state.achievements[i]).
ACHIEVEMENTS: tuple[str, ...] = (
    "collect_wood", "place_table", "eat_cow", "collect_sapling", "collect_drink", "make_wood_pickaxe",
    "make_wood_sword", "place_plant", "defeat_zombie", "collect_stone", "place_stone", "eat_plant",
    "defeat_skeleton", "make_stone_pickaxe", "make_stone_sword", "wake_up", "place_furnace", "collect_coal",
    "collect_iron", "collect_diamond", "make_iron_pickaxe", "make_iron_sword",
)
# The prompt lists them in BALROG's order (diamond last).
_PROMPT_ACHIEVEMENTS = ACHIEVEMENTS[:19] + ("make_iron_pickaxe", "make_iron_sword", "collect_diamond")


@dataclasses.dataclass(frozen=True)
class Recipes:
    """What one engine's Make actions need: the nearby stations and the materials used (one of each). Measured on
    both packages by automem_jax/bench/crafter_rules.py (docs/ENVS.md); the prompt states the running engine's."""

    engine: str
    make: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]  # Make action -> (stations, materials)

    def description(self, action: str) -> str:
        """BALROG's wording: "craft a stone pickaxe with a nearby table, wood, and stone in inventory"."""
        stations, materials = self.make[action]
        tool = action.removeprefix("Make ").lower()
        parts = [" and ".join(stations), *materials]
        listed = " and ".join(parts) if len(parts) == 2 else ", ".join(parts[:-1]) + ", and " + parts[-1]
        return f"craft {'an' if tool[0] in 'aeiou' else 'a'} {tool} with a nearby {listed} in inventory"


_TABLE, _BOTH = ("table",), ("table", "furnace")
# crafter 1.8.3 (crafter/data.yaml `make`): BALROG's own descriptions.
CRAFTER_RECIPES = Recipes("crafter", {
    "Make Wood Pickaxe": (_TABLE, ("wood",)), "Make Stone Pickaxe": (_TABLE, ("wood", "stone")),
    "Make Iron Pickaxe": (_BOTH, ("wood", "coal", "iron")), "Make Wood Sword": (_TABLE, ("wood",)),
    "Make Stone Sword": (_TABLE, ("wood", "stone")), "Make Iron Sword": (_BOTH, ("wood", "coal", "iron")),
})
# Craftax-Classic 1.6.1 (game_logic.do_crafting): iron tools also use a stone.
CRAFTAX_CLASSIC_RECIPES = Recipes("craftax-classic", {
    **CRAFTER_RECIPES.make,
    "Make Iron Pickaxe": (_BOTH, ("wood", "coal", "iron", "stone")),
    "Make Iron Sword": (_BOTH, ("wood", "coal", "iron", "stone")),
})


def instruction_prompt(recipes: Recipes = CRAFTAX_CLASSIC_RECIPES) -> str:
    """BALROG's Crafter instruction prompt (`balrog/environments/crafter/__init__.py`), its Make descriptions stating
    `recipes` (crafter's give BALROG's text verbatim)."""
    desc = {**ACTION_DESCRIPTIONS, **{a: recipes.description(a) for a in recipes.make}}
    actions = ",\n".join(f"{a}: {desc[a]}" for a in ACTIONS)
    achievements = "\n".join(f"{i}. {name.replace('_', ' ').title()}"
                             for i, name in enumerate(_PROMPT_ACHIEVEMENTS, start=1))
    return (
        "You are an agent playing Crafter. The following are the only valid actions you can take in the game, "
        "followed by a short description of each action:\n\n"
        f"{actions}.\n\n"
        "These are the game achievements you can get:\n"
        f"{achievements}\n\n"
        "In a moment I will present a history of actions and observations from the game.\n"
        "Your goal is to get as far as possible by completing all the achievements.\n\n"
        "PLAY!"
    )


# ----- semantic ids (Crafter: materials 1-12, objects 13-18) -----
SEMANTIC_NAMES: tuple[str, ...] = (
    "None", "water", "grass", "stone", "path", "sand", "tree", "lava", "coal", "iron", "diamond", "table",
    "furnace", "player", "cow", "zombie", "skeleton", "arrow", "plant",
)
NUM_SEMANTIC = len(SEMANTIC_NAMES)
PLAYER, COW, ZOMBIE, SKELETON, ARROW = 13, 14, 15, 16, 17

# Craftax-Classic BlockType value -> Crafter semantic id. INVALID, OUT_OF_BOUNDS and the unused WOOD map to 0,
# which is never listed; PLANT and RIPE_PLANT are Crafter's Plant object.
BLOCK_TO_SEMANTIC = np.array([0, 0, 2, 1, 3, 6, 0, 4, 8, 9, 10, 11, 12, 5, 7, 18, 18], dtype=np.int32)

VIEW_W, VIEW_H = 9, 7  # Crafter view (9, 9) minus the 2-row inventory band: 9 wide (x), 7 tall (y)
CX, CY = VIEW_W // 2, VIEW_H // 2 - 0  # centre (4, 3)
NUM_CELLS = VIEW_W * VIEW_H
# Cell k = i * VIEW_H + j scans x (i) outer and y (j) inner, as BALROG's double loop does.
CELL_DX = np.repeat(np.arange(VIEW_W) - CX, VIEW_H).astype(np.int32)
CELL_DY = np.tile(np.arange(VIEW_H) - CY, VIEW_W).astype(np.int32)
CELL_DIST = np.abs(CELL_DX) + np.abs(CELL_DY)
CENTER_CELL = CX * VIEW_H + CY
NOT_SEEN = 127  # first-seen cell of an id absent from the window

# Craftax player_direction (1 LEFT, 2 RIGHT, 3 UP, 4 DOWN) -> Crafter facing (dx, dy).
DIRECTION_DXDY = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.int32)

VITALS: tuple[str, ...] = ("health", "food", "drink", "energy")
# Crafter's inventory order (crafter/data.yaml) and the matching Craftax `Inventory` fields.
INVENTORY: tuple[str, ...] = ("sapling", "wood", "stone", "coal", "iron", "diamond", "wood_pickaxe",
                              "stone_pickaxe", "iron_pickaxe", "wood_sword", "stone_sword", "iron_sword")


def window_tables(sem, valid, facing_dxdy, xp=np) -> tuple:
    """(closest, first, facing) of one env's 63-cell window (semantic ids in scan order, validity mask).

    Array-module agnostic (`xp` = numpy in the reference Crafter's workers, jax.numpy under Craftax's jit), so
    both envs read BALROG's text off the same code: each listed id keeps its closest cell (argmin returns the
    first minimum, as BALROG keeps the first of ties) and its first-seen cell; the faced cell's id or -1.
    """
    ids = xp.arange(NUM_SEMANTIC)[:, None]
    listed = (sem[None] == ids) & valid[None] & (ids != PLAYER) & (ids != 0)  # [19, 63]
    dist = xp.where(listed, xp.asarray(CELL_DIST)[None], 1 << 10)
    closest = xp.argmin(dist, axis=1)
    first = xp.where(listed.any(axis=1), xp.argmax(listed, axis=1), NOT_SEEN)
    fcell = (CX + facing_dxdy[0]) * VIEW_H + (CY + facing_dxdy[1])
    facing = xp.where(valid[fcell], sem[fcell], -1)
    return closest, first, facing


def tables_from_semantic(semantic: np.ndarray, pos: Sequence[int], facing: Sequence[int], vitals: Sequence[int],
                         inventory: Sequence[int], sleeping: bool) -> dict[str, np.ndarray]:
    """Renderer tables (leading env axis of 1) from a Crafter semantic map [x, y] (objects over materials, as
    `crafter.Env`'s info['semantic']), the player's (x, y) and facing (dx, dy), vitals and inventory in
    Crafter order: what BALROG's `describe_frame` reads."""
    x, y = int(pos[0]), int(pos[1])
    w, h = semantic.shape
    xs, ys = x + CELL_DX, y + CELL_DY
    # numpy slicing with a negative start returns an empty window; the high edge clips.
    valid = (x - CX >= 0) & (y - CY >= 0) & (xs < w) & (ys < h)
    sem = np.asarray(semantic)[np.clip(xs, 0, w - 1), np.clip(ys, 0, h - 1)].astype(np.int64)
    closest, first, face = window_tables(sem, valid, (int(facing[0]), int(facing[1])))
    return {"closest": closest[None], "first": first[None], "facing": np.asarray([face]),
            "vitals": np.asarray([vitals], np.int64), "inventory": np.asarray([inventory], np.int64),
            "sleeping": np.asarray([bool(sleeping)])}


# One int8 row per env is all that crosses to the host per step: (field, width) in column order.
PACKED_FIELDS: tuple[tuple[str, int], ...] = (
    ("closest", NUM_SEMANTIC), ("first", NUM_SEMANTIC), ("facing", 1), ("vitals", len(VITALS)),
    ("inventory", len(INVENTORY)), ("sleeping", 1), ("achievements", len(ACHIEVEMENTS)))
PACKED_WIDTH = sum(w for _, w in PACKED_FIELDS)


def unpack_tables(packed: np.ndarray) -> dict[str, np.ndarray]:
    """Host inverse of `craftax.pack_tables` (numpy views, no copies except the bool fields)."""
    out, lo = {}, 0
    for f, w in PACKED_FIELDS:
        col = packed[:, lo:lo + w]
        out[f] = col[:, 0] if f in ("facing", "sleeping") else col
        lo += w
    out["sleeping"] = out["sleeping"].astype(bool)
    out["achievements"] = out["achievements"].astype(bool)
    return out


# ----- host side -----
def _describe_loc(dx: int, dy: int) -> str:
    """BALROG's `describe_loc_old` for an object at offset (dx, dy) from the player."""
    words = (["north"] if dy < 0 else ["south"] if dy > 0 else []) + \
        (["west"] if dx < 0 else ["east"] if dx > 0 else [])
    d = abs(dx) + abs(dy)
    return f"{d} step{'s' if d > 1 else ''} to your {'-'.join(words)}"


SLEEPING_LINE = "You are sleeping, and will not be able take actions until energy is full."
DEAD_LINE = "You died."


class TextRenderer:
    """Builds (long-term text, short-term status) pairs from host copies of `ViewTables`, vectorised over envs.

    Every env's text is a fixed row of string tokens (prefix, header, up to 19 "\n- item loc" lines in first-seen
    order, facing line, separator) picked from one precomputed table with numpy indexing; the whole batch is then
    one `"".join` and one `split` (no per-env Python loop). Status blocks are cached per (vitals, inventory).
    """

    _SEP = "\x00"  # never occurs in BALROG text

    def __init__(self, max_cached_status: int = 1 << 16):
        toks = [""]  # token 0: empty
        self._line0 = len(toks)  # token of (semantic s, cell k): _line0 + s * NUM_CELLS + k
        toks += [f"\n- {SEMANTIC_NAMES[s]} {_describe_loc(int(CELL_DX[k]), int(CELL_DY[k]))}"
                 for s in range(NUM_SEMANTIC) for k in range(NUM_CELLS)]
        self._face0 = len(toks)  # token of facing id f (-1..18): _face0 + 1 + f
        toks += ["\n\nYou face nothing at your front."] + \
            [f"\n\nYou face {SEMANTIC_NAMES[s]} at your front." for s in range(NUM_SEMANTIC)]
        # BALROG: describe_status (ends "\n\n") + "\n\n" + describe_env, then strip().
        self._sleep, self._dead, self._see, self._nothing, self._sep = range(len(toks), len(toks) + 5)
        toks += [f"{SLEEPING_LINE}\n\n\n\n", f"{DEAD_LINE}\n\n\n\n", "You see:", "You see nothing away from you.",
                 self._SEP]
        self._tokens = np.array(toks, dtype=object)
        self._status: dict[bytes, str] = {}
        self._max_cached_status = max_cached_status

    def status(self, vitals: np.ndarray, inventory: np.ndarray) -> str:
        """BALROG's `describe_inventory`: status block, then non-zero items in Crafter order."""
        return self.statuses({"vitals": np.asarray(vitals)[None], "inventory": np.asarray(inventory)[None]})[0]

    def _status_of(self, key: bytes, vitals, inventory) -> str:
        text = self._status.get(key)
        if text is None:
            lines = "\n".join(f"- {v}: {int(x)}/9" for v, x in zip(VITALS, vitals))
            items = "\n".join(f"- {k}: {int(n)}" for k, n in zip(INVENTORY, inventory) if n != 0)
            inv = f"Your inventory:\n{items}" if items else "You have nothing in your inventory."
            text = f"Your status:\n{lines}\n\n{inv}"
            if len(self._status) >= self._max_cached_status:
                self._status.clear()
            self._status[key] = text
        return text

    def texts(self, t: dict[str, np.ndarray]) -> list[str]:
        """Long-term texts of every env in `t` (numpy tables, leading env axis)."""
        first = np.asarray(t["first"])
        n = first.shape[0]
        # Sort ids by first-seen cell: first-seen cells are distinct within an env (ties only among NOT_SEEN, which
        # are dropped), so a plain sort of (cell << 5 | id) keys replaces a stable argsort.
        keys = np.sort((first.astype(np.int16) << 5) | np.arange(NUM_SEMANTIC, dtype=np.int16), axis=1)
        seen = (keys >> 5) != NOT_SEEN
        width = int(seen.sum(axis=1).max(initial=0))  # only as many line columns as the busiest env needs
        order = (keys[:, :width] & 31).astype(np.int64)
        seen = seen[:, :width]
        cell = np.take_along_axis(np.asarray(t["closest"], np.int64), order, axis=1)
        rows = np.empty((n, width + 4), np.int64)
        vitals = np.asarray(t["vitals"])
        rows[:, 0] = np.where(np.asarray(t["sleeping"]), self._sleep, np.where(vitals[:, 0] <= 0, self._dead, 0))
        rows[:, 1] = np.where(seen[:, 0], self._see, self._nothing) if width else self._nothing
        rows[:, 2:-2] = np.where(seen, self._line0 + order * NUM_CELLS + cell, 0)
        rows[:, -2] = self._face0 + 1 + np.asarray(t["facing"], np.int64)
        rows[:, -1] = self._sep
        return "".join(self._tokens[rows.ravel()].tolist()).split(self._SEP)[:n]

    def statuses(self, t: dict[str, np.ndarray]) -> list[str]:
        """Short-term status blocks of every env in `t`; cached, so unchanged vitals/inventory cost one lookup."""
        vi = np.ascontiguousarray(np.concatenate([np.asarray(t["vitals"], np.int8),
                                                  np.asarray(t["inventory"], np.int8)], axis=1))
        # Fixed-width byte keys; numpy's S dtype drops trailing NULs, which is still one-to-one at a fixed width.
        keys = vi.view(f"S{vi.shape[1]}").ravel().tolist()
        get = self._status.get
        out = [get(k) for k in keys]
        for e in [e for e, x in enumerate(out) if x is None]:
            out[e] = self._status_of(keys[e], vi[e, :4], vi[e, 4:])
        return out

    def render(self, tables, indices: Sequence[int] | None = None) -> list[tuple[str, str]]:
        """(text, status) for the given envs (all when None). `tables` holds numpy arrays (device_get first)."""
        t = tables if isinstance(tables, dict) else dataclasses.asdict(tables)
        if indices is not None:
            idx = np.asarray(indices, dtype=np.int64)
            t = {k: np.asarray(t[k])[idx] for k in ("first", "closest", "facing", "vitals", "inventory", "sleeping")}
        return list(zip(self.texts(t), self.statuses(t)))
