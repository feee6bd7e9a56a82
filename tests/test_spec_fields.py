"""Derived-field primitives (parsers, previous/diff, counters, windows, detectors) and the grid primitives."""
from __future__ import annotations

from automem_jax.agent import grid
from automem_jax.agent.derive import FieldEngine, parse_entities, parse_inventory, parse_message, parse_position
from automem_jax.memory.expr import parse_expr, parse_template
from automem_jax.memory.runtime_spec import parse_runtime
from automem_jax.memory.spec import PhaseSpec

CRAFTER_TEXT = ("You see:\n- tree 3 steps to your north-west\n- tree 1 step to your west\n- zombie 2 steps to your "
                "south\n\nYou face grass at your front.")
CRAFTER_STATUS = ("Your status:\n- health: 7/9\n- food: 3/9\n- drink: 9/9\n- energy: 8/9\n\nYour inventory:\n"
                  "- wood: 2\n- wood_pickaxe: 1")
NLE_TEXT = ("message:\nIn what direction?\n\nlanguage observation:\nhorizontal wall near south and southwest\n"
            "doorway adjacent southeast\nstairs down far east\n\ncursor:\nYourself a valkyrie\n(x=5, y=3)\n\nmap:\n"
            "          \n  ------  \n  |.@..>  \n  |.}}.|  \n  ------  ")


def test_parsers():
    inv = parse_inventory(CRAFTER_STATUS)
    assert inv == {"wood": 2, "wood_pickaxe": 1} and inv.missing == 0
    assert parse_inventory("inventory:\na: a +1 long sword (weapon in hand)\nd: an uncursed food ration\n") == {
        "a": "a +1 long sword (weapon in hand)", "d": "an uncursed food ration"}
    assert parse_entities(CRAFTER_TEXT) == {"tree": {"distance": 1, "direction": "west"},
                                            "zombie": {"distance": 2, "direction": "south"},
                                            "grass": {"distance": 0, "direction": "front"}}
    assert parse_entities(NLE_TEXT) == {"horizontal_wall": {"distance": 3, "direction": "south"},
                                        "doorway": {"distance": 1, "direction": "southeast"},
                                        "stairs_down": {"distance": 4, "direction": "east"}}
    assert parse_position(NLE_TEXT) == {"x": 5, "y": 3} and parse_position(CRAFTER_TEXT) is None
    assert parse_message(NLE_TEXT) == "In what direction?" and parse_message(CRAFTER_TEXT) == ""


def _engine(fields):
    phases = (PhaseSpec("PLAN", "{notices}", "{results}", (), ends_on="action"),)
    return FieldEngine(parse_runtime({"fields": fields}, phases, set(), {}, lambda t, p: None))


def _b(step, text="", status="", last_action="", changed=True, reward=0.0):
    return {"step": step, "text": text, "status": status, "observation": text + "\n" + status,
            "last_action": last_action, "changed": changed, "reward": reward, "task": "t", "family": "crafter"}


def test_previous_diff_counters_windows_and_detectors():
    eng = _engine([
        {"name": "inv", "kind": "inventory"},
        {"name": "health", "kind": "regex", "pattern": r"health: (\d+)/9", "type": "int", "default": 9},
        {"name": "prev_health", "kind": "previous", "of": "health"},
        {"name": "hurt", "kind": "expr", "expr": "prev_health - health", "default": 0},
        {"name": "gain", "kind": "diff", "of": "inv"},
        {"name": "no_gain", "kind": "since", "when": "len(gain.gained) > 0"},
        {"name": "noops", "kind": "streak", "when": "last_action == 'Noop'"},
        {"name": "noop_total", "kind": "count", "when": "last_action == 'Noop'"},
        {"name": "last3", "kind": "window", "of": "last_action", "size": 3},
        {"name": "rep", "kind": "repetition", "size": 4},
        {"name": "osc", "kind": "oscillation", "size": 4, "moves_only": True},
    ])
    statuses = ["health: 9/9\n- wood: 1", "health: 9/9\n- wood: 2", "health: 6/9\n- wood: 2",
                "health: 6/9\n- wood: 1\n- stone: 1", "health: 6/9\n- wood: 1\n- stone: 1"]
    acts = ["", "Do", "Noop", "Move West", "Move East"]
    vals = [eng.step(_b(i, status=s, last_action=a, changed=i != 2)) for i, (s, a) in enumerate(zip(statuses, acts))]
    assert [v["prev_health"] for v in vals] == [None, 9, 9, 6, 6]
    assert [v["hurt"] for v in vals] == [0, 0, 3, 0, 0]
    assert vals[1]["gain"] == {"gained": {"wood": 1}, "lost": {}, "changed": True}
    assert vals[3]["gain"] == {"gained": {"stone": 1}, "lost": {"wood": 1}, "changed": True}
    assert [v["no_gain"] for v in vals] == [0, 0, 1, 0, 1]
    assert [v["noops"] for v in vals] == [0, 0, 1, 0, 0] and vals[-1]["noop_total"] == 1
    assert vals[-1]["last3"] == ["Noop", "Move West", "Move East"]
    assert vals[2]["rep"] == {"action": "Noop", "repeats": 1, "failures": 1}
    assert vals[-1]["osc"] == {"reversals": 1, "distinct": 2, "moves": 2, "recent": ["Move West", "Move East"]}
    assert vals[-1]["actions"] == ["Do", "Noop", "Move West", "Move East"]
    assert vals[-1]["effects"] == [True, False, True, True]


def test_expression_helpers_on_lists_and_maps():
    env = {"acts": ["north", "south", "north", "east"], "files": {"a.txt": 30, "goals.txt": 40, "b.txt": 3}}
    assert parse_expr("reversals(acts)").eval(env) == 2
    assert parse_expr("distinct(last(acts, 3))").eval(env) == 3
    assert parse_expr("without(above(files, 25), 'goals.txt')").eval(env) == ["a.txt"]
    assert parse_expr("opposite('Move West')").eval(env) == "east"
    assert [parse_expr(e).eval({"a": 4, "b": 0}) for e in ("a - b", "a * b", "a % b", "a / b", "a + b")] == [
        4, 0, None, None, 4]
    assert parse_template("{join(last(acts, 2), ' -> ')}").render(env) == "north -> east"


MAZE = ["       ", " ----- ", " |...| ", " |.@.| ", " |...| ", " ----- "]


def test_visit_tracker_forces_unvisited_then_least_visited():
    t = grid.VisitTracker()
    at = grid.locate(MAZE, {"x": 3, "y": 4})
    assert at == (3, 3)
    passable = grid.classify(grid.neighbour_chars(MAZE, *at), grid.DEFAULT_BLOCKED, grid.DEFAULT_HAZARDS)[0]
    assert passable == ["north", "south", "east", "west", "northeast", "northwest", "southeast", "southwest"]
    for _ in range(3):
        t.update((3, 4), None)
    assert t.value(passable, 4, 5)["forced"] is None and t.value(passable, 4, 5)["here"] == 3
    t.update((3, 4), "north")  # a move that left the position unchanged: north failed from here
    v = t.value(passable, 4, 5)
    assert v["here"] == 4 and v["forced"] == "south" and v["unvisited"] == passable
    for d, (x, y) in (("south", (3, 5)), ("east", (4, 4)), ("west", (2, 4)), ("northeast", (4, 3)),
                      ("northwest", (2, 3)), ("southeast", (4, 5)), ("southwest", (2, 5)), ("north", (3, 3))):
        t.visits[(x, y)] += 2 if d != "east" else 1
    t.update((3, 4), None)
    v = t.value(passable, 4, 5)
    assert v["unvisited"] == [] and v["least_visited"] == "east" and v["forced"] == "east"


def test_navigator_direction_adjacency_and_hazard_detour():
    lines = grid.map_lines(NLE_TEXT)
    at = grid.locate(lines, {"x": 5, "y": 3})
    nav = grid.navigate(lines, *at, ">", grid.DEFAULT_BLOCKED, grid.DEFAULT_HAZARDS, 2)
    assert nav == {"found": True, "adjacent": False, "distance": 3, "direction": "east", "toward": ["east"],
                   "detour": [], "passable": ["east", "west", "southwest"], "hazards": ["south", "southeast"]}
    lava = ["-------", "|.....|", "|.@}..|", "|..}}>|", "|.....|", "-------"]
    nav = grid.navigate(lava, 2, 2, ">", grid.DEFAULT_BLOCKED, "}", 2)
    assert nav["direction"] == "southeast" and nav["detour"] == ["northeast", "southwest"]
    assert grid.navigate(["|.@>|"], 0, 2, ">", "-|", "}", 2)["adjacent"] is True


def test_evaluation_never_raises_on_random_expressions():
    """Conditions come from untrusted specs: whatever parses evaluates to a value, never an exception."""
    import random

    from automem_jax.memory.expr import FUNCTIONS, ExprError
    rng = random.Random(0)
    atoms = ["a", "b", "s", "l", "m", "n", "0", "1", "2.5", "'x'", "null", "true", "[1, 'x']", "m.k", "l[1]", "l[-9]"]
    ops = ["+", "-", "*", "/", "%", "==", "!=", "<", ">=", "in", "not in", "and", "or"]
    env = {"a": 4, "b": 0, "s": "text", "l": [1, "x", None], "m": {"k": 2, "z": None}, "n": None}

    def gen(depth: int) -> str:
        r = rng.random()
        if depth > 3 or r < 0.3:
            return rng.choice(atoms)
        if r < 0.55:
            name = rng.choice(sorted(FUNCTIONS))
            lo, hi = FUNCTIONS[name][:2]
            return f"{name}({', '.join(gen(depth + 1) for _ in range(rng.randint(lo, min(hi, 3))))})"
        if r < 0.65:
            return f"not {gen(depth + 1)}"
        return f"({gen(depth + 1)} {rng.choice(ops)} {gen(depth + 1)})"

    evaluated = 0
    for _ in range(3000):
        try:
            e = parse_expr(gen(0))
        except ExprError:
            continue
        e.eval(env, ["Noop"])
        evaluated += 1
    assert evaluated > 2000
