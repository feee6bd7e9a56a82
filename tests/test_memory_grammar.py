"""memory/grammar.py: a phase's reply grammar and the parser agree, both ways; bad specs are refused by name."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from automem_jax.engine.grammar import TokenVocab, compile_regex
from automem_jax.envs.crafter_text import ACTIONS as CRAFTER_ACTIONS
from automem_jax.memory import load_spec
from automem_jax.memory.grammar import GrammarSpecError, op_args_regex, phase_grammars, phase_regex, reply_ok
from automem_jax.memory.parser import parse_reply
from automem_jax.memory.spec import OpSpec, SpecError

SPECS = Path(__file__).resolve().parents[1] / "configs" / "specs"
BYTES = TokenVocab(tuple(bytes([b]) for b in range(256)), (256,), 257)
NETHACKISH = ["north", "far east", "eat", "a", "Z", "0", "00", "99", "esc"]


def _sample(automaton, rng, budget: int) -> str:
    """A random string of the regex's language: a walk over its byte automaton, '<' favoured so tags appear, forced
    closed by the distances as the budget runs out."""
    s, out = 0, []
    weights = np.where(np.arange(257) == ord("<"), 40.0, np.where((np.arange(257) >= 32) & (np.arange(257) < 127),
                                                                   1.0, 0.05))
    for left in range(budget, 0, -1):
        nxt = automaton.next[s][automaton.token_class[:256]]
        ok = (nxt >= 0) & (automaton.dist[np.maximum(nxt, 0)] <= left - 1)
        if automaton.accepting[s] and (rng.random() < 0.15 or not ok.any()):
            break
        p = np.where(ok, weights[:256], 0.0)
        b = int(rng.choice(256, p=p / p.sum()))
        out.append(b)
        s = int(nxt[b])
    assert automaton.accepting[s]
    return bytes(out).decode("utf-8")


@pytest.mark.parametrize("spec_name,actions", [("crafter_v0", CRAFTER_ACTIONS), ("nethack_v0", NETHACKISH)])
def test_every_string_the_grammar_accepts_parses(spec_name, actions):
    spec = load_spec(SPECS / f"{spec_name}.yaml")
    rng = np.random.default_rng(0)
    for phase in spec.phases:
        for final in (False, True):
            regex = phase_regex(spec, phase, actions, final=final)
            automaton = compile_regex(regex, BYTES)
            kinds = set()
            for _ in range(100):
                text = _sample(automaton, rng, budget=int(rng.integers(30, 160)))
                assert re.fullmatch(regex, text), text
                assert reply_ok(text, spec, phase, actions), (phase.name, text)
                parsed = parse_reply(text, spec, phase)
                kinds.update(o.name for o in parsed.ops)
                closed = parsed.done or parsed.action is not None
                assert closed or not final, text  # the last iteration's reply always closes the phase
                kinds.add("closed" if closed else "open")
            assert len(kinds) >= 4 and "closed" in kinds, kinds  # several ops and the closing tag are reached


def _canonical_reply(spec, phase, actions, rng) -> str:
    """A reply the parser reads as intended: prose, ops with arguments from the store's grammar, the closing tag."""
    words = ["tree", "Step 3 action 'Do': got wood", "water north", "x|y", "é ünïcode"]
    files = [f.name for f in spec.files]
    parts = [str(rng.choice(["", "\n", " \n"]))]
    for _ in range(int(rng.integers(0 if rng.random() < 0.3 else 1, 4))):
        op = spec.op(str(rng.choice(phase.ops)))
        f = str(rng.choice(files))
        args = {"search": f"{f}|{rng.choice(words)}", "count": f"{f}|{rng.choice(words)}", "read": f,
                "tail": str(rng.choice([f, f"{f}|5", f"{f}|120"])), "append": f"{f}|{rng.choice(words)}",
                "write": f"{f}|{rng.choice(words)}", "create": str(rng.choice([f, "new_notes.txt"])),
                "delete": f, "upsert_keyed": f"{f}|3,4|a wall"}[op.semantics]
        parts.append(f"<|{op.name}|>{args}<|{spec.end_tag}|>" + str(rng.choice(["", "\n", " then ", "\nPlan -- go "
                                                                                                   "west\n\n"])))
    if phase.ends_on == "action":
        if len(parts) == 1 or rng.random() < 0.6:
            parts.append(f"<|{spec.action_tag}|>{rng.choice(actions)}<|{spec.end_tag}|>")
    elif len(parts) == 1 or rng.random() < 0.6:
        parts.append(f"<|{spec.done_tag}|>")
    return "".join(parts)


@pytest.mark.parametrize("spec_name", ["crafter_v0", "crafter_quickstart", "minihack_v0"])
def test_parser_valid_replies_match_the_grammar(spec_name):
    spec = load_spec(SPECS / f"{spec_name}.yaml")
    rng = np.random.default_rng(1)
    for phase in spec.phases:
        regex = phase_regex(spec, phase, CRAFTER_ACTIONS)
        final = phase_regex(spec, phase, CRAFTER_ACTIONS, final=True)
        automaton = compile_regex(regex, BYTES)
        for _ in range(200):
            text = _canonical_reply(spec, phase, CRAFTER_ACTIONS, rng)
            assert reply_ok(text, spec, phase, CRAFTER_ACTIONS), text
            assert re.fullmatch(regex, text), (phase.name, text)
            s = automaton.walk(list(text.encode()))  # the engine's automaton agrees with Python's re
            assert s >= 0 and automaton.accepting[s], text
            closed = re.search(rf"<\|({spec.done_tag}|{spec.action_tag})\|>", text) is not None
            assert bool(re.fullmatch(final, text)) == closed, text
    # what the grammar leaves out: tags in prose, prose actions in PLAN, an unknown action, a bad file for READ
    plan, log = spec.phase("PLAN"), spec.phase("LOG")
    for text, phase in [("see <b>", log), ("ACTION: Noop", plan), ("<|ACTION|>Fly<|END|>", plan),
                        ("Let me look.<|DONE|>", log), ("<|READ|>strategy.txt<|END|>ACTION: Do", plan),
                        ("<|READ|>secret.txt<|END|>", log), ("<|SEARCH|> map_notes.txt|x<|END|>", log), ("", log)]:
        assert not re.fullmatch(phase_regex(spec, phase, CRAFTER_ACTIONS), text), text


def test_new_semantics_and_bad_key_patterns_are_refused_by_name():
    spec = load_spec(SPECS / "crafter_v0.yaml")
    with pytest.raises(GrammarSpecError, match="ops.FROB.semantics.*no argument grammar"):
        op_args_regex(OpSpec(name="FROB", semantics="frobnicate"), spec)
    upsert = OpSpec(name="UPSERT_MAP", semantics="upsert_keyed", file="map_notes.txt", key_pattern=r"\d+,\d+")
    assert re.fullmatch(op_args_regex(upsert, spec), "3,14|a tree")
    assert not re.fullmatch(op_args_regex(upsert, spec), "x,1|a tree")
    bad = dataclasses.replace(upsert, key_pattern=r"(?=\d)\d+")  # Python accepts it, the automaton cannot
    log = dataclasses.replace(spec.phase("LOG"), ops=spec.phase("LOG").ops + ("UPSERT_MAP",), constrained=True)
    spec = dataclasses.replace(spec, ops=spec.ops + (bad,), phases=(log, spec.phase("PLAN")))
    with pytest.raises(SpecError, match="phases.LOG.constrained.*does not compile"):
        phase_grammars(spec, CRAFTER_ACTIONS)
    with pytest.raises(SpecError, match="phases.PLAN.*action ' Noop'"):  # the parser strips the space
        phase_regex(spec, spec.phase("PLAN"), [" Noop"])


def test_constrained_switch_round_trips_and_stays_off_in_paper_specs():
    for name in ("crafter_v0", "minihack_v0", "nethack_v0"):
        spec = load_spec(SPECS / f"{name}.yaml")
        assert not any(p.constrained for p in spec.phases) and phase_grammars(spec, CRAFTER_ACTIONS) == {}
    quick = load_spec(SPECS / "crafter_quickstart.yaml")
    assert all(p.constrained for p in quick.phases)
    assert load_spec(quick.to_yaml()) == quick and "constrained: true" in quick.to_yaml()
    assert set(phase_grammars(quick, CRAFTER_ACTIONS)) == {(p, f) for p in ("LOG", "PLAN") for f in (False, True)}
    with pytest.raises(SpecError, match="phases.LOG.constrained"):
        load_spec(quick.to_yaml().replace("constrained: true", "constrained: 3", 1))


def test_constrain_all_covers_every_phase_and_the_naive_agents_action():
    from automem_jax.agent.rollout import naive_action
    from automem_jax.memory.grammar import constrain_all
    v5 = load_spec(SPECS / "crafter_v5.yaml")
    assert not any(p.constrained for p in v5.phases)
    forced = constrain_all(v5)
    assert all(p.constrained for p in forced.phases) and not forced.history_constrained
    assert {k for k, _ in phase_grammars(forced, CRAFTER_ACTIONS)} == {p.name for p in v5.phases}
    base = load_spec(SPECS / "nomemory.yaml")
    assert phase_grammars(base, CRAFTER_ACTIONS) == {}
    grammars = phase_grammars(constrain_all(base), CRAFTER_ACTIONS)
    regex = grammars[("HISTORY", False)]
    for name in CRAFTER_ACTIONS:
        assert re.fullmatch(regex, " " + name) and naive_action(" " + name) == name
    assert not re.fullmatch(regex, "move left") and not re.fullmatch(regex, "Noop please")
    # the switch round-trips through YAML, written only when on
    again = load_spec_text(constrain_all(base).to_yaml())
    assert again.history_constrained and "history_constrained" not in base.to_yaml()


def load_spec_text(text: str):
    from automem_jax.memory.spec import validate_spec
    import yaml
    return validate_spec(yaml.safe_load(text))
