"""The regular language of a phase's replies: what memory/parser.py accepts, as one regex for constrained decoding.

A reply is the phase's ops `<|OP|>args<|END|>` (each op's arguments from its semantics' grammar below), then DONE
(a `done` phase) or the ACTION tag with exactly one of the env's action names (the `action` phase); at least one op
or the closing tag, and the closing tag on the phase's last iteration. Free text may follow each op (the model's
notes between ops), but the reply opens with a tag: with prose allowed first, SmolLM2-135M wrote prose until its
token budget ran low and the budget then closed every reply with the cheapest tag (DONE / an action, no op). Free text never holds `<` (every tag starts there), and in the
action phase no `:` either (the parser also reads a line `ACTION: x`). Arguments are single-line. Lengths are not
counted in the regex (that multiplies automaton states): the engine bounds every reply by its token budget, closing
it in time (engine/grammar). Canonical spellings only: the parser's tolerances (missing pipes, `}` closers) are
not generated.
"""
from __future__ import annotations

import dataclasses

import re
from typing import Callable, Sequence

from automem_jax.memory.parser import MAX_ACTION_CHARS, _clean_action
from automem_jax.memory.spec import MemorySpec, OpSpec, PhaseSpec, SpecError

# One line of argument text: no tag opener, no newline, not starting with a space (the parser strips it).
TEXT = r"[^<\n ][^<\n]*"
# A file the model names itself (the store refuses > 64 chars or a bad name; it still parses).
NEW_FILE = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
CREATING = frozenset({"append", "write", "create", "upsert_keyed"})
_META = re.compile(r"([\\.^$|?*+()\[\]{}])")


def _escape(text: str) -> str:
    """A literal in the syntax both Python's re and the automaton compiler (Rust regex) read: only metacharacters
    escaped (re.escape also escapes spaces and '-')."""
    return _META.sub(r"\\\1", text)


def _file(op: OpSpec, spec: MemorySpec) -> str:
    """The file argument: a declared file, or any file name for ops that create files."""
    names = [_escape(f.name) for f in spec.files]
    if op.semantics in CREATING or not names:
        names.append(NEW_FILE)
    return "(?:" + "|".join(names) + ")"


def _tail_count(op: OpSpec) -> str:
    count = rf"[1-9][0-9]{{0,{len(str(op.max_lines)) - 1}}}"
    return f"(?:{count})?" if op.file else rf"(?:\|{count})?"


def _upsert_entry(op: OpSpec) -> str:
    key = f"(?:{op.key_pattern})" if op.key_pattern else r"[^<\n| ][^<\n|]*"
    return key + r"\|" + TEXT


def _after_file(rest: str) -> Callable[[OpSpec], str]:
    return lambda op: rest if op.file else r"\|" + rest


# What follows the file argument, per op semantics (the store's ARG_GRAMMAR): a new semantics needs an entry.
ARG_REGEX: dict[str, Callable[[OpSpec], str]] = {
    "search": _after_file(TEXT), "count": _after_file(TEXT), "append": _after_file(TEXT), "write": _after_file(TEXT),
    "read": lambda op: "", "create": lambda op: "", "delete": lambda op: "", "tail": _tail_count,
    "upsert_keyed": lambda op: _after_file(_upsert_entry(op))(op),
}


class GrammarSpecError(SpecError):
    pass


def op_args_regex(op: OpSpec, spec: MemorySpec) -> str:
    """The arguments of `op` as the store parses them (`file|rest`, or `rest` for an op with a fixed file)."""
    if op.semantics not in ARG_REGEX:
        raise GrammarSpecError(f"ops.{op.name}.semantics", f"semantics {op.semantics!r} has no argument grammar for "
                               "constrained decoding", "add it to memory/grammar.ARG_REGEX, or set "
                               "constrained: false on the phases that use this op")
    rest = ARG_REGEX[op.semantics](op)
    return rest if op.file is not None else _file(op, spec) + rest


def _action_names(names: Sequence[str], where: str) -> list[str]:
    out = []
    for name in names:
        if _clean_action(name) != name or not name or len(name) >= MAX_ACTION_CHARS or "<" in name:
            raise GrammarSpecError(where, f"action {name!r} would not come back unchanged from the parser",
                                   "constrained decoding needs action names without surrounding spaces, shorter "
                                   f"than {MAX_ACTION_CHARS} characters")
        out.append(_escape(name))
    if not out:
        raise GrammarSpecError(where, "the env has no action names", "constrained action phases need them")
    return out


def phase_regex(spec: MemorySpec, phase: PhaseSpec, action_names: Sequence[str], *, final: bool = False) -> str:
    """The regex of every reply `phase` accepts (see the module docstring). `final`: the reply of the phase's last
    iteration, which must close it (DONE / the action) rather than leave ops whose results nobody reads."""
    end = rf"<\|{_escape(spec.end_tag)}\|>"
    ops = []
    for name in phase.ops:
        op = spec.op(name)
        ops.append(rf"<\|{_escape(op.name)}\|>{op_args_regex(op, spec)}{end}")
    if phase.ends_on == "action":
        gap = r"[^<:]*"
        close = rf"<\|{_escape(spec.action_tag)}\|>(?:{'|'.join(_action_names(action_names, f'phases.{phase.name}'))}){end}"
    else:
        gap = r"[^<]*"
        close = rf"<\|{_escape(spec.done_tag)}\|>"
    lead = r"[ \n]*"  # a reply opens with a tag (see the module docstring)
    if not ops:
        return lead + close
    if final:
        return rf"{lead}(?:(?:{'|'.join(ops)}){gap})*{close}"
    return rf"{lead}(?:(?:(?:{'|'.join(ops)}){gap})+(?:{close})?|{close})"


def history_regex(spec: MemorySpec, action_names: Sequence[str]) -> str:
    """The naive agent's reply (history mode) when `history_constrained`: exactly one of the env's action names."""
    return r"[ \n]*(?:" + "|".join(_action_names(action_names, "history_constrained")) + ")"


def constrain_all(spec: MemorySpec) -> MemorySpec:
    """`spec` with every phase constrained (and, in history mode, the naive agent's action): the experiment's
    `constrained_phases` switch, so specs written without the flag (crafter_v5, nomemory) decode the same way."""
    phases = tuple(dataclasses.replace(p, constrained=True) for p in spec.phases)
    return dataclasses.replace(spec, phases=phases, history_constrained=spec.mode == "history")


def phase_grammars(spec: MemorySpec, action_names: Sequence[str], *,
                   check: bool = True) -> dict[tuple[str, bool], str]:
    """{(phase name, final): regex} for the spec's constrained phases (`final`: its last iteration). With `check`,
    each regex is compiled to its automaton (engine/grammar.check_regex) and a failure raises SpecError naming
    `phases.<NAME>.constrained`."""
    out = {}
    if spec.mode == "history" and spec.history_constrained:
        out[("HISTORY", False)] = history_regex(spec, action_names)
    for phase in spec.phases:
        if not phase.constrained:
            continue
        for final in (False, True):
            regex = phase_regex(spec, phase, action_names, final=final)
            if check:
                from automem_jax.engine.grammar import GrammarError, check_regex
                try:
                    check_regex(regex)
                except GrammarError as e:
                    raise GrammarSpecError(f"phases.{phase.name}.constrained", "the phase's reply grammar is "
                                           f"refused: {e}", "simplify its ops (key_pattern) or set constrained: "
                                           "false") from None
            out[(phase.name, final)] = regex
    return out


def reply_ok(text: str, spec: MemorySpec, phase: PhaseSpec, action_names: Sequence[str]) -> bool:
    """What a constrained reply guarantees, judged by the parser: no op error, at least one op or the closing tag,
    and in the action phase either a valid action or ops to run first."""
    from automem_jax.memory.parser import parse_reply
    parsed = parse_reply(text, spec, phase)
    if parsed.errors or any(o.error for o in parsed.ops):
        return False
    if phase.ends_on == "done":
        return parsed.done or bool(parsed.ops)
    if parsed.action is not None:
        return parsed.action in action_names
    return bool(parsed.ops)
