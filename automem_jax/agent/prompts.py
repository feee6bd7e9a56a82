"""Prompt text from a spec: the context blocks AutoMem's inner agent puts in every call, and the chat messages.

All wording that a structure revision may want to change lives in the spec's templates; this module only computes
the dynamic blocks (previous action, diff notice, map analysis, op usage lines) and fills the placeholders.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from automem_jax.envs.base import Observation
from automem_jax.memory.spec import MemorySpec, OpSpec, PhaseSpec

_ARG_DISPLAY = {"file": "filename.txt", "keyword": "keyword", "N": "N", "text": "Your note", "content": "Content",
                "key": "key"}


def format_observation(obs: Observation) -> str:
    """BALROG long-term text, then short-term (status/inventory), as AutoMem's `_format_obs`."""
    parts = [p for p in (obs.text, obs.status) if p]
    return "\n".join(parts) if parts else "(no observation)"


def op_usage(op: OpSpec, spec: MemorySpec) -> str:
    args = "|".join(_ARG_DISPLAY.get(a, a) for a in op.grammar.split("|")) if op.grammar else ""
    return f"<|{op.name}|>{args}<|{spec.end_tag}|>"


def ops_help(spec: MemorySpec, phase: PhaseSpec) -> str:
    lines = []
    for name in phase.ops:
        op = spec.op(name)
        usage = op_usage(op, spec)
        lines.append(f"  {usage:<40} {op.description or op.semantics}".rstrip())
    return "\n".join(lines)


def previous_action_text(prev_step: int, raw: str | None, executed: str | None, valid: bool) -> str:
    if raw is not None and not valid:
        return (f'At the PREVIOUS step (step {prev_step}) your LLM output was: "{raw}"\n'
                f'This was NOT a valid action. The environment executed the default action "{executed}" instead.\n'
                "THIS IS AN IMPORTANT FAILURE TO LOG — your output did not match any valid action.")
    return f'At the PREVIOUS step (step {prev_step}) you took action: "{executed or raw}"'


def diff_notice(unchanged: int) -> str:
    """Identical observation -> WARNING; 3 or more in a row -> CRITICAL (AutoMem)."""
    if unchanged >= 3:
        return (f"⚠️ CRITICAL WARNING: The observation has been UNCHANGED for {unchanged} consecutive actions. "
                "You are STUCK. Your recent actions have had NO EFFECT on the environment. You MUST try a "
                "COMPLETELY DIFFERENT approach — do not repeat any of your recent actions.")
    if unchanged >= 1:
        return ("⚠️ WARNING: The observation is IDENTICAL to the previous step. Your previous action likely had NO "
                "EFFECT. This is important to log — the action may be invalid or inapplicable in the current state.")
    return ""


def stuck_warning(notice: str, prev_executed: str | None) -> str:
    if not notice:
        return ""
    if prev_executed:
        notice += f"\nYour last executed action was '{prev_executed}'. Do NOT repeat it — choose something different."
    return notice


_NEIGHBOURS = (("north", -1, 0), ("south", 1, 0), ("east", 0, 1), ("west", 0, -1),
               ("northeast", -1, 1), ("northwest", -1, -1), ("southeast", 1, 1), ("southwest", 1, -1))


def _is_map_line(line: str) -> bool:
    s = line.rstrip()
    return len(s) >= 3 and sum(c.isalpha() for c in s if c != "@") / len(s) < 0.5


def map_analysis(obs_text: str) -> str:
    """Classify the 8 tiles around '@' on an ASCII map in the observation (stairs, doors, walls, danger, ...)."""
    lines = obs_text.split("\n")
    row = next((i for i, ln in enumerate(lines) if "@" in ln and _is_map_line(ln)), None)
    if row is None:
        return ""
    col = lines[row].index("@")
    can, blocked, notes = [], [], []
    for name, dr, dc in _NEIGHBOURS:
        r, c = row + dr, col + dc
        line = lines[r] if 0 <= r < len(lines) and (r == row or _is_map_line(lines[r])) else ""
        ch = line[c] if 0 <= c < len(line) else None
        if ch is None:
            blocked.append(f"{name} (edge/void)")
        elif ch in "><":
            can.append(f"{name} (stairs '{ch}')")
            notes.append(f"*** STAIRS {'DOWN' if ch == '>' else 'UP'} ADJACENT: {name}")
        elif ch == "+":
            can.append(f"{name} (door '+')")
            notes.append(f"DOOR: {name} (use 'open')")
        elif ch in "-|":
            blocked.append(f"{name} (wall '{ch}')")
        elif ch == " ":
            blocked.append(f"{name} (rock/void)")
        elif ch in "}^":
            notes.append(f"DANGER: {name} '{ch}'")
        elif ch.isalpha():
            can.append(f"{name} (monster '{ch}')")
            notes.append(f"MONSTER ADJACENT: {name} '{ch}' (move into it to attack)")
        else:
            can.append(f"{name} ('{ch}')")
    out = ["=== MAP ANALYSIS ===", *notes]
    if can:
        out.append("CAN MOVE: " + ", ".join(can))
    if blocked:
        out.append("BLOCKED: " + ", ".join(blocked))
    return "\n".join(out)


@dataclasses.dataclass
class StepContext:
    """The dynamic blocks of one agent step (shared by its LOG and PLAN phases)."""

    step: int
    observation: str
    instruction: str
    previous_action: str = ""
    diff_notice: str = ""
    stuck_warning: str = ""
    map_analysis: str = ""


def render_phase_prompt(spec: MemorySpec, phase: PhaseSpec, ctx: StepContext, file_index: str,
                        notices: str = "") -> str:
    return phase.template.format(notices=notices,
        instruction=ctx.instruction, observation=ctx.observation, file_index=file_index,
        previous_action=ctx.previous_action, diff_notice=ctx.diff_notice, stuck_warning=ctx.stuck_warning,
        guidance=spec.guidance, map_analysis=ctx.map_analysis, ops_help=ops_help(spec, phase), step=ctx.step,
        prev_step=ctx.step - 1, action_tag=spec.action_tag, done_tag=spec.done_tag)


def render_continue(spec: MemorySpec, phase: PhaseSpec, results: str, file_index: str, step: int) -> str:
    return phase.continue_template.format(results=results or "(no commands were run)", file_index=file_index,
                                          step=step, action_tag=spec.action_tag, done_tag=spec.done_tag)


def history_messages(spec: MemorySpec, instruction: str, history: Sequence[tuple[str, str]], observation: str,
                     step: int) -> list[dict[str, str]]:
    """BALROG's history prompt: instruction, the last N observation/action pairs, the current observation."""
    msgs = [{"role": "user", "content": instruction}]
    for obs, act in list(history)[-spec.history_length:] if spec.history_length else []:
        msgs.append({"role": "user", "content": f"Observation:\n{obs}"})
        msgs.append({"role": "assistant", "content": act})
    msgs.append({"role": "user", "content": spec.history_template.format(
        instruction=instruction, observation=observation, step=step, action_tag=spec.action_tag)})
    return msgs
