"""The structure loop and the spec language: the reference every proposer gets, the heuristic's runtime mutations,
and the paper configs' LLM proposer."""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import yaml

from automem_jax.agent.runtime import StepRuntime
from automem_jax.loops.structure import heuristic
from automem_jax.loops.structure.validation import check_rules, structural_changes
from automem_jax.loops.structure.workspace import Limits, build_workspace, op_registry
from automem_jax.memory import load_spec
from automem_jax.memory.runtime_spec import FIELD_KINDS, REPAIR_BUILTINS
from automem_jax.memory.spec_language import EXAMPLE, spec_language_markdown
from test_spec_runtime import spec_dict

ROOT = Path(__file__).resolve().parents[1]


def test_reference_example_loads_and_docs_hold_the_reference_verbatim():
    d = spec_dict()
    d["phases"]["LOG"]["template"] += "\n{notices}"
    d["runtime"] = yaml.safe_load(EXAMPLE)["runtime"]
    spec = load_spec(d)
    assert [f.name for f in spec.runtime.fields][:3] == ["health", "prev_health", "inv"]
    ref = spec_language_markdown()
    assert ref in (ROOT / "docs" / "SPECS.md").read_text(encoding="utf-8")
    for key in list(FIELD_KINDS) + list(REPAIR_BUILTINS) + ["notices", "kept_files", "prune", "auto_ops", "gate",
                                                            "repair", "prompt_overrides", "line_format"]:
        assert f"`{key}" in ref, key


def test_workspace_carries_the_language_and_the_shipped_examples(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "episodes.jsonl").write_text("")
    inc = load_spec(spec_dict()).to_yaml()
    build_workspace(tmp_path / "ws", incumbent_yaml=inc, spec_env="crafter", trace_dirs=[run], history_records=[],
                    history_md="")
    ws = tmp_path / "ws"
    assert (ws / "spec_language.md").read_text() == spec_language_markdown()
    assert sorted(p.name for p in (ws / "examples").iterdir()) == ["crafter_v5.yaml", "minihack_v4.yaml",
                                                                   "nethack_v2.yaml"]
    assert "spec_language.md" in (ws / "TASK.md").read_text() and "runtime:" in (ws / "rules.md").read_text()


AGG = {"episodes": 2, "total_steps": 100, "unchanged_obs_steps": 20, "max_unchanged_obs_streak": 5,
       "invalid_actions": 10, "max_zero_reward_streak": 90, "mean_progression": 0.1,
       "op_counts": {n: 1 for n in ("SEARCH", "READ", "TAIL", "COUNT", "APPEND", "WRITE", "CREATE")}}


def _base_spec() -> dict:
    d = spec_dict()
    del d["runtime"]
    d["phases"]["PLAN"]["template"] = "{observation}\n{ops_help}"
    d["phases"]["LOG"]["template"] = "{observation}\n{ops_help}"
    return load_spec(d).to_dict()


def test_heuristic_adds_a_gate_then_notices_from_failure_statistics():
    base, reg = _base_spec(), op_registry()
    v0 = load_spec(base)
    new, analysis, keys = heuristic.propose(copy.deepcopy(base), AGG, reg)
    assert keys[0] == "gate:invalid_actions" and "10% of steps committed an invalid action" in analysis
    spec = load_spec(new)
    check_rules(spec, Limits())
    assert "runtime.gate: 0 -> 1 entries" in structural_changes(v0, spec)
    rt = StepRuntime(spec, "crafter", "t", ["Noop", "Move West", "Do"])
    rt.begin_step(step=0, text="", status="", observation="", last_action=None, last_raw=None, last_valid=True,
                  reward=0.0, changed=False, unchanged=0)
    assert rt.repair("'do.'") == "Do" and rt.repair("move west now") == "move west now"
    assert rt.gate("Fly") == "ACTION REJECTED: 'Fly' is not an action of this game. Write one exactly as the " \
                             "instructions list it."
    assert rt.gate("Do") is None

    new2, _, keys2 = heuristic.propose(copy.deepcopy(base), AGG, reg, tried={"gate:invalid_actions"})
    assert keys2[0] == "notice:no_effect_repeats"
    spec2 = load_spec(new2)
    assert spec2.phase("PLAN").template.endswith("{notices}\n")
    new3, _, keys3 = heuristic.propose(copy.deepcopy(base), AGG, reg,
                                       tried={"gate:invalid_actions", "notice:no_effect_repeats"})
    assert keys3[0] == "notice:stagnation"
    assert load_spec(new3).runtime.notices[0].rules[0].when.text == "no_reward >= 30"


def test_paper_configs_propose_with_the_served_model(caplog):
    from automem_jax.orchestrate.real_parts import proposer_config, structure_config
    import importlib.util

    spec = importlib.util.spec_from_file_location("crafter_cfg", ROOT / "configs" / "crafter.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    p = structure_config(c)["proposer"]
    assert (p["kind"], p["base_url"], p["model"]) == ("openai", "http://127.0.0.1:30000/v1", c.model)
    c.engine.backend = "jax"
    with caplog.at_level(logging.WARNING):
        assert proposer_config(c)["kind"] == "heuristic"
    assert "falling back to the offline heuristic" in caplog.text
    json.dumps(p)  # plain data for StructureConfig.coerce
