"""NetHack through the worker pool: text actions, seeding, AutoMore, progression, crashes, hangs, shutdown."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from automem_jax.envs import nle_common, nle_text
from automem_jax.envs.base import INVALID_ACTION_FEEDBACK
from automem_jax.envs.nethack import NetHackTextEnv
from automem_jax.envs.worker_pool import SlotResult, alive
from automem_jax.envs.progression import nethack_table


@pytest.fixture(scope="module")
def env():
    e = NetHackTextEnv(3, num_workers=2)
    yield e
    e.close()


def test_action_space_is_balrogs():
    names, keys = nle_common.nethack_actions()
    assert names[:8] == ["north", "east", "south", "west", "northeast", "southeast", "southwest", "northwest"]
    for n in ("far north", "up", "down", "wait", "more", "esc", "kick", "pray", "search", "zap", "space", "a", "Z",
              "0", "9", "00", "99"):
        assert n in names, n
    for n in ("travel", "quit", "save", "minus", "zero"):  # NON_RL / TextCharacters stay out, as in BALROG
        assert n not in names, n
    assert len(names) == len(set(names)) == 86 + 52 + 10 + 100
    assert keys[names.index("esc")] == (27,) and keys[names.index("42")] == (ord("4"), ord("2"))


def test_reset_and_step_with_text_actions(env):
    obs = env.reset([11, 12, 13])
    assert len(obs) == 3
    for o in obs:
        for head in ("message:\n", "language observation:\n", "cursor:\nYourself a ", "map:\n"):
            assert head in o.text
        assert "Dlvl:1" in o.text and o.status.startswith("inventory:\n") and "\na: " in o.status
    steps = env.step(["search", "north", None])
    assert steps[2] is None
    assert steps[0].info["executed_action"] == "search" and steps[0].info["valid_action"]
    assert env.episode(0).steps == 1 and env.episode(2).steps == 0
    assert "Dlvl:" in steps[1].observation.text


def test_seed_reproduces_first_observation(env):
    a, b, c = env.reset([7, 7, 8])
    assert a.text == b.text and a.status == b.status
    assert a.text != c.text  # a different game (role, map) for another seed
    again = env.reset([7], indices=[2])[0]
    assert again.text == a.text


def test_invalid_action_defaults_to_esc_with_feedback(env):
    env.reset([1, 2, 3])
    steps = env.step(["dance a jig", "ESC", None])
    assert steps[0].info["executed_action"] == "esc" and not steps[0].info["valid_action"]
    assert steps[0].observation.text.startswith(INVALID_ACTION_FEEDBACK.format(action="esc"))
    assert not steps[1].info["valid_action"]  # BALROG: exact names only, "ESC" is not "esc"
    assert env.episode(0).invalid_actions == 1 and env.episode(1).failed_candidates == ["ESC"]
    steps = env.step(["a", "A", None])  # item letters are case-sensitive names
    assert steps[0].info["valid_action"] and steps[1].info["valid_action"]
    assert env.episode(1).action_frequency == {"esc": 1, "A": 1}


def test_progression_from_table_for_scripted_blstats(env):
    table = nethack_table()
    env.reset([1, 2, 3])
    blstats = [0] * 27
    for dlvl, xlvl, want in ((1, 1, 0.0), (3, 1, table["Dlvl:3"]), (2, 10, table["Xp:10"]),
                             (12, 4, table["Dlvl:12"])):
        blstats[12], blstats[18] = dlvl, xlvl
        env._last[0] = SlotResult(info={"blstats": tuple(blstats)})
        assert env._progression_of(0, None) == pytest.approx(want)
    assert table["Xp:10"] == pytest.approx(0.1791, abs=1e-4)


def test_auto_more_joins_pages_and_sums_rewards():
    def screen(line: str) -> np.ndarray:
        t = np.full((24, 80), ord(" "), dtype=np.uint8)
        t[0, : len(line)] = np.frombuffer(line.encode(), dtype=np.uint8)
        return t

    pages = [("You hit the newt!--More--", 1.0), ("The newt is killed!--More--", 2.0), ("Welcome.", 0.5)]
    pressed = []

    def step_fn(a):
        pressed.append(a)
        line, r = pages[len(pressed) - 1]
        return {"tty_chars": screen(line)}, r, False, False, {}

    _, reward, term, trunc, _, message = nle_common.auto_more_step(step_fn, 107, nle_common.MORE_KEY)
    assert pressed == [107, 13, 13]
    assert reward == 3.5 and not term and not trunc
    assert message == "You hit the newt!\nThe newt is killed!\nWelcome."


def test_text_message_menu_and_more():
    t = np.full((24, 80), ord(" "), dtype=np.uint8)
    for r, line in enumerate(["What do you want to eat?", "", "a - an apple", "(end)"]):
        t[r, 40: 40 + len(line)] = np.frombuffer(line.encode(), dtype=np.uint8)
    assert nle_text.text_message(t) == "What do you want to eat?\na - an apple\n(end)"
    t[:] = ord(" ")
    t[0, :14] = np.frombuffer(b"Hello--More-- ", dtype=np.uint8)
    t[5, :4] = np.frombuffer(b"|..|", dtype=np.uint8)
    assert nle_text.text_message(t) == "Hello--More--"


def test_language_observation_merges_repeats():
    from nle import nethack as nh
    floor = nh.GLYPH_CMAP_OFF + 19  # room floor: never described
    vwall = nh.GLYPH_CMAP_OFF + 1
    kitten = nh.GLYPH_PET_OFF + next(i for i in range(nh.NUMMONS) if nh.permonst(i).mname == "kitten")
    glyphs = np.full((21, 79), floor, dtype=np.int16)
    px, py = 40, 10
    glyphs[py - 1: py + 2, px + 1] = vwall
    glyphs[py - 1, px - 1] = kitten
    blstats = np.zeros(27, dtype=np.int64)
    blstats[0], blstats[1] = px, py
    text = nle_text.language_observation(glyphs, blstats)
    assert text == "vertical wall adjacent northeast, east, and southeast\ntame kitten adjacent northwest"
    glyphs[py + 3, px + 3] = glyphs[py + 3, px + 4] = nh.GLYPH_CMAP_OFF + 24  # two stairs down, both near
    text = nle_text.language_observation(glyphs, blstats)
    assert text.startswith("stairs down near eastsoutheast and southeast\n")  # farther lines come first


def test_distance_direction_buckets():
    dd = nle_text.distance_direction
    assert dd(1, 0) == ("adjacent", "east") and dd(-1, 1) == ("adjacent", "northwest")
    assert dd(2, 1) == ("very near", "eastnortheast") and dd(0, -5) == ("near", "south")
    assert dd(-6, -2) == ("far", "westsouthwest") and dd(25, 0) == ("very far", "east")


def test_killed_worker_yields_crashed_episode_and_healthy_pool():
    env = NetHackTextEnv(2, num_workers=2, step_timeout=30)
    try:
        env.reset([1, 2])
        pids = env.pool.worker_pids()
        victim = pids[env.pool.worker_of(0)]
        os.kill(victim, signal.SIGKILL)
        steps = env.step(["search", "search"])
        assert steps[0].done and steps[0].info["status"] == "crashed"
        assert env.episode(0).status == "crashed" and env.episode(0).done
        assert not steps[1].done and env.episode(1).status == "running"
        assert env.pool.restarts == 1 and not alive(victim)
        obs = env.reset([5], indices=[0])[0]  # the replacement worker serves the slot again
        assert "map:" in obs.text
        steps = env.step(["wait", "wait"])
        assert not steps[0].done and not steps[1].done
        # A hung worker (no reply within the timeout) is replaced too.
        reply = env.pool.sleep_worker(1, 30.0, timeout=0.5)
        assert isinstance(reply, Exception) and env.pool.restarts == 2
        new_pids = env.pool.worker_pids()
    finally:
        env.close()
    time.sleep(0.2)
    assert not any(alive(p) for p in pids + new_pids)


def test_instruction_lists_actions_and_tips(env):
    text = env.instruction()
    assert text.startswith("You are an agent playing NetHack.")
    assert "esc: exit menu or message" in text and 'your next action should be "more"' in text
    assert text.endswith("PLAY!")


_CHILD = """
import os, signal, sys
from automem_jax.envs.nethack import NetHackTextEnv
if __name__ == "__main__":
    env = NetHackTextEnv(2, num_workers=2)
    env.reset([1, 2])
    print(" ".join(map(str, env.pool.worker_pids())), flush=True)
    if sys.argv[1] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)  # no atexit: workers must notice the closed pipe themselves
    sys.exit(0)  # atexit closes the pool
"""


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_workers_go_away_with_their_parent(tmp_path, how):
    import subprocess
    import sys
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    out = subprocess.run([sys.executable, str(script), how], capture_output=True, text=True, timeout=120)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2, out.stderr[-2000:]
    deadline = time.time() + 10
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)


def test_truncated_at_step_cap():
    env = NetHackTextEnv(1, num_workers=1, env_kwargs={"max_episode_steps": 3})
    try:
        env.reset([4])
        steps = [env.step(["search"])[0] for _ in range(3)]
        assert [s.done for s in steps] == [False, False, True]
        assert steps[-1].info["status"] == "truncated" and env.episode(0).status == "truncated"
        assert env.step(["search"]) == [None]  # a finished episode is held until reset
    finally:
        env.close()


# ----- the fast renderer equals the original pure-Python one (nle_text before it was vectorised) -----
# The digests below were computed by the original renderer over the same observations (324 from seeded NetHack games
# with fixed random actions, 200 synthetic screens: random glyphs, off-map players, menus, "--More--", "(n of m)",
# death screens, odd inventories). Any change to the text, even one character, changes them.
# NetHack reads the date when a game starts (hacklib.c: phase_of_the_moon, friday_13th): a full moon prints "You are
# lucky! Full moon tonight." and adds Luck, a new moon and Friday the 13th print their own lines, so the seeded games
# differ by date. One digest per case, each taken under faketime at such a date (the hour changes nothing).
RENDER_DIGESTS = {"other": "21a7db3f259c8e7b4c1db1e354af7cfa48695f90b65706f74e953877c10dd6de",
                  "full_moon": "30f1107f0b1a74489e99338f30edf5ea504fc7e160e979600ec32f209b0223d0",
                  "new_moon": "25e4752b99a9c96a4217270410b5f795420ba3278739ab477344caa98390c6f0",
                  "friday_13th": "1a3dcbfd7e152b3c44a0c0cb0035e6a617f9d39a34bdd353090cef05b1862837"}


def _nethack_date_case(when: float | None = None) -> str:
    """Which of RENDER_DIGESTS NetHack's start-of-game date checks select (local time, as NetHack's getlt)."""
    lt = time.localtime(when)
    if lt.tm_wday == 4 and lt.tm_mday == 13:  # Friday (Monday = 0 here, Sunday = 0 in C)
        return "friday_13th"
    goldn = (lt.tm_year - 1900) % 19 + 1  # C's tm_year counts from 1900, its tm_yday from 0
    epact = (11 * goldn + 18) % 30
    if (epact == 25 and goldn > 11) or epact == 24:
        epact += 1
    phase = (((lt.tm_yday - 1 + epact) * 6 + 11) % 177) // 22 & 7
    return {0: "new_moon", 4: "full_moon"}.get(phase, "other")


def test_nethack_date_case_follows_the_moon_and_friday_13th():
    noon = lambda d: time.mktime(time.strptime(d + " 12:00", "%Y-%m-%d %H:%M"))  # noqa: E731
    assert [_nethack_date_case(noon(d)) for d in ("2026-11-24", "2026-11-26", "2026-11-27", "2026-11-10",
                                                   "2026-12-06", "2026-11-13", "2030-09-13")] == \
        ["full_moon", "full_moon", "other", "new_moon", "other", "friday_13th", "friday_13th"]


def _real_observations(n_games: int = 4, max_steps: int = 80):
    import random
    env = nle_common.make_raw_env("nethack", "NetHackChallenge-v0")
    keys = [k[0] for k in nle_common.nethack_actions()[1]]
    actions = env.unwrapped.actions
    rng = random.Random(0)
    try:
        for seed in range(n_games):
            nle_common.seed_nle(env, seed)
            obs, _ = env.reset()
            yield obs
            for _ in range(max_steps):
                obs, _, term, trunc, _ = env.step(actions.index(rng.choice(keys)))
                yield obs
                if term or trunc:
                    break
    finally:
        env.close()


def _synthetic_observations(n: int = 200):
    from nle import nethack as nh
    R = np.random.default_rng(0)
    words = [b"--More--", b"(end)", b" of ", b"(1 of 2)", b"Points", b"list!", b"\x1a", b"  ", b"x"]
    for i in range(n):
        g = R.integers(0, nh.MAX_GLYPH, (21, 79)).astype(np.int16)
        if i % 2:
            g[R.random((21, 79)) < 0.9] = nh.GLYPH_CMAP_OFF + R.choice([0, 1, 2, 19, 21, 24])
        bl = np.zeros(27, np.int64)
        bl[0], bl[1] = R.choice([R.integers(0, 79), 0, 78, 79, 80, -1]), R.choice([R.integers(0, 21), 0, 20, 21, -3])
        tty = np.full((24, 80), 32, np.uint8)
        for r in range(24):
            if R.random() < 0.4:
                off = R.integers(0, 70)
                s = b"".join(R.choice(words) for _ in range(R.integers(1, 6)))[:80 - off]
                tty[r, off:off + len(s)] = np.frombuffer(s, np.uint8)
        inv_l = np.zeros(55, np.uint8)
        k = R.integers(0, 56)
        inv_l[:k] = R.integers(65, 120, k)
        inv_s = R.integers(0, 256, (55, 80)).astype(np.uint8)
        inv_s[R.random((55, 80)) < 0.05] = 0
        cur = np.array([R.integers(0, 25), R.integers(0, 79)], np.uint8)
        yield dict(glyphs=g, blstats=bl, tty_chars=tty, inv_letters=inv_l, inv_strs=inv_s, tty_cursor=cur)


def test_fast_renderer_equals_original_on_many_observations():
    import hashlib
    h, n = hashlib.sha256(), 0
    case = _nethack_date_case()  # before the games start (a run across midnight could still straddle two cases)
    for source in (_real_observations(), _synthetic_observations()):
        for obs in source:
            long_term, short_term = nle_text.render_hybrid(obs)
            h.update(f"{long_term}\0{short_term}\1".encode())
            n += 1
    assert n == 524
    assert h.hexdigest() == RENDER_DIGESTS[case], case


def test_cursor_on_last_column_reads_the_flat_glyph_index():
    # The C wrapper indexes glyphs flat (x + y * 79): a cursor at column 79 names the next row's first cell.
    from nle import nethack as nh
    glyphs = np.full((21, 79), nh.GLYPH_CMAP_OFF + 19, dtype=np.int16)
    glyphs[4, 0] = nh.GLYPH_CMAP_OFF + 24
    blstats = np.zeros(27, dtype=np.int64)
    blstats[0], blstats[1] = 10, 3
    text = nle_text.text_cursor(glyphs, blstats, np.array([4, 79], dtype=np.uint8))  # row 4 on screen = map row 3
    assert text == "very far east stairs down\n(x=79, y=4)"


def test_step_and_reset_is_one_round_trip_with_step_then_reset_semantics(env):
    first = env.reset([7, 8, 9])
    steps, obs = env.step_and_reset(["search", None, "north"], {1: 21})
    assert steps[1] is None and steps[0].info["executed_action"] == "search" and steps[2] is not None
    assert env.episode(0).steps == 1 and env.episode(1).steps == 0 and env.episode(1).seed == 21
    again = env.reset([21], indices=[0])[0]
    assert len(obs) == 1 and obs[0].text == again.text != first[1].text
    with pytest.raises(ValueError, match="both stepped and reset"):
        env.step_and_reset(["search", "search", "search"], {2: 5})
    steps, obs = env.step_and_reset([None, None, None], {2: 9})  # resets only
    assert steps == [None, None, None] and obs[0].text == first[2].text
