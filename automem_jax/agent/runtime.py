"""The per-step runtime of a spec's `runtime:` section, called by the rollout at a few points of each agent step:

  begin_step   derived fields from the new observation (agent/derive.py)
  enter_phase  runtime-kept files written, prompt override chosen, `before` runtime ops run, notices rendered
  leave_phase  `after` runtime ops (e.g. an auto-log line), then prune policies
  repair/gate  the committed action is repaired, then checked against the gate's precondition rules

Everything it does is recorded as events the rollout puts into the trace, so traces show notices, gates and runtime
files acting. A spec without a runtime section gets a runtime that does nothing.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from automem_jax.agent.derive import FieldEngine, parse_message
from automem_jax.memory.action_repair import apply_one
from automem_jax.memory.runtime_spec import RepairStep, RuntimeSpec
from automem_jax.memory.spec import MemorySpec, PhaseSpec
from automem_jax.memory.store import MemoryStore


@dataclasses.dataclass
class PhaseView:
    """How a phase is prompted this step: the phase (possibly overridden) and the runtime's text around it."""

    phase: PhaseSpec
    notices: str = ""  # fills {notices}
    top: str = ""  # before the first user message
    bottom: str = ""  # after it


class StepRuntime:
    def __init__(self, spec: MemorySpec, family: str, task: str, action_names: Sequence[str]):
        self.spec, self.family, self.task = spec, family, task
        self.rt: RuntimeSpec | None = spec.runtime
        self.action_names = tuple(action_names)
        self.fields = FieldEngine(self.rt)
        self.store: MemoryStore | None = None
        self.values: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []
        self.rejections = 0

    @property
    def active(self) -> bool:
        return self.rt is not None

    def reset(self, store: MemoryStore | None) -> None:
        self.store = store
        self.fields.reset()
        self.events = []

    # ----- step start -----
    def begin_step(self, *, step: int, text: str, status: str, observation: str, last_action: str | None,
                   last_raw: str | None, last_valid: bool, reward: float, changed: bool, unchanged: int) -> None:
        self.rejections = 0
        if not self.active:
            return
        builtins = {"step": step, "task": self.task, "family": self.family, "text": text, "status": status,
                    "observation": observation, "message": parse_message(text), "last_action": last_action or "",
                    "last_raw_action": last_raw or "", "last_valid": bool(last_valid), "reward": float(reward),
                    "changed": bool(changed), "unchanged": int(unchanged), "files": self._file_lines(),
                    "phase": ""}
        self.values = self.fields.step(builtins, self.action_names)
        declared = {f.name: self.values.get(f.name) for f in self.rt.fields}
        if declared:
            self.events.append({"event": "fields", "step": step, "values": declared})

    def _file_lines(self) -> dict[str, int]:
        if self.store is None:
            return {}
        out = {}
        for name in self.store.list_files():
            content = self.store.read_file(name) or ""
            out[name] = len(content.splitlines()) if content.strip() else 0
        return out

    def _refresh(self, phase: str) -> None:
        self.values["files"] = self._file_lines()
        self.values["phase"] = phase

    # ----- phases -----
    def enter_phase(self, phase: PhaseSpec, skipped: bool = False) -> PhaseView:
        """Kept files for this phase are written even when it is skipped (step 0's LOG)."""
        if not self.active:
            return PhaseView(phase)
        self._refresh(phase.name)
        for k in self.rt.kept_files:
            if k.before == phase.name and self.store is not None:
                err = self.store.write_file(k.file, k.content.render(self.values, self.action_names))
                self.events.append({"event": "kept_file", "phase": phase.name, "file": k.file}
                                   | ({"error": err} if err else {}))
        if skipped:
            return PhaseView(phase)
        self._refresh(phase.name)
        for o in self.rt.prompt_overrides:
            if o.phase == phase.name and o.when.truth(self.values, self.action_names):
                phase = dataclasses.replace(phase, template=o.template, ops=o.ops)
                self.events.append({"event": "override", "phase": o.phase, "when": o.when.text})
                break
        blocks: dict[str, list[str]] = {"inline": [], "top": [], "bottom": []}
        for a in self.rt.auto_ops:
            if a.before == phase.name and (a.when is None or a.when.truth(self.values, self.action_names)):
                res = self._run_op(a.op, a.args.render(self.values, self.action_names), phase.name)
                if res is not None:
                    blocks["inline"].append(res)
        for n in self.rt.notices:
            if phase.name not in n.phases:
                continue
            lines = []
            for rule in n.rules:
                if rule.when.truth(self.values, self.action_names):
                    lines.append(rule.text.render(self.values, self.action_names))
                    if n.mode == "first":
                        break
            if not lines:
                continue
            header = [n.header.render(self.values, self.action_names)] if n.header else []
            block = "\n".join(header + lines)
            self.events.append({"event": "notice", "phase": phase.name, "name": n.name, "text": block})
            for where in (("top", "bottom") if n.placement == "both" else (n.placement,)):
                blocks[where].append(block)
        return PhaseView(phase, *("\n\n".join(blocks[k]) for k in ("inline", "top", "bottom")))

    def leave_phase(self, phase: str, wrote: bool) -> None:
        """After a phase ran (not when skipped): `after` runtime ops, then prune policies."""
        if not self.active or self.store is None:
            return
        self._refresh(phase)
        scope = dict(self.values, wrote=bool(wrote))
        for a in self.rt.auto_ops:
            if a.after == phase and (a.when is None or a.when.truth(scope, self.action_names)):
                self._run_op(a.op, a.args.render(scope, self.action_names), phase)
        for p in self.rt.prune:
            if p.after != phase:
                continue
            content = self.store.read_file(p.file)
            lines = content.splitlines() if content else []
            if len(lines) <= p.over_lines:
                continue
            head, tail = lines[:p.keep_head], lines[-p.keep_last:]
            pruned = len(lines) - len(head) - len(tail)
            marker = [p.marker.render({"pruned": pruned, "kept": len(head) + len(tail)})] if p.marker else []
            err = self.store.write_file(p.file, "\n".join(head + marker + tail) + "\n")
            self.events.append({"event": "prune", "phase": phase, "file": p.file, "pruned": pruned}
                               | ({"error": err} if err else {}))

    def _run_op(self, op: str, args: str, phase: str) -> str | None:
        if self.store is None:
            return None
        res = self.store.run(op, args)
        self.events.append({"event": "runtime_op", "phase": phase, "op": op, "args": args, "result": res.text,
                            "ok": res.ok})
        return res.formatted

    # ----- the action -----
    def repair(self, action: str) -> str:
        if not self.active or not self.rt.repair:
            return action
        out = action
        for step in self.rt.repair:
            out = _repair_step(step, out, self.action_names)
        if out != action:
            self.events.append({"event": "repair", "from": action, "to": out})
        return out

    def gate(self, action: str) -> str | None:
        """The rejection message for `action`, or None when it may go through (no rule fired or the step's
        rejection budget is spent)."""
        g = self.rt.gate if self.active else None
        if g is None or self.rejections >= g.max_rejections:
            return None
        scope = dict(self.values, action=action, rejections=self.rejections)
        for rule in g.rules:
            if rule.when.truth(scope, self.action_names):
                reason = rule.text.render(scope, self.action_names)
                msg = g.message.render(dict(scope, reason=reason), self.action_names)
                self.rejections += 1
                self.events.append({"event": "gate", "action": action, "rejection": self.rejections,
                                    "message": msg})
                return msg
        return None

    def drain_events(self) -> list[dict[str, Any]]:
        out, self.events = self.events, []
        return out


def _repair_step(step: RepairStep, action: str, names: tuple[str, ...]) -> str:
    if step.builtin:
        return apply_one(step.builtin, action, names)
    if step.mapping:
        return step.mapping.get(" ".join(action.lower().split()), action)
    m = step.regex.fullmatch(action.strip())
    if m is None:
        return action
    out = step.replace
    for g in range(step.regex.groups, 0, -1):
        out = out.replace(f"\\{g}", m.group(g) or "")
    return out.strip() or action
