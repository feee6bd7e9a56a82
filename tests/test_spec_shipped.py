"""The shipped evolved specs (crafter_v5, minihack_v4, nethack_v2): they validate, differ structurally from v0, and
run episodes end to end with their notices, gates and runtime files acting."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pytest

from automem_jax.agent import EnvJob, read_jsonl, run_episodes
from automem_jax.engine.base import SamplingParams
from automem_jax.engine.scripted import ScriptedEngine
from automem_jax.envs.base import BatchedTextEnv, Observation, Step
from automem_jax.envs.crafter_text import ACTIONS as CRAFTER_ACTIONS
from automem_jax.loops.structure.validation import check_rules, structural_changes
from automem_jax.loops.structure.workspace import Limits
from automem_jax.memory import load_spec

SPECS = Path(__file__).resolve().parents[1] / "configs" / "specs"
SHIPPED = {"crafter_v5": "crafter_v0", "minihack_v4": "minihack_v0", "nethack_v2": "nethack_v0"}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_spec_validates_and_differs_structurally_from_v0(name):
    spec = load_spec(SPECS / f"{name}.yaml")
    v0 = load_spec(SPECS / f"{SHIPPED[name]}.yaml")
    assert load_spec(spec.to_yaml()) == spec
    check_rules(spec, Limits())
    changes = structural_changes(v0, spec)
    assert any(c.startswith("runtime.fields") for c in changes) and any(c.startswith("runtime.notices")
                                                                         for c in changes), changes
    assert spec.parent == 0 and spec.version > 0 and spec.env == v0.env


class FakeCrafter(BatchedTextEnv):
    """BALROG Crafter text from a tiny state machine: a tree in front; Do collects wood; Place Table (2 wood here)
    puts a table in view; food starts at 3/9."""

    family, task, default_action = "crafter", "fake-crafter", "Noop"
    action_names = list(CRAFTER_ACTIONS)

    def __init__(self, num_envs: int = 1):
        super().__init__(num_envs)
        self.state = [dict(wood=0, table=False) for _ in range(num_envs)]
        self.executed: list[str] = []

    def instruction(self) -> str:
        return "Play Crafter. Actions: " + ", ".join(self.action_names)

    def _obs(self, i: int) -> Observation:
        s = self.state[i]
        seen = "You see:\n- table 1 step to your east\n\n" if s["table"] else "You see nothing away from you.\n\n"
        inv = f"Your inventory:\n- wood: {s['wood']}" if s["wood"] else "You have nothing in your inventory."
        return Observation(text=seen + "You face tree at your front.",
                           status=f"Your status:\n- health: 9/9\n- food: 3/9\n- drink: 9/9\n- energy: 9/9\n\n{inv}")

    def _reset_envs(self, seeds: Sequence[int], indices: Sequence[int]) -> list[Observation]:
        for i in indices:
            self.state[i] = dict(wood=0, table=False)
        return [self._obs(i) for i in indices]

    def _step_envs(self, action_ids):
        return [None if a is None else self._act(i, self.action_names[a]) for i, a in enumerate(action_ids)]

    def _act(self, i: int, name: str) -> Step:
        s = self.state[i]
        self.executed.append(name)
        if name == "Do":
            s["wood"] += 1
        elif name == "Place Table" and s["wood"] >= 2:
            s["wood"] -= 2
            s["table"] = True
        return Step(self._obs(i), 0.0, False, {})

    def _progression_of(self, index, step):
        return 0.0


def _rid(req):
    _task, _seed, step, phase, it = req.rid.split("/")
    return int(step), phase, int(it)


def test_crafter_v5_notices_gate_repair_and_goals(tmp_path):
    plan = {0: ["<|ACTION|>Place Table<|END|>", "<|ACTION|>do<|END|>"], 1: ["<|ACTION|>Do<|END|>"],
            2: ["<|ACTION|>Place Table<|END|>"], 3: ["<|ACTION|>move north-east<|END|>"]}

    def fn(req):
        step, phase, it = _rid(req)
        if phase == "LOG":
            return "<|WRITE|>goals.txt|CURRENT GOAL: 2 more wood<|END|><|DONE|>" if step == 1 else "<|DONE|>"
        return plan[step][it]

    env = FakeCrafter()
    res = run_episodes([EnvJob(env, [1])], ScriptedEngine(fn), load_spec(SPECS / "crafter_v5.yaml"),
                       tmp_path / "run", run_id="v5", max_steps=4)[0]
    assert env.executed == ["Do", "Do", "Place Table", "Move North"]
    recs = read_jsonl(res.trace_path)
    prompt = {(r["step"], r["phase"], r["iteration"]): r["messages"][-1]["content"] for r in recs}
    assert prompt[(0, "PLAN", 1)] == "ACTION REJECTED: Place Table needs 2 wood; you have 0. Choose another action."
    p0 = prompt[(0, "PLAN", 0)]
    assert ("=== SURVIVAL ===\nWARNING: food 3/9. Plan a meal soon.\n\n=== TECH TREE STATUS === TOOLS: pickaxe none, "
            "sword none | MATERIALS: wood 0, stone 0, coal 0, iron 0, sapling 0\nNEXT: collect wood; a tree is right in "
            "front of you: Do.\n\nYOUR MEMORY FILES:") in p0
    assert "── READ goals.txt ──\nMAIN GOAL: unlock as many of the 22 achievements as possible\n" in p0
    log1 = prompt[(1, "LOG", 0)]
    assert "=== INVENTORY CHANGES (previous action) ===\nGAINED: wood: 1 (now: wood: 1)" in log1
    assert "── READ goals.txt ──\nCURRENT GOAL: 2 more wood\n" in prompt[(1, "PLAN", 0)]
    p3 = prompt[(3, "PLAN", 0)]
    assert "=== TABLE PLACED === Craft now while it is within reach: Make Wood Pickaxe, Make Wood Sword." in p3
    assert "NEXT: collect wood; a tree is right in front of you: Do." in p3
    events = [e for r in recs for e in r.get("runtime", [])]
    assert {"event": "repair", "from": "move north-east", "to": "Move North"} in events
    assert (Path(res.memory_dir) / "goals.txt").read_text() == "CURRENT GOAL: 2 more wood\n"


@pytest.fixture(scope="module")
def nle_env():
    """One-slot NLE envs by name, made once per module (worker processes are slow to start)."""
    from automem_jax.envs import make
    made = {}

    def get(name: str):
        if name not in made:
            made[name] = make(name, 1)
        return made[name]

    yield get
    for env in made.values():
        env.close()


def test_minihack_v4_game_prompt_override_autolog_and_tracker(nle_env, tmp_path):
    plan = {0: "<|ACTION|>kick<|END|>", 1: "<|ACTION|>west<|END|>", 2: "<|ACTION|>go south<|END|>",
            3: "<|ACTION|>north<|END|>"}

    def fn(req):
        step, phase, _it = _rid(req)
        return "<|DONE|>" if phase == "LOG" else plan[step]

    res = run_episodes([EnvJob(nle_env("minihack:MiniHack-Corridor-R3-v0"), [3])], ScriptedEngine(fn),
                       load_spec(SPECS / "minihack_v4.yaml"), tmp_path / "run", run_id="v4", max_steps=4)[0]
    recs = read_jsonl(res.trace_path)
    acts = [r["executed_action"] for r in recs if r.get("executed_action")]
    assert acts == ["kick", "west", "south", "north"]  # "go south" repaired to "south"
    plan1 = next(r for r in recs if r["phase"] == "PLAN" and r["step"] == 1)
    assert "In what direction?" in plan1["messages"][0]["content"]
    assert "*** GAME PROMPT: the game asks \"In what direction?\"" in plan1["messages"][0]["content"]
    assert any(e["event"] == "override" for e in plan1["runtime"])
    log = (Path(res.memory_dir) / "actions_log.txt").read_text()
    assert log == ("Step 0 action 'kick': [auto-logged]\nStep 1 action 'west': [auto-logged]\n"
                   "Step 2 action 'south': [auto-logged]\n")
    plan3 = next(r for r in recs if r["phase"] == "PLAN" and r["step"] == 3)["messages"][0]["content"]
    assert ("── TAIL actions_log.txt (last 5 lines) ──\nStep 0 action 'kick': [auto-logged]\n"
            "Step 1 action 'west': [auto-logged]\nStep 2 action 'south': [auto-logged]") in plan3
    assert "EXPLORATION STATUS: position (" in plan3 and "RECENT ACTIONS (oldest first): kick, west, south" in plan3
    fields = [e["values"] for r in recs for e in r.get("runtime", []) if e["event"] == "fields"]
    assert fields[1]["game_prompt"] is True and fields[0]["game_prompt"] is False
    assert fields[-1]["visits"]["tiles"] >= 1


def test_nethack_v2_upsert_map_and_runtime_kept_files(nle_env, tmp_path):
    def fn(req):
        step, phase, _it = _rid(req)
        if phase == "LOG":
            return ("<|UPSERT_MAP|>(3, 4)|floor<|END|><|UPSERT_MAP|>5,6|wall<|END|>"
                    "<|UPSERT_MAP|>3,4|floor, door east<|END|><|UPSERT_MAP|>x,y|bad<|END|><|DONE|>")
        return "<|ACTION|>search<|END|>"

    res = run_episodes([EnvJob(nle_env("nethack"), [5])], ScriptedEngine(fn), load_spec(SPECS / "nethack_v2.yaml"),
                       tmp_path / "run", run_id="v2", max_steps=2)[0]
    mem = Path(res.memory_dir)
    assert (mem / "dungeon_map.txt").read_text() == "(3,4): floor, door east\n(5,6): wall\n"
    recs = read_jsonl(res.trace_path)
    log = next(r for r in recs if r["phase"] == "LOG")
    assert [o["result"] for o in log["op_results"]][2:] == [
        "[Updated '3,4' in dungeon_map.txt]", "[ERROR: UPSERT_MAP key 'x,y' does not match 'x,y|description']"]
    status = (mem / "current_status.txt").read_text()
    assert status.startswith("Step: 1\nDlvl: 1   HP: ") and "Last 10 actions: search\n" in status
    last_plan = [r for r in recs if r["phase"] == "PLAN"][-1]["messages"][0]["content"]
    inventory = last_plan.split("CURRENT OBSERVATION:\n")[1].split("inventory:\n")[1].split("\n\nANSWERING")[0]
    assert (mem / "inventory.txt").read_text() == "inventory:\n" + inventory and len(inventory) > 20
    assert "GAME STATUS: Dlvl 1 | HP " in last_plan


@pytest.mark.slow
@pytest.mark.parametrize("name,env_name", [("crafter_v5", "crafter"), ("nethack_v2", "nethack"),
                                           ("minihack_v4", "minihack:MiniHack-Corridor-R3-v0")])
def test_shipped_spec_on_the_real_env_scripted_and_tiny_jax_model(name, env_name, tmp_path):
    """Real env; first a scripted engine (ops and actions checked), then a tiny random model through the JAX engine."""
    from automem_jax.engine import make_engine
    from automem_jax.envs import make
    from automem_jax.models.testing import save_tiny_hf_model
    spec = load_spec(SPECS / f"{name}.yaml")
    env = make(env_name, 2)
    moves = {"crafter": ["Move West", "Do", "Noop"], "nethack": ["west", "search", "east"]}.get(env.family,
                                                                                              ["west", "south", "east"])

    def fn(req):
        step, phase, _it = _rid(req)
        return "<|DONE|>" if phase == "LOG" else f"<|ACTION|>{moves[step % 3]}<|END|>"

    engine = make_engine("jax", model=str(save_tiny_hf_model(tmp_path / "model")), max_batch=2, max_seq_len=8192,
                         decode_steps=8)
    try:
        scripted = run_episodes([EnvJob(env, [5, 6])], ScriptedEngine(fn), spec, tmp_path / "scripted",
                                run_id="scripted", max_steps=3)
        tiny = run_episodes([EnvJob(env, [7, 8])], engine, spec, tmp_path / "tiny", run_id="tiny", max_steps=3,
                            sampling=SamplingParams(max_new_tokens=8, seed=0))
    finally:
        env.close()
        engine.close()
    for r in scripted:
        recs = read_jsonl(r.trace_path)
        assert [x["executed_action"] for x in recs if x["executed_action"]] == moves
        assert {"fields", "notice"} <= {e["event"] for x in recs for e in x.get("runtime", [])}
    assert sorted(r.seed for r in tiny) == [7, 8] and all(r.steps == 3 for r in tiny)
    for r in tiny:
        events = [e["event"] for x in read_jsonl(r.trace_path) for e in x.get("runtime", [])]
        assert "fields" in events and "notice" in events
