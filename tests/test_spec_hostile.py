"""Hostile runtime sections (untrusted proposer output) are refused at load with the field named; the structure
loop's validation rejects them and leaves the incumbent untouched."""
from __future__ import annotations

import copy
import time

import pytest
import yaml

from automem_jax.loops.structure.validation import ProposalRejected, check_proposal
from automem_jax.loops.structure.workspace import Limits
from automem_jax.memory import SpecError, load_spec
from test_spec_runtime import RUNTIME, spec_dict


def _refused(runtime_edit, path: str, words: str) -> None:
    rt = copy.deepcopy(RUNTIME)
    runtime_edit(rt)
    with pytest.raises(SpecError) as e:
        load_spec(spec_dict(rt))
    assert e.value.path == path, str(e.value)
    assert words in str(e.value), str(e.value)


def test_catastrophic_regex_runs_in_linear_time():
    rt = copy.deepcopy(RUNTIME)
    rt["fields"].append({"name": "boom", "kind": "regex", "pattern": "(a+)+$", "type": "bool"})
    spec = load_spec(spec_dict(rt))
    rx = spec.runtime.field("boom").regex
    t0 = time.perf_counter()
    assert rx.search("a" * 50_000 + "b") is None
    assert time.perf_counter() - t0 < 0.5  # Python's re needs exponential time on this input


@pytest.mark.parametrize("pattern,words", [(r"(a)\1", "backreferences"), ("(?=x)y", "lookaround"),
                                           ("(", "missing )"), ("a" * 600, "> 500")])
def test_regexes_re2_cannot_bound_are_refused(pattern, words):
    _refused(lambda rt: rt["fields"].append({"name": "x", "kind": "regex", "pattern": pattern}),
             "runtime.fields[4].pattern", words)


def test_unknown_fields_functions_and_python_are_refused():
    _refused(lambda rt: rt["notices"][0]["rules"][0].update(when="hp <= 2"),
             "runtime.notices[0].rules[0].when", "unknown field 'hp'")
    _refused(lambda rt: rt["notices"][0]["rules"][0].update(text="HP {hp}"),
             "runtime.notices[0].rules[0].text", "unknown field 'hp'")
    _refused(lambda rt: rt["gate"]["rules"][0].update(when="__import__('os').system('x')"),
             "runtime.gate.rules[0].when", "unknown function '__import__'")
    _refused(lambda rt: rt["notices"][0]["rules"][0].update(when="cell; import os"),
             "runtime.notices[0].rules[0].when", "unexpected character ';'")
    rt = copy.deepcopy(RUNTIME)  # dots are map keys, never attributes: this reads key '__class__' -> null
    rt["notices"][0]["rules"][0]["when"] = "cell.__class__"
    assert load_spec(spec_dict(rt)).runtime.notices[0].rules[0].when.eval({"cell": 3}) is None
    # `action` exists only for the gate, `wrote` only for `after` runtime ops
    _refused(lambda rt: rt["notices"][0]["rules"][0].update(when="action == 'Do'"),
             "runtime.notices[0].rules[0].when", "unknown field 'action'")
    _refused(lambda rt: rt["auto_ops"][0].update(when="not wrote"), "runtime.auto_ops[0].when",
             "unknown field 'wrote'")
    _refused(lambda rt: rt["fields"].append({"name": "p", "kind": "previous", "of": "nope"}),
             "runtime.fields[4].of", "unknown field 'nope'")


def test_cycles_are_refused_naming_the_fields():
    def edit(rt):
        rt["fields"] += [{"name": "a", "kind": "expr", "expr": "b + 1"}, {"name": "b", "kind": "expr", "expr": "a"}]
    _refused(edit, "runtime.fields[4]", "cycle: a -> b -> a")
    _refused(lambda rt: rt["fields"].append({"name": "s", "kind": "streak", "when": "s > 1"}),
             "runtime.fields[4]", "cycle: s -> s")
    rt = copy.deepcopy(RUNTIME)  # last step's value of itself is fine
    rt["fields"].append({"name": "total", "kind": "expr", "expr": "prev_total + 1", "default": 0})
    rt["fields"].append({"name": "prev_total", "kind": "previous", "of": "total", "default": 0})
    assert load_spec(spec_dict(rt)).runtime.order[-2:] == ("prev_total", "total")


def test_huge_tables_and_expressions_are_refused():
    big = [{"when": f"cell == {i}", "text": "x"} for i in range(100_000)]
    _refused(lambda rt: rt["notices"][0].update(rules=big), "runtime.notices[0].rules", "100000 rules > 200")
    _refused(lambda rt: rt["notices"][0]["rules"][0].update(when=" or ".join(["1"] * 200)),
             "runtime.notices[0].rules[0].when", "more than 300 parts")
    for deep in ("(" * 50 + "1" + ")" * 50, "-" * 1999 + "1", "not " * 400 + "true"):  # no parser recursion blow-up
        _refused(lambda rt, w=deep: rt["notices"][0]["rules"][0].update(when=w),
                 "runtime.notices[0].rules[0].when", "deeper than 40")
    _refused(lambda rt: rt["repair"].append({"map": {f"a{i}": "Do" for i in range(600)}}),
             "runtime.repair[3].map", "> 500")
    _refused(lambda rt: rt["fields"].extend({"name": f"f{i}", "kind": "expr", "expr": "1"} for i in range(70)),
             "runtime.fields", "> 64")


def test_prune_policies_that_delete_everything_or_nothing_are_refused():
    _refused(lambda rt: rt["prune"][0].update(keep_last=0), "runtime.prune[0].keep_last", "delete every line")
    _refused(lambda rt: rt["prune"][0].update(keep_last=5, over_lines=5), "runtime.prune[0].keep_last",
             "never removes")
    _refused(lambda rt: rt["prune"][0].update(file="missing.txt"), "runtime.prune[0].file", "not declared")


def test_references_to_phases_files_ops_and_placeholders():
    _refused(lambda rt: rt["notices"][0].update(phases=["ACT"]), "runtime.notices[0].phases[0]",
             "unknown phase 'ACT'")
    _refused(lambda rt: rt["kept_files"][0].update(file="../etc/passwd"), "runtime.kept_files[0].file",
             "not declared")
    _refused(lambda rt: rt["auto_ops"][0].update(op="APPEND"), "runtime.auto_ops[0].op", "changes memory")
    _refused(lambda rt: rt["notices"][0].update(phases=["LOG"]), "phases.LOG.template", "no {notices}")
    _refused(lambda rt: rt["prompt_overrides"].append({"phase": "PLAN", "when": "true", "template": "{x}"})
             if "prompt_overrides" in rt else rt.update(prompt_overrides=[{"phase": "PLAN", "when": "true",
                                                                           "template": "{x}"}]),
             "runtime.prompt_overrides[0].template", "unknown placeholder")
    _refused(lambda rt: rt.update(typo=1), "runtime.typo", "unknown field")
    _refused(lambda rt: rt["fields"].append({"name": "step", "kind": "expr", "expr": "1"}),
             "runtime.fields[4].name", "already defined")


def test_structure_loop_rejects_a_hostile_proposal_and_keeps_the_incumbent(tmp_path):
    incumbent = load_spec(spec_dict())
    inc_path = tmp_path / "incumbent.yaml"
    inc_path.write_text(incumbent.to_yaml())
    before = inc_path.read_bytes()
    ws = tmp_path / "ws"
    ws.mkdir()
    bad = spec_dict()
    bad["runtime"]["fields"].append({"name": "a", "kind": "expr", "expr": "a"})
    (ws / "spec.yaml").write_text(yaml.safe_dump(bad))
    (ws / "analysis.md").write_text("a cycle")
    with pytest.raises(ProposalRejected) as e:
        check_proposal(ws, incumbent, Limits())
    assert e.value.stage == "schema" and "runtime.fields[4]" in e.value.reason and "cycle" in e.value.reason
    assert inc_path.read_bytes() == before
