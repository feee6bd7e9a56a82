"""Lenient action repair: optional rewrites of the model's action text before the env validates it.

By default nothing is repaired and the env checks the candidate as BALROG does (exact member of the action names,
else the default action with BALROG's feedback). A spec turns repairs on by name in `action_repair`; AutoMem's
scaffolds did some of these in code (v0: `two_step`; crafter_v5: `diagonal_to_vertical` + `case`; minihack_v4:
`go_direction`). Each repair is a pure text rewrite; a candidate that already is an action name is never changed,
and a repair whose result would not be an action name is skipped (except `two_step`, which is AutoMem's
unconditional cut, and the cosmetic ones: whitespace, quotes, trailing period).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

_DIRECTIONS = ("north", "south", "east", "west", "northeast", "northwest", "southeast", "southwest")
# NetHack commands that take an item or a direction in a second keystroke (AutoMem's `repair_combined_action`).
TWO_STEP_COMMANDS = frozenset("open close kick fight fire zap eat quaff wear wield read apply puton remove takeoff "
                              "dip rub invoke quiver throw offer drop force loot cast pickup".split())
_DIAGONAL = re.compile(r"^move\s+(north|south)[\s-]*(east|west)$", re.IGNORECASE)
_GO = re.compile(rf"^(?:go|move)\s+({'|'.join(_DIRECTIONS)})$", re.IGNORECASE)


def _whitespace(text: str, names: Sequence[str]) -> str:
    return " ".join(text.split())


def _strip_quotes(text: str, names: Sequence[str]) -> str:
    return text.strip().strip("`'\"[]()<>").strip()


def _trailing_period(text: str, names: Sequence[str]) -> str:
    return text.rstrip().rstrip(".!,;").rstrip()


def _go_direction(text: str, names: Sequence[str]) -> str:
    m = _GO.match(text.strip())
    return m.group(1).lower() if m and m.group(1).lower() in names else text


def _diagonal_to_vertical(text: str, names: Sequence[str]) -> str:
    m = _DIAGONAL.match(text.strip())
    if not m:
        return text
    target = f"Move {m.group(1).capitalize()}"
    return target if target in names else text


def _two_step(text: str, names: Sequence[str]) -> str:
    parts = text.strip().split(None, 1)
    return parts[0].lower() if len(parts) == 2 and parts[0].lower() in TWO_STEP_COMMANDS else text


def _case(text: str, names: Sequence[str]) -> str:
    norm = " ".join(text.split()).casefold()
    matches = [n for n in names if " ".join(n.split()).casefold() == norm]
    return matches[0] if len(matches) == 1 else text


def _strip_args(text: str, names: Sequence[str]) -> str:
    words = text.split()
    if text in names or len(words) < 2:
        return text
    return next((n for n in names if n.casefold() == words[0].casefold()), text)


# name -> (rewrite, what it does); applied in this order whatever order the spec lists them in (cosmetic
# clean-up first, case folding last).
REPAIRS = {
    "whitespace": (_whitespace, 'strip and collapse runs of whitespace: " Move  North " -> "Move North"'),
    "strip_quotes": (_strip_quotes, "remove surrounding quotes, backticks and brackets: \"'Do'\" -> \"Do\""),
    "trailing_period": (_trailing_period, 'drop trailing ".", "!", ",", ";": "Do." -> "Do"'),
    "go_direction": (_go_direction, '"go west" / "move west" -> "west" where "west" is an action (minihack_v4)'),
    "diagonal_to_vertical": (_diagonal_to_vertical, '"Move North-East" -> "Move North" (crafter_v5)'),
    "two_step": (_two_step, '"eat d" -> "eat": NetHack asks for the item/direction next (AutoMem v0)'),
    "case": (_case, '"move  north" -> "Move North" when exactly one action matches ignoring case and spacing'
                    ' (crafter_v5)'),
    "strip_args": (_strip_args, '"Eat apple" -> "eat" when the first word is an action name (any env)'),
}


def apply_one(name: str, text: str, action_names: Sequence[str]) -> str:
    """One named repair (a spec's `runtime.repair` builtin step), whatever the action names."""
    return REPAIRS[name][0](text, action_names)


@dataclasses.dataclass(frozen=True)
class RepairOptions:
    """The repairs to apply (names from REPAIRS); empty = BALROG-exact (the env validates the text as written)."""

    names: tuple[str, ...] = ()

    def __post_init__(self):
        unknown = [n for n in self.names if n not in REPAIRS]
        if unknown:
            raise ValueError(f"action_repair: unknown repair {unknown[0]!r}; known: {', '.join(REPAIRS)}")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"action_repair: a repair is listed twice in {list(self.names)}; list each once")


def repair(text: str, action_names: Sequence[str], options: RepairOptions) -> str:
    """`text` rewritten by the enabled repairs; unchanged when it already is an action name or nothing is enabled."""
    if not options.names or text in action_names:
        return text
    for name, (fn, _) in REPAIRS.items():
        if name in options.names:
            text = fn(text, action_names)
            if text in action_names:
                break
    return text
