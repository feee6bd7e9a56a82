"""The two-role handoff of AutoMem's two-model scaffolds (`*_twomodel/agents/memory_agent.py`).

The memory role (the LoRA adapter) runs LOG and PLAN's memory reads. When its PLAN ends, the conversation is handed
to the base model, which continues the same chat: it may still issue the phase's read ops (up to the phase's turn
cap) and commits the world action; with no op and no action, or at the cap, the spec's fallback runs.
How the memory role's PLAN ends decides the messages appended before the base model's first turn:
  it committed an action -> its reply without the action (or "(memory consultation complete)" when nothing is
                            left), then the handoff message: the commit prompt, headed by that reply's op results;
  a reply with no op     -> the reply, then the commit prompt alone;
  its turn cap           -> the reply, then the phase's usual continue message with the op results.
"""
from __future__ import annotations

from automem_jax.memory.parser import strip_action
from automem_jax.memory.spec import MemorySpec

CONSULTATION_DONE = "(memory consultation complete)"


def handoff_message(spec: MemorySpec, results: str) -> str:
    """AutoMem's PLAN_HANDOFF (no results) or PLAN_HANDOFF_WITH_RESULTS."""
    return f"Results:\n{results}\n\n{spec.commit_prompt}" if results else spec.commit_prompt


def handoff_messages(spec: MemorySpec, reply: str, action: str | None, has_ops: bool, results: str,
                     continue_message: str) -> list[dict[str, str]]:
    """The assistant + user messages that end the memory role's PLAN and start the base model's turns."""
    if action is not None:
        return [{"role": "assistant", "content": strip_action(reply, spec) or CONSULTATION_DONE},
                {"role": "user", "content": handoff_message(spec, results)}]
    if not has_ops:
        return [{"role": "assistant", "content": reply}, {"role": "user", "content": spec.commit_prompt}]
    return [{"role": "assistant", "content": reply}, {"role": "user", "content": continue_message}]
