"""Lenient action repair (memory/action_repair.py): off by default, each named repair does one thing."""
from __future__ import annotations

import pytest

from automem_jax.memory.action_repair import REPAIRS, RepairOptions, repair

CRAFTER = ["Noop", "Move West", "Move East", "Move North", "Move South", "Do", "Sleep", "Place Table",
           "Make Wood Pickaxe"]
NLE = ["north", "east", "south", "west", "northeast", "far east", "eat", "open", "esc", "a", "A"]
ALL = RepairOptions(tuple(REPAIRS))


@pytest.mark.parametrize("text", ["move north", " Do", "'Do'", "Do.", "Move North-East", "eat d", "go west"])
def test_off_by_default_is_balrog_exact(text):
    assert repair(text, CRAFTER + NLE, RepairOptions()) == text


@pytest.mark.parametrize("names, text, names_list, expected", [
    (("whitespace",), "  Move   West ", CRAFTER, "Move West"),
    (("strip_quotes",), "`Do`", CRAFTER, "Do"),
    (("strip_quotes",), "\"'Sleep'\"", CRAFTER, "Sleep"),
    (("trailing_period",), "Do.", CRAFTER, "Do"),
    (("case",), "move west", CRAFTER, "Move West"),
    (("case",), "ESC", NLE, "esc"),
    (("case",), "b", NLE, "b"),  # no name matches: unchanged (the env then rejects it)
    (("diagonal_to_vertical",), "Move North-East", CRAFTER, "Move North"),
    (("diagonal_to_vertical",), "move south west", CRAFTER, "Move South"),
    (("diagonal_to_vertical",), "Move North-East", NLE, "Move North-East"),  # no "Move North" to map to
    (("go_direction",), "go West", NLE, "west"),
    (("go_direction",), "move northeast", NLE, "northeast"),
    (("go_direction",), "move west", CRAFTER, "move west"),  # "west" is not a Crafter action
    (("two_step",), "eat the lichen corpse", NLE, "eat"),
    (("two_step",), "Open north", NLE, "open"),
    (("two_step",), "far east", NLE, "far east"),  # already legal
    (("two_step",), "fly south", NLE, "fly south"),
    (("case", "whitespace"), " move  WEST ", CRAFTER, "Move West"),  # order fixed: whitespace before case
])
def test_each_repair(names, text, names_list, expected):
    assert repair(text, names_list, RepairOptions(names)) == expected


def test_legal_names_never_change_and_all_repairs_compose():
    for name in CRAFTER + NLE:
        assert repair(name, CRAFTER + NLE, ALL) == name
    assert repair(" 'move north-west.' ", CRAFTER, ALL) == "Move North"
    assert repair("A", NLE, ALL) == "A" and repair("a", NLE, ALL) == "a"  # item letters keep their case


def test_bad_options_name_the_field():
    with pytest.raises(ValueError, match="unknown repair 'lower'; known: whitespace, strip_quotes"):
        RepairOptions(("lower",))
    with pytest.raises(ValueError, match="listed twice"):
        RepairOptions(("case", "case"))
