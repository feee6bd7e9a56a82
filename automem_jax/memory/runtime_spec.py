"""The spec's `runtime:` section: derived fields, notices, runtime-kept files, prune policies, runtime ops, the action
gate, action repair and prompt overrides. Data only: every expression is parsed by memory/expr.py, every regex is
compiled by RE2, and every reference (field, phase, file, op) is checked here, so a bad section raises SpecError
naming its path (e.g. ``runtime.notices[2].rules[0].when``). docs/SPECS.md is the reference for writers.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

from automem_jax.memory.action_repair import REPAIRS
from automem_jax.memory.expr import FUNCTIONS, Expr, ExprError, Template, parse_expr, parse_template
from automem_jax.memory.safe_regex import RegexError, compile_regex
from automem_jax.memory.spec import SpecError, _Reader

# Fields every spec may read (computed by agent/derive.py each step).
BUILTIN_FIELDS: dict[str, str] = {
    "step": "current step number (0 at the first step)",
    "task": "env task name, e.g. MiniHack-Quest-Easy-v0",
    "family": "crafter | minihack | nethack",
    "text": "BALROG long-term observation text",
    "status": "BALROG short-term text (status / inventory)",
    "observation": "text and status as the prompt shows them",
    "message": "the NLE `message:` section (empty for Crafter)",
    "last_action": "action executed at the previous step ('' at step 0)",
    "last_raw_action": "what the model committed at the previous step ('' at step 0)",
    "last_valid": "whether the previous step's action was valid",
    "reward": "reward of the previous step",
    "changed": "whether the observation differs from the previous step's (false at step 0)",
    "unchanged": "consecutive steps with an unchanged observation",
    "actions": "executed actions so far, oldest first (the last 50)",
    "effects": "for each entry of `actions`: whether it changed the observation",
    "files": "memory file name -> line count (refreshed before each phase)",
    "phase": "the phase being prompted ('' while fields are computed)",
}
# Names only some constructs see: (construct, field) -> meaning.
GATE_FIELDS = {"action": "the action the model just committed (after repair)",
               "rejections": "how many times the gate already rejected an action this step"}
AFTER_FIELDS = {"wrote": "whether the phase that just ended changed memory"}
PRUNE_FIELDS = {"pruned": "number of lines the prune removed", "kept": "number of lines it kept"}

# kind -> (allowed keys besides name/kind, description)
FIELD_KINDS: dict[str, tuple[frozenset[str], str]] = {
    "regex": (frozenset({"source", "pattern", "group", "type", "default"}),
              "first RE2 match of `pattern` in field `source` (default observation); `group` (default 1, 0 = whole "
              "match) converted to `type` int|float|str; type bool = whether it matched; `default` when no match"),
    "inventory": (frozenset({"source"}),
                  "items in `source` (default status): Crafter `- wood: 2` -> {wood: 2} (missing items read 0); "
                  "NetHack `a: a +1 long sword` -> {a: 'a +1 long sword'}"),
    "entities": (frozenset({"source"}),
                 "things seen in `source` (default text): name -> {distance, direction}, the closest of each; "
                 "Crafter `- tree 3 steps to your north-west` and `You face X at your front` (distance 0, "
                 "direction 'front'); NLE language lines `doorway adjacent southeast` (distance adjacent 1, very near "
                 "2, near 3, far 4, very far 5); names lower-case with '_' for spaces"),
    "position": (frozenset({"source"}), "BALROG's cursor `(x=C, y=R)` in `source` (default text) -> {x, y}, else null"),
    "expr": (frozenset({"expr", "default"}), "the value of `expr` (null -> `default`)"),
    "previous": (frozenset({"of", "default"}), "the value field `of` had at the previous step (`default` at step 0)"),
    "diff": (frozenset({"of"}), "change of a map field `of` since the previous step: {gained: {k: +n}, lost: {k: n}, "
                                "changed: bool} (numeric values only)"),
    "streak": (frozenset({"when"}), "consecutive steps, ending now, on which condition `when` held (0 if not now)"),
    "since": (frozenset({"when"}), "steps since `when` last held (0 if it holds now; counts from step 0 if never)"),
    "count": (frozenset({"when"}), "steps so far on which `when` held"),
    "window": (frozenset({"of", "size"}), "the last `size` values of field `of`, oldest first (size <= 100)"),
    "repetition": (frozenset({"size"}),
                   "over the last `size` (default 8) executed actions: {action: the latest, repeats: how often it "
                   "occurs, failures: how often it occurred without changing the observation}"),
    "oscillation": (frozenset({"size", "moves_only"}),
                    "over the last `size` (default 6) executed actions (only compass moves if `moves_only`): "
                    "{reversals: adjacent opposite moves, distinct: distinct actions, moves: compass moves, "
                    "recent: the actions}"),
    "visits": (frozenset({"source", "position", "when", "forced_after", "least_visited_after", "blocked", "hazards"}),
               "per-tile visit tracker over the ASCII map in `source` (default text) at position field `position`, "
               "updated when `when` holds: {here: visits to this tile, tiles: distinct tiles, passable: [dirs], "
               "unvisited: [passable dirs never visited], visited: {dir: n}, least_visited: dir|null, forced: dir|null "
               "(the first unvisited passable direction not yet failed from here once here >= forced_after, or the "
               "least visited one once here >= least_visited_after), path: recent positions}"),
    "navigator": (frozenset({"source", "glyph", "blocked", "hazards", "detour_hazards"}),
                  "nearest `glyph` (default '>') on the ASCII map in `source`: {found, adjacent, distance, direction, "
                  "toward: passable dirs among the goal direction and its two neighbours, detour: [perpendicular "
                  "dirs] when >= `detour_hazards` (default 2) of those three hold hazards, passable: [dirs], "
                  "hazards: [dirs]}"),
}
REGEX_TYPES = ("int", "float", "str", "bool")
PLACEMENTS = ("inline", "top", "bottom", "both")
NOTICE_MODES = ("all", "first")
REPAIR_BUILTINS = {name: help_text for name, (_, help_text) in REPAIRS.items()}  # one implementation
FIELD_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MAX_FIELDS, MAX_RULES_PER_TABLE, MAX_RULES_TOTAL = 64, 200, 1000
MAX_NOTICES, MAX_KEPT, MAX_PRUNE, MAX_AUTO_OPS, MAX_REPAIR, MAX_OVERRIDES = 32, 16, 32, 16, 500, 8
MAX_WINDOW = 100
_KEYWORDS = {"and", "or", "not", "in", "true", "false", "null"}


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: str
    params: Mapping[str, Any]  # the kind's keys as written (validated)
    exprs: Mapping[str, Expr] = dataclasses.field(default_factory=dict, compare=False, repr=False)
    regex: Any = dataclasses.field(default=None, compare=False, repr=False)

    def get(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)


@dataclasses.dataclass(frozen=True)
class Rule:
    when: Expr
    text: Template


@dataclasses.dataclass(frozen=True)
class NoticeSpec:
    name: str
    phases: tuple[str, ...]
    rules: tuple[Rule, ...]
    mode: str = "all"  # all matching rules, or the first match (a ladder)
    placement: str = "inline"
    header: Template | None = None  # shown above the matching lines


@dataclasses.dataclass(frozen=True)
class KeptFileSpec:
    file: str
    before: str  # phase name
    content: Template


@dataclasses.dataclass(frozen=True)
class PruneSpec:
    file: str
    after: str
    over_lines: int
    keep_last: int
    keep_head: int = 0
    marker: Template | None = None


@dataclasses.dataclass(frozen=True)
class AutoOpSpec:
    op: str
    args: Template
    before: str = ""  # result shown in this phase's {notices}
    after: str = ""  # run when this phase ends (may write memory)
    when: Expr | None = None


@dataclasses.dataclass(frozen=True)
class GateSpec:
    rules: tuple[Rule, ...]
    max_rejections: int = 2
    message: Template | None = None  # {reason}


@dataclasses.dataclass(frozen=True)
class RepairStep:
    builtin: str = ""
    mapping: Mapping[str, str] = dataclasses.field(default_factory=dict)  # lower-cased, space-normalised keys
    pattern: str = ""
    replace: str = ""
    regex: Any = dataclasses.field(default=None, compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class OverrideSpec:
    phase: str
    when: Expr
    template: str
    ops: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class RuntimeSpec:
    fields: tuple[FieldSpec, ...] = ()
    order: tuple[str, ...] = ()  # field names in evaluation order
    notices: tuple[NoticeSpec, ...] = ()
    kept_files: tuple[KeptFileSpec, ...] = ()
    prune: tuple[PruneSpec, ...] = ()
    auto_ops: tuple[AutoOpSpec, ...] = ()
    gate: GateSpec | None = None
    repair: tuple[RepairStep, ...] = ()
    prompt_overrides: tuple[OverrideSpec, ...] = ()
    source: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)  # the section as written

    def field(self, name: str) -> FieldSpec | None:
        return next((f for f in self.fields if f.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.source)


_SECTION_KEYS = {"fields", "notices", "kept_files", "prune", "auto_ops", "gate", "repair", "prompt_overrides"}


@dataclasses.dataclass
class _Ctx:
    """What the section's references are checked against."""

    phases: Sequence[Any]  # PhaseSpec
    files: set[str]
    ops: Mapping[str, Any]  # name -> OpSpec
    fields: set[str] = dataclasses.field(default_factory=set)

    @property
    def phase_names(self) -> list[str]:
        return [p.name for p in self.phases]

    def phase(self, name: Any, path: str) -> str:
        if name not in self.phase_names:
            raise SpecError(path, f"unknown phase {name!r}", f"use one of {self.phase_names}")
        return name

    def file(self, name: Any, path: str) -> str:
        if name not in self.files:
            raise SpecError(path, f"file {name!r} is not declared", f"declare it under files (known: "
                                                                   f"{', '.join(sorted(self.files)) or 'none'})")
        return name


def _parse(parser, text: Any, path: str, known: set[str], what: str, fix: str) -> Any:
    if not isinstance(text, str):
        raise SpecError(path, f"expected {what}, got {type(text).__name__}")
    try:
        return parser(text, known)
    except ExprError as e:
        raise SpecError(path, str(e), fix) from None


def _expr(text: Any, path: str, known: set[str]) -> Expr:
    return _parse(parse_expr, text, path, known, "an expression string", "see docs/SPECS.md: expressions")


def _template(text: Any, path: str, known: set[str]) -> Template:
    return _parse(parse_template, text, path, known, "text",
                  "write {field} or {expression}; literal braces as {{ and }}")


def _regex(pattern: Any, path: str) -> Any:
    if not isinstance(pattern, str):
        raise SpecError(path, f"expected a regex string, got {type(pattern).__name__}")
    try:
        return compile_regex(pattern)
    except RegexError as e:
        raise SpecError(path, f"bad regex: {e}", "write an RE2 regular expression (no backreferences/lookaround)") \
            from None


def _list(r: _Reader, key: str, cap: int) -> list:
    items = r.get(key, list, [])
    if len(items) > cap:
        raise SpecError(r.at(key), f"{len(items)} entries > {cap}", f"keep at most {cap}")
    return items


# ----- fields -----
def _fields(r: _Reader) -> tuple[tuple[FieldSpec, ...], tuple[str, ...]]:
    items = _list(r, "fields", MAX_FIELDS)
    names: list[str] = []
    for i, f in enumerate(items):
        path = f"runtime.fields[{i}]"
        if not isinstance(f, Mapping) or not isinstance(f.get("name"), str):
            raise SpecError(f"{path}.name", "each field needs a name", "add `name: my_field`")
        n = f["name"]
        if not FIELD_NAME_RE.match(n) or n in _KEYWORDS or n in FUNCTIONS:
            raise SpecError(f"{path}.name", f"bad field name {n!r}",
                            "lower_case letters, digits, _ (<= 40 chars), not a keyword or function name")
        if n in BUILTIN_FIELDS or n in GATE_FIELDS or n in AFTER_FIELDS or n in names:
            raise SpecError(f"{path}.name", f"field {n!r} is already defined (built-in or earlier)", "rename it")
        names.append(n)
    known = set(BUILTIN_FIELDS) | set(names)
    out, deps = [], {}
    for i, f in enumerate(items):
        path = f"runtime.fields[{i}]"
        kind = f.get("kind")
        if kind not in FIELD_KINDS:
            raise SpecError(f"{path}.kind", f"unknown kind {kind!r}", f"use one of {', '.join(FIELD_KINDS)}")
        fr = _Reader(f, path, {"name", "kind"} | FIELD_KINDS[kind][0])
        spec, refs = _field(fr, f["name"], kind, known)
        out.append(spec)
        deps[spec.name] = refs & set(names)
    return tuple(out), _order(deps, names)


def _field(fr: _Reader, name: str, kind: str, known: set[str]) -> tuple[FieldSpec, set[str]]:
    params = {k: v for k, v in fr.data.items() if k not in ("name", "kind")}
    exprs: dict[str, Expr] = {}
    refs: set[str] = set()
    regex = None

    def ref(key: str, default: str | None = None) -> str:
        v = fr.get(key, str, default)
        if v not in known:
            raise SpecError(fr.at(key), f"unknown field {v!r}", "name a built-in or an earlier-declared field")
        refs.add(v)
        return v

    if kind in ("regex", "inventory", "entities", "position", "visits", "navigator"):
        ref("source", {"regex": "observation", "inventory": "status"}.get(kind, "text"))
    if kind == "regex":
        regex = _regex(fr.get("pattern", str), fr.at("pattern"))
        group = params["group"] = fr.int_in("group", 0, 9, 1 if regex.groups else 0)
        if group > regex.groups:
            raise SpecError(fr.at("group"), f"the pattern has {regex.groups} group(s)", "use 0 or a group it has")
        if fr.get("type", str, "str") not in REGEX_TYPES:
            raise SpecError(fr.at("type"), f"unknown type {params['type']!r}", f"use one of {REGEX_TYPES}")
    if kind in ("previous", "diff", "window"):
        v = fr.get("of", str)
        if v not in known:
            raise SpecError(fr.at("of"), f"unknown field {v!r}", "name a built-in or declared field")
        if kind != "previous":  # previous reads last step's value, so it may refer to any field
            refs.add(v)
    if kind in ("window", "repetition", "oscillation"):
        fr.int_in("size", 1, MAX_WINDOW, {"window": dataclasses.MISSING, "repetition": 8, "oscillation": 6}[kind])
    required = {"expr": "expr", "streak": "when", "since": "when", "count": "when"}.get(kind)
    for key in ("expr", "when"):
        if key == required or key in params:
            exprs[key] = _expr(fr.get(key, str), fr.at(key), known)
            refs |= exprs[key].refs
    if kind == "visits":
        ref("position")
        fr.int_in("forced_after", 1, 1000, 4)
        fr.int_in("least_visited_after", 1, 1000, 5)
    if kind in ("visits", "navigator"):
        for key in ("blocked", "hazards", "glyph"):
            v = fr.get(key, str, None)
            if v is not None and not 0 < len(v) <= 32:
                raise SpecError(fr.at(key), f"{v!r} must hold 1-32 map characters", "e.g. '}^'")
        if kind == "navigator":
            fr.int_in("detour_hazards", 1, 3, 2)
    if kind == "oscillation":
        fr.get("moves_only", bool, False)
    return FieldSpec(name, kind, params, exprs, regex), refs


def _order(deps: Mapping[str, set[str]], names: list[str]) -> tuple[str, ...]:
    """Fields in dependency order; a cycle raises SpecError naming the fields on it."""
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(n: str, stack: list[str]) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            cyc = stack[stack.index(n):] + [n]
            raise SpecError(f"runtime.fields[{names.index(n)}]", f"cycle: {' -> '.join(cyc)}",
                            "a field cannot depend on itself this step; use kind: previous to read last step's value")
        state[n] = 1
        for d in sorted(deps[n]):
            visit(d, stack + [n])
        state[n] = 2
        order.append(n)

    for n in names:
        visit(n, [])
    return tuple(order)


# ----- notices, gate -----
def _rules(r: _Reader, known: set[str], reason_key: str = "text") -> tuple[Rule, ...]:
    items = r.get("rules", list)
    if not items:
        raise SpecError(r.at("rules"), "no rules", "add at least one {when, " + reason_key + "}")
    if len(items) > MAX_RULES_PER_TABLE:
        raise SpecError(r.at("rules"), f"{len(items)} rules > {MAX_RULES_PER_TABLE}",
                        f"keep at most {MAX_RULES_PER_TABLE} rules per table")
    out = []
    for j, it in enumerate(items):
        rr = _Reader(it, r.at(f"rules[{j}]"), {"when", reason_key})
        out.append(Rule(_expr(rr.get("when", str, "true"), rr.at("when"), known),
                        _template(rr.get(reason_key, str), rr.at(reason_key), known)))
    return tuple(out)


def _notices(r: _Reader, ctx: _Ctx, known: set[str]) -> tuple[NoticeSpec, ...]:
    out = []
    for i, n in enumerate(_list(r, "notices", MAX_NOTICES)):
        nr = _Reader(n, f"runtime.notices[{i}]", {"name", "phases", "rules", "mode", "placement", "header"})
        phases = nr.get("phases", list)
        if not phases:
            raise SpecError(nr.at("phases"), "no phases", f"list where it shows, e.g. [{ctx.phase_names[-1]}]")
        phases = tuple(ctx.phase(p, nr.at(f"phases[{k}]")) for k, p in enumerate(phases))
        mode = nr.get("mode", str, "all")
        if mode not in NOTICE_MODES:
            raise SpecError(nr.at("mode"), f"unknown mode {mode!r}", f"use one of {NOTICE_MODES}")
        placement = nr.get("placement", str, "inline")
        if placement not in PLACEMENTS:
            raise SpecError(nr.at("placement"), f"unknown placement {placement!r}", f"use one of {PLACEMENTS}")
        header = nr.get("header", str, "")
        out.append(NoticeSpec(nr.get("name", str, f"notice{i}"), phases, _rules(nr, known), mode, placement,
                              _template(header, nr.at("header"), known) if header else None))
    return tuple(out)


def _gate(r: _Reader, known: set[str]) -> GateSpec | None:
    g = r.get("gate", Mapping, None)
    if g is None:
        return None
    gr = _Reader(g, "runtime.gate", {"rules", "max_rejections", "message"})
    k = known | set(GATE_FIELDS)
    return GateSpec(_rules(gr, k, "reason"), gr.int_in("max_rejections", 1, 10, 2),
                    _template(gr.get("message", str, "ACTION REJECTED: {reason}"), gr.at("message"), k | {"reason"}))


# ----- files and ops -----
def _kept(r: _Reader, ctx: _Ctx, known: set[str]) -> tuple[KeptFileSpec, ...]:
    out, seen = [], set()
    for i, k in enumerate(_list(r, "kept_files", MAX_KEPT)):
        kr = _Reader(k, f"runtime.kept_files[{i}]", {"file", "before", "content"})
        f = ctx.file(kr.get("file", str), kr.at("file"))
        if f in seen:
            raise SpecError(kr.at("file"), f"{f!r} is kept twice", "one entry per file")
        seen.add(f)
        out.append(KeptFileSpec(f, ctx.phase(kr.get("before", str, ctx.phase_names[-1]), kr.at("before")),
                                _template(kr.get("content", str), kr.at("content"), known)))
    return tuple(out)


def _prune(r: _Reader, ctx: _Ctx) -> tuple[PruneSpec, ...]:
    out = []
    for i, p in enumerate(_list(r, "prune", MAX_PRUNE)):
        pr = _Reader(p, f"runtime.prune[{i}]", {"file", "after", "over_lines", "keep_last", "keep_head", "marker"})
        f = ctx.file(pr.get("file", str), pr.at("file"))
        over = pr.int_in("over_lines", 2, 1_000_000)
        keep = pr.get("keep_last", int)
        if keep < 1:
            raise SpecError(pr.at("keep_last"), f"keep_last {keep} would delete every line",
                            "keep at least 1 line (AutoMem keeps 25-100)")
        if keep >= over:
            raise SpecError(pr.at("keep_last"), f"keep_last {keep} >= over_lines {over}: the prune never removes a "
                                                "line", "set keep_last below over_lines")
        head = pr.int_in("keep_head", 0, 1000, 0)
        if head + keep >= over:
            raise SpecError(pr.at("keep_head"), f"keep_head {head} + keep_last {keep} >= over_lines {over}",
                            "lower keep_head or keep_last")
        marker = pr.get("marker", str, "[... {pruned} older entries pruned ...]")
        out.append(PruneSpec(f, ctx.phase(pr.get("after", str, ctx.phase_names[0]), pr.at("after")), over, keep,
                             head, _template(marker, pr.at("marker"), set(PRUNE_FIELDS)) if marker else None))
    return tuple(out)


def _auto_ops(r: _Reader, ctx: _Ctx, known: set[str]) -> tuple[AutoOpSpec, ...]:
    out = []
    for i, a in enumerate(_list(r, "auto_ops", MAX_AUTO_OPS)):
        ar = _Reader(a, f"runtime.auto_ops[{i}]", {"op", "args", "before", "after", "when"})
        name = ar.get("op", str)
        op = ctx.ops.get(name)
        if op is None:
            raise SpecError(ar.at("op"), f"unknown op {name!r}", f"use an op declared under ops ({', '.join(ctx.ops)})")
        before, after = ar.get("before", str, ""), ar.get("after", str, "")
        if bool(before) == bool(after):
            raise SpecError(ar.at("before"), "give exactly one of before/after",
                            "before: PHASE shows the result in that phase; after: PHASE runs when it ends")
        if before and op.mutating:
            raise SpecError(ar.at("op"), f"{name} ({op.semantics}) changes memory; a `before` op only shows a result",
                            "use after: PHASE for ops that write")
        k = known | (set(AFTER_FIELDS) if after else set())
        when = _expr(ar.get("when", str), ar.at("when"), k) if "when" in ar.data else None
        out.append(AutoOpSpec(name, _template(ar.get("args", str, ""), ar.at("args"), k),
                              ctx.phase(before, ar.at("before")) if before else "",
                              ctx.phase(after, ar.at("after")) if after else "", when))
    return tuple(out)


def _repair(r: _Reader) -> tuple[RepairStep, ...]:
    out, entries = [], 0
    for i, s in enumerate(_list(r, "repair", MAX_REPAIR)):
        path = f"runtime.repair[{i}]"
        if isinstance(s, str):  # shorthand: a builtin's name
            s = {"builtin": s}
        sr = _Reader(s, path, {"builtin", "map", "pattern", "replace"})
        kinds = [k for k in ("builtin", "map", "pattern") if k in sr.data]
        if len(kinds) != 1:
            raise SpecError(path, "give exactly one of builtin / map / pattern", "one repair per entry")
        if kinds[0] == "builtin":
            b = sr.get("builtin", str)
            if b not in REPAIR_BUILTINS:
                raise SpecError(sr.at("builtin"), f"unknown repair {b!r}", f"use one of {', '.join(REPAIR_BUILTINS)}")
            out.append(RepairStep(builtin=b))
        elif kinds[0] == "map":
            m = sr.get("map", Mapping)
            entries += len(m)
            if entries > MAX_REPAIR:
                raise SpecError(sr.at("map"), f"repair maps hold {entries} entries > {MAX_REPAIR}", "shorten them")
            bad = [k for k, v in m.items() if not (isinstance(k, str) and isinstance(v, str) and k.strip()
                                                   and v.strip())]
            if bad:
                raise SpecError(sr.at("map"), f"entry {bad[0]!r} is not text -> text", "map 'written': 'action'")
            out.append(RepairStep(mapping={" ".join(k.lower().split()): v.strip() for k, v in m.items()}))
        else:
            rx = _regex(sr.get("pattern", str), sr.at("pattern"))
            rep = sr.get("replace", str)
            for g in re.findall(r"\\(\d)", rep):
                if int(g) > rx.groups:
                    raise SpecError(sr.at("replace"), f"\\{g} but the pattern has {rx.groups} group(s)",
                                    "refer to groups the pattern has")
            out.append(RepairStep(pattern=sr.get("pattern", str), replace=rep, regex=rx))
    return tuple(out)


def _overrides(r: _Reader, ctx: _Ctx, known: set[str], check_template) -> tuple[OverrideSpec, ...]:
    out = []
    for i, o in enumerate(_list(r, "prompt_overrides", MAX_OVERRIDES)):
        orr = _Reader(o, f"runtime.prompt_overrides[{i}]", {"phase", "when", "template", "ops"})
        phase = ctx.phase(orr.get("phase", str), orr.at("phase"))
        template = orr.get("template", str)
        check_template(template, orr.at("template"))
        allowed = next(p.ops for p in ctx.phases if p.name == phase)
        ops = orr.get("ops", list, list(allowed))
        for j, op in enumerate(ops):
            if op not in allowed:
                raise SpecError(orr.at(f"ops[{j}]"), f"{op!r} is not allowed in phase {phase}",
                                f"an override may only narrow the phase's ops {list(allowed)}")
        out.append(OverrideSpec(phase, _expr(orr.get("when", str), orr.at("when"), known), template, tuple(ops)))
    return tuple(out)


def parse_runtime(data: Mapping[str, Any] | None, phases: Sequence[Any], files: set[str], ops: Mapping[str, Any],
                  check_template) -> RuntimeSpec | None:
    """Validate a spec's `runtime:` mapping against its phases/files/ops; None when absent or empty.

    `check_template(text, path)` validates a phase template (spec.py's placeholder check)."""
    if not data:
        return None
    r = _Reader(data, "runtime", _SECTION_KEYS)
    ctx = _Ctx(phases, files, ops)
    fields, order = _fields(r)
    known = set(BUILTIN_FIELDS) | {f.name for f in fields}
    notices = _notices(r, ctx, known)
    gate = _gate(r, known)
    total = sum(len(n.rules) for n in notices) + (len(gate.rules) if gate else 0)
    if total > MAX_RULES_TOTAL:
        raise SpecError("runtime.notices", f"{total} rules in all > {MAX_RULES_TOTAL}", "merge or drop rules")
    auto_ops = _auto_ops(r, ctx, known)
    overrides = _overrides(r, ctx, known, check_template)
    inline = {p for n in notices if n.placement == "inline" for p in n.phases} | {a.before for a in auto_ops
                                                                                 if a.before}
    for p in phases:
        if p.name in inline and "{notices}" not in p.template:
            raise SpecError(f"phases.{p.name}.template", "inline notices or `before` runtime ops target this phase "
                            "but its template has no {notices} placeholder",
                            "add {notices} where they should appear, or use placement: top/bottom")
    spec = RuntimeSpec(fields=fields, order=order, notices=notices, kept_files=_kept(r, ctx, known),
                       prune=_prune(r, ctx), auto_ops=auto_ops, gate=gate, repair=_repair(r),
                       prompt_overrides=overrides, source={k: data[k] for k in sorted(data, key=_key_order)})
    return spec


def _key_order(k: str) -> int:
    order = ["fields", "notices", "kept_files", "prune", "auto_ops", "gate", "repair", "prompt_overrides"]
    return order.index(k) if k in order else len(order)
