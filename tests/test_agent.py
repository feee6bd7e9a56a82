"""The batched LOG/PLAN/ACTION rollout with a scripted engine on a tiny deterministic env."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from agent_fakes import LineWorldEnv
from automem_jax.agent import EnvJob, read_jsonl, run_episodes, summarize
from automem_jax.engine.base import SamplingParams
from automem_jax.engine.scripted import ScriptedEngine
from automem_jax.memory import load_spec, validate_spec

SPECS = Path(__file__).resolve().parents[1] / "configs" / "specs"


class OtherWorld(LineWorldEnv):
    task = "otherworld"


def _rid(req):
    task, seed, step, phase, it = req.rid.split("/")
    return task, int(seed), int(step), phase, int(it)


def _cell(text: str) -> int:
    return int(re.findall(r"cell (\d) of 5", text)[-1])


def policy(cell: int) -> str:
    return "Do" if cell == 4 else "Move East"


def scripted(req) -> str:
    """LOG: search, append 'Step N cell C', then DONE. PLAN: tail, then commit the policy's action."""
    task, seed, step, phase, it = _rid(req)
    first = req.messages[0]["content"]
    if phase == "LOG":
        if it == 0:
            return (f"```\n<|SEARCH|>actions_log.txt|Step<|END|>\n"
                    f"<|APPEND|>actions_log.txt|Step {step - 1} cell {_cell(first)}<|END|>\n```")
        return "Nothing else. <|DONE|>"
    if it == 0:
        return "<|TAIL|>actions_log.txt|1<|END|>"
    return f"I will act. <|ACTION|>{policy(_cell(first))}<|END|>"


def simulate(seed: int, steps: int) -> tuple[list[str], list[float], list[int]]:
    """The env + policy outside the agent: actions, rewards, cell after each step."""
    pos, ach, actions, rewards, cells = seed % 5, [False, False], [], [], []
    for _ in range(steps):
        a = policy(pos)
        r = 0.0
        if a == "Move East":
            pos = min(4, pos + 1)
        elif pos == 4 and not ach[0]:
            ach[0], r = True, 1.0
        actions.append(a), rewards.append(r), cells.append(pos)
    return actions, rewards, cells


def test_episode_batch_traces_and_memory_bytes(tmp_path):
    spec = load_spec(SPECS / "crafter_v0.yaml")
    env_a, env_b = LineWorldEnv(2, horizon=6), OtherWorld(1, horizon=6)
    engine = ScriptedEngine(scripted)
    results = run_episodes([EnvJob(env_a, [1, 2, 3]), EnvJob(env_b, [4])], engine, spec, tmp_path, run_id="r1",
                           max_steps=100)
    assert sorted((r.task, r.seed) for r in results) == [("lineworld", 1), ("lineworld", 2), ("lineworld", 3),
                                                         ("otherworld", 4)]
    assert max(engine.batches) == 3  # both jobs' envs in one generate call
    for r in results:
        actions, rewards, cells = simulate(r.seed, 6)
        # memory files, byte for byte: LOG runs at steps 1..5 and records the previous step's outcome
        mem = Path(r.memory_dir)
        expected_log = "".join(f"Step {t - 1} cell {cells[t - 1]}\n" for t in range(1, 6))
        assert (mem / "actions_log.txt").read_bytes() == expected_log.encode()
        for name in ("map_notes.txt", "crafting_progress.txt", "survival_log.txt", "strategy.txt"):
            assert (mem / name).read_bytes() == b""
        # traces agree with the env and the summary
        recs = read_jsonl(r.trace_path)
        acts = [x for x in recs if x["action"] is not None]
        assert [x["executed_action"] for x in acts] == actions
        assert [x["reward"] for x in acts] == rewards
        assert [x["step"] for x in acts] == list(range(6)) and [x["done"] for x in acts] == [False] * 5 + [True]
        env = env_a if r.task == "lineworld" else env_b
        assert [(a, rw) for _, s, a, rw in env.executed if s == r.seed] == list(zip(actions, rewards))
        assert r.total_reward == sum(rewards) and r.steps == 6 and r.status == "done"
        assert r.progression == acts[-1]["progression"] == sum(rewards) / 2
        assert recs[0]["phase"] == "PLAN" and recs[0]["step"] == 0  # no LOG before the first action
        assert [x["phase"] for x in recs if x["step"] == 1] == ["LOG", "LOG", "PLAN", "PLAN"]
        log1 = [x for x in recs if x["step"] == 1 and x["phase"] == "LOG"]
        assert [m["role"] for m in log1[1]["messages"]] == ["user", "assistant", "user"]
        assert "── SEARCH actions_log.txt for 'Step' ──\n[FILE IS EMPTY — no matches]" in log1[1]["messages"][2]["content"]
        assert "  - actions_log.txt (1 lines)" in log1[1]["messages"][2]["content"]
        assert log1[0]["ops"][1] == {"op": "APPEND", "args": f"actions_log.txt|Step 0 cell {cells[0]}"}
        assert 'you took action: "' + actions[0] + '"' in log1[0]["messages"][0]["content"]
        assert all(x["run_id"] == "r1" and x["spec"] == "crafter_v0" and x["seed"] == r.seed for x in recs)
        assert r.stats["ops"] == {"SEARCH": 5, "APPEND": 5, "TAIL": 6}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["average_progress"] == pytest.approx(summarize(results)["average_progress"])
    calls = engine.requests
    assert summary["total_input_tokens"] == sum(r.input_tokens for r in results) == sum(
        len(" ".join(m["content"] for m in q.messages).split()) for q in calls)  # ScriptedEngine counts words
    assert summary["total_output_tokens"] == sum(r.output_tokens for r in results) > 0
    assert summary["client"]["client_name"] == "ScriptedEngine" and summary["client"]["generate_kwargs"] == {
        "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_tokens": 128}
    assert summary["agent"] | {"phases": None} == {
        "type": "automem", "spec": "crafter_v0", "spec_version": 0, "phases": None, "max_text_history": None,
        "memory_adapter": None, "action_adapter": None, "two_role": False, "action_repair": ["two_step"]}
    assert len(read_jsonl(tmp_path / "episodes.jsonl")) == 4


def test_resume_skips_finished_episodes(tmp_path):
    spec = load_spec(SPECS / "crafter_v0.yaml")

    def stop_after_first(result):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_episodes([EnvJob(LineWorldEnv(1, horizon=3), [1, 2, 3])], ScriptedEngine(scripted), spec, tmp_path,
                     run_id="r", max_steps=10, progress=stop_after_first)
    assert [r["seed"] for r in read_jsonl(tmp_path / "episodes.jsonl")] == [1]
    engine = ScriptedEngine(scripted)
    results = run_episodes([EnvJob(LineWorldEnv(1, horizon=3), [1, 2, 3])], engine, spec, tmp_path, run_id="r",
                           max_steps=10)
    assert sorted(r.seed for r in results) == [1, 2, 3]
    assert {_rid(q)[1] for q in engine.requests} == {2, 3}
    assert sorted(r["seed"] for r in read_jsonl(tmp_path / "episodes.jsonl")) == [1, 2, 3]


def test_episode_log_appends_and_drops_a_torn_line_on_reopen(tmp_path):
    """episodes.jsonl grows by appended lines; a line a kill cut short is not an episode, and reopening the log
    removes it so the next line is not glued to it."""
    from automem_jax.agent.trace import EpisodeLog
    path = tmp_path / "episodes.jsonl"
    log = EpisodeLog(path)
    for seed in (1, 2):
        log.add({"env": "e", "task": "t", "seed": seed})
    assert [r["seed"] for r in read_jsonl(path)] == [1, 2]
    with path.open("a") as f:
        f.write('{"env": "e", "task": "t", "se')  # killed mid-write
    log = EpisodeLog(path)
    assert log.finished() == {("e", "t", 1), ("e", "t", 2)}
    log.add({"env": "e", "task": "t", "seed": 3})
    assert [r["seed"] for r in read_jsonl(path)] == [1, 2, 3]
    assert path.read_text().count("\n") == 3


def test_two_role_handoff_conversation(tmp_path):
    """AutoMem's *_twomodel PLAN: the memory role reads; its action is stripped; the base model continues the same
    chat after the handoff message, may still read memory, and commits (or falls back at its turn cap)."""
    d = yaml.safe_load((SPECS / "crafter_v0.yaml").read_text())
    d["phases"]["PLAN"]["max_iterations"] = 3
    spec = validate_spec(d)
    handoff = spec.commit_prompt

    def fn(req):
        task, seed, step, phase, it = _rid(req)
        if phase == "LOG":
            return "<|DONE|>"
        if phase == "PLAN":  # memory role
            return {0: "<|READ|>strategy.txt<|END|> then <|ACTION|>Do<|END|>",  # commits: stripped + results
                    1: "I have nothing to look up.",  # no op: the commit prompt alone
                    }.get(step, "<|TAIL|>actions_log.txt|1<|END|>")  # never commits: its turn cap
        if step == 3:
            return "<|COUNT|>strategy.txt|x<|END|>"  # the base model reads until its cap -> fallback
        return "<|SEARCH|>strategy.txt|tree<|END|>" if it == 0 else "<|ACTION|>Move West<|END|>"

    engine = ScriptedEngine(fn)
    engine.load_adapter("mem", "/nonexistent")
    res = run_episodes([EnvJob(LineWorldEnv(1, horizon=9), [2])], engine, spec, tmp_path, run_id="r", max_steps=4,
                       memory_adapter="mem")
    reqs = {(_rid(q)[2], _rid(q)[3], _rid(q)[4]): q for q in engine.requests}
    assert all(q.adapter == ("mem" if p != "COMMIT" else None) for (_, p, _), q in reqs.items())

    plan0, c0, c1 = reqs[(0, "PLAN", 0)], reqs[(0, "COMMIT", 0)], reqs[(0, "COMMIT", 1)]
    assert c0.messages[:1] == plan0.messages  # the same conversation, continued
    assert c0.messages[1:] == [
        {"role": "assistant", "content": "<|READ|>strategy.txt<|END|> then"},
        {"role": "user", "content": "Results:\n── READ strategy.txt ──\n[FILE IS EMPTY]\n\n" + handoff}]
    assert c1.messages[:3] == c0.messages and c1.messages[3]["content"] == "<|SEARCH|>strategy.txt|tree<|END|>"
    assert c1.messages[4]["content"].startswith("Search results:\n── SEARCH strategy.txt for 'tree' ──")
    c = reqs[(1, "COMMIT", 0)].messages
    assert c[-2:] == [{"role": "assistant", "content": "I have nothing to look up."},
                      {"role": "user", "content": handoff}]
    assert [k[2] for k in reqs if k[:2] == (2, "PLAN")] == [0, 1, 2]  # the memory role used its 3 turns
    c = reqs[(2, "COMMIT", 0)].messages
    assert c[-2]["content"] == "<|TAIL|>actions_log.txt|1<|END|>"
    assert c[-1]["content"].startswith("Search results:\n── TAIL actions_log.txt")
    assert handoff not in c[-1]["content"]
    assert [k[2] for k in reqs if k[:2] == (3, "COMMIT")] == [0, 1, 2]  # the base model's own cap

    recs = read_jsonl(res[0].trace_path)
    plan_commit = next(x for x in recs if x["phase"] == "PLAN" and x["step"] == 0)
    assert plan_commit["stripped_action"] == "Do" and plan_commit["action"] is None
    acts = [x for x in recs if x["executed_action"]]
    assert [(x["step"], x["phase"], x["action"], x["action_source"]) for x in acts] == [
        (0, "COMMIT", "Move West", "model"), (1, "COMMIT", "Move West", "model"),
        (2, "COMMIT", "Move West", "model"), (3, "COMMIT", "noop", "fallback")]
    assert [x["executed_action"] for x in acts] == ["Move West"] * 3 + ["Noop"] and not acts[3]["valid"]
    assert [x["iteration"] for x in recs if x["phase"] == "COMMIT" and x["step"] == 0] == [0, 1]
    assert res[0].stats["commit_turns"] == 2 + 2 + 2 + 3 and res[0].stats["ops"]["COUNT"] == 3


def test_history_mode_is_balrog_naive_agent(tmp_path):
    d = yaml.safe_load((SPECS / "nomemory.yaml").read_text())
    d["history_length"] = 2
    spec = validate_spec(d)
    engine = ScriptedEngine(lambda req: "Move East!")  # naive agent keeps letters/spaces only
    env = LineWorldEnv(1, horizon=4)
    res = run_episodes([EnvJob(env, [0])], engine, spec, tmp_path, run_id="r", max_steps=10)
    assert [len(q.messages) for q in engine.requests] == [2, 4, 6, 6]
    last = engine.requests[-1].messages
    assert last[0]["content"] == env.instruction() and last[1]["content"].startswith("Observation:\nYou stand at cell 1")
    assert last[-1]["content"].startswith("Current Observation:\nYou stand at cell 3")
    assert [a for _, _, a, _ in env.executed] == ["Move East"] * 4
    assert res[0].stats.get("memory_files") is None and not Path(res[0].memory_dir).exists()


def test_fallback_invalid_action_and_stuck_notices(tmp_path):
    d = yaml.safe_load((SPECS / "crafter_v0.yaml").read_text())
    d["fallback_actions"]["crafter"] = "Noop"  # a legal fallback (crafter_v0 has AutoMem's invalid "noop")
    spec = validate_spec(d)

    def fn(req):
        task, seed, step, phase, it = _rid(req)
        if phase == "LOG":
            return "<|DONE|>"
        if step == 0:
            return "<|ACTION|>Fly<|END|>"  # invalid -> env default (Noop), flagged in the next LOG prompt
        return "hmm, no idea"  # no op, no action -> the spec's fallback (Noop)

    engine = ScriptedEngine(fn)
    res = run_episodes([EnvJob(LineWorldEnv(1, horizon=9), [0])], engine, spec, tmp_path, run_id="r", max_steps=7)
    recs = read_jsonl(res[0].trace_path)
    acts = [x for x in recs if x["executed_action"]]
    assert [(x["action"], x["executed_action"], x["valid"]) for x in acts] == \
        [("Fly", "Noop", False)] + [("Noop", "Noop", True)] * 6
    assert [x["action_source"] for x in acts] == ["model"] + ["fallback"] * 6
    log1 = next(x for x in recs if x["phase"] == "LOG" and x["step"] == 1)["messages"][0]["content"]
    assert 'your LLM output was: "Fly"' in log1 and 'executed the default action "Noop"' in log1
    plans = {x["step"]: x["messages"][0]["content"] for x in recs if x["phase"] == "PLAN"}
    # steps 1 and 2 differ from their predecessors (the invalid-action feedback line comes and goes)
    assert "IDENTICAL" not in plans[1] and "IDENTICAL" not in plans[2]
    assert "WARNING: The observation is IDENTICAL" in plans[3] and "Do NOT repeat it" in plans[3]
    assert "CRITICAL" not in plans[4] and "IDENTICAL" in plans[4]
    assert "CRITICAL WARNING" in plans[5] and "UNCHANGED for 3 consecutive" in plans[5]
    assert res[0].invalid_actions == 1 and res[0].stats["fallbacks"] == 6 and res[0].status == "truncated"
    assert res[0].failed_candidates == ["Fly"] and res[0].action_frequency == {"Noop": 7}
    balrog_feedback = ("\n\nYour previous output did not contain a valid action. Defaulted to action: Noop\n\n"
                       "Observation:\nYou stand at cell 0 of 5.")
    assert f"CURRENT OBSERVATION:\n{balrog_feedback}" in plans[1] and "did not contain" not in plans[2]


def test_phase_caps_and_errors_shown_to_model(tmp_path):
    d = yaml.safe_load((SPECS / "crafter_v0.yaml").read_text())
    d["phases"]["LOG"]["max_iterations"] = 3
    d["phases"]["PLAN"]["max_iterations"] = 2
    spec = validate_spec(d)

    def fn(req):
        if _rid(req)[3] == "LOG":
            return "<|APPEND|>../../x.txt|escape<|END|> <|FOO|>1<|END|>"  # never DONE
        return "<|READ|>strategy.txt<|END|>"  # never commits

    engine = ScriptedEngine(fn)
    res = run_episodes([EnvJob(LineWorldEnv(1), [0])], engine, spec, tmp_path, run_id="r", max_steps=2)
    recs = read_jsonl(res[0].trace_path)
    assert [(x["phase"], x["iteration"]) for x in recs if x["step"] == 1] == \
        [("LOG", 0), ("LOG", 1), ("LOG", 2), ("PLAN", 0), ("PLAN", 1)]
    cont = [x for x in recs if x["phase"] == "LOG" and x["iteration"] == 1][0]["messages"][-1]["content"]
    assert "[ERROR: '..' is not allowed in file names" in cont and "[ERROR: unknown op FOO" in cont
    assert [x["executed_action"] for x in recs if x["executed_action"]] == ["Noop", "Noop"]
    assert res[0].stats["op_errors"] == 6 and not (tmp_path / "x.txt").exists()


def test_engine_errors_fall_back(tmp_path):
    spec = load_spec(SPECS / "crafter_v0.yaml")

    def fn(req):
        raise RuntimeError("boom")

    res = run_episodes([EnvJob(LineWorldEnv(2), [0, 1])], ScriptedEngine(fn), spec, tmp_path, run_id="r",
                       max_steps=2, sampling=SamplingParams(seed=3))
    recs = read_jsonl(res[0].trace_path)
    assert recs[0]["finish_reason"] == "error" and "boom" in recs[0]["errors"][0]
    errors = json.loads((tmp_path / "summary.json").read_text())["engine_errors"]  # what failed, in one place
    assert len(errors) == 1 and "boom" in next(iter(errors)) and sum(errors.values()) == res[0].stats[
        "engine_errors"] + res[1].stats["engine_errors"]
    assert [x["executed_action"] for x in recs if x["executed_action"]] == ["Noop", "Noop"]


@pytest.mark.parametrize("repairs", [[], ["strip_quotes", "case"]])
def test_action_repair_is_a_spec_option_and_traces_keep_raw_and_validated(tmp_path, repairs):
    d = yaml.safe_load((SPECS / "crafter_v0.yaml").read_text())
    d["action_repair"] = repairs
    spec = validate_spec(d)
    replies = iter(["<|ACTION|>'move east'<|END|>", "<|ACTION|>Move East<|END|>", "<|ACTION|>DO<|END|>"])
    engine = ScriptedEngine(lambda req: "<|DONE|>" if _rid(req)[3] == "LOG" else next(replies))
    res = run_episodes([EnvJob(LineWorldEnv(1, horizon=3), [3])], engine, spec, tmp_path, run_id="r", max_steps=3)
    acts = [x for x in read_jsonl(res[0].trace_path) if x["executed_action"]]
    raw = ["'move east'", "Move East", "DO"]
    assert [x["raw_action"] for x in acts] == raw
    if repairs:
        assert [(x["action"], x["executed_action"], x["valid"]) for x in acts] == [
            ("Move East", "Move East", True), ("Move East", "Move East", True), ("Do", "Do", True)]
        assert res[0].failed_candidates == [] and res[0].stats["repaired_actions"] == 2
    else:  # BALROG-exact: the near misses run the default action and count as invalid
        assert [(x["action"], x["executed_action"], x["valid"]) for x in acts] == [
            ("'move east'", "Noop", False), ("Move East", "Move East", True), ("DO", "Noop", False)]
        assert res[0].failed_candidates == ["'move east'", "DO"] and res[0].invalid_actions == 2


def test_history_mode_empty_reply_is_an_invalid_action(tmp_path):
    """BALROG's naive agent sends whatever is left of the reply; an empty one fails the exact check."""
    spec = load_spec(SPECS / "nomemory.yaml")
    replies = iter(["42", " Move East\n", "Do it!"])
    res = run_episodes([EnvJob(LineWorldEnv(1, horizon=3), [4])], ScriptedEngine(lambda req: next(replies)), spec,
                       tmp_path, run_id="r", max_steps=3)
    acts = [x for x in read_jsonl(res[0].trace_path) if x["executed_action"]]
    assert [(x["raw_action"], x["executed_action"], x["valid"]) for x in acts] == [
        ("", "Noop", False), ("Move East", "Move East", True), ("Do it", "Noop", False)]
    assert res[0].failed_candidates == ["", "Do it"] and "fallbacks" not in res[0].stats


def test_constrained_phases_send_their_grammar(tmp_path):
    from automem_jax.memory.grammar import phase_regex
    from automem_jax.memory.spec import SpecError
    spec = load_spec(SPECS / "crafter_quickstart.yaml")
    engine = ScriptedEngine(lambda req: "")
    env = LineWorldEnv(1, horizon=2)
    engine.fn = lambda req: ("<|READ|>strategy.txt<|END|>" if _rid(req)[4] == 0 else
                             "<|DONE|>" if _rid(req)[3] == "LOG" else "<|ACTION|>Do<|END|>")
    run_episodes([EnvJob(env, [3])], engine, spec, tmp_path / "on", run_id="r", max_steps=2)
    sent = {(_rid(q)[3], _rid(q)[4], q.sampling.regex) for q in engine.requests}
    # iteration 0 of 2 may leave ops open, the last one (1) must close the phase
    assert sent == {(p, i, phase_regex(spec, spec.phase(p), env.action_names, final=i == 1))
                    for p in ("LOG", "PLAN") for i in (0, 1)}
    plan = phase_regex(spec, spec.phase("PLAN"), env.action_names)
    assert "Move East" in plan and "Place Table" not in plan  # this env's actions
    plain = ScriptedEngine(engine.fn)
    run_episodes([EnvJob(LineWorldEnv(1, horizon=2), [3])], plain, load_spec(SPECS / "crafter_v0.yaml"),
                 tmp_path / "off", run_id="r", max_steps=2)
    assert {q.sampling.regex for q in plain.requests} == {None}  # AutoMem's specs decode unconstrained
    bad = yaml.safe_load(spec.to_yaml())
    bad["ops"].append({"name": "UPSERT", "semantics": "upsert_keyed", "key_pattern": "[ab]*a[ab]{12}"})  # 2^13 states
    bad["phases"]["LOG"]["ops"].append("UPSERT")
    with pytest.raises(SpecError, match="phases.LOG.constrained"):
        run_episodes([EnvJob(LineWorldEnv(1), [3])], plain, validate_spec(bad), tmp_path / "bad", run_id="r",
                     max_steps=1)


def test_a_constrained_naive_agent_sends_the_action_grammar(tmp_path):
    from automem_jax.memory.grammar import constrain_all, history_regex
    spec = constrain_all(load_spec(SPECS / "nomemory.yaml"))
    env = LineWorldEnv(1, horizon=3)
    engine = ScriptedEngine(lambda req: " Move East")
    [res] = run_episodes([EnvJob(env, [3])], engine, spec, tmp_path / "on", run_id="r", max_steps=3)
    assert {q.sampling.regex for q in engine.requests} == {history_regex(spec, env.action_names)}
    assert res.invalid_actions == 0 and res.steps == len(engine.requests)


def test_a_phase_closes_before_its_conversation_overflows_the_context(tmp_path):
    """A model that keeps reading memory would grow the PLAN conversation past max_seq_len (the engine then fails the
    request and the step falls back); the rollout makes the last turn that fits the phase's closing turn."""
    from automem_jax.memory.grammar import constrain_all, phase_regex
    spec = constrain_all(load_spec(SPECS / "crafter_v0.yaml"))
    env = LineWorldEnv(1, horizon=3)
    finals = {phase_regex(spec, p, env.action_names, final=True) for p in spec.phases}
    overflows = []

    def reply(req):
        words = sum(len(m["content"].split()) for m in req.messages)
        if words > getattr(engine, "max_seq_len", 10 ** 9):
            overflows.append(words)
            raise ValueError("prompt longer than max_seq_len")
        if req.sampling.regex in finals:
            return "<|DONE|>" if _rid(req)[3] == "LOG" else "<|ACTION|>Move East<|END|>"
        return "<|READ|>actions_log.txt<|END|> " + "filler " * 40  # ops forever, each turn longer

    engine = ScriptedEngine(reply)
    first = sum(len(m.split()) for m in [spec.phases[0].template])  # a rough floor for the opening prompt
    engine.max_seq_len = first + 1200
    [res] = run_episodes([EnvJob(env, [3])], engine, spec, tmp_path / "run", run_id="r", max_steps=3)
    assert not overflows and res.stats.get("fallbacks", 0) == 0 and res.stats.get("engine_errors", 0) == 0
    plan_turns = [int(_rid(q)[4]) for q in engine.requests if _rid(q)[3] == "PLAN"]
    assert max(plan_turns) + 1 < spec.phase("PLAN").max_iterations  # closed early, by the context, not the cap
    del engine.max_seq_len  # an engine that does not say its context: only the iteration cap closes a phase
    engine.requests.clear()
    run_episodes([EnvJob(LineWorldEnv(1, horizon=1), [4])], engine, spec, tmp_path / "nolimit", run_id="r",
                 max_steps=1)
    assert max(int(_rid(q)[4]) for q in engine.requests if _rid(q)[3] == "PLAN") + 1 == \
        spec.phase("PLAN").max_iterations


def test_constrained_commit_turns_of_the_base_model_carry_the_action_grammar(tmp_path):
    """Two roles under constrained phases: the base model's turns after the handoff continue PLAN, so they decode
    under PLAN's grammar (unconstrained, SmolLM2 answered the commit prompt with prose and every step fell back)."""
    from automem_jax.memory.grammar import constrain_all, phase_regex
    d = yaml.safe_load((SPECS / "crafter_v0.yaml").read_text())
    d["phases"]["PLAN"]["max_iterations"] = 2
    spec = constrain_all(validate_spec(d))
    env = LineWorldEnv(1, horizon=3)

    def fn(req):
        phase = _rid(req)[3]
        if phase == "LOG":
            return "<|DONE|>"
        return "<|READ|>strategy.txt<|END|> <|ACTION|>Do<|END|>" if phase == "PLAN" else "<|ACTION|>Move East<|END|>"

    engine = ScriptedEngine(fn)
    engine.load_adapter("mem", "/nonexistent")
    [res] = run_episodes([EnvJob(env, [2])], engine, spec, tmp_path, run_id="r", max_steps=2, memory_adapter="mem")
    commits = [q for q in engine.requests if _rid(q)[3] == "COMMIT"]
    assert commits and {q.sampling.regex for q in commits} == {
        phase_regex(spec, spec.phase("PLAN"), env.action_names, final=False)}
    assert res.stats.get("fallbacks", 0) == 0


def test_op_results_that_would_overflow_the_context_are_cut_to_fit(tmp_path):
    """On the H100 run a few turns per thousand failed with a prompt past max_seq_len (the step then fell back): one
    large op result can outgrow the previous turn's growth that the estimate extrapolates. The rollout cuts such
    results to fit, says so in the prompt, and makes that turn the phase's last."""
    from automem_jax.agent.rollout import CONTEXT_CUT_NOTE
    spec = load_spec(SPECS / "crafter_v0.yaml")
    chunk = " ".join(f"w{i}" for i in range(150))
    overflows, cut_prompts = [], []

    def reply(req):
        words = sum(len(m["content"].split()) for m in req.messages)
        if words > engine.max_seq_len:
            overflows.append(words)
            raise ValueError("prompt longer than max_seq_len")
        _, _, step, phase, it = _rid(req)
        if CONTEXT_CUT_NOTE in req.messages[-1]["content"]:
            cut_prompts.append(words)
            return "<|DONE|>" if phase == "LOG" else "<|ACTION|>Move East<|END|>"
        if phase == "LOG":  # step 1 (LOG skips step 0): the notes grow by 150 words a turn, up to 900
            return f"<|APPEND|>map_notes.txt|{chunk}<|END|>" if step == 1 and it < 6 else "<|DONE|>"
        return "<|READ|>map_notes.txt<|END|>" if it == 0 and step == 2 else "<|ACTION|>Move East<|END|>"

    engine = ScriptedEngine(reply)
    engine.max_seq_len = 10 ** 9
    first = ScriptedEngine(lambda req: "<|DONE|>" if _rid(req)[3] == "LOG" else "<|ACTION|>Noop<|END|>")
    run_episodes([EnvJob(LineWorldEnv(1, horizon=1), [3])], first, spec, tmp_path / "probe", run_id="r", max_steps=1)
    opening = max(sum(len(m["content"].split()) for m in q.messages) for q in first.requests)
    engine.max_seq_len = opening + 500  # the 900-word READ at step 2 does not fit; 400 words of it do
    [res] = run_episodes([EnvJob(LineWorldEnv(1, horizon=3), [3])], engine, spec, tmp_path / "run", run_id="r",
                         max_steps=3)
    assert not overflows and res.stats.get("engine_errors", 0) == 0 and res.stats.get("fallbacks", 0) == 0
    assert res.stats["context_cuts"] == 1 and len(cut_prompts) == 1 and cut_prompts[0] <= engine.max_seq_len
    plan = [x for x in read_jsonl(res.trace_path) if x["phase"] == "PLAN" and x["step"] == 2]
    assert [x["iteration"] for x in plan] == [0, 1] and plan[-1]["executed_action"] == "Move East"
    assert plan[-1]["messages"][-1]["content"].endswith(CONTEXT_CUT_NOTE)
