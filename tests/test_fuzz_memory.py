"""Seeded fuzzing of the memory layer (issue 22, "Must show"): thousands of random ops on a store, hundreds of random
specs through the structure loop's proposal check. Asserted: no uncaught exception, every refusal leaves the store
as it was, nothing written outside the memory root (or anywhere, for the check), the incumbent untouched."""
from __future__ import annotations

import copy
import json
import os
import random
import time
from pathlib import Path

import yaml

from automem_jax.loops.structure.validation import ProposalRejected, check_proposal
from automem_jax.loops.structure.workspace import Limits
from automem_jax.memory import MemoryStore, load_spec, validate_spec
from automem_jax.memory.spec import FILE_NAME_RE
from structure_traces import CRAFTER_V0

STORE_OPS = 5000
SPECS = 500


def _tree(root: Path) -> dict[str, object]:
    """Every entry under root (links not followed) with its bytes / link target."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            out[rel] = ("link", os.readlink(p)) if p.is_symlink() else ("dir",) if p.is_dir() else p.read_bytes()
    return out


WORDS = ["tree", "3,4", "-1,7", "wood", "Step 12: moved north", "stone|pickaxe", "  ", "note", "é木😀"]
HOSTILE = ["|", "\n", "\r", "\t", "\x00", "\x85", "\u2028", "\ud800", "\udcff", "{", "}", "/", "..", "~", "\\", "`",
           "'", '"']


def _text(rng: random.Random, n: int) -> str:
    """Random text of at most ~n chars: mostly words, else line breaks of every kind, NUL, lone surrogates, ..."""
    pool = WORDS if rng.random() < 0.6 else WORDS + HOSTILE
    k = rng.choice([0, 1, 3, 10, n // 8 + 1])
    return "".join(rng.choice(pool) for _ in range(rng.randint(0, k)))


FILE_ARGS = ["actions_log.txt", "map_notes.txt", "strategy.txt", "notes", "new.txt", "n2.txt", "log.txt",
             "../outside/secret.txt", "/etc/passwd", "~/.bashrc", "C:\\x.txt", "link.txt", "dirlink/x.txt", "subdir",
             ".hidden", "CON", "nul.txt", "a\nb.txt", "x" * 80, "memory/strategy.txt", "..", "", "  ", "\ud800.txt",
             "d\u00e9j\u00e0.txt", "a/../../b.txt", "actions_log.txt\x00.png"]


def test_fuzz_store_random_ops(tmp_path):
    d = yaml.safe_load(CRAFTER_V0.read_text())
    d["ops"] += [{"name": "UPSERT_MAP", "semantics": "upsert_keyed", "file": "map_notes.txt",
                  "key_pattern": r"-?\d+,-?\d+"},
                 {"name": "UPSERT", "semantics": "upsert_keyed"}, {"name": "DELETE", "semantics": "delete"}]
    d["memory"].update(max_total_bytes=16384, max_files=10, default_file_bytes=4096)
    for f in d["files"]:
        f["max_bytes"] = 4096
    d["files"][1].update(max_bytes=256, on_full="drop_oldest")
    d["files"][2].update(max_lines=5)
    spec = validate_spec(d)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret\n")
    store = MemoryStore(tmp_path / "mem", spec)
    os.symlink(outside / "secret.txt", store.root / "link.txt")
    os.symlink(outside, store.root / "dirlink")
    (store.root / "subdir").mkdir()
    planted = {"link.txt", "dirlink", "subdir"}
    names = [o.name for o in spec.ops] * 3 + ["NOPE", "search", "Upsert_Map", ""]
    rng = random.Random(22)
    before_all = _tree(tmp_path)
    t0 = time.monotonic()
    ok = refused = 0
    for i in range(STORE_OPS):
        op = rng.choice(names)
        fixed = spec.op(op) is not None and spec.op(op).file is not None
        if rng.random() < (0.7 if fixed else 0.1):
            args = _text(rng, 200)
        else:
            name = rng.choice(FILE_ARGS[:7] if rng.random() < 0.6 else FILE_ARGS)
            args = name + rng.choice(["|", "|", "", " | "]) + _text(rng, rng.choice([20, 600]))
        before = _tree(store.root)
        res = store.run(op, args)
        after = _tree(store.root)
        (res.text + res.header).encode("utf-8")  # the model's next prompt must be valid Unicode
        if res.ok:
            ok += 1
        else:
            refused += 1
            assert res.text.startswith("[ERROR:"), (op, args, res.text)
            assert after == before, (op, args, res.text)
        files = [n for n in after if n not in planted]
        assert all(FILE_NAME_RE.match(n) and isinstance(after[n], bytes) for n in files), files
        assert len(files) <= spec.max_files and sum(len(after[n]) for n in files) <= spec.max_total_bytes
        assert {n: after[n] for n in planted} == {n: before_all[f"mem/{n}"] for n in planted}
    assert _tree(outside) == {"secret.txt": b"top secret\n"}
    assert sorted(_tree(tmp_path)) == sorted({f"mem/{n}" for n in _tree(store.root)} | {"mem", "outside",
                                                                                         "outside/secret.txt"})
    assert ok > 500 and refused > 500 and time.monotonic() - t0 < 120
    print(f"fuzz: {STORE_OPS} store ops, {ok} ran, {refused} refused with an [ERROR], store and outside intact")


# ----------------------------------------------------------------------------------------------- specs
def _value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(12 if depth < 3 else 8)
    if kind == 0:
        return rng.choice([0, 1, -1, 7, 2**31, 2**64, 10**30, True, False, None])
    if kind == 1:
        return rng.choice([0.5, float("nan"), float("inf"), -1e300])
    if kind in (2, 3, 4):
        return rng.choice(["", "x", "LOG", "PLAN", "SEARCH", "APPEND", "upsert_keyed", "drop_oldest", "action",
                           "{observation}", "{nope}", "{", "}}", "notes.txt", "../x", "ACTION", "memory"])
    if kind == 5:
        return _text(rng, 50)
    if kind == 6:
        return "y" * rng.choice([100, 20_000, 300_000])
    if kind == 7:
        return [[[[[["deep"]]]]]]
    if kind == 8:
        shared = [_value(rng, depth + 1)] * 3  # dumped as an anchor and aliases
        return [shared] * 3
    if kind == 9:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["name", "semantics", "file", "ops", "template", "x", 1, None]): _value(rng, depth + 1)
            for _ in range(rng.randint(0, 3))}


def _paths(node, prefix=()):
    yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield from _paths(v, prefix + (k,))


def _mutate_dict(rng: random.Random, d: dict) -> None:
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(list(_paths(d))[1:])
        parent = d
        for k in path[:-1]:
            parent = parent[k]
        action = rng.randrange(4)
        if action == 0:
            parent[path[-1]] = _value(rng)
        elif action == 1 and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == 2 and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[path[-1]]))
        elif isinstance(parent, dict):
            parent[rng.choice(["extra", "UPSERT_X", "PLAN2", path[-1] + "_"])
                   if isinstance(path[-1], str) else "extra"] = _value(rng)


def _dump(d: dict) -> str:
    """YAML text of d: the C emitter where PyYAML has it (the fuzz is about loading, not dumping), the Python one
    for what the C one cannot write (lone surrogates, which it escapes)."""
    try:
        return yaml.dump(d, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False, allow_unicode=True)
    except UnicodeEncodeError:
        return yaml.safe_dump(d, sort_keys=False, allow_unicode=True)


def _plausible(rng: random.Random, d: dict) -> None:
    """An edit a proposer might make: valid or near-valid structure (so the later checks run too)."""
    phase = d["phases"][rng.choice(list(d["phases"]))]
    kind = rng.randrange(5)
    if kind == 0:
        d["ops"].append({"name": rng.choice(["UPSERT_MAP", "NOTE", "SEARCH"]), "semantics": rng.choice(
            ["upsert_keyed", "append", "search"]), "file": rng.choice([None, "map_notes.txt", "nope.txt"])})
        phase["ops"].append(d["ops"][-1]["name"])
    elif kind == 1:
        phase["ops"].append(rng.choice([o["name"] for o in d["ops"]]))
    elif kind == 2:
        phase["read_only"] = not phase.get("read_only", False)
    elif kind == 3:
        phase["max_iterations"] = rng.choice([0, 1, 5, 64, 65])
    else:
        phase["template"] = phase["template"].replace("{ops_help}", rng.choice(["", "{ops_help}", "SEARCH"]))


SNIPPETS = ["[" * 200, "{a: " * 80, "&x [*x]", "\tkey: v", "!!python/object:os.system {}", '"\\ud800"',
            "2024-13-45", "9" * 5000, "*undefined", "---\na: 1\n---\nb: 2", ": :", "- - -", "key: &a [1]\nk2: *a"]


def _mutate_text(rng: random.Random, text: str) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return text[:rng.randrange(len(text) + 1)]
    if kind == 1:
        at = rng.randrange(len(text) + 1)
        return text[:at] + rng.choice(SNIPPETS) + text[at:]
    if kind == 2:  # a top-level key written twice, or a bomb in a field
        lines = text.split("\n")
        top = [ln for ln in lines if ln and ln[0].isalpha() and ":" in ln]
        return text + "\n" + (rng.choice(top) if top else "x: 1") if rng.random() < 0.5 else text + (
            "\nbombs:\n" + "\n".join(f"  b{i}: &b{i} [" + ", ".join([f"*b{i - 1}" if i else '"x"'] * 9) + "]"
                                      for i in range(9)) + "\nguidance: *b8\n")
    chars = list(text)
    for _ in range(rng.randint(1, 5)):
        if chars:
            chars[rng.randrange(len(chars))] = rng.choice(["[", "]", "{", ":", "-", " ", "\n", "'", '"', "&", "*"])
    return "".join(chars)


def test_fuzz_random_specs_through_the_proposal_check(tmp_path):
    incumbent = load_spec(CRAFTER_V0)
    inc_yaml = incumbent.to_yaml()
    hist = tmp_path / "hist"
    hist.mkdir()
    (hist / "v0.yaml").write_text(inc_yaml)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "analysis.md").write_text("fuzz")
    base, same = incumbent.to_dict(), copy.deepcopy(incumbent)
    rng = random.Random(2207)
    stages: dict[str, int] = {}
    slowest = 0.0
    for i in range(SPECS):
        d = copy.deepcopy(base)
        if rng.random() < 0.4:
            _plausible(rng, d)
        if rng.random() < 0.6:
            _mutate_dict(rng, d)
        try:
            text = json.dumps(d) if rng.random() < 0.2 else _dump(d)  # JSON is YAML too
        except (ValueError, TypeError):  # a value JSON cannot hold: YAML it is
            text = _dump(d)
        if rng.random() < 0.5:
            text = _mutate_text(rng, text)
        (ws / "spec.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
        t0 = time.monotonic()
        try:
            cand, changes, _ = check_proposal(ws, incumbent, Limits())
        except ProposalRejected as e:
            stages[e.stage] = stages.get(e.stage, 0) + 1
            assert e.reason and len(e.reason) < 2000
        else:
            stages["accepted"] = stages.get("accepted", 0) + 1
            assert changes and load_spec(cand.to_yaml()).to_yaml() == cand.to_yaml()
            store = MemoryStore(tmp_path / "mem", cand)  # an accepted spec drives a store without error
            store.run(cand.ops[0].name, "x.txt|y")
        slowest = max(slowest, time.monotonic() - t0)
        assert incumbent == same
    assert incumbent.to_yaml() == inc_yaml and (hist / "v0.yaml").read_text() == inc_yaml
    assert sorted(p.name for p in ws.iterdir()) == ["analysis.md", "spec.yaml"]
    assert {p.name for p in tmp_path.iterdir()} <= {"hist", "mem", "ws"}
    assert sum(stages.values()) == SPECS and len(stages) >= 5 and stages.get("accepted"), stages
    assert slowest < 5, slowest
    print(f"fuzz: {SPECS} specs, outcomes {dict(sorted(stages.items()))}, slowest check {slowest:.2f}s")
