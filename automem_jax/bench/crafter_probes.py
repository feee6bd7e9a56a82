"""Put crafter 1.8.3 and Craftax-Classic 1.6.1 into the same hand-built situation and play the same actions.

A `Situation` describes a 7x7 patch around the player (all grass unless said otherwise), the player facing east,
what lies in front, which stations stand where, the inventory and vitals, and at most one creature and one plant
(then every other cell of the patch is stone, so nothing wanders off or in). Each probe builds it in its own
engine from a world of a fixed seed (no other creatures), plays the actions and reports an `Outcome` in Crafter's
names. Used by bench/crafter_rules.py (docs/ENVS.md) and its tests.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import numpy as np

from automem_jax.envs import crafter_text as ct

ITEMS = ct.INVENTORY  # sapling .. iron_sword
# Craftax-Classic BlockType values by Crafter material name (craftax_classic/constants.py).
CRAFTAX_BLOCKS = {"grass": 2, "water": 3, "stone": 4, "tree": 5, "path": 7, "coal": 8, "iron": 9, "diamond": 10,
                  "table": 11, "furnace": 12, "sand": 13, "lava": 14, "plant": 15, "ripe_plant": 16}
CRAFTAX_NAMES = {v: k for k, v in CRAFTAX_BLOCKS.items()}
EAST, WEST, NORTH, SOUTH = (1, 0), (-1, 0), (0, -1), (0, 1)


@dataclasses.dataclass(frozen=True)
class Situation:
    front: str = "grass"  # material east of the player
    items: tuple[tuple[str, int], ...] = ()  # inventory items (others 0)
    vitals: tuple[tuple[str, int], ...] = ()  # health/food/drink/energy (others 9)
    stations: tuple[tuple[str, tuple[int, int]], ...] = ()  # (material, (dx, dy) from the player)
    creature: str | None = None  # "cow" | "zombie"
    creature_at: tuple[int, int] = (1, 0)  # (dx, dy) from the player: in front unless said otherwise
    plant: str | None = None  # "sapling" | "ripe" in front
    sleeping: bool = False
    walled: bool = False  # every other cell of the patch is stone: nothing moves in or out (implied by a
    #                       creature or a plant)

    def stone_cells(self) -> list[tuple[int, int]]:
        if not (self.walled or self.creature or self.plant):
            return []
        keep = {(0, 0), (1, 0), self.creature_at} | {d for _, d in self.stations}
        return [(dx, dy) for dx in range(-3, 4) for dy in range(-3, 4) if (dx, dy) not in keep]


@dataclasses.dataclass
class Outcome:
    front: str  # material in front afterwards ("plant"/"ripe_plant" for a plant)
    creature: bool  # a cow or zombie is alive
    inventory: dict[str, int]  # items and vitals
    achievements: list[str]  # unlocked, sorted
    sleeping: bool


def situation(front: str = "grass", items: dict[str, int] | None = None, vitals: dict[str, int] | None = None,
              stations: dict[str, tuple[int, int]] | None = None, **kw) -> Situation:
    return Situation(front, tuple(sorted((items or {}).items())), tuple(sorted((vitals or {}).items())),
                     tuple(sorted((stations or {}).items())), **kw)


class CrafterProbe:
    """crafter 1.8.3 (`crafter.Env`, frames skipped as in the reference env); one world, re-dressed per situation."""

    engine = "crafter"

    def __init__(self, seed: int = 0):
        from automem_jax.envs.crafter_reference import CrafterSpec, make_crafter_env
        self.env = make_crafter_env(CrafterSpec(), seed)
        self.env.reset()
        self.center = tuple(int(v) for v in self.env._player.pos)

    def setup(self, s: Situation) -> None:
        from crafter import objects
        env, world = self.env, self.env._world
        for obj in world.objects:
            world.remove(obj)
        x, y = self.center
        for dx in range(-3, 4):
            for dy in range(-3, 4):
                world[x + dx, y + dy] = "grass"
        world[x + 1, y] = s.front
        for name, (dx, dy) in s.stations:
            world[x + dx, y + dy] = name
        for dx, dy in s.stone_cells():
            world[x + dx, y + dy] = "stone"
        player = objects.Player(world, (x, y))
        player.facing = EAST
        player.sleeping = s.sleeping
        player.inventory.update(dict(s.vitals))
        player.inventory.update(dict(s.items))
        world.add(player)
        env._player, env._unlocked, env._last_health, env._step = player, set(), player.health, 0
        cx, cy = x + s.creature_at[0], y + s.creature_at[1]
        if s.creature == "cow":
            world.add(objects.Cow(world, (cx, cy)))
        elif s.creature == "zombie":
            world.add(objects.Zombie(world, (cx, cy), player))
        if s.plant:
            plant = objects.Plant(world, (x + 1, y))
            plant.grown = 10 ** 4 if s.plant == "ripe" else 0
            world.add(plant)

    def play(self, actions: Sequence[str]) -> Outcome:
        for a in actions:
            self.env.step(ct.ACTIONS.index(a))
        return self.outcome()

    def run(self, s: Situation, actions: Sequence[str]) -> Outcome:
        self.setup(s)
        return self.play(actions)

    def outcome(self) -> Outcome:
        from crafter import objects
        x, y = self.center
        material, obj = self.env._world[x + 1, y]
        p = self.env._player
        if isinstance(obj, objects.Plant):
            material = "ripe_plant" if obj.ripe else "plant"
        alive = any(isinstance(o, (objects.Cow, objects.Zombie)) for o in self.env._world.objects)
        return Outcome(front=material, creature=alive,
                       inventory={k: int(v) for k, v in p.inventory.items()},
                       achievements=sorted(k for k, v in p.achievements.items() if v > 0), sleeping=bool(p.sleeping))

    # ----- worlds -----
    def world(self, seed: int) -> dict[str, Any]:
        """The world the reference env plays for `seed` (BALROG's reset Noop included)."""
        from crafter import objects
        from automem_jax.envs.crafter_reference import reseed
        reseed(self.env, seed)
        self.env.reset()
        _, _, _, info = self.env.step(0)
        mats = self.env._world._mat_map.T  # [y, x] like Craftax's map
        names = {i: n for n, i in self.env._world._mat_ids.items()}
        kinds = {"cow": objects.Cow, "zombie": objects.Zombie, "skeleton": objects.Skeleton}
        objs = self.env._world.objects
        out = {"map": np.vectorize(lambda i: names[i] or "none")(mats), "facing": tuple(self.env._player.facing),
               "position": tuple(int(v) for v in self.env._player.pos),
               **{k: sum(isinstance(o, c) for o in objs) for k, c in kinds.items()}}
        self.env.reset()  # leave a world for the next situation
        return out


class CraftaxProbe:
    """Craftax-Classic 1.6.1 (`craftax_step`, jitted once); the world of a seed as CraftaxTextEnv makes it."""

    engine = "craftax-classic"

    def __init__(self, seed: int = 0):
        import jax
        from automem_jax.envs.craftax import craftax_core, seed_words
        self.core = craftax_core()
        self._worlds = jax.jit(self.core.new_world)
        self.base = jax.device_get(self._worlds(seed_words([seed])[0])[0])
        self.state = self.base
        self._key = jax.random.PRNGKey(seed)
        self._t = 0

    @functools.cached_property
    def _step(self):
        import jax
        from craftax.craftax_classic.game_logic import craftax_step
        def step(key, state, action):  # same dtypes out as in: one compile serves every call
            new = craftax_step(key, state, action, self.core.params, self.core.static_params)[0]
            return jax.tree.map(lambda x, y: x.astype(y.dtype), new, state)
        return jax.jit(step)

    def setup(self, s: Situation) -> None:
        import jax
        b = self.base
        r, c = (int(v) for v in b.player_position)
        grid = np.array(b.map)
        grid[r - 3:r + 4, c - 3:c + 4] = CRAFTAX_BLOCKS["grass"]
        grid[r, c + 1] = CRAFTAX_BLOCKS[s.front]
        for name, (dx, dy) in s.stations:
            grid[r + dy, c + dx] = CRAFTAX_BLOCKS[name]
        for dx, dy in s.stone_cells():
            grid[r + dy, c + dx] = CRAFTAX_BLOCKS["stone"]
        mob_map = np.zeros_like(np.asarray(b.mob_map))

        def mobs(m, kind: str, health: int):
            mask = np.zeros_like(np.asarray(m.mask))
            pos, hp, cd = np.array(m.position), np.array(m.health), np.zeros_like(np.asarray(m.attack_cooldown))
            if s.creature == kind:
                cr, cc = r + s.creature_at[1], c + s.creature_at[0]
                mask[0], pos[0], hp[0] = True, (cr, cc), health
                mob_map[cr, cc] = True
            return m.replace(mask=mask, position=pos, health=hp, attack_cooldown=cd)

        params = self.core.params
        plants = dict(growing_plants_mask=np.zeros_like(np.asarray(b.growing_plants_mask)),
                      growing_plants_age=np.zeros_like(np.asarray(b.growing_plants_age)),
                      growing_plants_positions=np.array(b.growing_plants_positions))
        if s.plant:
            grid[r, c + 1] = CRAFTAX_BLOCKS["ripe_plant" if s.plant == "ripe" else "plant"]
            plants["growing_plants_mask"][0] = True
            plants["growing_plants_positions"][0] = (r, c + 1)
        vit = {"health": 9, "food": 9, "drink": 9, "energy": 9, **dict(s.vitals)}
        inv = b.inventory.replace(**{k: np.asarray(dict(s.items).get(k, 0), np.asarray(getattr(b.inventory, k)).dtype)
                                     for k in ITEMS})
        self.state = b.replace(
            map=grid, mob_map=mob_map, inventory=inv, player_direction=np.asarray(2, np.int32),  # RIGHT = east
            player_health=vit["health"], player_food=vit["food"], player_drink=vit["drink"],
            player_energy=vit["energy"], is_sleeping=np.asarray(s.sleeping),
            achievements=np.zeros_like(np.asarray(b.achievements)),
            cows=mobs(b.cows, "cow", params.cow_health), zombies=mobs(b.zombies, "zombie", params.zombie_health),
            skeletons=mobs(b.skeletons, "skeleton", params.skeleton_health), arrows=mobs(b.arrows, "arrow", 1),
            **plants)
        self.state = jax.tree.map(lambda x, y: np.asarray(x, np.asarray(y).dtype), self.state, b)

    def play(self, actions: Sequence[str]) -> Outcome:
        import jax
        for a in actions:
            self._t += 1
            key = jax.random.fold_in(self._key, self._t)
            self.state = jax.device_get(self._step(key, self.state, ct.ACTIONS.index(a)))
        return self.outcome()

    def run(self, s: Situation, actions: Sequence[str]) -> Outcome:
        self.setup(s)
        return self.play(actions)

    def outcome(self) -> Outcome:
        st = self.state
        r, c = (int(v) for v in st.player_position)
        front = CRAFTAX_NAMES.get(int(st.map[r, c + 1]), "none")
        creature = bool(np.asarray(st.cows.mask).any() or np.asarray(st.zombies.mask).any())
        inv = {"health": int(st.player_health), "food": int(st.player_food), "drink": int(st.player_drink),
               "energy": int(st.player_energy), **{k: int(getattr(st.inventory, k)) for k in ITEMS}}
        return Outcome(front=front, creature=creature, inventory=inv,
                       achievements=sorted(a for a, v in zip(ct.ACHIEVEMENTS, np.asarray(st.achievements)) if v),
                       sleeping=bool(st.is_sleeping))

    # ----- worlds -----
    def world(self, seed: int) -> dict[str, Any]:
        """The world CraftaxTextEnv plays for `seed` (before its reset Noop: no creature moves or spawns there)."""
        import jax
        from automem_jax.envs.craftax import seed_words
        from automem_jax.envs.crafter_text import DIRECTION_DXDY
        st = jax.device_get(self._worlds(seed_words([seed])[0])[0])
        names = np.vectorize(lambda v: CRAFTAX_NAMES.get(int(v), "none"))(np.asarray(st.map))
        r, c = (int(v) for v in st.player_position)
        return {"map": names, "facing": tuple(int(v) for v in DIRECTION_DXDY[int(st.player_direction)]),
                "position": (c, r), **{k: int(np.asarray(getattr(st, k + "s").mask).sum())
                                        for k in ("cow", "zombie", "skeleton")}}
