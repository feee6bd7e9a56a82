"""MemorySpec validation, the tag parser, and MemoryStore safety + op semantics."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

from automem_jax.memory import MemoryStore, SpecError, load_spec, parse_reply, spec_diff, validate_spec

SPECS = Path(__file__).resolve().parents[1] / "configs" / "specs"


@pytest.fixture(scope="module")
def crafter_dict():
    return yaml.safe_load((SPECS / "crafter_v0.yaml").read_text())


def _tree(root: Path) -> dict[str, object]:
    """Every entry under root (recursively, links not followed) with its bytes / link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", p.read_bytes())
    return out


# ----------------------------------------------------------------------------------------------- spec
@pytest.mark.parametrize("name", ["crafter_v0", "minihack_v0", "nethack_v0", "nomemory"])
def test_shipped_specs_load_and_roundtrip(name):
    spec = load_spec(SPECS / f"{name}.yaml")
    assert load_spec(spec.to_yaml()) == spec
    assert spec.to_yaml() == (SPECS / f"{name}.yaml").read_text()  # shipped files are canonical
    assert spec_diff(spec, spec) == ""


def test_v0_specs_mirror_automem():
    crafter = load_spec(SPECS / "crafter_v0.yaml")
    assert [p.name for p in crafter.phases] == ["LOG", "PLAN"]
    assert crafter.phase("LOG").skip_first_step and crafter.phase("PLAN").read_only
    assert crafter.phase("PLAN").ops == ("SEARCH", "READ", "TAIL", "COUNT")
    assert [f.name for f in crafter.files] == ["map_notes.txt", "crafting_progress.txt", "survival_log.txt",
                                              "actions_log.txt", "strategy.txt"]
    nle = load_spec(SPECS / "nethack_v0.yaml")
    mh = load_spec(SPECS / "minihack_v0.yaml")
    assert nle.file("game_rules.txt").content and nle.file("nethack_symbols.txt").content
    assert nle.file("monster_encounters.txt") is not None and mh.file("monster_encounters.txt") is None
    # AutoMem's FALLBACK_ACTIONS: "noop" for Crafter, which BALROG's exact check then runs as an invalid Noop
    assert crafter.fallback_action("crafter", "Noop") == "noop" and nle.fallback_action("nethack", "esc") == "search"
    assert crafter.action_repair == nle.action_repair == mh.action_repair == ("two_step",)  # repair_combined_action
    assert "SEARCH/READ/TAIL/COUNT" in crafter.commit_prompt  # AutoMem's PLAN_HANDOFF: the base model may read
    nomemory = load_spec(SPECS / "nomemory.yaml")
    assert nomemory.mode == "history" and nomemory.action_repair == ()  # BALROG's naive agent: exact names


@pytest.mark.parametrize("repairs, error", [
    (["casefold"], "action_repair[0]: unknown repair 'casefold'"),
    (["case", "case"], "action_repair[1]: 'case' is listed twice"),
    ("case", "action_repair: expected list"),
])
def test_action_repair_field_errors(repairs, error):
    d = yaml.safe_load((SPECS / "crafter_v0.yaml").read_text())
    d["action_repair"] = repairs
    with pytest.raises(SpecError) as e:
        validate_spec(d)
    assert str(e.value).startswith(error)
    d["action_repair"] = ["case", "whitespace"]
    assert validate_spec(d).action_repair == ("case", "whitespace")


def test_spec_diff_shows_changed_lines(crafter_dict):
    a = validate_spec(crafter_dict)
    d = copy.deepcopy(crafter_dict)
    d["version"], d["parent"] = 1, 0
    d["phases"]["LOG"]["max_iterations"] = 3
    diff = spec_diff(a, validate_spec(d), "v0", "v1")
    assert "-version: 0" in diff and "+version: 1" in diff and "+    max_iterations: 3" in diff


def _bad(d, path, value):
    d = copy.deepcopy(d)
    keys = path.split(".")
    cur = d
    for k in keys[:-1]:
        cur = cur[int(k)] if isinstance(cur, list) else cur[k]
    last = keys[-1]
    if value is KeyError:
        del cur[last]
    elif isinstance(cur, list):
        cur[int(last)] = value
    else:
        cur[last] = value
    return d


@pytest.mark.parametrize("path,value,expect", [
    ("name", KeyError, "name: missing required field"),
    ("name", "bad name!", "name: bad spec name"),
    ("version", "one", "version: expected int"),
    ("version", -1, "version: -1 is outside"),
    ("parent", 5, "parent: parent 5 must be an earlier version"),
    ("env", "doom", "env: unknown env family"),
    ("mode", "chat", "mode: unknown mode"),
    ("action_tag", "act ion", "action_tag: bad tag"),
    ("done_tag", "ACTION", "action_tag: action_tag, done_tag and end_tag must differ"),
    ("bogus", 1, "bogus: unknown field"),
    ("memory.max_total_bytes", 10, "memory.max_total_bytes: 10 is outside"),
    ("memory.persistent", "yes", "memory.persistent: expected bool"),
    ("memory.default_file_bytes", 2 << 20, "memory.default_file_bytes: 2097152 > max_total_bytes"),
    ("files.0.name", "../x.txt", "files[0].name: bad file name"),
    ("files.1.name", "map_notes.txt", "files[1].name: duplicate file"),
    ("files.0.on_full", "explode", "files[0].on_full: unknown policy"),
    ("files.0.max_bytes", 8, "files[0].max_bytes: 8 is outside"),
    ("files.0.content", "x" * 70000, "files[0].content: initial content is 70000 bytes"),
    ("ops.0.semantics", "grep", "ops[0].semantics: unknown semantics 'grep'"),
    ("ops.0.name", "search", "ops[0].name: bad op name"),
    ("ops.1.name", "SEARCH", "ops[1].name: duplicate op"),
    ("ops.0.file", "nope.txt", "ops[0].file: fixed file 'nope.txt' is not in files"),
    ("ops.0.max_results", 0, "ops[0].max_results: 0 is outside"),
    ("phases.LOG.ops", ["SEARCH", "FOO"], "phases.LOG.ops[1]: unknown op 'FOO'; known ops: SEARCH"),
    ("phases.PLAN.ops", ["SEARCH", "APPEND"], "phases.PLAN.ops[1]: op 'APPEND' (append) mutates memory"),
    ("phases.PLAN.ops", ["ACTION"], "phases.PLAN.ops[0]: 'ACTION' is a tag"),
    ("phases.LOG.template", "Hi {observation} {secret}", "phases.LOG.template: unknown placeholder {secret}"),
    ("phases.LOG.template", "Hi {observation!r}", "phases.LOG.template: placeholder {observation} has a format"),
    ("phases.LOG.template", "Hi {", "phases.LOG.template: bad template"),
    ("phases.PLAN.continue_template", "{observation}", "phases.PLAN.continue_template: unknown placeholder"),
    ("phases.LOG.max_iterations", 0, "phases.LOG.max_iterations: 0 is outside"),
    ("phases.PLAN.ends_on", "done", "phases.PLAN.ends_on: the last phase must end on the action"),
    ("phases.LOG.ends_on", "action", "phases.LOG.ends_on: only the last phase may commit"),
    ("phases.LOG.ends_on", "never", "phases.LOG.ends_on: unknown 'never'"),
    ("phases.LOG.colour", "red", "phases.LOG.colour: unknown field"),
    ("phases", {}, "phases: memory mode needs at least one phase"),
    ("fallback_actions.doom", "x", "fallback_actions.doom: bad entry"),
    ("history_length", 5000, "history_length: 5000 is outside"),
])
def test_spec_errors_name_the_field(crafter_dict, path, value, expect):
    with pytest.raises(SpecError) as e:
        validate_spec(_bad(crafter_dict, path, value))
    assert str(e.value).startswith(expect), str(e.value)


def test_spec_error_kinds_for_history_mode_and_upsert(crafter_dict):
    with pytest.raises(SpecError, match=r"^phases: history mode has no phases"):
        validate_spec(_bad(crafter_dict, "mode", "history"))
    d = _bad(_bad(crafter_dict, "mode", "history"), "phases", {})
    with pytest.raises(SpecError, match=r"^history_template: history mode needs"):
        validate_spec(d)
    d = copy.deepcopy(crafter_dict)
    d["ops"].append({"name": "UPSERT_MAP", "semantics": "upsert_keyed", "file": "map_notes.txt",
                     "key_grammar": "x,y"})
    with pytest.raises(SpecError, match=r"^ops\[7\]\.key_grammar: 'x,y' has no '\|'"):
        validate_spec(d)
    d["ops"][-1]["key_grammar"], d["ops"][-1]["key_pattern"] = "x,y|desc", "(["
    with pytest.raises(SpecError, match=r"^ops\[7\]\.key_pattern: bad regex"):
        validate_spec(d)
    with pytest.raises(SpecError, match=r"^<yaml>: not valid YAML"):
        load_spec("a: [1,\n b")
    with pytest.raises(SpecError, match=r"not found"):
        load_spec("missing_spec.yaml")


# ----------------------------------------------------------------------------------------------- parser
def test_parser_tolerances(crafter_dict):
    spec = validate_spec(crafter_dict)
    log, plan = spec.phase("LOG"), spec.phase("PLAN")
    reply = ("Let me check.\n```\n<|SEARCH|>actions_log.txt|tree<|END|>\n<APPEND>map_notes.txt|tree north<END}\n"
             "<|append|>a.txt|lower<|END>\n<|FOO|>x<|END|>\n<|READ|>oops <|DONE|>\n```")
    p = parse_reply(reply, spec, log)
    assert [(o.name, o.args, o.error is None) for o in p.ops] == [
        ("SEARCH", "actions_log.txt|tree", True), ("APPEND", "map_notes.txt|tree north", True),
        ("APPEND", "a.txt|lower", True), ("FOO", "x", False), ("READ", "oops", False)]
    assert p.done and p.action is None
    assert "unknown op FOO" in p.errors[0] and "READ has no closing" in p.errors[1]
    p = parse_reply("<|APPEND|>a|b<|END|><|SEARCH|>a|b<|END|>\nACTION: Move East\n", spec, plan)
    assert p.ops[0].error.startswith("APPEND is not allowed in PLAN (read-only phase)")
    assert p.ops[1].error is None and p.action == "Move East"
    assert parse_reply("<ACTION>Do</ACTION>", spec, plan).action == "Do"
    assert parse_reply("<|ACTION|> `Noop` <|END}", spec, plan).action == "`Noop`"  # stripped only (AutoMem)
    assert parse_reply("no tags here", spec, plan).action is None
    assert parse_reply("<|ACTION|>" + "x" * 80 + "<|END|>", spec, plan).action is None


# ----------------------------------------------------------------------------------------------- store
@pytest.fixture()
def store(tmp_path, crafter_dict):
    d = copy.deepcopy(crafter_dict)
    d["ops"] += [{"name": "UPSERT_MAP", "semantics": "upsert_keyed", "file": "map_notes.txt",
                  "key_grammar": "x,y|description", "key_pattern": r"-?\d+,-?\d+"},
                 {"name": "DELETE", "semantics": "delete"}]
    d["ops"][0]["max_results"] = 3  # SEARCH
    d["ops"][2].update(max_lines=4, default_lines=4)  # TAIL
    d["files"][0]["content"] = "seed line\n"
    d["files"][1].update(max_bytes=64, on_full="drop_oldest")  # crafting_progress.txt
    d["files"][2].update(max_lines=2)  # survival_log.txt
    d["memory"]["max_files"] = 7
    spec = validate_spec(d)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret\n")
    return MemoryStore(tmp_path / "mem", spec)


ESCAPES = [
    ("READ", "../outside/secret.txt"), ("READ", "../../etc/passwd"), ("READ", "/etc/passwd"),
    ("READ", "~/.bashrc"), ("READ", "..\\outside\\secret.txt"), ("READ", "C:\\Windows\\win.ini"),
    ("READ", "actions_log.txt\x00.png"), ("READ", "..."), ("READ", ".."), ("READ", "."),
    ("APPEND", "../outside/secret.txt|pwned"), ("WRITE", "/tmp/evil.txt|pwned"),
    ("WRITE", "../../evil.txt|pwned"), ("CREATE", "../evil.txt"), ("CREATE", ".hidden"),
    ("CREATE", "CON"), ("CREATE", "nul.txt"), ("WRITE", "a\nb.txt|x"), ("WRITE", "x" * 80 + "|long name"),
    ("WRITE", "a/../../b.txt|x"), ("SEARCH", "/etc/passwd|root"), ("TAIL", "../outside/secret.txt|5"),
    ("COUNT", "../outside/secret.txt|secret"), ("DELETE", "../outside/secret.txt"),
    ("READ", "link.txt"), ("APPEND", "link.txt|pwned"), ("WRITE", "link.txt|pwned"), ("CREATE", "link.txt"),
    ("DELETE", "link.txt"), ("READ", "dirlink"), ("WRITE", "dirlink/x.txt|pwned"), ("READ", "subdir"),
    ("WRITE", "subdir|x"),
]


def test_path_escapes_refused_and_store_unchanged(store, tmp_path):
    os.symlink(tmp_path / "outside" / "secret.txt", store.root / "link.txt")
    os.symlink(tmp_path / "outside", store.root / "dirlink")
    (store.root / "subdir").mkdir()
    before_mem, before_out = _tree(store.root), _tree(tmp_path / "outside")
    assert len(ESCAPES) >= 20
    for op, args in ESCAPES:
        res = store.run(op, args)
        assert not res.ok and res.text.startswith("[ERROR:"), (op, args, res.text)
        assert "top secret" not in res.text
    assert _tree(store.root) == before_mem
    assert _tree(tmp_path / "outside") == before_out
    assert not Path("/tmp/evil.txt").exists()


def test_basename_reduction_and_txt_tolerance(store):
    assert store.apply("APPEND", "memory/actions_log.txt|one") == "── APPEND to actions_log.txt ──\n[Appended to actions_log.txt]"
    assert store.apply("READ", "actions_log") == "── READ actions_log.txt ──\none\n"


def test_op_semantics_and_formats(store):
    root = store.root
    assert store.apply("READ", "strategy.txt") == "── READ strategy.txt ──\n[FILE IS EMPTY]"
    assert store.apply("SEARCH", "strategy.txt|x").endswith("[FILE IS EMPTY — no matches]")
    assert store.apply("COUNT", "strategy.txt|x").endswith("[0 matches for 'x' — file is empty]")
    for i in range(5):
        store.apply("APPEND", f"actions_log.txt|Step {i} action 'Do': Tree hit")
    assert store.apply("SEARCH", "actions_log.txt|tree") == (
        "── SEARCH actions_log.txt for 'tree' ──\n[Showing last 3 of 5 matches for 'tree']\n"
        "Step 2 action 'Do': Tree hit\nStep 3 action 'Do': Tree hit\nStep 4 action 'Do': Tree hit")
    assert store.apply("SEARCH", "actions_log.txt|zombie").endswith("[No lines matching 'zombie']")
    assert store.apply("COUNT", "actions_log.txt|TREE").endswith("[5 line(s) matching 'TREE']")
    assert store.apply("TAIL", "actions_log.txt|2") == (
        "── TAIL actions_log.txt (last 2 lines) ──\nStep 3 action 'Do': Tree hit\nStep 4 action 'Do': Tree hit")
    assert store.apply("TAIL", "actions_log.txt|99").startswith("── TAIL actions_log.txt (last 4 lines) ──")
    assert store.apply("TAIL", "actions_log.txt").startswith("── TAIL actions_log.txt (last 4 lines) ──")
    assert "needs a line count" in store.apply("TAIL", "actions_log.txt|many")
    assert store.apply("CREATE", "actions_log.txt").endswith("[File 'actions_log.txt' already exists]")
    assert store.apply("CREATE", "new.txt").endswith("[Created new.txt]")
    assert store.apply("WRITE", "new.txt|  hello\nworld\n\n").endswith("[Wrote to new.txt]")
    assert (root / "new.txt").read_bytes() == b"hello\nworld\n"
    assert store.apply("READ", "missing.txt").endswith("[ERROR: file 'missing.txt' does not exist]")
    assert "needs file|keyword" in store.apply("SEARCH", "actions_log.txt")
    assert store.apply("DELETE", "new.txt").endswith("[Deleted new.txt]") and not (root / "new.txt").exists()
    assert store.file_index().splitlines()[0] == "  - actions_log.txt (5 lines)"
    assert [ln.strip() for ln in store.file_index().splitlines()] == [
        "- actions_log.txt (5 lines)", "- crafting_progress.txt (0 lines)", "- map_notes.txt (1 lines)",
        "- strategy.txt (0 lines)", "- survival_log.txt (0 lines)"]


def test_upsert_replaces_by_key(store):
    assert store.apply("UPSERT_MAP", "3,4|tree").endswith("[Added '3,4' in map_notes.txt]")
    store.apply("UPSERT_MAP", "5,6|water")
    assert store.apply("UPSERT_MAP", " 3,4 |stone, mined|twice").endswith("[Updated '3,4' in map_notes.txt]")
    assert (store.root / "map_notes.txt").read_text() == "seed line\n3,4|stone, mined|twice\n5,6|water\n"
    assert "does not match" in store.apply("UPSERT_MAP", "north|x")
    assert "needs x,y|description" in store.apply("UPSERT_MAP", "3,4")
    assert (store.root / "map_notes.txt").read_text() == "seed line\n3,4|stone, mined|twice\n5,6|water\n"


def test_caps(store):
    # survival_log.txt: max_lines=2, refuse.
    store.apply("APPEND", "survival_log.txt|a")
    store.apply("APPEND", "survival_log.txt|b")
    assert "over its 2-line cap" in store.apply("APPEND", "survival_log.txt|c")
    assert (store.root / "survival_log.txt").read_text() == "a\nb\n"
    # crafting_progress.txt: 64 bytes, drop_oldest keeps the newest lines.
    for i in range(10):
        store.apply("APPEND", f"crafting_progress.txt|entry number {i:02d}")
    text = (store.root / "crafting_progress.txt").read_text()
    assert len(text.encode()) <= 64 and text.endswith("entry number 09\n") and "entry number 00" not in text
    assert "64-byte cap" in store.apply("WRITE", "crafting_progress.txt|" + "z" * 100)
    # per-file default cap for model-created files, and the max_files cap (7).
    assert "65536-byte cap" in store.apply("WRITE", "big.txt|" + "y" * 70000)
    store.apply("CREATE", "f1.txt")
    store.apply("CREATE", "f2.txt")
    assert "holds 7 files" in store.apply("CREATE", "f3.txt")
    assert not (store.root / "f3.txt").exists()
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]  # no temp files left


def test_total_cap(tmp_path, crafter_dict):
    d = copy.deepcopy(crafter_dict)
    d["memory"].update(max_total_bytes=2048, default_file_bytes=2048)
    for f in d["files"]:
        f["max_bytes"] = 2048
    store = MemoryStore(tmp_path / "m", validate_spec(d))
    assert store.apply("WRITE", "map_notes.txt|" + "a" * 1500).endswith("[Wrote to map_notes.txt]")
    assert "2048-byte total cap" in store.apply("WRITE", "strategy.txt|" + "b" * 1000)
    assert store.total_bytes() == 1501


def test_persistent_store_carries_files(tmp_path, crafter_dict):
    spec = validate_spec(_bad(crafter_dict, "memory.persistent", True))
    s1 = MemoryStore(tmp_path / "ep1", spec, persistent_dir=tmp_path / "persist")
    s1.apply("APPEND", "strategy.txt|find trees first")
    s1.save_persistent()
    s2 = MemoryStore(tmp_path / "ep2", spec, persistent_dir=tmp_path / "persist")
    assert s2.snapshot()["strategy.txt"] == "find trees first\n"
    s3 = MemoryStore(tmp_path / "ep3", spec)  # no persistent dir: the spec's initial files
    assert s3.snapshot()["strategy.txt"] == ""
