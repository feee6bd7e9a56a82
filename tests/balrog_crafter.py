"""Test oracle: BALROG's Crafter text (balrog/environments/crafter/env.py describe_frame with unique_items=True,
precise_location=False, no skipped or edge-only items), written loop by loop on a Crafter semantic map [x, y].

Independent of crafter_text's vectorised renderer on purpose: both Crafter envs' texts are checked against it.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np

VITALS = ("health", "food", "drink", "energy")


def _loc(dx: int, dy: int) -> str:
    words = []
    if dy < 0:
        words.append("north")
    elif dy > 0:
        words.append("south")
    if dx < 0:
        words.append("west")
    elif dx > 0:
        words.append("east")
    d = abs(dx) + abs(dy)
    return f"{d} step{'s' if d > 1 else ''} to your {'-'.join(words)}"


def describe_env(semantic: np.ndarray, pos: Sequence[int], facing: Sequence[int], names: Sequence[str],
                 player_id: int) -> str:
    px, py = int(pos[0]), int(pos[1])
    window = semantic[px - 4:px + 5, py - 3:py + 4]  # numpy slicing, as BALROG: a negative start empties it
    cx, cy = 4, 3
    tx, ty = cx + int(facing[0]), cy + int(facing[1])
    if 0 <= tx < window.shape[0] and 0 <= ty < window.shape[1]:
        front = f"You face {names[window[tx, ty]]} at your front."
    else:
        front = "You face nothing at your front."
    closest: dict[str, str] = {}
    for i in range(window.shape[0]):
        for j in range(window.shape[1]):
            if window[i, j] == player_id:
                continue
            name, loc = names[window[i, j]], _loc(i - cx, j - cy)
            old = closest.setdefault(name, "")
            if not old or sum(map(int, re.findall(r"\d+", loc))) < sum(map(int, re.findall(r"\d+", old))):
                closest[name] = loc
    if closest:
        seen = "You see:\n" + "\n".join(f"- {n} {loc}" for n, loc in closest.items())
    else:
        seen = "You see nothing away from you."
    return (seen + "\n\n" + front).strip()


def describe_frame(semantic: np.ndarray, pos: Sequence[int], facing: Sequence[int], sleeping: bool,
                   inventory: Mapping[str, int], names: Sequence[str], player_id: int) -> tuple[str, str]:
    """(long-term text, short-term status) for one frame; `inventory` in Crafter's order, vitals included."""
    status = ("You are sleeping, and will not be able take actions until energy is full.\n\n" if sleeping
              else "You died.\n\n" if inventory["health"] <= 0 else "")
    text = (status + "\n\n" + describe_env(semantic, pos, facing, names, player_id) + "\n\n").strip()
    vit = "Your status:\n" + "\n".join(f"- {v}: {inventory[v]}/9" for v in VITALS)
    items = "\n".join(f"- {k}: {n}" for k, n in inventory.items() if k not in VITALS and n != 0)
    inv = f"Your inventory:\n{items}" if items else "You have nothing in your inventory."
    return text, (vit + "\n\n" + inv).strip()
