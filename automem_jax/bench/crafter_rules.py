"""Measure the rule differences between Craftax-Classic 1.6.1 (`crafter`) and crafter 1.8.3 (`crafter:reference`).

  python -m automem_jax.bench.crafter_rules [--seeds=42,43] [--sapling_trials=400] [--json_out=FILE]

Every number comes from playing both packages in matching hand-built situations (bench/crafter_probes.py), not
from reading their code: recipes (what each Make/Place needs and uses), what Do collects and leaves behind,
where things can be placed, drinking, cows and zombies, plants, sleeping, lava, the worlds the same seeds give,
and whether a seed replays the same episode in fresh processes. Prints one JSON object: per-engine results and the
list of differences (docs/ENVS.md is written from it). CPU only; ~4 minutes with the default flags (crafter's world
generation is ~2 s a seed).
"""
from __future__ import annotations

import json
from typing import Any, Callable, Sequence

import numpy as np

from automem_jax.bench.crafter_probes import CraftaxProbe, CrafterProbe, Outcome, situation

MATERIALS = ("wood", "stone", "coal", "iron", "sapling")
TABLE_FURNACE = {"table": (-1, 0), "furnace": (0, -1)}
MAKES = ("Make Wood Pickaxe", "Make Stone Pickaxe", "Make Iron Pickaxe", "Make Wood Sword", "Make Stone Sword",
         "Make Iron Sword")
PLACES = {"Place Table": "table", "Place Furnace": "furnace", "Place Stone": "stone", "Place Plant": "plant"}
SURFACES = ("grass", "sand", "path", "water", "lava", "tree", "stone")
PICKAXES = {"none": {}, "wood_pickaxe": {"wood_pickaxe": 1}, "stone_pickaxe": {"wood_pickaxe": 1, "stone_pickaxe": 1},
            "iron_pickaxe": {"wood_pickaxe": 1, "stone_pickaxe": 1, "iron_pickaxe": 1}}


def _succeeded(action: str, before: dict[str, int], out: Outcome) -> bool:
    if action.startswith("Make "):
        tool = action.removeprefix("Make ").lower().replace(" ", "_")
        return out.inventory[tool] > before.get(tool, 0)
    used = any(out.inventory[m] < n for m, n in before.items())  # placing on its own kind changes nothing
    return out.front == PLACES[action] and used


def recipe(probe, action: str, stations: dict[str, tuple[int, int]] = TABLE_FURNACE) -> dict[str, Any]:
    """What `action` needs and uses: stations, the smallest count of each required material, the materials used."""
    full = {m: 9 for m in MATERIALS}

    def ok(items: dict[str, int], st: dict[str, tuple[int, int]] = stations) -> tuple[bool, Outcome]:
        out = probe.run(situation("grass", items, stations=st), [action])
        return _succeeded(action, items, out), out

    success, out = ok(full)
    if not success:
        return {"possible": False}
    used = {m: full[m] - out.inventory[m] for m in MATERIALS if out.inventory[m] < full[m]}
    needs = {}
    for m in MATERIALS:
        if not ok({**full, m: 0})[0]:
            needs[m] = next(n for n in range(1, 10) if ok({**full, m: n})[0])
    needed_stations = sorted(name for name in stations
                             if not ok(full, {k: v for k, v in stations.items() if k != name})[0])
    return {"possible": True, "needs": needs, "uses": used, "stations": needed_stations}


def station_reach(probe) -> dict[str, bool]:
    """Make Wood Pickaxe with the table at a diagonal and two cells away."""
    out = {}
    for label, where in (("diagonal", (-1, -1)), ("two_cells", (-2, 0))):
        items = {"wood": 9}
        res = probe.run(situation("grass", items, stations={"table": where}), ["Make Wood Pickaxe"])
        out[label] = _succeeded("Make Wood Pickaxe", items, res)
    return out


def collecting(probe) -> dict[str, Any]:
    """Do on each material: the pickaxe it needs, what it gives, what it leaves, and a second Do on the same cell."""
    out = {}
    for material in ("tree", "stone", "coal", "iron", "diamond", "water", "sand", "path"):
        row: dict[str, Any] = {"needs": None}
        for tool, items in PICKAXES.items():
            res = probe.run(situation(material, items, vitals={"drink": 5}), ["Do"])
            before = {k: 0 for k in res.inventory} | {"health": 9, "food": 9, "drink": 5, "energy": 9} | items
            gained = {k: v - before[k] for k, v in res.inventory.items() if v > before[k]}
            if gained:
                again = probe.play(["Do"]).inventory
                row.update(needs=tool, gives=gained, leaves=res.front,
                           second_do_gives={k: again[k] - res.inventory[k] for k in gained})
                break
        out[material] = row
    return out


def sapling_rate(probe, trials: int) -> dict[str, float]:
    """Share of Do on grass that gives a sapling, with its binomial standard error (a chance, so compared
    statistically, not listed among the exact differences)."""
    hits = sum(probe.run(situation("grass"), ["Do"]).inventory["sapling"] for _ in range(trials))
    rate = hits / trials
    return {"rate": rate, "trials": trials, "se": round(float(np.sqrt(rate * (1 - rate) / trials)), 4)}


def surfaces(probe) -> dict[str, list[str]]:
    """Where each Place action works (the material in front)."""
    items = {m: 9 for m in MATERIALS}
    return {action: [m for m in SURFACES
                     if _succeeded(action, items, probe.run(situation(m, items, stations=TABLE_FURNACE), [action]))]
            for action in PLACES}


def creatures(probe) -> dict[str, Any]:
    """Cow: hits to eat without a sword and the food it gives. Zombie: damage awake and asleep, waking up, hits to
    defeat it without a sword."""
    out: dict[str, Any] = {}
    probe.setup(situation(creature="cow", vitals={"food": 2}))
    for hits in range(1, 11):
        res = probe.play(["Do"])
        if not res.creature or "eat_cow" in res.achievements:
            out["cow"] = {"hits": hits, "food_gain": res.inventory["food"] - 2}
            break
    awake = probe.run(situation(creature="zombie"), ["Noop"])
    asleep = probe.run(situation(creature="zombie", vitals={"energy": 3}, sleeping=True), ["Noop", "Noop"])
    out["zombie"] = {"damage_awake": 9 - awake.inventory["health"], "damage_asleep": 9 - asleep.inventory["health"],
                     "asleep_after_hit": asleep.sleeping, "hit_gives_wake_up": "wake_up" in asleep.achievements}
    probe.setup(situation(creature="zombie"))
    for hits in range(1, 11):
        res = probe.play(["Do"])
        if "defeat_zombie" in res.achievements:
            out["zombie"]["hits_to_defeat"] = hits
            break
    return out


def plants(probe, max_wait: int = 700) -> dict[str, Any]:
    """Steps from Place Plant until the plant is ripe (the engine's own state), and what eating a ripe one gives."""
    probe.setup(situation(items={"sapling": 1}, walled=True))
    res = probe.play(["Place Plant"])
    ripe_after = None
    for t in range(1, max_wait + 1):
        res = probe.play(["Noop"])
        if res.front == "ripe_plant":
            ripe_after = t
            break
    unripe = probe.run(situation(plant="sapling", vitals={"food": 2}), ["Do"])
    grazed = probe.run(situation(plant="sapling", creature="cow", creature_at=(2, 0)), ["Noop"] * 3)
    ripe = probe.run(situation(plant="ripe", vitals={"food": 2}), ["Do"])
    return {"ripe_after_steps": ripe_after, "eat_unripe_food_gain": unripe.inventory["food"] - 2,
            "eat_ripe_food_gain": ripe.inventory["food"] - 2, "after_eating": ripe.front,
            "sapling_next_to_a_cow_after_3_steps": grazed.front}


def sleeping(probe, max_wait: int = 300) -> dict[str, Any]:
    probe.setup(situation(vitals={"energy": 3}, walled=True))
    res = probe.play(["Sleep"])
    started = res.sleeping
    for t in range(1, max_wait + 1):
        res = probe.play(["Noop"])
        if not res.sleeping:
            return {"starts": started, "woke_after_steps": t, "energy_at_wake": res.inventory["energy"],
                    "wake_up": "wake_up" in res.achievements}
    return {"starts": started, "woke_after_steps": None}


def misc(probe) -> dict[str, Any]:
    drink = probe.run(situation("water", vitals={"drink": 5}), ["Do"])
    lava = probe.run(situation("lava"), ["Move East"])
    return {"drink_gain": drink.inventory["drink"] - 5, "walk_into_lava_health": lava.inventory["health"]}


def worlds(crafter: CrafterProbe, craftax: CraftaxProbe, seeds: Sequence[int]) -> dict[str, Any]:
    """Per seed: the share of equal map cells (and, for scale, between this and the previous seed's crafter world),
    diamonds, creatures at the start, start position and facing."""
    rows, previous = [], None
    for s in seeds:
        a, b = crafter.world(s), craftax.world(s)
        row = {"seed": int(s), "equal_cells": round(float(np.mean(a["map"] == b["map"])), 3)}
        if previous is not None:
            row["equal_cells_crafter_previous_seed"] = round(float(np.mean(a["map"] == previous)), 3)
        previous = a["map"]
        for engine, w in (("crafter", a), ("craftax", b)):
            row[f"diamonds_{engine}"] = int(np.sum(w["map"] == "diamond"))
            row.update({f"{k}_{engine}": w[k] for k in ("cow", "zombie", "skeleton", "facing", "position")})
        rows.append(row)
    sp = craftax.core.static_params
    return {"per_seed": rows, "craftax_creature_caps": {"cow": sp.max_cows, "zombie": sp.max_zombies,
                                                        "skeleton": sp.max_skeletons}}


def replay(args: tuple[bool, int, int]) -> list[str]:
    """One process's replay of a seed with a fixed random policy: a hash of the semantic map every 50 steps. `ordered`:
    the reference env's crafter (insertion-ordered chunks, frames' numbers only); else the plain package with frames
    (256 px), as BALROG runs it."""
    ordered, seed, steps = args
    import hashlib
    import random
    if ordered:
        from automem_jax.envs.crafter_reference import CrafterSpec, make_crafter_env
        env = make_crafter_env(CrafterSpec(), seed)
    else:
        import crafter
        env = crafter.Env(area=(64, 64), view=(9, 9), size=(256, 256), seed=seed)
    env.reset()
    policy, out = random.Random(seed), []
    for t in range(1, steps + 1):
        _, _, done, info = env.step(policy.randrange(11))
        env.render()
        if t % 50 == 0:
            out.append(hashlib.md5(info["semantic"].tobytes()).hexdigest()[:8])
        if done:
            break
    return out


def replays(seed: int = 7, steps: int = 300, runs: int = 3) -> dict[str, list[list[str]]]:
    """The same seed and actions replayed in `runs` fresh processes, by the plain package and by the reference env."""
    import multiprocessing as mp
    out = {}
    for label, ordered in (("crafter_package", False), ("crafter_reference_env", True)):
        with mp.get_context("spawn").Pool(runs, maxtasksperchild=1) as pool:
            out[label] = pool.map(replay, [(ordered, seed, steps)] * runs, chunksize=1)
    return out


MEASURES: dict[str, Callable[[Any], Any]] = {
    **{f"recipe/{a}": (lambda p, a=a: recipe(p, a)) for a in (*MAKES, *PLACES)},
    "station_reach": station_reach, "collecting": collecting, "surfaces": surfaces, "creatures": creatures,
    "plants": plants, "sleeping": sleeping, "misc": misc,
}


def measure(probes: Sequence[Any], names: Sequence[str] = tuple(MEASURES)) -> dict[str, dict[str, Any]]:
    """{measure name: {engine: result}} for the given probes."""
    return {name: {p.engine: MEASURES[name](p) for p in probes} for name in names}


def differences(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The measures whose results differ between the two engines, leaf by leaf."""
    out = []

    def walk(path: str, a: Any, b: Any) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                walk(f"{path}/{k}", a.get(k), b.get(k))
        elif a != b:
            out.append({"what": path, "crafter": a, "craftax-classic": b})

    for name, by_engine in results.items():
        walk(name, by_engine.get("crafter"), by_engine.get("craftax-classic"))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="42,43,44,45,46,47,48,49,50,51", help="world seeds compared")
    ap.add_argument("--sapling_trials", type=int, default=400)
    ap.add_argument("--json_out", default=None)
    args = ap.parse_args(argv)
    crafter, craftax = CrafterProbe(), CraftaxProbe()
    results = measure([crafter, craftax])
    import importlib.metadata as md
    versions = {"crafter": md.version("crafter"), "craftax": md.version("craftax")}
    report = {"bench": "crafter_rules", "versions": versions,
              "results": results, "differences": differences(results),
              "sapling_rate": {p.engine: sapling_rate(p, args.sapling_trials) for p in (crafter, craftax)},
              "worlds": worlds(crafter, craftax, [int(s) for s in args.seeds.split(",") if s]),
              "replays": replays()}
    from automem_jax.bench.common import emit
    emit(json.loads(json.dumps(report, default=str)), args.json_out)


if __name__ == "__main__":
    main()
