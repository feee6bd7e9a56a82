"""The batched AutoMem inner agent (LOG/PLAN/ACTION), its prompts, traces and BALROG summary."""
from automem_jax.agent.rollout import EnvJob, EpisodeResult, Rollout, run_episodes
from automem_jax.agent.summary import summarize
from automem_jax.agent.trace import read_jsonl, turn_records

__all__ = ["EnvJob", "EpisodeResult", "Rollout", "run_episodes", "summarize", "read_jsonl", "turn_records"]
