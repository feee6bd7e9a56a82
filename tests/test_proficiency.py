"""Selection + postprocess of memory decisions on synthetic traces (the agent's trace format)."""
import json
from pathlib import Path

import pytest

from automem_jax.engine.base import Completion
from automem_jax.loops.proficiency import SelectionConfig, postprocess, postprocess_text, select_decisions
from automem_jax.loops.proficiency.selection import write_selection

SYS = {"role": "system", "content": "You keep notes."}


def _rec(step, phase, it, completion, ops=(), results=None, reward=None, seed=1, episode=0):
    ops = [{"op": o, "args": a} for o, a in ops]
    return {"run_id": "r", "spec": "crafter_v0", "spec_version": 0, "adapter": None, "env": "crafter",
            "task": "crafter", "seed": seed, "episode": episode, "step": step, "phase": phase, "iteration": it,
            "messages": [SYS, {"role": "user", "content": f"seed {seed} obs step {step} {phase} {it}"}],
            "completion": completion, "ops": ops,
            "op_results": results if results is not None else [{"op": o["op"], "ok": True} for o in ops],
            "action": None, "reward": reward, "done": False, "progression": 0.0}


NOTE = "a.txt|Step 0 action 'Noop': nothing"


def _episode(seed):
    return [
        _rec(0, "PLAN", 0, "```\n<|READ|>strategy.txt<|END|>\n```\nthinking <|ACTION|>Noop<|END|>",
             [("READ", "strategy.txt")], reward=0.0, seed=seed),
        _rec(1, "LOG", 0, f"<|SEARCH|>a.txt|tree<|END|>\n<|APPEND|>{NOTE}<|END|> and some chatter",
             [("SEARCH", "a.txt|tree"), ("APPEND", NOTE)], seed=seed),
        _rec(1, "LOG", 1, "<|DONE|>", seed=seed),
        _rec(1, "PLAN", 0, "<|ACTION|>Do<|END|>", reward=1.0, seed=seed),
        _rec(2, "LOG", 0, f"<|APPEND|>{NOTE}<|END|><|DONE|> trailing", [("APPEND", NOTE)], seed=seed),
        _rec(2, "LOG", 1, "<|READ|>missing.txt<|END|>", [("READ", "missing.txt")],
             results=[{"op": "READ", "ok": False}], seed=seed),
        _rec(2, "PLAN", 0, "<|TAIL|>a.txt|3<|END|>\nACTION: Noop", [("TAIL", "a.txt|3")], reward=0.0, seed=seed),
        _rec(2, "ACTION", 0, "Noop", reward=0.0, seed=seed),  # not a memory phase: ignored
    ]


@pytest.fixture
def trace_dir(tmp_path):
    out = tmp_path / "traces"
    out.mkdir()
    summaries = []
    for seed, prog in ((1, 0.5), (2, 0.0)):
        path = out / f"crafter_seed{seed}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in _episode(seed)))
        summaries.append({"env": "crafter", "task": "crafter", "seed": seed, "progression": prog,
                          "total_reward": 1.0, "steps": 3, "status": "done", "trace_path": str(path)})
    (out / "episodes.jsonl").write_text("".join(json.dumps(s) + "\n" for s in summaries))
    return out


def test_counts_per_criterion(trace_dir, tmp_path):
    examples, report = select_decisions([trace_dir], SelectionConfig(top_quantile=0.5))
    assert report["episodes"] == 2 and report["memory_turns"] == 14
    assert report["failed"] == {"episode_outcome": 7, "reward_window": 0, "op_validity": 2, "redundant_write": 2,
                                "postprocess": 4, "judge": 0}
    assert report["funnel"] == {"episode_outcome": 7, "reward_window": 7, "op_validity": 6, "redundant_write": 5,
                                "postprocess": 3, "judge": 3}
    assert report["selected"] == 3 and report["by_phase"] == {"LOG": 1, "PLAN": 2}
    targets = [e["messages"][-1]["content"] for e in examples]
    # fences unwrapped and the action cut; tail after the last op trimmed; `ACTION:` line form cut too
    assert targets == ["<|READ|>strategy.txt<|END|>", f"<|SEARCH|>a.txt|tree<|END|>\n<|APPEND|>{NOTE}<|END|>",
                       "<|TAIL|>a.txt|3<|END|>"]
    assert all(e["meta"]["seed"] == 1 and e["messages"][-1]["role"] == "assistant" for e in examples)
    assert all("ACTION" not in t and "```" not in t for t in targets)
    out = write_selection(examples, report, tmp_path / "sel")
    assert json.loads((out / "report.json").read_text())["selected"] == 3
    assert len((out / "examples.jsonl").read_text().splitlines()) == 3


def test_reward_window_and_no_filters(trace_dir):
    _, report = select_decisions([trace_dir], {"top_quantile": None, "reward_k": 0,
                                               "require_valid_ops": False, "no_redundant_writes": False})
    # only step 1 earned a reward; of its turns only the LOG iteration 0 survives postprocess
    assert report["failed"]["reward_window"] == 8 and report["selected"] == 2
    _, report = select_decisions([trace_dir], {"top_quantile": None, "reward_k": 1,
                                               "require_valid_ops": False, "no_redundant_writes": False})
    assert report["failed"]["reward_window"] == 6  # k=1: step 0 now sees step 1's reward, step 2 still not
    assert report["selected"] == 4 and report["duplicates"] == 0

class YesForSearch:
    def __init__(self):
        self.prompts = []

    def generate(self, requests):
        self.prompts += [r.messages[0]["content"] for r in requests]
        return [Completion(text="Yes." if "SEARCH" in r.messages[0]["content"] else "no", token_ids=[],
                           finish_reason="stop") for r in requests]


def test_llm_judge(trace_dir):
    judge = YesForSearch()
    examples, report = select_decisions([trace_dir], SelectionConfig(top_quantile=0.5, judge_engine=judge))
    assert len(judge.prompts) == 3 and all("yes or no" in p for p in judge.prompts)
    assert report["failed"]["judge"] == 2 and report["funnel"]["judge"] == 1 and report["selected"] == 1
    assert "SEARCH" in examples[0]["messages"][-1]["content"]


def test_single_file_and_errors(trace_dir, tmp_path):
    f = trace_dir / "crafter_seed1.jsonl"
    f.write_text(f.read_text() + '{"torn": ')  # a killed writer's partial last line is skipped
    _, report = select_decisions([f], {"top_quantile": None})
    assert report["records"] == 8 and report["trace_files"] == 1
    bad = tmp_path / "bad.jsonl"
    rec = _rec(0, "LOG", 0, "<|DONE|>")
    del rec["completion"]
    bad.write_text(json.dumps(rec) + "\n")
    with pytest.raises(ValueError, match="completion"):
        select_decisions([bad])
    with pytest.raises(FileNotFoundError):
        select_decisions([tmp_path / "nope"])
    with pytest.raises(ValueError, match="top_quantile"):
        SelectionConfig(top_quantile=1.5)
    with pytest.raises(ValueError, match="unknown fields"):
        SelectionConfig.from_dict({"bogus": 1})


def test_postprocess_rules():
    assert postprocess_text("<|DONE|>", "LOG") is None
    assert postprocess_text("just prose", "PLAN") is None
    assert postprocess_text("<|READ|>f<|END|> <|ACTION|>north<|END|>", "PLAN") == "<|READ|>f<|END|>"
    # an op after the action is never learned; DONE is kept and ends the LOG target
    assert postprocess_text("<ACTION>north</ACTION> <|READ|>f<|END|>", "PLAN") is None
    assert postprocess_text("<|append|>f|x<|end|>\n<|DONE|>\nbye", "LOG") == "<|append|>f|x<|end|>\n<|DONE|>"
    assert postprocess_text("```text\n<|WRITE|>f|a\nb<|END}\n```", "LOG") == "<|WRITE|>f|a\nb<|END}"
    ex = {"messages": [SYS, {"role": "assistant", "content": "<|READ|>f<|END|>x"}], "meta": {"phase": "PLAN"}}
    out = postprocess(ex)
    assert out["messages"][-1]["content"] == "<|READ|>f<|END|>" and ex["messages"][-1]["content"].endswith("x")
    with pytest.raises(ValueError, match="assistant"):
        postprocess({"messages": [SYS], "meta": {"phase": "LOG"}})


def _write_episodes(out, progressions, ensure_ascii=True):
    out.mkdir(exist_ok=True)
    summaries = []
    for seed, prog in progressions.items():
        path = out / f"crafter_seed{seed}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=ensure_ascii) + "\n" for r in _episode(seed)))
        summaries.append({"env": "crafter", "task": "crafter", "seed": seed, "progression": prog,
                          "total_reward": 0.0, "steps": 3, "status": "done", "trace_path": str(path)})
    (out / "episodes.jsonl").write_text("".join(json.dumps(s) + "\n" for s in summaries))
    return out


def test_outcome_ties_at_the_floor(tmp_path):
    # most short Crafter episodes score 0: the median is the floor, and ">= median" would keep every episode
    out = _write_episodes(tmp_path / "a", {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.5})
    examples, report = select_decisions([out], {"top_quantile": 0.5})
    assert report["progression_thresholds"] == {"crafter/crafter": "> 0.0"}
    assert {e["meta"]["seed"] for e in examples} == {4}
    # ties above the floor still pass; a group with one value has no better half: every episode passes
    out = _write_episodes(tmp_path / "b", {1: 0.0, 2: 0.5, 3: 0.5, 4: 0.5})
    examples, report = select_decisions([out], {"top_quantile": 0.5})
    assert report["progression_thresholds"] == {"crafter/crafter": 0.5}
    assert {e["meta"]["seed"] for e in examples} == {2, 3, 4}
    out = _write_episodes(tmp_path / "c", {1: 0.0, 2: 0.0})
    examples, _ = select_decisions([out], {"top_quantile": 0.5})
    assert {e["meta"]["seed"] for e in examples} == {1, 2}


def test_max_examples_is_a_seeded_sample(tmp_path):
    out = _write_episodes(tmp_path / "a", {s: 0.5 for s in range(1, 21)})
    full, _ = select_decisions([out], {"top_quantile": None})
    a, _ = select_decisions([out], {"top_quantile": None, "max_examples": 10, "seed": 1})
    b, _ = select_decisions([out], {"top_quantile": None, "max_examples": 10, "seed": 1})
    c, _ = select_decisions([out], {"top_quantile": None, "max_examples": 10, "seed": 2})
    assert len(full) == 60 and len(a) == 10 and a == b and a != c
    assert a != full[:10] or c != full[:10]  # not the first files' decisions
    assert all(x in full for x in a)


def test_raw_line_separators_in_traces(tmp_path):
    # json.dumps(ensure_ascii=False) writes U+2028 / U+0085 raw; str.splitlines would cut the record there
    out = _write_episodes(tmp_path / "a", {1: 0.5})
    f = out / "crafter_seed1.jsonl"
    recs = [json.loads(line) for line in f.read_text().split("\n") if line]
    recs[0]["messages"][1]["content"] += " odd\u2028text\x85here"
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    assert len(f.read_text(encoding="utf-8").splitlines()) > len(recs)  # what broke the old reader
    _, report = select_decisions([out], {"top_quantile": None})
    assert report["records"] == 8
    f.write_text(f.read_text() + "{bad}\n" + json.dumps(recs[0]) + "\n")
    with pytest.raises(ValueError, match=r"crafter_seed1.jsonl:9: not valid JSON"):
        select_decisions([out], {"top_quantile": None})
