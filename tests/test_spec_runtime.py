"""The spec's runtime section acting in scripted episodes: exact prompt text and memory files after each step."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from agent_fakes import LineWorldEnv
from automem_jax.agent import EnvJob, read_jsonl, run_episodes
from automem_jax.engine.scripted import ScriptedEngine
from automem_jax.memory import load_spec

SPECS = Path(__file__).resolve().parents[1] / "configs" / "specs"

RUNTIME = {
    "fields": [
        {"name": "cell", "kind": "regex", "source": "text", "pattern": r"cell (\d) of 5", "type": "int"},
        {"name": "prev_cell", "kind": "previous", "of": "cell", "default": -1},
        {"name": "noops", "kind": "streak", "when": "last_action == 'Noop'"},
        {"name": "rep", "kind": "repetition", "size": 4},
    ],
    "notices": [
        {"name": "where", "phases": ["PLAN"], "mode": "first", "rules": [
            {"when": "cell == 4", "text": "At the east end: Do unlocks an achievement."},
            {"when": "cell > prev_cell and prev_cell >= 0", "text": "Moved east to cell {cell}."},
            {"text": "Cell {cell}."}]},
        {"name": "stuck", "phases": ["LOG", "PLAN"], "placement": "top", "rules": [
            {"when": "rep.failures >= 1", "text": "'{rep.action}' had no effect {rep.failures} time(s)."}]},
    ],
    "kept_files": [{"file": "status.txt", "before": "PLAN", "content": "step {step} cell {cell} noops {noops}\n"}],
    "prune": [{"file": "actions_log.txt", "after": "LOG", "over_lines": 2, "keep_last": 1}],
    "auto_ops": [
        {"before": "PLAN", "op": "TAIL", "args": "actions_log.txt|2"},
        {"after": "LOG", "op": "APPEND", "args": "actions_log.txt|Step {step - 1} action '{last_action}': "
                                                 "[auto-logged]", "when": "not wrote"},
    ],
    "gate": {"max_rejections": 1, "rules": [
        {"when": "action == 'Do' and cell != 4 and cell != 0", "reason": "Do does nothing at cell {cell}."}]},
    "repair": ["trailing_period", "case", {"map": {"go east": "Move East"}}],
}


def spec_dict(runtime=RUNTIME) -> dict:
    d = yaml.safe_load((SPECS / "crafter_v0.yaml").read_text())
    d["guidance"] = ""
    d["files"] = [{"name": "actions_log.txt"}, {"name": "status.txt"}]
    d["phases"]["LOG"].update(template="{previous_action}\n{observation}", continue_template="{results}")
    d["phases"]["PLAN"].update(template="{notices}\n---\n{observation}", continue_template="{results}")
    d["runtime"] = copy.deepcopy(runtime)
    return d


PLAN_REPLIES = {0: ["<|ACTION|>do.<|END|>", "<|ACTION|>Do<|END|>"], 1: ["<|ACTION|>go east<|END|>"],
                2: ["<|ACTION|>Move East<|END|>"], 3: ["<|ACTION|>Do<|END|>"]}
LOG_REPLIES = {1: "<|DONE|>", 2: "<|APPEND|>actions_log.txt|Step 1 moved east<|END|><|DONE|>", 3: "<|DONE|>"}


def _script(req) -> str:
    _task, _seed, step, phase, it = req.rid.split("/")
    return LOG_REPLIES[int(step)] if phase == "LOG" else PLAN_REPLIES[int(step)][int(it)]


def _run(tmp_path, spec=None):
    env = LineWorldEnv(1)
    results = run_episodes([EnvJob(env, [2])], ScriptedEngine(_script), spec or load_spec(spec_dict()),
                           tmp_path / "run", run_id="rt", max_steps=4)
    return env, results[0], read_jsonl(results[0].trace_path)


def test_runtime_section_round_trips_and_diffs():
    spec = load_spec(spec_dict())
    again = load_spec(spec.to_yaml())
    assert again == spec and again.to_yaml() == spec.to_yaml()
    assert again.runtime.order == ("cell", "prev_cell", "noops", "rep")


def test_scripted_episode_prompts_files_and_trace(tmp_path):
    env, res, recs = _run(tmp_path)
    # Repair ("do." -> "Do", "go east" -> "Move East"), one gate rejection at step 0, then the env saw these actions.
    assert [a for _, _, a, _ in env.executed] == ["Do", "Move East", "Move East", "Do"]
    assert res.total_reward == 1.0 and res.invalid_actions == 0 and res.stats["gate_rejections"] == 1

    plan = {(r["step"], r["iteration"]): r for r in recs if r["phase"] == "PLAN"}
    first = plan[(0, 0)]
    assert first["gate_rejection"] == "ACTION REJECTED: Do does nothing at cell 2."
    assert plan[(0, 1)]["messages"][1:] == [{"role": "assistant", "content": "<|ACTION|>do.<|END|>"},
                                            {"role": "user", "content": "ACTION REJECTED: Do does nothing at cell 2."}]
    assert first["messages"][0]["content"] == (
        "── TAIL actions_log.txt (last 2 lines) ──\n[FILE IS EMPTY]\n\nCell 2.\n---\nYou stand at cell 2 of 5.\n"
        "Achievements: 0")
    assert plan[(1, 0)]["messages"][0]["content"] == (
        "'Do' had no effect 1 time(s).\n\n"
        "── TAIL actions_log.txt (last 2 lines) ──\nStep 0 action 'Do': [auto-logged]\n\nCell 2.\n---\n"
        "You stand at cell 2 of 5.\nAchievements: 0")
    assert plan[(2, 0)]["messages"][0]["content"] == (
        "── TAIL actions_log.txt (last 2 lines) ──\nStep 0 action 'Do': [auto-logged]\nStep 1 moved east\n\n"
        "Moved east to cell 3.\n---\nYou stand at cell 3 of 5.\nAchievements: 0")
    assert plan[(3, 0)]["messages"][0]["content"].split("\n\n")[-1] == (
        "At the east end: Do unlocks an achievement.\n---\nYou stand at cell 4 of 5.\nAchievements: 0")
    log1 = next(r for r in recs if r["phase"] == "LOG" and r["step"] == 1)
    assert log1["messages"][0]["content"] == ("'Do' had no effect 1 time(s).\n\n"
                                              'At the PREVIOUS step (step 0) you took action: "Do"\n'
                                              "You stand at cell 2 of 5.\nAchievements: 0")

    mem = Path(res.memory_dir)
    # Step 3's LOG auto-logged a third line: over 2 lines, so the prune kept the last one behind a marker.
    assert (mem / "actions_log.txt").read_text() == ("[... 2 older entries pruned ...]\n"
                                                     "Step 2 action 'Move East': [auto-logged]\n")
    assert (mem / "status.txt").read_text() == "step 3 cell 4 noops 0\n"

    events = [e for r in recs for e in r.get("runtime", [])]
    kinds = {e["event"] for e in events}
    assert kinds == {"fields", "notice", "kept_file", "runtime_op", "gate", "repair", "prune"}
    assert {"event": "repair", "from": "go east", "to": "Move East"} in events
    assert {"event": "prune", "phase": "LOG", "file": "actions_log.txt", "pruned": 2} in events
    fields0 = next(e for e in events if e["event"] == "fields" and e["step"] == 1)["values"]
    assert fields0 == {"cell": 2, "prev_cell": 2, "noops": 0,
                       "rep": {"action": "Do", "repeats": 1, "failures": 1}}


def test_gate_budget_spent_lets_the_action_through(tmp_path):
    rt = copy.deepcopy(RUNTIME)
    rt["gate"]["rules"][0]["when"] = "action == 'Do'"  # rejects every Do
    rt["gate"]["max_rejections"] = 1
    env, res, recs = _run(tmp_path, load_spec(spec_dict(rt)))
    rejections = [r["gate_rejection"] for r in recs if r.get("gate_rejection")]
    assert rejections == ["ACTION REJECTED: Do does nothing at cell 2.", "ACTION REJECTED: Do does nothing at cell 4."]
    executed = [a for _, _, a, _ in env.executed]
    assert executed[0] == "Do"  # step 0: the second Do went through, the step's one rejection being spent
    assert executed[3] == "Noop"  # step 3: the script has no reply after the rejection -> the spec's fallback


def test_prompt_override_narrows_ops_and_replaces_the_prompt(tmp_path):
    rt = copy.deepcopy(RUNTIME)
    rt["prompt_overrides"] = [{"phase": "PLAN", "when": "cell == 3", "ops": [],
                               "template": "Only act now. {observation}"}]
    _env, _res, recs = _run(tmp_path, load_spec(spec_dict(rt)))
    plan2 = next(r for r in recs if r["phase"] == "PLAN" and r["step"] == 2)
    assert plan2["messages"][0]["content"] == "Only act now. You stand at cell 3 of 5.\nAchievements: 0"
    assert any(e["event"] == "override" for e in plan2["runtime"])


def test_two_roles_gate_checks_the_committing_model(tmp_path):
    def fn(req):
        _task, _seed, step, phase, it = req.rid.split("/")
        if phase == "LOG":
            return "<|DONE|>"
        if phase == "PLAN":
            return "<|ACTION|>Do<|END|>"  # the specialist's action is stripped, never gated
        return "<|ACTION|>Do<|END|>" if it == "0" else "<|ACTION|>Move East<|END|>"

    engine = ScriptedEngine(fn)
    engine.load_adapter("mem", "/nonexistent")
    env = LineWorldEnv(1)
    res = run_episodes([EnvJob(env, [2])], engine, load_spec(spec_dict()), tmp_path / "run", run_id="two",
                       max_steps=1, memory_adapter="mem")[0]
    commits = [q for q in engine.requests if q.rid.split("/")[3] == "COMMIT"]
    assert len(commits) == 2 and commits[1].messages[-2:] == [
        {"role": "assistant", "content": "<|ACTION|>Do<|END|>"},
        {"role": "user", "content": "ACTION REJECTED: Do does nothing at cell 2."}]
    assert [a for _, _, a, _ in env.executed] == ["Move East"] and res.stats["gate_rejections"] == 1
