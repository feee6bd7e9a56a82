"""Crafter as a batched text env over Craftax-Classic, with all env state on the accelerator.

Device side (pure functions over `Slots`, built once per env by `CraftaxCore`):
  * `step(slots, actions)`: every slot whose action is >= 0 takes one Craftax step; slots with action -1 keep
    their state (held). Returns new slots, per-slot reward / terminal / truncated flags and the text tables for the
    whole batch: one jitted call and one small host transfer per agent step.
  * `reset(slots, seeds, indices)`: generates the worlds for the given seeds in one vmapped call and scatters them
    into the given slots (padded to a few bucket sizes so few variants compile). BALROG's reset then takes one Noop
    step, which reuses the compiled `step` with the other slots held.
Resets are seed-deterministic: the world and every step key derive from the episode seed only (step key =
fold_in(episode key, timestep)), so the same seed and actions give the same episode in any slot of any batch.

Host side, `CraftaxTextEnv(BatchedTextEnv)` turns the tables into BALROG's strings (`crafter_text.TextRenderer`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from automem_jax.envs import crafter_text as ct
from automem_jax.envs.base import BatchedTextEnv, Observation, Step

BALROG_MAX_EPISODE_STEPS = 2000
HOLD = -1  # action id that keeps a slot's state unchanged


def _craftax_classic():
    """Import Craftax lazily: its constants module builds a texture cache inside the package dir on first import."""
    from craftax.craftax_classic.envs.craftax_state import EnvParams, StaticEnvParams
    from craftax.craftax_classic.game_logic import craftax_step, is_game_over
    from craftax.craftax_classic.world_gen import generate_world
    return EnvParams, StaticEnvParams, craftax_step, is_game_over, generate_world


# ----- BALROG's text tables, computed on device -----
@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ViewTables:
    """Per-env tables (leading axis = env). Small ints only: this is all that crosses to the host per step."""

    closest: jax.Array  # int8 [N, 19]: cell index of the closest instance of each semantic id (scan order)
    first: jax.Array  # int8 [N, 19]: first-seen cell of each id, NOT_SEEN if absent
    facing: jax.Array  # int8 [N]: semantic id of the faced cell, -1 when outside the window
    vitals: jax.Array  # int8 [N, 4]: health, food, drink, energy
    inventory: jax.Array  # int8 [N, 12]: Crafter order
    sleeping: jax.Array  # bool [N]
    achievements: jax.Array  # bool [N, 22]


def _semantic_window(state) -> tuple[jax.Array, jax.Array]:
    """One env: semantic ids of the 63 window cells (scan order) and their validity."""
    r, c = state.player_position[0], state.player_position[1]
    h, w = state.map.shape
    rows, cols = r + jnp.asarray(ct.CELL_DY), c + jnp.asarray(ct.CELL_DX)
    # numpy slicing with a negative start returns an empty window; the high edge clips.
    nonempty = (c - ct.CX >= 0) & (r - ct.CY >= 0)
    valid = nonempty & (rows < h) & (cols < w)
    blocks = state.map[jnp.clip(rows, 0, h - 1), jnp.clip(cols, 0, w - 1)]
    sem = jnp.asarray(ct.BLOCK_TO_SEMANTIC)[blocks]
    # Objects override the material of their cell (later groups win a shared cell).
    for mobs, sid in ((state.cows, ct.COW), (state.zombies, ct.ZOMBIE), (state.skeletons, ct.SKELETON),
                      (state.arrows, ct.ARROW)):
        hit = ((mobs.position[:, 0][:, None] == rows[None]) & (mobs.position[:, 1][:, None] == cols[None])
               & mobs.mask[:, None]).any(axis=0)
        sem = jnp.where(hit, sid, sem)
    sem = sem.at[ct.CENTER_CELL].set(ct.PLAYER)
    return sem, valid


def _tables_one(state) -> ViewTables:
    sem, valid = _semantic_window(state)
    closest, first, facing = ct.window_tables(sem, valid, jnp.asarray(ct.DIRECTION_DXDY)[state.player_direction],
                                              xp=jnp)
    inv = state.inventory
    return ViewTables(
        closest=closest.astype(jnp.int8),
        first=first.astype(jnp.int8),
        facing=facing.astype(jnp.int8),
        vitals=jnp.stack([state.player_health, state.player_food, state.player_drink,
                          state.player_energy]).astype(jnp.int8),
        inventory=jnp.stack([getattr(inv, k) for k in ct.INVENTORY]).astype(jnp.int8),
        sleeping=jnp.asarray(state.is_sleeping, bool),
        achievements=jnp.asarray(state.achievements, bool),
    )


def view_tables(states) -> ViewTables:
    """Batched tables for Craftax-Classic `EnvState`s with a leading env axis (jit it, or call inside a jit)."""
    return jax.vmap(_tables_one)(states)


def pack_tables(t: ViewTables) -> jax.Array:
    """int8 [N, PACKED_WIDTH]: every table side by side, so the host fetches one array (one transfer)."""
    cols = [jnp.asarray(getattr(t, f)).astype(jnp.int8).reshape(t.facing.shape[0], w) for f, w in ct.PACKED_FIELDS]
    return jnp.concatenate(cols, axis=1)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Slots:
    """Batched env slots. `state` is a Craftax-Classic EnvState with a leading [N] axis."""

    state: Any
    key: jax.Array  # uint32 [N, 2]: per-episode step key (step t uses fold_in(key, t))
    steps: jax.Array  # int32 [N]: agent steps taken in this episode (BALROG's reset Noop is not counted)


def select_tree(mask: jax.Array, a, b):
    """Per-slot `where(mask, a, b)` over two pytrees with a leading [N] axis."""
    def sel(x, y):
        return jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - 1)), x, y)
    return jax.tree.map(sel, a, b)


def seed_words(seeds: Sequence[int]) -> np.ndarray:
    """Seeds (0 <= s < 2**63) as uint32 [K, 2] (low, high) words, so any int seed maps to a distinct key."""
    s = np.asarray([int(x) for x in seeds], dtype=object)
    if len(s) and (min(s) < 0 or max(s) >= 1 << 63):
        raise ValueError(f"crafter seeds must be in [0, 2**63), got min {min(s)} max {max(s)}")
    out = np.zeros((len(s), 2), dtype=np.uint32)
    for i, x in enumerate(s):
        out[i] = (x & 0xFFFFFFFF, x >> 32)
    return out


def bucket_size(k: int, n: int) -> int:
    """Pad K resets to 8 * 4**j (capped at the next power of two >= N): at most ~7 compiled reset variants."""
    cap = 1 << max(0, (n - 1).bit_length())
    b = 8
    while b < k:
        b *= 4
    return min(b, cap)


class CraftaxCore:
    """Pure, jittable Craftax-Classic functions shared by the text env and the benchmarks."""

    def __init__(self):
        EnvParams, StaticEnvParams, self._craftax_step, self._is_game_over, self._generate_world = \
            _craftax_classic()
        # Craftax's own time limit stays at Crafter's 10000 (it counts the reset Noop, as Crafter does); BALROG's
        # limit on agent steps is ours (a traced argument, so every limit shares one compile), which also tells
        # a truncation apart from a death.
        self.params = EnvParams()
        self.static_params = StaticEnvParams()
        # Shared compiled functions: every env instance with the same N reuses them.
        self.jit_step = jax.jit(self.step, donate_argnums=0)
        self.jit_reset = jax.jit(self.reset, donate_argnums=0)
        self.jit_tables = jax.jit(lambda slots: view_tables(slots.state))
        self.jit_worlds = jax.jit(self.worlds)

    # ----- single env -----
    def episode_key(self, words: jax.Array) -> jax.Array:
        return jax.random.fold_in(jax.random.PRNGKey(words[0]), words[1])

    def new_world(self, words: jax.Array):
        """(world EnvState, step key) for one seed given as uint32 [2] words."""
        world_key, step_key = jax.random.split(self.episode_key(words))
        return self._generate_world(world_key, self.params, self.static_params), step_key

    # ----- batched -----
    def worlds(self, words: jax.Array) -> Slots:
        state, key = jax.vmap(self.new_world)(words)
        # Canonical dtypes (generate_world leaves Python scalars that are weakly typed): identical avals
        # before and after a step, so `step` never retraces.
        state = jax.tree.map(lambda x: jnp.asarray(x).astype(jnp.asarray(x).dtype), state)  # astype: strong type
        return Slots(state=state, key=key, steps=jnp.full(words.shape[:1], -1, jnp.int32))

    def step_states(self, slots: Slots, actions: jax.Array, limit: jax.Array | int):
        """Raw step: (slots, reward f32 [N], terminal [N], truncated [N]); held slots (action < 0) unchanged."""
        act = actions >= 0
        keys = jax.vmap(jax.random.fold_in)(slots.key, slots.state.timestep)
        new, reward = jax.vmap(self._craftax_step, in_axes=(0, 0, 0, None, None))(
            keys, slots.state, jnp.maximum(actions, 0), self.params, self.static_params)
        new = jax.tree.map(lambda x, y: x.astype(y.dtype), new, slots.state)
        terminal = jax.vmap(self._is_game_over, in_axes=(0, None))(new, self.params)
        steps = slots.steps + 1
        truncated = (steps >= limit) & ~terminal
        out = Slots(state=select_tree(act, new, slots.state), key=slots.key,
                    steps=jnp.where(act, steps, slots.steps))
        return out, jnp.where(act, reward, 0.0), terminal & act, truncated & act

    def step(self, slots: Slots, actions: jax.Array, limit: jax.Array | int) -> tuple[Slots, jax.Array]:
        """(slots, packed int8 [N, PACKED_STEP_WIDTH]): the text tables plus reward / flags / counters in one
        array, so the host does one small transfer per agent step (`unpack_step` reads it)."""
        slots, reward, terminal, truncated = self.step_states(slots, actions, limit)
        n = actions.shape[0]
        as_bytes = lambda x: jax.lax.bitcast_convert_type(x, jnp.int8).reshape(n, 4)  # noqa: E731  (32-bit -> 4 B)
        extras = [terminal.astype(jnp.int8)[:, None], truncated.astype(jnp.int8)[:, None],
                  as_bytes(reward.astype(jnp.float32)), as_bytes(slots.steps.astype(jnp.int32)),
                  as_bytes(slots.state.timestep.astype(jnp.int32))]
        return slots, jnp.concatenate([pack_tables(view_tables(slots.state))] + extras, axis=1)

    def reset(self, slots: Slots, words: jax.Array, indices: jax.Array) -> Slots:
        """Scatter fresh worlds for `words` [K, 2] into `indices` [K] (index >= N is padding and is dropped)."""
        fresh = self.worlds(words)
        return jax.tree.map(lambda s, f: s.at[indices].set(f.astype(s.dtype), mode="drop"), slots, fresh)


PACKED_STEP_WIDTH = ct.PACKED_WIDTH + 14


@dataclasses.dataclass
class HostStep:
    """Host view of `CraftaxCore.step`'s packed output."""

    tables: dict[str, np.ndarray]  # crafter_text.unpack_tables
    terminal: np.ndarray  # bool [N]
    truncated: np.ndarray  # bool [N]
    reward: np.ndarray  # float32 [N]
    steps: np.ndarray  # int32 [N]
    timestep: np.ndarray  # int32 [N]


def unpack_step(packed: np.ndarray) -> HostStep:
    w = ct.PACKED_WIDTH
    word = lambda lo, dt: np.ascontiguousarray(packed[:, lo:lo + 4]).view(dt)[:, 0]  # noqa: E731
    return HostStep(tables=ct.unpack_tables(packed), terminal=packed[:, w] != 0, truncated=packed[:, w + 1] != 0,
                    reward=word(w + 2, np.float32), steps=word(w + 6, np.int32), timestep=word(w + 10, np.int32))


@functools.lru_cache(maxsize=1)
def craftax_core() -> CraftaxCore:
    return CraftaxCore()


class CraftaxTextEnv(BatchedTextEnv):
    """N Crafter envs (Craftax-Classic on device) rendered as BALROG's Crafter text."""

    family = "crafter"
    task = "crafter"
    action_names = list(ct.ACTIONS)
    default_action = "Noop"

    def __init__(self, num_envs: int, max_episode_steps: int = BALROG_MAX_EPISODE_STEPS,
                 reset_noop: bool = True, task: str = "crafter"):
        """`reset_noop`: BALROG's reset takes one Noop step before the first observation."""
        super().__init__(num_envs)
        if task not in ("crafter", "default", ""):
            raise ValueError(f"crafter task {task!r} is not supported: use 'crafter' (Craftax-Classic) or "
                             "'crafter:reference' (the crafter 1.8.3 package in worker processes)")
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        self.core = craftax_core()
        self.max_episode_steps = int(max_episode_steps)
        self.reset_noop = reset_noop
        self.renderer = ct.TextRenderer()
        self._step_fn = functools.partial(self.core.jit_step, limit=jnp.int32(self.max_episode_steps))
        self._reset_fn = self.core.jit_reset
        self._tables_fn = self.core.jit_tables
        # Empty (all-zero) slots until the agent resets them; the base class never steps an un-reset slot.
        shapes = jax.eval_shape(self.core.worlds, jax.ShapeDtypeStruct((num_envs, 2), jnp.uint32))
        self._slots = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        self._ach = np.zeros((num_envs, len(ct.ACHIEVEMENTS)), dtype=bool)
        self._prog = np.zeros(num_envs)  # unlocked / 22 per slot (crafter_progression, vectorised)

    # ----- TextEnv hooks -----
    def instruction(self) -> str:
        return ct.instruction_prompt(ct.CRAFTAX_CLASSIC_RECIPES)

    def _reset_envs(self, seeds: Sequence[int], indices: Sequence[int]) -> list[Observation]:
        if len(set(indices)) != len(indices):
            raise ValueError(f"reset: duplicate env indices {sorted(indices)}")
        k = len(indices)
        b = bucket_size(k, self.num_envs)
        obs: list[Observation] = []
        for lo in range(0, k, b):  # more resets than the largest bucket: several calls
            words = np.zeros((b, 2), np.uint32)
            idx = np.full((b,), self.num_envs, np.int32)  # padding rows scatter out of range and are dropped
            words[:min(b, k - lo)] = seed_words(seeds[lo:lo + b])
            idx[:min(b, k - lo)] = indices[lo:lo + b]
            self._slots = self._reset_fn(self._slots, jnp.asarray(words), jnp.asarray(idx))
        actions = np.full((self.num_envs,), HOLD, np.int32)
        actions[list(indices)] = 0  # Noop
        if self.reset_noop:
            self._slots, packed = self._step_fn(self._slots, jnp.asarray(actions))
            t = unpack_step(jax.device_get(packed)).tables
        else:
            self._slots = Slots(state=self._slots.state, key=self._slots.key,
                                steps=jnp.where(jnp.asarray(actions) >= 0, 0, self._slots.steps))
            t = dataclasses.asdict(jax.device_get(self._tables_fn(self._slots)))
        self._set_achievements(indices, t["achievements"])
        for (text, status) in self.renderer.render(t, indices):
            obs.append(Observation(text=text, status=status))
        return obs

    def _set_achievements(self, indices, achievements: np.ndarray) -> None:
        idx = np.asarray(indices, np.int64)
        self._ach[idx] = achievements[idx]
        self._prog[idx] = self._ach[idx].sum(axis=1) / len(ct.ACHIEVEMENTS)

    def _step_envs(self, action_ids: Sequence[int | None]) -> list[Step | None]:
        actions = np.asarray([HOLD if a is None else a for a in action_ids], np.int32)
        self._slots, packed = self._step_fn(self._slots, jnp.asarray(actions))
        h = unpack_step(jax.device_get(packed))  # one transfer: tables + reward + flags + counters
        stepped = np.flatnonzero(actions >= 0)
        self._set_achievements(stepped, h.tables["achievements"])
        rendered = self.renderer.render(h.tables, stepped)
        # Per-env values as Python lists once (numpy scalar indexing in the loop costs more than the strings).
        terminal, done = h.terminal[stepped], (h.terminal | h.truncated)[stepped]
        out: list[Step | None] = [None] * self.num_envs
        for i, (text, status), d, term, r, ts, es in zip(
                stepped.tolist(), rendered, done.tolist(), terminal.tolist(), h.reward[stepped].tolist(),
                h.timestep[stepped].tolist(), h.steps[stepped].tolist()):
            info: dict[str, Any] = {"timestep": ts, "episode_steps": es}
            if d:
                info["status"] = "done" if term else "truncated"
                info["achievements"] = self._ach[i].astype(int).tolist()
            out[i] = Step(Observation(text=text, status=status, done=d), r, d, info)
        return out

    def _progression_of(self, index: int, step: Step | None) -> float:
        return float(self._prog[index])

    # ----- extras -----
    def achievements(self, index: int) -> np.ndarray:
        """bool [22] (Craftax `Achievement` order, names in `crafter_text.ACHIEVEMENTS`) of slot `index`'s episode."""
        return self._ach[index].copy()

    def get_states(self):
        """The batched Craftax EnvState (device arrays); for tests and debugging."""
        return self._slots.state

    def set_states(self, indices: Sequence[int], states) -> list[Observation]:
        """Overwrite the given slots with batched EnvStates (tests build states by editing a reset one) and
        return their observations. Episode keys and step counts are kept."""
        idx = jnp.asarray(np.asarray(indices, np.int32))
        new = jax.tree.map(lambda s, f: s.at[idx].set(jnp.asarray(f).astype(s.dtype)), self._slots.state, states)
        self._slots = Slots(state=new, key=self._slots.key, steps=self._slots.steps)
        t = dataclasses.asdict(jax.device_get(self._tables_fn(self._slots)))
        self._set_achievements(indices, t["achievements"])
        return [Observation(text=a, status=b) for a, b in self.renderer.render(t, indices)]
