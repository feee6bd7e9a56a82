"""Settings shared by the paper-scale configs (configs/crafter.py, minihack.py, nethack.py): AutoMem's model,
serving, sampling and loop budgets. Each config then sets only what differs per env family."""
from __future__ import annotations

import ml_collections

from automem_jax.orchestrate.config import base_config


def paper_scale_config(name: str, *, spec: str, max_lora_rank: int) -> ml_collections.ConfigDict:
    c = base_config()
    c.name = name
    c.envs = (name,)
    c.spec = spec
    # AutoMem serves Qwen2.5-32B-Instruct; a local HF directory (nothing downloads at run time). Serve it with
    # launch/gpu.sh --engine=sglang, or set --config.engine.backend=jax for the in-process engine.
    c.model = "checkpoints/Qwen2.5-32B-Instruct"
    c.engine.backend = "sglang"
    c.engine.url = "http://127.0.0.1:30000"
    c.engine.max_batch = 256
    c.engine.max_seq_len = 32768
    c.engine.max_loras = 4
    c.engine.max_lora_rank = max_lora_rank
    c.sampling.temperature = 1.0
    c.sampling.max_new_tokens = 4096  # AutoMem max_tokens
    c.seeds.train = (1000, 100000)  # AutoMem: randint(1000, 99999), disjoint from selection and test seeds
    c.schedule = "automem"  # structure revisions first, then proficiency
    c.structure.attempts_per_revision, c.structure.continuations_per_attempt = 3, 1  # AutoMem
    # Revisions are proposed by an LLM, as AutoMem's meta-LLM: by default the run's own served model through its
    # OpenAI-compatible API (base_url "" = engine.url + /v1; orchestrate/real_parts.proposer_config). A coding-agent
    # CLI instead: --config.structure.proposer.kind=command --config.structure.proposer.command='<cli> ...' (it runs
    # in the workspace and must write spec.yaml + analysis.md; docs/SPECS.md). With nothing served (engine jax) the
    # heuristic proposes, with a logged warning.
    c.structure.proposer.kind = "openai"
    c.structure.proposer.base_url = ""
    c.structure.proposer.timeout_s = 3600.0
    c.structure.proposer.max_tokens = 12288  # a complete evolved spec is ~20k characters of YAML
    c.proficiency.rounds = 2
    c.report.paper_table = True  # AutoMem's evaluation seeds next to the held-out test table
    return c
