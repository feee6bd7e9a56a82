"""CraftaxTextEnv: BALROG text for hand-built states, actions, progression, resets, determinism, holding, limits.

One module-scoped env of 4 slots shares the (slow on CPU) compiles; every test resets the slots it uses.
"""
from __future__ import annotations

import balrog_crafter
import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("craftax")

from automem_jax.envs import crafter_text as ct  # noqa: E402
from automem_jax.envs import make  # noqa: E402
from automem_jax.envs.craftax import CraftaxTextEnv, bucket_size, seed_words  # noqa: E402
from automem_jax.envs.progression import crafter_score  # noqa: E402

N = 4
GRASS, TREE, TABLE, WATER = 2, 5, 11, 3  # Craftax BlockType values
UP, DOWN, LEFT, RIGHT = 3, 4, 1, 2  # Craftax player_direction values


@pytest.fixture(scope="module")
def env() -> CraftaxTextEnv:
    e = make("crafter", N)
    assert isinstance(e, CraftaxTextEnv)
    e.reset([11, 12, 11, 13])
    return e


def one_state(env, i):
    return jax.tree.map(lambda x: np.asarray(x[i]), env.get_states())


def batch(*states):
    return jax.tree.map(lambda *xs: np.stack(xs), *states)


def blank_state(env, pos=(32, 32), direction=UP):
    """Slot 3's state on an all-grass map, no mobs, player at `pos` (row, col)."""
    s = one_state(env, 3)
    no_mob = lambda m: m.replace(mask=np.zeros_like(m.mask))  # noqa: E731
    return s.replace(map=np.full_like(s.map, GRASS), player_position=np.asarray(pos, np.int32),
                     player_direction=np.int32(direction), zombies=no_mob(s.zombies), cows=no_mob(s.cows),
                     skeletons=no_mob(s.skeletons), arrows=no_mob(s.arrows),
                     growing_plants_mask=np.zeros_like(s.growing_plants_mask))


def text_of(env, state):
    obs = env.set_states([3], batch(state))[0]
    return obs.text, obs.status


# ----- BALROG's text (tests/balrog_crafter.py) on the Crafter [x, y] semantic map of a Craftax state -----
def reference_text(s) -> tuple[str, str]:
    sem = ct.BLOCK_TO_SEMANTIC[np.asarray(s.map)].T.copy()  # [x, y]
    for mobs, sid in ((s.cows, ct.COW), (s.zombies, ct.ZOMBIE), (s.skeletons, ct.SKELETON), (s.arrows, ct.ARROW)):
        for (r, c), m in zip(np.asarray(mobs.position), np.asarray(mobs.mask)):
            if m:
                sem[c, r] = sid
    py, px = (int(v) for v in s.player_position)
    sem[px, py] = ct.PLAYER
    inv = {"health": int(s.player_health), "food": int(s.player_food), "drink": int(s.player_drink),
           "energy": int(s.player_energy), **{k: int(getattr(s.inventory, k)) for k in ct.INVENTORY}}
    return balrog_crafter.describe_frame(sem, (px, py), ct.DIRECTION_DXDY[int(s.player_direction)],
                                         bool(s.is_sleeping), inv, ct.SEMANTIC_NAMES, ct.PLAYER)


# ----- prompt and actions -----
def test_action_names_map_to_craftax_ids(env):
    from craftax.craftax_classic.constants import Action
    craftax = {"Noop": "NOOP", "Move West": "LEFT", "Move East": "RIGHT", "Move North": "UP", "Move South": "DOWN",
               "Do": "DO", "Sleep": "SLEEP", "Place Stone": "PLACE_STONE", "Place Table": "PLACE_TABLE",
               "Place Furnace": "PLACE_FURNACE", "Place Plant": "PLACE_PLANT",
               "Make Wood Pickaxe": "MAKE_WOOD_PICKAXE", "Make Stone Pickaxe": "MAKE_STONE_PICKAXE",
               "Make Iron Pickaxe": "MAKE_IRON_PICKAXE", "Make Wood Sword": "MAKE_WOOD_SWORD",
               "Make Stone Sword": "MAKE_STONE_SWORD", "Make Iron Sword": "MAKE_IRON_SWORD"}
    assert len(env.action_names) == 17 and env.default_action == "Noop"
    for i, name in enumerate(env.action_names):
        assert Action[craftax[name]].value == i
    from craftax.craftax_classic.constants import Achievement
    assert [a.name.lower() for a in Achievement] == list(ct.ACHIEVEMENTS)


def test_instruction_prompt(env):
    p = env.instruction()
    assert p.startswith("You are an agent playing Crafter. The following are the only valid actions")
    assert "Noop: do nothing,\nMove West: move west on flat ground,\n" in p
    # Craftax-Classic's iron tools also use a stone (bench/crafter_rules.py); BALROG's prompt is crafter's
    assert "Make Iron Sword: craft an iron sword with a nearby table and furnace, wood, coal, iron, and stone in " \
           "inventory.\n\nThese are the game achievements you can get:\n1. Collect Wood\n2. Place Table\n" in p
    assert "20. Make Iron Pickaxe\n21. Make Iron Sword\n22. Collect Diamond\n\n" in p
    assert p.endswith("completing all the achievements.\n\nPLAY!")


# ----- text for hand-built states -----
def test_tree_to_the_north_west(env):
    s = blank_state(env)
    s = s.replace(map=s.map.copy())
    s.map[30, 31] = TREE  # 2 rows north, 1 column west
    text, status = text_of(env, s)
    assert text == ("You see:\n- grass 1 step to your west\n- tree 3 steps to your north-west\n\n"
                    "You face grass at your front.")
    assert (text, status) == reference_text(s)


def test_table_in_front_and_cow(env):
    s = blank_state(env, direction=RIGHT)
    s = s.replace(map=s.map.copy(), cows=s.cows.replace(
        position=np.asarray([[34, 36], [0, 0], [0, 0]], np.int32), mask=np.asarray([True, False, False])))
    s.map[32, 33] = TABLE
    text, _ = text_of(env, s)
    assert text == ("You see:\n- grass 1 step to your west\n- table 1 step to your east\n"
                    "- cow 6 steps to your south-east\n\nYou face table at your front.")
    assert text == reference_text(s)[0]


def test_sleeping_dead_and_full_inventory(env):
    s = blank_state(env)
    assert text_of(env, s.replace(is_sleeping=np.bool_(True)))[0] == (
        "You are sleeping, and will not be able take actions until energy is full.\n\n\n\n"
        "You see:\n- grass 1 step to your west\n\nYou face grass at your front.")
    dead = s.replace(player_health=np.int32(0), player_food=np.int32(3))
    text, status = text_of(env, dead)
    assert text == "You died.\n\n\n\nYou see:\n- grass 1 step to your west\n\nYou face grass at your front."
    assert status == ("Your status:\n- health: 0/9\n- food: 3/9\n- drink: 9/9\n- energy: 9/9\n\n"
                      "You have nothing in your inventory.")
    full = s.replace(inventory=jax.tree.map(lambda x: np.full_like(x, 9), s.inventory))
    status = text_of(env, full)[1]
    assert status == "Your status:\n- health: 9/9\n- food: 9/9\n- drink: 9/9\n- energy: 9/9\n\nYour inventory:\n" + \
        "\n".join(f"- {k}: 9" for k in ("sapling", "wood", "stone", "coal", "iron", "diamond", "wood_pickaxe",
                                        "stone_pickaxe", "iron_pickaxe", "wood_sword", "stone_sword", "iron_sword"))
    some = s.replace(inventory=s.inventory.replace(wood=np.int32(2), sapling=np.int32(1)))
    assert text_of(env, some)[1].endswith("Your inventory:\n- sapling: 1\n- wood: 2")


def test_map_edges_follow_numpy_slicing(env):
    # Within 4 columns of the west edge the window is empty (negative slice start).
    s = blank_state(env, pos=(32, 3))
    assert text_of(env, s)[0] == "You see nothing away from you.\n\nYou face nothing at your front."
    # At the south edge the window is clipped; facing off the map is "nothing".
    s = blank_state(env, pos=(63, 60), direction=DOWN)
    s = s.replace(map=s.map.copy())
    s.map[61, 60] = WATER
    text = text_of(env, s)[0]
    assert text == ("You see:\n- grass 1 step to your west\n- water 2 steps to your north\n\n"
                    "You face nothing at your front.")
    assert text == reference_text(s)[0]


def test_text_matches_reference_on_played_states(env):
    env.reset([21, 22, 23, 24])
    rng = np.random.default_rng(0)
    for _ in range(12):
        steps = env.step([env.action_names[a] for a in rng.integers(0, 5, N)])
        for i in range(N):
            st = steps[i]
            want = reference_text(one_state(env, i))
            assert (st.observation.text, st.observation.status) == want


# ----- resets, determinism, holding, limit -----
def test_reset_pool_is_seed_deterministic_and_independent(env):
    obs = env.reset([5, 6, 5, 7])
    maps = np.asarray(env.get_states().map)
    assert (maps[0] == maps[2]).all() and obs[0].text == obs[2].text
    assert (maps[0] != maps[1]).any() and (maps[1] != maps[3]).any()
    # Same seed in another slot and another reset batch -> same world.
    env.reset([6], indices=[2])
    assert (np.asarray(env.get_states().map)[2] == maps[1]).all()
    # Same seed and actions -> same trajectory (step keys derive from the seed).
    env.reset([5, 6, 5, 7])
    for a in ["Move West", "Do", "Move North", "Noop", "Do", "Move East"]:
        st = env.step([a] * N)
        assert st[0].observation.text == st[2].observation.text
    s = env.get_states()
    for leaf in jax.tree.leaves(s):
        assert (np.asarray(leaf)[0] == np.asarray(leaf)[2]).all()


def test_held_env_is_unchanged(env):
    env.reset([31, 32, 33, 34])
    before = one_state(env, 1)
    out = env.step(["Move West", None, "Do", "Noop"])
    assert out[1] is None and out[0] is not None
    after = one_state(env, 1)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        assert (a == b).all()
    assert env.episode(1).steps == 0 and env.episode(0).steps == 1


def test_invalid_action_defaults_to_noop(env):
    env.reset([41], indices=[0])
    st = env.step(["fly away", None, None, None])[0]
    assert st.info["executed_action"] == "Noop" and st.info["valid_action"] is False
    assert st.observation.text.startswith(  # BALROG's evaluator's text, byte for byte
        "\n\nYour previous output did not contain a valid action. Defaulted to action: Noop\n\nObservation:\nYou see")
    assert env.episode(0).invalid_actions == 1 and env.episode(0).failed_candidates == ["fly away"]
    for near_miss in ("noop", " Noop", "Noop ", "NOOP", "Move  West", "'Noop'", "Noop."):  # exact names only
        st = env.step([near_miss, None, None, None])[0]
        assert st.info["executed_action"] == "Noop" and st.info["valid_action"] is False, near_miss
    assert env.step(["Move West", None, None, None])[0].info["valid_action"]
    assert env.episode(0).failed_candidates[1:] == ["noop", " Noop", "Noop ", "NOOP", "Move  West", "'Noop'", "Noop."]
    assert env.episode(0).action_frequency == {"Noop": 8, "Move West": 1}


def test_episode_limit_truncates(env):
    short = CraftaxTextEnv(num_envs=N, max_episode_steps=3)  # shares the compiled functions
    short.reset([1, 2, 3, 4])
    for t in range(3):
        out = short.step(["Noop"] * N)
    assert all(s.done and s.info["status"] == "truncated" for s in out)
    assert all(short.episode(i).status == "truncated" and short.episode(i).steps == 3 for i in range(N))
    assert short.step(["Noop"] * N) == [None] * N  # finished episodes are held until reset
    assert len(out[0].info["achievements"]) == 22


# ----- progression from scripted play -----
def test_scripted_achievements_progression(env):
    env.reset([51], indices=[3])
    s = blank_state(env)
    s = s.replace(map=s.map.copy(), timestep=np.int32(1))
    s.map[29:32, 32] = TREE  # three trees in a column to the north
    env.set_states([3], batch(s))
    hold = [None] * (N - 1)
    # Craftax-Classic turns a mined tree into grass: mine, step into the gap, mine the next one.
    for a in ["Do", "Move North", "Do", "Move North", "Do"]:
        env.step(hold + [a])
    wood = int(np.asarray(env.get_states().inventory.wood)[3])
    assert wood == 3 and env.achievements(3)[ct.ACHIEVEMENTS.index("collect_wood")]
    assert env.progression(3) == pytest.approx(1 / 22)
    env.step(hold + ["Move South"])  # face the grass to the south
    st = env.step(hold + ["Place Table"])[3]
    assert "You face table at your front." in st.observation.text
    st = env.step(hold + ["Make Wood Pickaxe"])[3]
    assert "- wood_pickaxe: 1" in st.observation.status
    ach = env.achievements(3)
    unlocked = {ct.ACHIEVEMENTS[i] for i in np.flatnonzero(ach)}
    assert unlocked == {"collect_wood", "place_table", "make_wood_pickaxe"}
    assert env.progression(3) == pytest.approx(3 / 22) == st.info["progression"]
    assert crafter_score(ach[None]) > 0


def test_helpers():
    assert bucket_size(1, 4) == 4 and bucket_size(1, 8192) == 8 and bucket_size(9, 8192) == 32
    assert bucket_size(5000, 8192) == 8192
    w = seed_words([1, 2 ** 40 + 3])
    assert w.tolist() == [[1, 0], [3, 256]]
    with pytest.raises(ValueError, match="seeds"):
        seed_words([-1])
    with pytest.raises(ValueError, match="max_episode_steps"):
        CraftaxTextEnv(num_envs=1, max_episode_steps=0)


def test_packed_step_fields_match_device_state(env):
    env.reset([61, 62, 63, 64])
    out = env.step(["Do", "Move West", None, "Noop"])
    s = env.get_states()
    for i in (0, 1, 3):
        assert out[i].info["timestep"] == int(np.asarray(s.timestep)[i])
        assert out[i].info["episode_steps"] == 1 and isinstance(out[i].reward, float)
        assert out[i].done is False and out[i].observation.text == reference_text(one_state(env, i))[0]
    assert out[2] is None


def test_renderer_vectorised_matches_per_env_status():
    r = ct.TextRenderer()
    rng = np.random.default_rng(0)
    n = 64
    t = {"first": np.full((n, ct.NUM_SEMANTIC), ct.NOT_SEEN, np.int8), "closest": np.zeros((n, 19), np.int8),
         "facing": rng.integers(-1, 19, n).astype(np.int8), "vitals": rng.integers(0, 10, (n, 4)).astype(np.int8),
         "inventory": rng.integers(0, 3, (n, 12)).astype(np.int8), "sleeping": rng.random(n) < 0.3}
    t["first"][1, [6, 2]] = [10, 3]  # tree first seen at cell 10, grass at cell 3 -> grass listed first
    t["closest"][1, [6, 2]] = [10, 30]
    out = r.render(t)
    faced = (["nothing"] + list(ct.SEMANTIC_NAMES))[t["facing"][0] + 1]
    assert out[0][0].endswith(f"You see nothing away from you.\n\nYou face {faced} at your front.")
    assert "You see:\n- grass " in out[1][0] and out[1][0].index("- grass") < out[1][0].index("- tree")
    assert [s for _, s in out] == [r.status(t["vitals"][e], t["inventory"][e]) for e in range(n)]
    assert r.render(t, [5, 1]) == [out[5], out[1]] and r.render(t, []) == []
