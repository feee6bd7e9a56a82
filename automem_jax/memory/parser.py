"""Tag parser for model replies: `<|OP|>args<|END|>`, `<|DONE|>`, `<|ACTION|>x<|END|>`.

Tolerances follow AutoMem's inner agent: pipes optional (`<OP>`, `<|OP>`), END may close with `>` or `}`, op names
in any case, code fences and prose around tags ignored; the action also as `<ACTION>x</ACTION>` or a line
`ACTION: x`, stripped of surrounding whitespace only. Ops are returned in the order they appear (AutoMem grouped
them by kind; order matters for "SEARCH before APPEND"). What cannot be parsed becomes an error string the model
sees in its next user message.
"""
from __future__ import annotations

import dataclasses
import re

from automem_jax.memory.spec import MemorySpec, PhaseSpec

MAX_ACTION_CHARS = 60  # AutoMem ignores longer "actions" (prose, not a command)


@dataclasses.dataclass
class OpCall:
    name: str  # spec op name (upper case)
    args: str  # raw text between the tags, stripped
    error: str | None = None  # set when the op may not run (unknown, not allowed here, unclosed)

    def to_dict(self) -> dict:
        return {"op": self.name, "args": self.args} | ({"error": self.error} if self.error else {})


@dataclasses.dataclass
class ParsedReply:
    ops: list[OpCall]
    done: bool = False
    action: str | None = None
    errors: list[str] = dataclasses.field(default_factory=list)  # reply-level problems shown to the model

    @property
    def runnable(self) -> list[OpCall]:
        return [o for o in self.ops if o.error is None]


def _tag(name: str) -> str:
    return rf"<\|?{name}\|?>"


def _end(spec: MemorySpec) -> str:
    return rf"<\|?{spec.end_tag}\|?[>}}]"


def extract_action(text: str, spec: MemorySpec) -> str | None:
    """The committed action, or None. Tries `<|ACTION|>x<|END|>`, `<ACTION>x</ACTION>`, then a line `ACTION: x`.

    Linear in the reply: each form is found with forward searches that never rescan (a backtracking regex per form
    took seconds on a reply of blank lines or repeated openers, minutes on a long run of spaces)."""
    t = re.escape(spec.action_tag)
    for opener, closer in ((rf"<\|?{t}\|?>", _end(spec)), (rf"<{t}>", rf"</{t}>")):
        # the first opener decides: if no closer follows it, none follows a later one
        o = re.compile(opener, re.IGNORECASE).search(text)
        c = re.compile(closer, re.IGNORECASE).search(text, o.end()) if o else None
        if c:
            cand = _clean_action(text[o.end():c.start()])
            if cand and len(cand) < MAX_ACTION_CHARS:
                return cand
    cand = _clean_action(_action_line(text, spec.action_tag) or "")
    return cand if cand and len(cand) < MAX_ACTION_CHARS else None


def _action_line(text: str, tag: str) -> str | None:
    """x of the first line `ACTION: x` (x on that line or the next non-blank one) with at most MAX_ACTION_CHARS."""
    nonspace = re.compile(r"\S")
    for m in re.finditer(rf"^[^\S\n]*{re.escape(tag)}:", text, re.IGNORECASE | re.MULTILINE):
        start = nonspace.search(text, m.end())  # stops at the next line start holding the tag, at the latest
        if start is None:
            return None
        end = text.find("\n", start.start())
        line = text[start.start():end if end >= 0 else len(text)].rstrip()
        if len(line) <= MAX_ACTION_CHARS:
            return line
    return None


def _clean_action(text: str) -> str:
    # AutoMem strips the captured text and nothing else; quotes, trailing periods, case are the spec's
    # `action_repair` options (memory/action_repair.py), so the default stays BALROG-exact.
    return text.strip()


def strip_action(text: str, spec: MemorySpec) -> str:
    """The reply without its action commits (two-role mode: the memory role's action is discarded and the base
    model commits). As AutoMem's `_strip_action_tags`: every `<|ACTION|>x<|END|>`, `<ACTION>x</ACTION>` and
    `ACTION: x` line is removed, text around them is kept, the result stripped. Linear, like extract_action."""
    t = re.escape(spec.action_tag)
    for opener, closer in ((rf"<\|?{t}\|?>", _end(spec)), (rf"<{t}>", rf"</{t}>")):
        text = _remove_spans(text, re.compile(opener, re.IGNORECASE), re.compile(closer, re.IGNORECASE))
    return _remove_action_lines(text, spec.action_tag).strip()


def _remove_spans(text: str, opener: re.Pattern, closer: re.Pattern) -> str:
    """Each opener up to the nearest closer after it, removed (what a lazy `opener.*?closer` sub removes)."""
    out, pos = [], 0
    while (o := opener.search(text, pos)) is not None:
        c = closer.search(text, o.end())
        if c is None:  # no closer after this opener, so none after a later one either
            break
        out.append(text[pos:o.start()])
        pos = c.end()
    out.append(text[pos:])
    return "".join(out)


def _remove_action_lines(text: str, tag: str) -> str:
    """Every `ACTION: x` line (x on that line or the next non-blank one, at most MAX_ACTION_CHARS) removed."""
    nonspace = re.compile(r"\S")
    out, pos = [], 0
    for m in re.finditer(rf"^[^\S\n]*{re.escape(tag)}:", text, re.IGNORECASE | re.MULTILINE):
        if m.start() < pos:
            continue
        start = nonspace.search(text, m.end())
        if start is None:
            break
        end = text.find("\n", start.start())
        end = len(text) if end < 0 else end
        if len(text[start.start():end].rstrip()) > MAX_ACTION_CHARS:
            continue
        out.append(text[pos:max(m.start() - 1, 0)])  # the line break before the line goes with it
        pos = end
    out.append(text[pos:])
    return "".join(out)


def parse_reply(text: str, spec: MemorySpec, phase: PhaseSpec) -> ParsedReply:
    """Parse one reply in `phase`: ops in order (with per-op errors), DONE, and the action (if the phase commits)."""
    reserved = {spec.end_tag, spec.done_tag, spec.action_tag}
    names = sorted({o.name for o in spec.ops}, key=len, reverse=True)
    # Known names may omit pipes; any other UPPER word counts as a tag only with both pipes (avoid HTML/prose).
    known_open = rf"<\|?({'|'.join(map(re.escape, names))})\|?>" if names else None
    unknown_open = r"<\|([A-Za-z][A-Za-z0-9_]*)\|>"
    open_pats = [p for p in (known_open, unknown_open) if p]
    opener = re.compile("|".join(f"(?:{p})" for p in open_pats), re.IGNORECASE)
    end_re = re.compile(_end(spec), re.IGNORECASE)
    allowed = set(phase.ops)
    parsed = ParsedReply(ops=[])

    # Every tag except END bounds the op before it: an op whose END is not before the next tag was left unclosed.
    tags = [(m, next(g for g in m.groups() if g is not None).upper()) for m in opener.finditer(text)]
    tags = [(m, n) for m, n in tags if n != spec.end_tag]
    for k, (m, name) in enumerate(tags):
        if name in reserved:
            continue
        bound = tags[k + 1][0].start() if k + 1 < len(tags) else len(text)
        end = end_re.search(text, m.end(), bound)
        if end is None:
            parsed.ops.append(OpCall(name, text[m.end():bound].strip()[:80],
                                     error=f"{name} has no closing <|{spec.end_tag}|>; write "
                                           f"<|{name}|>args<|{spec.end_tag}|>"))
            continue
        args = text[m.end():end.start()].strip()
        op = spec.op(name)
        if op is None:
            err = f"unknown op {name}; allowed in {phase.name}: {', '.join(phase.ops) or 'none'}"
        elif name not in allowed:
            why = " (read-only phase)" if phase.read_only and op.mutating else ""
            err = f"{name} is not allowed in {phase.name}{why}; allowed: {', '.join(phase.ops) or 'none'}"
        else:
            err = None
        parsed.ops.append(OpCall(name, args, error=err))

    if phase.ends_on == "done":
        parsed.done = re.search(_tag(re.escape(spec.done_tag)), text, re.IGNORECASE) is not None
    else:
        parsed.action = extract_action(text, spec)
    parsed.errors = [f"[ERROR: {o.error}]" for o in parsed.ops if o.error]
    return parsed
