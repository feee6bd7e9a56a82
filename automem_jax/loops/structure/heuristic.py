"""Offline proposer: programmatic spec mutations chosen by the trace statistics.

Each mutation looks at the evidence in `stats.json` (aggregate over episodes) and returns a scored candidate edit of
the spec dict. The best-scoring one whose key was not already tried (rejected earlier for this lineage, read from
history.json and previous/meta.json) is applied, so retries explore different changes. Every mutation is
structural (ops, files or phases change); reordering prompt sections is only added on top of one.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

Spec = dict[str, Any]
# memory/action_repair.py repairs that only undo formatting slips (never change which action was meant)
COSMETIC_REPAIRS = ("whitespace", "strip_quotes", "trailing_period", "case")


@dataclasses.dataclass(frozen=True)
class Mutation:
    key: str  # identifies the edit across attempts, e.g. "upsert:map_notes.txt"
    score: float  # strength of the evidence (higher first)
    summary: str  # one line for analysis.md
    evidence: str
    apply: Callable[[Spec], None]


# ----- spec helpers (spec dicts as MemorySpec.to_dict writes them) -----
def _ops(spec: Spec) -> list[dict]:
    return spec.setdefault("ops", [])


def _files(spec: Spec) -> list[dict]:
    return spec.setdefault("files", [])


def _op(spec: Spec, name: str) -> dict | None:
    return next((o for o in _ops(spec) if o.get("name") == name), None)


def _file(spec: Spec, name: str) -> dict | None:
    return next((f for f in _files(spec) if f.get("name") == name), None)


def _phase_names(spec: Spec) -> list[str]:
    return list((spec.get("phases") or {}).keys())


def _mutating(reg: Mapping[str, Any], op: Mapping[str, Any]) -> bool:
    return bool(reg["semantics"].get(op.get("semantics"), {}).get("mutating"))


def _op_name_for(prefix: str, file_name: str, spec: Spec) -> str:
    stem = re.sub(r"[^A-Z0-9_]", "_", Path(file_name).stem.upper()).strip("_") or "FILE"
    name = f"{prefix}_{stem}"[:32]
    i = 2
    while _op(spec, name) is not None:
        name = f"{prefix}_{stem}"[:29] + f"_{i}"
        i += 1
    return name


def _mention(spec: Spec, phase: str, line: str) -> None:
    """Add a usage line to a phase template (templates must name the ops they allow, unless they use {ops_help})."""
    p = spec["phases"][phase]
    p["template"] = p["template"].rstrip("\n") + "\n" + line.replace("{", "{{").replace("}", "}}") + "\n"


def _writer_phases(spec: Spec, reg: Mapping[str, Any]) -> list[str]:
    names = _phase_names(spec)
    return [n for n in names[:-1] if any(_mutating(reg, _op(spec, o) or {}) for o in spec["phases"][n]["ops"])] \
        or names[:1]


def _declared(spec: Spec, fname: str) -> str | None:
    """The spec's file name for a file name seen in the traces (the agent may drop or add an extension)."""
    if _file(spec, fname):
        return fname
    stem = Path(fname).stem
    return next((f["name"] for f in _files(spec) if Path(f["name"]).stem == stem), None)


# ----- mutations -----
def _upsert(spec: Spec, agg: Mapping[str, Any], reg: Mapping[str, Any]) -> list[Mutation]:
    out = []
    writes, dups = agg.get("writes_per_file", {}), agg.get("near_duplicate_writes_per_file", {})
    keyed = {o.get("file") for o in _ops(spec) if o.get("semantics") == "upsert_keyed"}
    for fname, n_dup in dups.items():
        n = writes.get(fname, 0)
        declared = _declared(spec, fname)
        if n_dup < 3 or n == 0 or n_dup / n < 0.2 or declared in keyed or not declared:
            continue

        def apply(s: Spec, f: str = declared) -> None:
            name = _op_name_for("UPSERT", f, s)
            _ops(s).append({"name": name, "semantics": "upsert_keyed", "file": f, "key_grammar": "key|text",
                            "description": f"replace the entry of {f} whose key (text before the first '|') "
                                           f"matches, else add it"})
            for ph in _writer_phases(s, reg):
                s["phases"][ph]["ops"].append(name)
                _mention(s, ph, f"Use <|{name}|>key|text<|END|> to update the entry for a key in {f} instead of "
                                f"appending a near-duplicate line.")

        out.append(Mutation(f"upsert:{declared}", 2.0 + n_dup / n,
                            f"add a keyed-upsert op bound to {declared}",
                            f"{n_dup} of {n} writes to {fname} were near-duplicates of recent entries", apply))
    return out


def _cap_or_split(spec: Spec, agg: Mapping[str, Any], reg: Mapping[str, Any]) -> list[Mutation]:
    out = []
    sizes = agg.get("memory_file_bytes", {})
    written = agg.get("bytes_written_per_file", {})
    episodes = max(int(agg.get("episodes", 1)), 1)
    for f in _files(spec):
        name = f["name"]
        peak = max(sizes.get(name, {}).get("max", 0), written.get(name, 0) / episodes)
        cap = int(f.get("max_bytes") or 65536)
        frac = peak / cap
        content_lines = len(str(f.get("content") or "").splitlines())
        if (frac < 0.25 and peak < 4096) or content_lines > 60:  # a cap below the initial content is invalid
            continue
        if not f.get("max_lines") or f.get("on_full") != "drop_oldest":
            def apply(s: Spec, n: str = name) -> None:
                ff = _file(s, n)
                ff["max_lines"] = min(int(ff.get("max_lines") or 10**9), 100)
                ff["on_full"] = "drop_oldest"

            out.append(Mutation(f"cap:{name}", 1.5 + frac, f"cap {name} at 100 lines, dropping the oldest",
                                f"{name} reached {int(peak)} bytes ({frac:.0%} of its {cap}-byte cap)", apply))
        summary_name = f"{Path(name).stem}_summary{Path(name).suffix or '.txt'}"
        if not _file(spec, summary_name):
            def apply_split(s: Spec, n: str = name, sn: str = summary_name) -> None:
                _files(s).append({"name": sn, "purpose": f"condensed, current summary of {n} (rewritten, not "
                                                         f"appended)", "content": "", "max_bytes": 4096,
                                  "max_lines": 40, "on_full": "refuse"})
                op_name = _op_name_for("SUMMARIZE", n, s)
                _ops(s).append({"name": op_name, "semantics": "write", "file": sn,
                                "description": f"overwrite {sn} with a short summary of what matters in {n}"})
                ff = _file(s, n)
                ff["max_lines"] = min(int(ff.get("max_lines") or 10**9), 60)
                ff["on_full"] = "drop_oldest"
                for ph in _writer_phases(s, reg):
                    s["phases"][ph]["ops"].append(op_name)
                    _mention(s, ph, f"When {n} gets long, use <|{op_name}|>summary<|END|> to keep {sn} a short "
                                    f"summary; old lines of {n} are dropped.")

            out.append(Mutation(f"split:{name}", 1.0 + frac, f"split {name} into a bounded log + {summary_name}",
                                f"{name} grows to {int(peak)} bytes", apply_split))
    return out


def _drop_unused(spec: Spec, agg: Mapping[str, Any], reg: Mapping[str, Any]) -> list[Mutation]:
    if int(agg.get("total_steps", 0)) < 5:
        return []  # too little evidence that an op is useless
    counts = agg.get("op_counts", {})
    unused = [o["name"] for o in _ops(spec) if counts.get(o["name"], 0) == 0]
    if not unused:
        return []
    # Keep the two-phase invariant: at least one mutating op must stay in a pre-action phase.
    names = _phase_names(spec)
    keep_writer = [o for n in names[:-1] for o in spec["phases"][n]["ops"]
                   if _mutating(reg, _op(spec, o) or {}) and o not in unused]
    if not keep_writer:
        unused = [u for u in unused if not _mutating(reg, _op(spec, u) or {})]
    if not unused:
        return []

    def apply(s: Spec, drop: tuple[str, ...] = tuple(unused)) -> None:
        s["ops"] = [o for o in _ops(s) if o["name"] not in drop]
        for p in s["phases"].values():
            p["ops"] = [o for o in p["ops"] if o not in drop]
            for field in ("template", "continue_template"):
                p[field] = "\n".join(ln for ln in p[field].split("\n")
                                     if not any(re.search(rf"\b{re.escape(d)}\b", ln) for d in drop)
                                     or any(re.search(rf"\b{re.escape(o)}\b", ln) for o in p["ops"]))

    return [Mutation("drop:" + ",".join(unused), 1.2, f"drop never-used op(s) {', '.join(unused)}",
                     f"0 calls in {agg.get('total_steps')} steps over {agg.get('episodes')} episodes", apply)]


def _tighten_iterations(spec: Spec, agg: Mapping[str, Any], reg: Mapping[str, Any]) -> list[Mutation]:
    out = []
    its = agg.get("iterations_per_phase", {})
    for name in _phase_names(spec):
        cap = int(spec["phases"][name].get("max_iterations", 10))
        used = its.get(name)
        if not used:
            continue
        new = max(2, int(math.ceil(used["max"])) + 1)
        if new >= cap:
            continue

        def apply(s: Spec, n: str = name, v: int = new) -> None:
            s["phases"][n]["max_iterations"] = v

        out.append(Mutation(f"iters:{name}:{new}", 0.8 + (cap - new) / cap,
                            f"tighten {name} max_iterations {cap} -> {new}",
                            f"{name} used at most {used['max']} iterations (mean {used['mean']:.2f}) of {cap}",
                            apply))
    return out


def _fallback(spec: Spec, agg: Mapping[str, Any], reg: Mapping[str, Any]) -> list[Mutation]:
    """No evidence-driven edit left: add a keyed-upsert op on the most written file (or the first file)."""
    writes = agg.get("writes_per_file", {})
    files = [f["name"] for f in _files(spec)]
    keyed = {o.get("file") for o in _ops(spec) if o.get("semantics") == "upsert_keyed"}
    ranked = sorted((f for f in files if f not in keyed), key=lambda f: -writes.get(f, 0))
    out = []
    for fname in ranked[:3]:
        def apply(s: Spec, f: str = fname) -> None:
            name = _op_name_for("UPSERT", f, s)
            _ops(s).append({"name": name, "semantics": "upsert_keyed", "file": f, "key_grammar": "key|text"})
            for ph in _writer_phases(s, reg):
                s["phases"][ph]["ops"].append(name)
                _mention(s, ph, f"Use <|{name}|>key|text<|END|> to keep one current entry per key in {f}.")

        out.append(Mutation(f"upsert:{fname}", 0.1, f"add a keyed-upsert op bound to {fname}",
                            "no stronger signal in the traces; keyed entries keep files free of stale duplicates",
                            apply))
    return out


# ----- runtime mutations: notices and gates from the failure statistics (memory/runtime_spec.py) -----
def _runtime(spec: Spec) -> dict:
    if spec.get("runtime") is None:
        spec["runtime"] = {}
    return spec["runtime"]


def _ensure_notices(spec: Spec, phase: str) -> None:
    """Inline notices need the {notices} placeholder in the phase template; add it last (closest to the reply)."""
    p = spec["phases"][phase]
    if "{notices}" not in p["template"]:
        p["template"] = p["template"].rstrip("\n") + "\n\n{notices}\n"


def _add_field(spec: Spec, field: dict) -> None:
    fields = _runtime(spec).setdefault("fields", [])
    if not any(f.get("name") == field["name"] for f in fields):
        fields.append(field)


def _has(spec: Spec, section: str, name: str) -> bool:
    return any(x.get("name") == name for x in (spec.get("runtime") or {}).get(section) or [])


def _runtime_notices(spec: Spec, agg: Mapping[str, Any], reg: Mapping[str, Any]) -> list[Mutation]:
    steps = max(int(agg.get("total_steps", 0)), 1)
    if int(agg.get("total_steps", 0)) < 5 or not _phase_names(spec):
        return []
    act_phase = _phase_names(spec)[-1]
    out = []
    unchanged = int(agg.get("unchanged_obs_steps", 0)) / steps
    if (unchanged >= 0.1 or int(agg.get("max_unchanged_obs_streak", 0)) >= 3) and not _has(spec, "notices",
                                                                                         "no_effect_repeats"):
        def apply(s: Spec) -> None:
            _add_field(s, {"name": "rep", "kind": "repetition", "size": 8})
            _ensure_notices(s, act_phase)
            _runtime(s).setdefault("notices", []).append({
                "name": "no_effect_repeats", "phases": [act_phase], "mode": "first", "rules": [
                    {"when": "rep.failures >= 3", "text": "REPETITION ALERT: '{rep.action}' had no effect "
                                                          "{rep.failures} of the last {rep.repeats} times. Do "
                                                          "something different."},
                    {"when": "rep.failures >= 2", "text": "'{rep.action}' failed twice recently; check why before "
                                                          "repeating it."}]})

        out.append(Mutation("notice:no_effect_repeats", 1.6 + unchanged, "add a notice that names actions repeated "
                            "without effect", f"{unchanged:.0%} of steps left the observation unchanged (longest "
                            f"streak {agg.get('max_unchanged_obs_streak')})", apply))
    invalid = int(agg.get("invalid_actions", 0)) / steps
    if invalid >= 0.05 and not (spec.get("runtime") or {}).get("gate"):
        def apply_gate(s: Spec) -> None:
            rt = _runtime(s)
            rt.setdefault("repair", [])
            for b in ("strip_quotes", "trailing_period", "case", "strip_args"):
                if b not in rt["repair"]:
                    rt["repair"].append(b)
            rt["gate"] = {"max_rejections": 2, "rules": [
                {"when": "not is_action(action)",
                 "reason": "'{action}' is not an action of this game. Write one exactly as the instructions list "
                           "it."}]}

        out.append(Mutation("gate:invalid_actions", 1.8 + invalid, "repair action spelling and gate invalid actions "
                            "(the model rewrites them)", f"{invalid:.0%} of steps committed an invalid action",
                            apply_gate))
    zero = int(agg.get("max_zero_reward_streak", 0))
    if zero >= 30 and not _has(spec, "notices", "stagnation"):
        def apply_stag(s: Spec, n: int = max(10, zero // 3)) -> None:
            _add_field(s, {"name": "no_reward", "kind": "since", "when": "reward > 0"})
            _ensure_notices(s, act_phase)
            _runtime(s).setdefault("notices", []).append({
                "name": "stagnation", "phases": [act_phase], "rules": [
                    {"when": f"no_reward >= {n}", "text": "STAGNATION: no reward for {no_reward} steps. Change your "
                                                          "approach: explore somewhere new or pursue another goal."}]})

        out.append(Mutation("notice:stagnation", 1.0 + min(zero / 200, 1.0), "add a stagnation notice",
                            f"the longest run without reward was {zero} steps", apply_stag))
    return out


MUTATORS = (_upsert, _cap_or_split, _drop_unused, _tighten_iterations, _runtime_notices, _fallback)


def _reorder_sections(spec: Spec, phase: str) -> bool:
    """Move the paragraph holding {observation} to the end of the phase template (closest to the reply). Wording
    only, so it rides along with a structural edit and never stands alone."""
    p = spec["phases"].get(phase)
    if not p:
        return False
    paras = p["template"].split("\n\n")
    idx = [i for i, para in enumerate(paras) if "{observation}" in para]
    if len(paras) < 2 or not idx or idx[-1] == len(paras) - 1:
        return False
    moved = paras.pop(idx[-1])
    p["template"] = "\n\n".join(paras).rstrip("\n") + "\n\n" + moved.strip("\n") + "\n"
    return True


def candidates(spec: Spec, agg: Mapping[str, Any], reg: Mapping[str, Any]) -> list[Mutation]:
    muts = [m for fn in MUTATORS for m in fn(spec, agg, reg)]
    seen, out = set(), []
    for m in sorted(muts, key=lambda m: -m.score):
        if m.key not in seen:
            seen.add(m.key)
            out.append(m)
    return out


def propose(spec: Spec, agg: Mapping[str, Any], reg: Mapping[str, Any], tried: set[str] = frozenset()
            ) -> tuple[Spec, str, list[str]]:
    """(new spec, analysis markdown, mutation keys). Raises RuntimeError if every candidate was tried."""
    options = [m for m in candidates(spec, agg, reg) if m.key not in tried]
    if not options:
        raise RuntimeError(f"heuristic proposer has no untried mutation left (tried: {sorted(tried)})")
    chosen = options[0]
    new = copy.deepcopy(spec)
    chosen.apply(new)
    keys = [chosen.key]
    notes = []
    invalid_rate = agg.get("invalid_actions", 0) / max(int(agg.get("total_steps", 0)), 1)
    if invalid_rate > 0.1 and "reorder" not in tried and _phase_names(new):
        if _reorder_sections(new, _phase_names(new)[-1]):
            keys.append("reorder")
            notes.append(f"- Moved the observation paragraph of {_phase_names(new)[-1]} to the end of its prompt "
                         f"({invalid_rate:.0%} of steps had an invalid action).")
    repairs = list(new.get("action_repair") or [])
    cosmetic = [r for r in COSMETIC_REPAIRS if r not in repairs]
    if invalid_rate > 0.1 and cosmetic and "action_repair" not in tried:
        new["action_repair"] = repairs + cosmetic  # rides along a structural edit (it is not memory structure)
        keys.append("action_repair")
        notes.append(f"- Turned on action repair {cosmetic} ({invalid_rate:.0%} of steps had an invalid action; the "
                     "env accepts exact action names only).")
    lines = ["# Heuristic proposal", "", f"Change: {chosen.summary}.", f"Evidence: {chosen.evidence}.", *notes, "",
             "## Trace statistics", "",
             f"- episodes {agg.get('episodes')}, steps {agg.get('total_steps')}, "
             f"mean progression {agg.get('mean_progression', float('nan')):.4f}",
             f"- invalid actions {agg.get('invalid_actions')}, redundant writes {agg.get('redundant_writes')}, "
             f"empty searches {agg.get('empty_searches')}/{agg.get('searches')}, longest unchanged-observation "
             f"streak {agg.get('max_unchanged_obs_streak')}",
             "", "## Other candidates (not applied)", ""]
    lines += [f"- {m.key} (score {m.score:.2f}): {m.summary} — {m.evidence}" for m in options[1:6]] or ["- none"]
    return new, "\n".join(lines) + "\n", keys


def tried_keys(ws: Path, base_version: int | None) -> set[str]:
    """Mutation keys of earlier rejected attempts on the same incumbent (from history.json and previous/)."""
    tried: set[str] = set()
    hist = json.loads((ws / "history.json").read_text()) if (ws / "history.json").exists() else {"attempts": []}
    for r in hist.get("attempts", []):
        if r.get("status") != "accepted" and (base_version is None or r.get("base_version") == base_version):
            tried.update((r.get("proposer_meta") or {}).get("mutations", []))
    prev = ws / "previous" / "meta.json"
    if prev.exists():
        tried.update(json.loads(prev.read_text()).get("mutations", []))
    return tried


def _dump(spec: Spec) -> str:
    try:
        from automem_jax.memory.spec import dump_yaml
        return dump_yaml(spec)
    except ImportError:  # the canonical dumper is a nicety (block strings); plain YAML is equally valid
        return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)


def propose_in_workspace(ws: str | Path, seed: int = 0) -> list[str]:
    """Subprocess entry: read the workspace, write spec.yaml, analysis.md and meta.json. Returns mutation keys."""
    from automem_jax.loops.structure.history import atomic_write_json, atomic_write_text

    ws = Path(ws)
    spec = yaml.safe_load((ws / "spec.yaml").read_text())
    agg = json.loads((ws / "stats.json").read_text())
    reg = json.loads((ws / "op_registry.json").read_text())
    new, analysis, keys = propose(spec, agg, reg, tried_keys(ws, spec.get("version")))
    atomic_write_text(ws / "spec.yaml", _dump(new))
    atomic_write_text(ws / "analysis.md", analysis)
    atomic_write_json(ws / "meta.json", {"kind": "heuristic", "mutations": keys, "seed": seed})
    return keys
