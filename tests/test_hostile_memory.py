"""Hostile and sloppy input to the memory layer (issue 22): the spec loader's bounds, proposals that fail as recorded
rejections, op text the store cannot hold, single-line upserts, a linear action parser, concurrent writers and the
persistent-memory merge."""
from __future__ import annotations

import copy
import json
import re
import threading
import time

import pytest
import yaml

from automem_jax.loops.structure import loop as loop_mod
from automem_jax.memory import MemoryStore, SpecError, load_spec, validate_spec
from automem_jax.memory.parser import MAX_ACTION_CHARS, _clean_action, _end, extract_action, strip_action
from automem_jax.memory.persistent import merge_file
from automem_jax.memory.yaml_safe import MAX_DEPTH, load_yaml
from structure_traces import CRAFTER_V0, write_rollout
from test_structure import make_loop, script

SPEC_TEXT = CRAFTER_V0.read_text()


def _bomb() -> str:
    """~500 bytes of YAML: nested aliases that expand to 9**9 strings."""
    lines = ['x0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return "\nbombs:\n" + "\n".join("  " + ln for ln in lines) + "\nexploded: *a8\n"


def _spec(spec_dict: dict, persistent: bool = False):
    d = copy.deepcopy(spec_dict)
    d["ops"] += [{"name": "UPSERT_MAP", "semantics": "upsert_keyed", "file": "map_notes.txt"},
                 {"name": "DELETE", "semantics": "delete"}]
    d["memory"]["persistent"] = persistent
    return validate_spec(d)


@pytest.fixture(scope="module")
def spec_dict():
    return yaml.safe_load(SPEC_TEXT)


# ----------------------------------------------------------------------------------------------- spec loader
@pytest.mark.parametrize("text, names", [
    ("memory: [1, 2]", "memory: expected Mapping, got list [1, 2]"),
    ("phases: [1, 2]", "phases: expected Mapping, got list"),
    ("files: {a: 1}", "files: expected list, got dict"),
    ("parent: " + "9" * 5000, "a value cannot be built"),  # past Python's int-string limit
    ("parent: 2024-13-45", "a value cannot be built"),
    ("guidance: \"\\ud800\"", "lone surrogate"),
    ("guidance: " + "[" * 5000 + "]" * 5000, f"nesting deeper than {MAX_DEPTH} levels"),
    ("guidance: &g [*g]", "contains itself"),
    ("name: a\nname: b", "duplicate key 'name' at line 2 (first at line 1)"),
])
def test_loader_refuses_with_the_field_named(text, names):
    t0 = time.monotonic()
    with pytest.raises(SpecError) as e:
        load_spec(text + "\nversion: 1\n" if text.startswith("name:") else "name: x\nversion: 1\n" + text)
    assert names in str(e.value) and len(str(e.value)) < 1000
    assert time.monotonic() - t0 < 5


def test_alias_bomb_duplicate_nested_key_and_merge_keys(spec_dict):
    t0 = time.monotonic()
    with pytest.raises(SpecError, match="expands to more than"):
        load_spec(SPEC_TEXT + _bomb())
    assert time.monotonic() - t0 < 2
    with pytest.raises(SpecError, match=r"duplicate key 'max_files' at line \d+"):
        load_spec(SPEC_TEXT.replace("  max_files:", "  max_files: 9\n  max_files:", 1))
    # a bomb the loader lets through (below the bounds) still cannot make an error message slow or long
    d = copy.deepcopy(spec_dict)
    d["guidance"] = x = ["x"] * 9
    for _ in range(9):
        d["guidance"] = x = [x] * 9
    with pytest.raises(SpecError, match="guidance: expected str, got list") as e:
        validate_spec(d)
    assert len(str(e.value)) < 300
    assert load_yaml("base: &b {k: 1, j: 2}\nx:\n  <<: *b\n  k: 3\n") == {"base": {"k": 1, "j": 2},
                                                                         "x": {"k": 3, "j": 2}}


def test_phase_ops_must_be_names(spec_dict):
    d = copy.deepcopy(spec_dict)
    d["phases"]["LOG"]["ops"] = [["SEARCH"]]
    with pytest.raises(SpecError, match=r"phases.LOG.ops\[0\]: expected an op name, got list"):
        validate_spec(d)
    d["phases"] = {("a", "b"): {}}
    with pytest.raises(SpecError, match="bad phase name"):
        validate_spec(d)


# ----------------------------------------------------------------------------------------------- proposals
def test_hostile_proposals_are_recorded_rejections(tmp_path):
    """A proposer's sloppy spec, a deep or exploding one, or an unreadable meta.json: each attempt is a recorded
    rejection with its reason, and the loop goes on to the next attempt."""
    texts = ["memory: [1, 2]\n" + SPEC_TEXT.split("\nmemory:")[0], "ops: " + "[" * 5000, SPEC_TEXT + _bomb(),
             SPEC_TEXT + "\nphases: [1]\n"]
    body = f"""
        import json, os
        texts = {texts!r}
        n = len(os.listdir(os.path.join({str(tmp_path)!r}, 'hist', 'attempts'))) - 1
        open('spec.yaml', 'w').write(texts[n] if n < len(texts) else open('spec.yaml').read() + '\\n')
        open('analysis.md', 'w').write('x')
        if n == len(texts):
            open('meta.json', 'w').write('{{not json')
    """
    loop, score = make_loop(tmp_path, script(tmp_path, body), attempts=len(texts) + 1)
    res = loop.run(load_spec(CRAFTER_V0), [write_rollout(tmp_path / "roll")])
    recs = json.loads((tmp_path / "hist/history.json").read_text())["attempts"]
    assert not res.accepted and len(recs) == len(texts) + 1 and score.calls == []
    assert [r["stage"] for r in recs] == ["schema", "yaml", "yaml", "yaml", "check"], recs
    assert "memory: expected Mapping" in recs[0]["reason"] and "nesting deeper" in recs[1]["reason"]
    assert "expands to more than" in recs[2]["reason"] and "duplicate key 'phases'" in recs[3]["reason"]
    assert "JSONDecodeError" in recs[4]["reason"]
    assert (tmp_path / "hist/specs/v0.yaml").read_text() == load_spec(CRAFTER_V0).to_yaml()


class _Killed(BaseException):
    """Stands in for a kill (or a hang cut short) while the loop checks a proposal."""


def test_rerun_after_a_kill_mid_check_rejects_instead_of_repeating(tmp_path, monkeypatch):
    runs = tmp_path / "runs.txt"
    body = f"""
        open({str(runs)!r}, 'a').write('x')
        open('spec.yaml', 'a').write('\\n')
        open('analysis.md', 'w').write('x')
    """
    inc, roll = load_spec(CRAFTER_V0), write_rollout(tmp_path / "roll")
    loop, _ = make_loop(tmp_path, script(tmp_path, body))

    def killed(*a, **kw):
        raise _Killed()

    monkeypatch.setattr(loop_mod, "check_proposal", killed)
    with pytest.raises(_Killed):
        loop.run(inc, [roll])
    monkeypatch.undo()
    res = make_loop(tmp_path, script(tmp_path, body))[0].run(inc, [roll])
    rec = res.attempts[0]
    assert not res.accepted and rec["stage"] == "check" and "did not finish in an earlier run" in rec["reason"]
    assert runs.read_text() == "x"  # the proposer was not run again


# ----------------------------------------------------------------------------------------------- store
@pytest.fixture()
def store(tmp_path, spec_dict):
    return MemoryStore(tmp_path / "mem", _spec(spec_dict))


def test_store_refuses_surrogates_and_keeps_foreign_bytes(store):
    res = store.run("APPEND", "x.txt|\ud800")
    assert not res.ok and res.text.startswith("[ERROR:") and "lone surrogate" in res.text
    assert not (store.root / "x.txt").exists()
    assert "unknown op" in store.run("\udfff", "x").text
    raw = b"caf\xe9 \xff\xfe old\n"  # Latin-1 and stray bytes: not UTF-8
    (store.root / "map_notes.txt").write_bytes(raw)
    assert store.run("APPEND", "map_notes.txt|new line").ok
    assert store.run("UPSERT_MAP", "3,4|tree").ok and store.run("UPSERT_MAP", "3,4|stone").ok
    assert (store.root / "map_notes.txt").read_bytes() == raw + b"new line\n3,4|stone\n"
    assert "caf\ufffd" in store.apply("READ", "map_notes.txt")  # the model sees replacement characters


@pytest.mark.parametrize("entry", ["3,4|tree\ninjected|line", "3,4\n5,6|tree", "3,4|a\rb", "3,4|a\u2028b",
                                   "3,4|a\x85b"])
def test_upsert_entries_are_one_line(store, entry):
    before = (store.root / "map_notes.txt").read_bytes()
    res = store.run("UPSERT_MAP", entry)
    assert not res.ok and "must be one line" in res.text
    assert (store.root / "map_notes.txt").read_bytes() == before


def test_concurrent_writers_lose_nothing(tmp_path, store):
    """8 threads x 100 appends, half through a second store on the same root: every line lands."""
    other = MemoryStore(store.root, store.spec, reset=False)

    def work(k: int) -> None:
        s = store if k % 2 else other
        for i in range(100):
            assert s.run("APPEND", f"log.txt|{k}-{i}").ok

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = (store.root / "log.txt").read_text().splitlines()
    assert sorted(lines) == sorted(f"{k}-{i}" for k in range(8) for i in range(100))


def test_persistent_memory_merges_concurrent_episodes(tmp_path, spec_dict):
    spec, keep = _spec(spec_dict, persistent=True), tmp_path / "persist"
    keep.mkdir()
    (keep / "strategy.txt").write_bytes(b"seed \xff\n")
    (keep / "map_notes.txt").write_text("old map\n")
    a, b = (MemoryStore(tmp_path / n, spec, persistent_dir=keep) for n in ("a", "b"))  # both start from keep
    a.apply("APPEND", "strategy.txt|from a")
    a.apply("WRITE", "map_notes.txt|rewritten by a")
    b.apply("APPEND", "strategy.txt|from b")
    b.apply("APPEND", "strategy.txt|from b")
    b.apply("CREATE", "b_only.txt")
    a.save_persistent()
    b.save_persistent()
    assert (keep / "strategy.txt").read_bytes() == b"seed \xff\nfrom a\nfrom b\nfrom b\n"
    assert (keep / "map_notes.txt").read_text() == "rewritten by a\n"  # b did not touch it: a's rewrite stands
    assert (keep / "b_only.txt").exists() and not [p for p in keep.iterdir() if p.name.startswith(".")]
    c = MemoryStore(tmp_path / "c", spec, persistent_dir=keep)
    c.apply("DELETE", "b_only.txt")
    c.save_persistent()
    assert not (keep / "b_only.txt").exists()


@pytest.mark.parametrize("base, ours, theirs, want", [
    ("a\n", "a\n", "a\nt\n", "a\nt\n"),  # we changed nothing: theirs
    ("a\n", "a\no\n", "a\n", "a\no\n"),  # they changed nothing: ours
    ("a\n", "a\no\n", "a\nt\n", "a\nt\no\n"),  # both appended: theirs + our added lines
    ("a\nb\n", "b\no\n", "a\nb\nt", "a\nb\nt\no\n"),  # our removal of a yields to their change
    ("a\n", None, "a\nt\n", "a\nt\n"),  # we deleted, they changed: kept
    ("a\n", "a\no\n", None, "a\no\n"),  # they deleted, we changed: kept
    (None, "o\n", "t\n", "t\no\n"),  # both created it
    ("x\nx\n", "x\nx\nx\n", "x\nx\ny\n", "x\nx\ny\nx\n"),  # repeated lines are counted
])
def test_merge_file_policy(base, ours, theirs, want):
    assert merge_file(base, ours, theirs) == want


# ----------------------------------------------------------------------------------------------- parser
def _old_extract_action(text: str, spec) -> str | None:
    """The backtracking-regex version this replaced (quadratic), as the reference on short replies."""
    t = re.escape(spec.action_tag)
    for pat in (rf"<\|?{t}\|?>(.*?){_end(spec)}", rf"<{t}>(.*?)</{t}>",
                rf"(?:^|\n)\s*{t}:\s*([^\n]{{1,{MAX_ACTION_CHARS}}})\s*(?:\n|$)"):
        m = re.search(pat, text, re.DOTALL | re.IGNORECASE)
        if m:
            cand = _clean_action(m.group(1))
            if cand and len(cand) < MAX_ACTION_CHARS:
                return cand
    return None


def _assert_linear(fn, spec) -> None:
    """Inputs that made the backtracking regexes quadratic (1 MB of newlines took over a minute) parse in < 1 s."""
    for text in ("\n" * (1 << 20), "<|ACTION|>" * 100_000, "<ACTION>" * 100_000,
                 "ACTION:" + " " * (1 << 16) + "x" * 61 + "\n", "ACTION:\n  \n" * 100_000):
        t0 = time.monotonic()
        fn(text, spec)
        assert time.monotonic() - t0 < 1.0, text[:20]


def test_extract_action_is_linear_and_agrees_with_the_regex_version():
    import random
    spec = load_spec(CRAFTER_V0)
    _assert_linear(extract_action, spec)
    assert extract_action("\n" * 1000 + "ACTION: move_left\n", spec) == "move_left"
    frags = ["<|ACTION|>", "<|END|>", "<ACTION>", "</ACTION>", "ACTION:", "action: ", "\n", " ", " \n", "Noop",
             "x" * 30, "<|END}", "<ACTION|>", "\t", "do", '"place table".']
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice(frags) for _ in range(rng.randint(0, 12)))
        if text.lower().count("action:") <= 1:  # two `ACTION:` lines: the new one may take the second
            assert extract_action(text, spec) == _old_extract_action(text, spec), repr(text)


def _old_strip_action(text: str, spec) -> str:
    """The backtracking-regex version strip_action replaced (quadratic), as the reference on short replies."""
    t = re.escape(spec.action_tag)
    for pat in (rf"<\|?{t}\|?>.*?{_end(spec)}", rf"<{t}>.*?</{t}>",
                rf"(?:^|\n)\s*{t}:\s*[^\n]{{1,{MAX_ACTION_CHARS}}}\s*(?=\n|$)"):
        text = re.sub(pat, "", text, flags=re.DOTALL | re.IGNORECASE)
    return text.strip()


def test_strip_action_is_linear_and_agrees_with_the_regex_version():
    import random
    spec = load_spec(CRAFTER_V0)
    _assert_linear(strip_action, spec)
    assert strip_action("SEARCH first\n<|ACTION|>Noop<|END|> then\nACTION: Do\nbye", spec) == "SEARCH first\n then\nbye"
    frags = ["<|ACTION|>", "<|END|>", "<ACTION>", "</ACTION>", "ACTION:", "\n", " ", "Noop", "x" * 30, "<|END}",
             "do", "<|READ|>a.txt<|END|>"]
    rng = random.Random(1)
    for _ in range(3000):
        text = "".join(rng.choice(frags) for _ in range(rng.randint(0, 12)))
        if text.lower().count("action:") == 0:  # ACTION: lines: the regex version also eats blank lines around
            assert strip_action(text, spec) == _old_strip_action(text, spec), repr(text)
