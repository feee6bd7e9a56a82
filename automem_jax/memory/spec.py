"""MemorySpec: the agent's memory scaffold as data (phases, prompts, files, op vocabulary), validated on load.

A spec is YAML, never code: the structure loop rewrites it, so every field is checked here and a bad one raises
`SpecError` naming its path (e.g. ``phases.LOG.ops[2]``) and the fix. `to_yaml()` is canonical (fixed key order,
block strings) so two versions diff line by line.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import string
from pathlib import Path
from typing import Any, Mapping

import yaml

from automem_jax.memory.action_repair import REPAIRS
from automem_jax.memory.safe_regex import RegexError, compile_regex
from automem_jax.memory.yaml_safe import load_yaml
from automem_jax.short_repr import short_repr

_MAX_MESSAGE_PART = 400  # chars of a path / problem / fix in a SpecError (values in them are short_repr'd)


class SpecError(ValueError):
    """A spec field is invalid. The message names the field path and how to fix it."""

    def __init__(self, path: str, problem: str, fix: str = ""):
        path, problem, fix = (x if len(x) <= _MAX_MESSAGE_PART else x[:_MAX_MESSAGE_PART - 3] + "..."
                              for x in (str(path), str(problem), str(fix)))
        self.path, self.problem, self.fix = path, problem, fix
        super().__init__(f"{path}: {problem}" + (f" ({fix})" if fix else ""))


# Built-in op semantics: name -> (description, mutating, argument grammar when the op has no fixed `file`).
OP_SEMANTICS: dict[str, str] = {
    "search": "lines of a file containing a keyword (case-insensitive); over max_results -> the last N matches",
    "read": "the whole file ([FILE IS EMPTY] when empty)",
    "tail": "the last N lines of a file (default_lines when N is omitted, at most max_lines)",
    "count": "how many lines of a file contain a keyword",
    "append": "add one line to a file (creates it)",
    "write": "overwrite a file with new content",
    "create": "create an empty file ([File 'f' already exists] if present)",
    "delete": "remove a file",
    "upsert_keyed": "replace the line whose key (text before the first '|') equals the given key, else append it",
}
MUTATING_SEMANTICS = frozenset({"append", "write", "create", "delete", "upsert_keyed"})
# Argument grammar per semantics; `file|` is dropped when the op names a fixed file.
ARG_GRAMMAR: dict[str, str] = {
    "search": "file|keyword", "read": "file", "tail": "file|N", "count": "file|keyword",
    "append": "file|text", "write": "file|content", "create": "file", "delete": "file",
    "upsert_keyed": "file|key|text",
}

MODES = ("memory", "history")
PHASE_ENDS = ("done", "action")
# Placeholders a phase's first-turn template may use; filled by agent/prompts.py.
TEMPLATE_PLACEHOLDERS = frozenset({
    "instruction",  # env.instruction() (BALROG instruction prompt)
    "observation",  # BALROG long-term + short-term text
    "file_index",  # "  - name (N lines)" per memory file
    "previous_action",  # what was executed last step (raw + default when invalid)
    "diff_notice",  # WARNING / CRITICAL STUCK when the observation did not change
    "stuck_warning",  # diff notice + "do not repeat <action>" (PLAN)
    "guidance",  # spec.guidance (free text)
    "map_analysis",  # 8-neighbour analysis of '@' on an ASCII map (NLE/MiniHack), else empty
    "ops_help",  # generated usage lines of the phase's allowed ops
    "step",  # current step number
    "prev_step",  # step - 1
    "action_tag", "done_tag",
    "notices",  # the spec's runtime notices and `before` runtime-op results for this phase (runtime_spec.py)
})
CONTINUE_PLACEHOLDERS = frozenset({"results", "file_index", "step", "action_tag", "done_tag"})
HISTORY_PLACEHOLDERS = frozenset({"instruction", "observation", "step", "action_tag"})
FILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
OP_NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,31}$")
TAG_NAME_RE = OP_NAME_RE
ON_FULL = ("refuse", "drop_oldest")
# Sanity bounds on limits (a spec from a proposer must not turn memory into a disk-filler).
MAX_FILE_BYTES = 4 << 20
MAX_TOTAL_BYTES = 64 << 20
MAX_ITERATIONS = 64


@dataclasses.dataclass(frozen=True)
class FileSpec:
    name: str
    purpose: str = ""
    content: str = ""
    max_bytes: int = 65536
    max_lines: int = 0  # 0 = no line cap
    on_full: str = "refuse"  # refuse | drop_oldest (prune oldest lines to make room)


@dataclasses.dataclass(frozen=True)
class OpSpec:
    name: str  # as the model writes it, e.g. SEARCH
    semantics: str  # one of OP_SEMANTICS
    description: str = ""
    file: str | None = None  # fixed target file (args then omit the file name)
    max_results: int = 100  # search: cap on returned lines
    default_lines: int = 10  # tail: N when omitted
    max_lines: int = 200  # tail: largest N
    key_grammar: str = ""  # upsert_keyed: documentation, e.g. "x,y|description"
    key_pattern: str = ""  # upsert_keyed: optional RE2 regex the key must fully match
    key_ignore: str = ""  # upsert_keyed: characters removed from the key first, e.g. "() " so "(3, 4)" -> "3,4"
    line_format: str = ""  # upsert_keyed: how an entry is written, e.g. "({key}): {text}" ("" = "{key}|{text}")

    @property
    def mutating(self) -> bool:
        return self.semantics in MUTATING_SEMANTICS

    @property
    def grammar(self) -> str:
        g = ARG_GRAMMAR[self.semantics]
        if self.semantics == "upsert_keyed" and self.key_grammar:
            g = "file|" + self.key_grammar
        return g.removeprefix("file|").removeprefix("file") if self.file else g


@dataclasses.dataclass(frozen=True)
class PhaseSpec:
    name: str
    template: str  # first user message of the phase
    continue_template: str  # user message after each reply's op results
    ops: tuple[str, ...]
    max_iterations: int = 10
    read_only: bool = False
    ends_on: str = "done"  # done (DONE tag / a reply without ops) | action (ACTION tag commits the world action)
    skip_first_step: bool = False  # LOG: nothing to record before the first action
    # Grammar-constrained decoding of this phase's replies (memory/grammar.py; our extension, off in AutoMem's specs)
    constrained: bool = False


@dataclasses.dataclass(frozen=True)
class MemorySpec:
    name: str
    version: int
    env: str  # crafter | minihack | nethack | any
    phases: tuple[PhaseSpec, ...]
    files: tuple[FileSpec, ...]
    ops: tuple[OpSpec, ...]
    parent: int | None = None
    description: str = ""
    mode: str = "memory"  # memory (LOG/PLAN phases) | history (BALROG naive agent, no memory)
    guidance: str = ""
    action_tag: str = "ACTION"
    done_tag: str = "DONE"
    end_tag: str = "END"
    commit_prompt: str = "Now commit your action."  # two-model mode: base model commits after the specialist
    fallback_actions: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # Lenient rewrites of the model's action before the env validates it (memory/action_repair.py REPAIRS, e.g.
    # "case", "two_step"); empty = BALROG-exact: the env accepts exact action names only.
    action_repair: tuple[str, ...] = ()
    history_length: int = 16  # history mode: past observation/action pairs kept
    history_template: str = ""  # history mode: last user message ({observation}, {instruction}, ...)
    # history mode: decode the naive agent's reply under a grammar of the env's action names (our extension)
    history_constrained: bool = False
    max_total_bytes: int = 1 << 20
    max_files: int = 32
    default_file_bytes: int = 65536  # cap for files the model creates
    persistent: bool = False  # carry memory files across episodes of the same env/task
    map_analysis: bool = False  # fill {map_analysis} from an ASCII map in the observation
    runtime: Any = None  # runtime_spec.RuntimeSpec (derived fields, notices, gate, ...) or None

    # ----- lookups -----
    def op(self, name: str) -> OpSpec | None:
        return self._op_index().get(name.upper())

    def _op_index(self) -> dict[str, OpSpec]:
        return {o.name: o for o in self.ops}

    def phase(self, name: str) -> PhaseSpec:
        for p in self.phases:
            if p.name == name:
                return p
        raise KeyError(f"spec {self.name} has no phase {name!r}; phases: {[p.name for p in self.phases]}")

    def file(self, name: str) -> FileSpec | None:
        for f in self.files:
            if f.name == name:
                return f
        return None

    def fallback_action(self, family: str, env_default: str) -> str:
        """AutoMem's fallback when PLAN gives no action; the env maps an illegal one to its own default."""
        return self.fallback_actions.get(family, self.fallback_actions.get("default", env_default))

    # ----- serialisation -----
    def to_dict(self) -> dict[str, Any]:
        d = {
            "name": self.name, "version": self.version, "parent": self.parent, "env": self.env,
            "description": self.description, "mode": self.mode,
            "action_tag": self.action_tag, "done_tag": self.done_tag, "end_tag": self.end_tag,
            "commit_prompt": self.commit_prompt, "fallback_actions": dict(sorted(self.fallback_actions.items())),
            "action_repair": list(self.action_repair),
            "memory": {"max_total_bytes": self.max_total_bytes, "max_files": self.max_files,
                       "default_file_bytes": self.default_file_bytes, "persistent": self.persistent},
            "map_analysis": self.map_analysis, "guidance": self.guidance,
            "history_length": self.history_length, "history_template": self.history_template,
            "files": [dataclasses.asdict(f) for f in self.files],
            # Op fields at their defaults are left out so a spec stays short and diffs show real changes.
            "ops": [{"name": o.name, "semantics": o.semantics} | {
                k: v for k, v in dataclasses.asdict(o).items()
                if k not in ("name", "semantics") and v != _OP_DEFAULTS.get(k)} for o in self.ops],
            # `constrained` is written only when on (specs without it stay as they were)
            "phases": {p.name: {k: v for k, v in dataclasses.asdict(p).items()
                                if k != "name" and (k != "constrained" or v)} | {"ops": list(p.ops)}
                       for p in self.phases},
        }
        if self.history_constrained:  # written only when on, like a phase's `constrained`
            d["history_constrained"] = True
        if self.runtime is not None:
            d["runtime"] = self.runtime.to_dict()
        return d

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())

    def with_version(self, version: int, parent: int | None = None, name: str | None = None) -> "MemorySpec":
        return dataclasses.replace(self, version=version, parent=self.version if parent is None else parent,
                                   name=name or self.name)


_OP_DEFAULTS = {f.name: f.default for f in dataclasses.fields(OpSpec) if f.default is not dataclasses.MISSING}


class _CanonicalDumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str):
    # Multi-line strings as literal blocks so prompt edits diff line by line.
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_CanonicalDumper.add_representer(str, _str_presenter)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_CanonicalDumper, sort_keys=False, allow_unicode=True, width=120,
                     default_flow_style=False)


def spec_diff(a: MemorySpec | str, b: MemorySpec | str, a_name: str = "a", b_name: str = "b") -> str:
    """Unified diff of two specs' canonical YAML ("" when equal)."""
    ta = a.to_yaml() if isinstance(a, MemorySpec) else a
    tb = b.to_yaml() if isinstance(b, MemorySpec) else b
    return "".join(difflib.unified_diff(ta.splitlines(True), tb.splitlines(True), a_name, b_name))


# ---------------------------------------------------------------------------------------------------------------
# Loading + validation
# ---------------------------------------------------------------------------------------------------------------
def load_spec(src: str | Path | Mapping[str, Any]) -> MemorySpec:
    """Load a spec from a path, a YAML string or a dict; raises SpecError naming the bad field."""
    if isinstance(src, Mapping):
        return validate_spec(src)
    if isinstance(src, Path) or (isinstance(src, str) and "\n" not in src and src.endswith((".yaml", ".yml"))):
        path = Path(src)
        if not path.is_file():
            raise SpecError(str(path), "spec file not found", "pass an existing .yaml path, a YAML string or a dict")
        text = path.read_text(encoding="utf-8")
    else:
        text = str(src)
    try:
        data = load_yaml(text)
    except yaml.YAMLError as e:
        raise SpecError("<yaml>", f"not valid YAML: {' '.join(str(e).split())}", "fix the YAML") from None
    if not isinstance(data, Mapping):
        raise SpecError("<root>", f"expected a mapping, got {type(data).__name__}", "the spec is a YAML mapping")
    return validate_spec(data)


class _Reader:
    """Typed field access that names the path on error and rejects unknown keys."""

    def __init__(self, data: Mapping[str, Any], path: str, known: set[str]):
        if not isinstance(data, Mapping):
            raise SpecError(path or "<root>", f"expected a mapping, got {type(data).__name__}")
        self.data, self.path = data, path
        unknown = sorted(set(map(str, data)) - known)
        if unknown:
            raise SpecError(self.at(unknown[0]), "unknown field", f"known fields: {', '.join(sorted(known))}")

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, typ: type | tuple, default: Any = dataclasses.MISSING) -> Any:
        if key not in self.data or self.data[key] is None and default is not dataclasses.MISSING:
            if default is dataclasses.MISSING:
                raise SpecError(self.at(key), "missing required field", f"add `{key}:`")
            return default
        v = self.data[key]
        if typ is int and isinstance(v, bool) or not isinstance(v, typ):
            names = "/".join(getattr(t, "__name__", str(t)) for t in (typ if isinstance(typ, tuple) else (typ,)))
            raise SpecError(self.at(key), f"expected {names}, got {type(v).__name__} {short_repr(v)}")
        return v

    def int_in(self, key: str, lo: int, hi: int, default: Any = dataclasses.MISSING) -> int:
        v = self.get(key, int, default)
        if not lo <= v <= hi:
            raise SpecError(self.at(key), f"{short_repr(v)} is outside [{lo}, {hi}]", f"use a value in [{lo}, {hi}]")
        return v


def _check_template(text: str, path: str, allowed: frozenset[str]) -> None:
    try:
        fields = list(string.Formatter().parse(text))
    except ValueError as e:
        raise SpecError(path, f"bad template: {e}", "write literal braces as {{ and }}") from None
    for _lit, field, spec, conv in fields:
        if field is None:
            continue
        if field not in allowed:
            raise SpecError(path, f"unknown placeholder {{{field}}}",
                            f"known placeholders: {', '.join(sorted(allowed))}; write literal braces as {{{{ }}}}")
        if spec or conv:
            raise SpecError(path, f"placeholder {{{field}}} has a format spec/conversion", "use a bare {name}")


def _files(r: _Reader, default_bytes: int) -> tuple[FileSpec, ...]:
    items = r.get("files", list, [])
    out, seen = [], set()
    for i, f in enumerate(items):
        fr = _Reader(f, f"files[{i}]", {fl.name for fl in dataclasses.fields(FileSpec)})
        name = fr.get("name", str)
        if not FILE_NAME_RE.match(name):
            raise SpecError(fr.at("name"), f"bad file name {name!r}",
                            "a plain basename of letters, digits, _ . - (<= 64 chars, no leading dot)")
        if name in seen:
            raise SpecError(fr.at("name"), f"duplicate file {name!r}", "each file appears once")
        seen.add(name)
        max_bytes = fr.int_in("max_bytes", 16, MAX_FILE_BYTES, default_bytes)
        content = fr.get("content", str, "")
        if len(content.encode()) > max_bytes:
            raise SpecError(fr.at("content"), f"initial content is {len(content.encode())} bytes > max_bytes "
                            f"{max_bytes}", "shorten it or raise max_bytes")
        max_lines = fr.int_in("max_lines", 0, 1_000_000, 0)
        if max_lines and len(content.splitlines()) > max_lines:
            raise SpecError(fr.at("content"), f"initial content has more than max_lines={max_lines} lines",
                            "shorten it or raise max_lines")
        on_full = fr.get("on_full", str, "refuse")
        if on_full not in ON_FULL:
            raise SpecError(fr.at("on_full"), f"unknown policy {on_full!r}", f"use one of {ON_FULL}")
        out.append(FileSpec(name=name, purpose=fr.get("purpose", str, ""), content=content, max_bytes=max_bytes,
                            max_lines=max_lines, on_full=on_full))
    return tuple(out)


def _ops(r: _Reader, file_names: set[str]) -> tuple[OpSpec, ...]:
    items = r.get("ops", list, [])
    out, seen = [], set()
    for i, o in enumerate(items):
        orr = _Reader(o, f"ops[{i}]", {fl.name for fl in dataclasses.fields(OpSpec)})
        name = orr.get("name", str)
        if not OP_NAME_RE.match(name):
            raise SpecError(orr.at("name"), f"bad op name {name!r}", "UPPER_CASE letters, digits, _ (<= 32 chars)")
        if name in seen:
            raise SpecError(orr.at("name"), f"duplicate op {name!r}", "define each op once")
        sem = orr.get("semantics", str)
        if sem not in OP_SEMANTICS:
            raise SpecError(orr.at("semantics"), f"unknown semantics {sem!r}",
                            f"known semantics: {', '.join(OP_SEMANTICS)}")
        fixed = orr.get("file", str, None)
        if fixed is not None and fixed not in file_names:
            raise SpecError(orr.at("file"), f"fixed file {fixed!r} is not in files",
                            f"declare it under files (known: {', '.join(sorted(file_names)) or 'none'})")
        key_pattern = orr.get("key_pattern", str, "")
        if key_pattern:
            try:
                compile_regex(key_pattern)
            except RegexError as e:
                raise SpecError(orr.at("key_pattern"), f"bad regex: {e}", "write an RE2 regular expression") from None
        line_format = orr.get("line_format", str, "")
        if line_format and (line_format.count("{key}") != 1 or line_format.count("{text}") != 1
                            or line_format.index("{key}") > line_format.index("{text}")
                            or line_format.replace("{key}", "").replace("{text}", "").count("{")):
            raise SpecError(orr.at("line_format"), f"bad line format {line_format!r}",
                            "write {key} once, then {text} once, e.g. '({key}): {text}'")
        key_grammar = orr.get("key_grammar", str, "")
        if sem == "upsert_keyed" and key_grammar and "|" not in key_grammar:
            raise SpecError(orr.at("key_grammar"), f"{key_grammar!r} has no '|'",
                            "write it as '<key>|<text>', e.g. 'x,y|description' (key = text before the first '|')")
        default_lines = orr.int_in("default_lines", 1, 10_000, 10)
        max_lines = orr.int_in("max_lines", 1, 100_000, 200)
        if default_lines > max_lines:
            raise SpecError(orr.at("default_lines"), f"{default_lines} > max_lines {max_lines}",
                            "default_lines must not exceed max_lines")
        seen.add(name)
        out.append(OpSpec(name=name, semantics=sem, description=orr.get("description", str, ""), file=fixed,
                          max_results=orr.int_in("max_results", 1, 100_000, 100), default_lines=default_lines,
                          max_lines=max_lines, key_grammar=key_grammar, key_pattern=key_pattern,
                          key_ignore=orr.get("key_ignore", str, ""), line_format=line_format))
    return tuple(out)


def _phases(r: _Reader, ops: dict[str, OpSpec], tags: set[str]) -> tuple[PhaseSpec, ...]:
    items = r.get("phases", Mapping, {})
    known = {fl.name for fl in dataclasses.fields(PhaseSpec)} - {"name"}
    out = []
    for name, p in items.items():
        if not isinstance(name, str) or not TAG_NAME_RE.match(name):
            raise SpecError(f"phases.{short_repr(name)}", f"bad phase name {short_repr(name)}",
                            "UPPER_CASE, e.g. LOG or PLAN")
        path = f"phases.{name}"
        pr = _Reader(p, path, known)
        template = pr.get("template", str)
        _check_template(template, pr.at("template"), TEMPLATE_PLACEHOLDERS)
        cont = pr.get("continue_template", str)
        _check_template(cont, pr.at("continue_template"), CONTINUE_PLACEHOLDERS)
        op_names = pr.get("ops", list)
        read_only = pr.get("read_only", bool, False)
        for j, op_name in enumerate(op_names):
            at = f"{path}.ops[{j}]"
            if not isinstance(op_name, str):
                raise SpecError(at, f"expected an op name, got {type(op_name).__name__} {short_repr(op_name)}")
            if op_name in tags:
                raise SpecError(at, f"{op_name!r} is a tag, not an op", "tags (ACTION/DONE) are implied by ends_on")
            if op_name not in ops:
                raise SpecError(at, f"unknown op {op_name!r}; known ops: {', '.join(ops) or 'none'}",
                                "define it under ops or remove it")
            if read_only and ops[op_name].mutating:
                raise SpecError(at, f"op {op_name!r} ({ops[op_name].semantics}) mutates memory but the phase is "
                                "read_only", "remove it or set read_only: false")
        if len(set(op_names)) != len(op_names):
            raise SpecError(pr.at("ops"), "an op is listed twice", "list each op once")
        ends_on = pr.get("ends_on", str, "done")
        if ends_on not in PHASE_ENDS:
            raise SpecError(pr.at("ends_on"), f"unknown {ends_on!r}", f"use one of {PHASE_ENDS}")
        out.append(PhaseSpec(name=name, template=template, continue_template=cont, ops=tuple(op_names),
                             max_iterations=pr.int_in("max_iterations", 1, MAX_ITERATIONS, 10), read_only=read_only,
                             ends_on=ends_on, skip_first_step=pr.get("skip_first_step", bool, False),
                             constrained=pr.get("constrained", bool, False)))
    return tuple(out)


_TOP_FIELDS = {"name", "version", "parent", "env", "description", "mode", "guidance", "action_tag", "done_tag",
               "end_tag", "commit_prompt", "fallback_actions", "action_repair", "history_length", "history_template",
               "history_constrained", "memory", "map_analysis", "files", "ops", "phases", "runtime"}
_MEMORY_FIELDS = {"max_total_bytes", "max_files", "default_file_bytes", "persistent"}
ENV_FAMILIES = ("crafter", "minihack", "nethack", "any")


def _action_repair(r: _Reader) -> tuple[str, ...]:
    names = r.get("action_repair", list, [])
    for i, n in enumerate(names):
        if not isinstance(n, str) or n not in REPAIRS:
            raise SpecError(f"action_repair[{i}]", f"unknown repair {short_repr(n)}",
                            f"use names from {', '.join(REPAIRS)}; [] = BALROG-exact validation")
        if n in names[:i]:
            raise SpecError(f"action_repair[{i}]", f"{short_repr(n)} is listed twice", "list each repair once")
    return tuple(names)


def validate_spec(data: Mapping[str, Any]) -> MemorySpec:
    r = _Reader(data, "", _TOP_FIELDS)
    name = r.get("name", str)
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", name):
        raise SpecError("name", f"bad spec name {name!r}", "letters, digits, _ . - (<= 64 chars)")
    version = r.int_in("version", 0, 1_000_000)
    parent = r.get("parent", int, None)
    if parent is not None and not 0 <= parent < version:
        raise SpecError("parent", f"parent {parent} must be an earlier version than {version}",
                        "use null for a root spec or a version < version")
    env = r.get("env", str, "any")
    if env not in ENV_FAMILIES:
        raise SpecError("env", f"unknown env family {env!r}", f"use one of {ENV_FAMILIES}")
    mode = r.get("mode", str, "memory")
    if mode not in MODES:
        raise SpecError("mode", f"unknown mode {mode!r}", f"use one of {MODES}")
    tags = {}
    for key, default in (("action_tag", "ACTION"), ("done_tag", "DONE"), ("end_tag", "END")):
        tags[key] = r.get(key, str, default)
        if not TAG_NAME_RE.match(tags[key]):
            raise SpecError(key, f"bad tag {tags[key]!r}", "UPPER_CASE letters, digits, _")
    if len(set(tags.values())) != 3:
        raise SpecError("action_tag", "action_tag, done_tag and end_tag must differ", "pick three distinct tags")
    mem = _Reader(r.get("memory", Mapping, {}), "memory", _MEMORY_FIELDS)
    max_total = mem.int_in("max_total_bytes", 1024, MAX_TOTAL_BYTES, 1 << 20)
    default_bytes = mem.int_in("default_file_bytes", 16, MAX_FILE_BYTES, 65536)
    if default_bytes > max_total:
        raise SpecError("memory.default_file_bytes", f"{default_bytes} > max_total_bytes {max_total}",
                        "a single file cannot be larger than the whole memory")
    files = _files(r, default_bytes)
    max_files = mem.int_in("max_files", max(1, len(files)), 1024, max(32, len(files)))
    initial_total = sum(len(f.content.encode()) for f in files)
    if initial_total > max_total:
        raise SpecError("memory.max_total_bytes", f"initial files hold {initial_total} bytes > {max_total}",
                        "raise max_total_bytes or shorten the initial content")
    for i, f in enumerate(files):
        if f.max_bytes > max_total:
            raise SpecError(f"files[{i}].max_bytes", f"{f.max_bytes} > memory.max_total_bytes {max_total}",
                            "a file cannot be larger than the whole memory")
    ops = _ops(r, {f.name for f in files})
    op_index = {o.name: o for o in ops}
    clash = set(op_index) & set(tags.values())
    if clash:
        raise SpecError("ops", f"op {sorted(clash)[0]!r} collides with a tag", "rename the op")
    phases = _phases(r, op_index, set(tags.values()))
    history_template = r.get("history_template", str, "")
    if mode == "memory":
        if not phases:
            raise SpecError("phases", "memory mode needs at least one phase", "add LOG/PLAN phases or mode: history")
        if phases[-1].ends_on != "action":
            raise SpecError(f"phases.{phases[-1].name}.ends_on", "the last phase must end on the action",
                            "set ends_on: action on the last phase (PLAN)")
        for p in phases[:-1]:
            if p.ends_on == "action":
                raise SpecError(f"phases.{p.name}.ends_on", "only the last phase may commit the action",
                                "set ends_on: done")
        if phases[0].skip_first_step and len(phases) == 1:
            raise SpecError(f"phases.{phases[0].name}.skip_first_step", "the only phase cannot be skipped",
                            "set skip_first_step: false")
    else:
        if phases:
            raise SpecError("phases", "history mode has no phases", "remove phases or use mode: memory")
        if not history_template:
            raise SpecError("history_template", "history mode needs a history_template",
                            "add the last user message, e.g. 'Current Observation:\\n{observation}\\n...'")
        _check_template(history_template, "history_template", HISTORY_PLACEHOLDERS)
    from automem_jax.memory.runtime_spec import parse_runtime  # it builds on this module's reader and errors

    runtime = parse_runtime(r.get("runtime", Mapping, None), phases, {f.name for f in files}, op_index,
                            lambda text, path: _check_template(text, path, TEMPLATE_PLACEHOLDERS))
    if runtime is not None and mode != "memory":
        raise SpecError("runtime", "history mode has no runtime section", "remove runtime or use mode: memory")
    fallbacks = r.get("fallback_actions", Mapping, {})
    for k, v in fallbacks.items():
        if k not in ENV_FAMILIES[:-1] + ("default",) or not isinstance(v, str) or not v.strip():
            raise SpecError(f"fallback_actions.{k if isinstance(k, str) else short_repr(k)}",
                            f"bad entry {short_repr(k)}: {short_repr(v)}",
                            "map crafter/minihack/nethack/default to a non-empty action name")
    return MemorySpec(
        name=name, version=version, parent=parent, env=env, description=r.get("description", str, ""), mode=mode,
        guidance=r.get("guidance", str, ""), action_tag=tags["action_tag"], done_tag=tags["done_tag"],
        end_tag=tags["end_tag"], commit_prompt=r.get("commit_prompt", str, "Now commit your action."),
        fallback_actions=dict(fallbacks), action_repair=_action_repair(r),
        history_length=r.int_in("history_length", 0, 1024, 16), history_template=history_template,
        history_constrained=r.get("history_constrained", bool, False), max_total_bytes=max_total, max_files=max_files, default_file_bytes=default_bytes,
        persistent=mem.get("persistent", bool, False), map_analysis=r.get("map_analysis", bool, False), files=files,
        ops=ops, phases=phases, runtime=runtime)
