"""The embedded SmolLM2-135M on CPU, crafter_v0's LOG and PLAN first turns: 100 replies sampled at temperature 1 per
phase with and without the phase grammar; parse rates (memory/grammar.reply_ok) and greedy equality where the
unconstrained greedy reply already matched. Slow: loads the real model and decodes ~400 replies on CPU.

`python tests/test_grammar_embedded.py` prints the rates (the figures recorded below)."""
from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import pytest

N = 100
MAX_NEW = 48
OBSERVATION = """You see:
- grass 1 step to your west
- tree 2 steps to your north-east
- water 4 steps to your south-west
- cow 3 steps to your east

You face grass at your front.

Your status:
- health: 9/9
- food: 8/9
- drink: 7/9
- energy: 9/9

You have nothing in your inventory."""
# measured with this file's main (SmolLM2-135M Q4_1 in float32, 2-core CPU; seed 0) with the grammar that allowed
# prose before the first tag; not yet re-measured since replies open with a tag (a rerun did not finish in 25 min
# on the shared 2-core box): rerun `python tests/test_grammar_embedded.py` and update if the free rate moved
RECORDED = {"LOG": (0.0, 1.0), "PLAN": (0.0, 1.0)}  # phase: (unconstrained, constrained) parse rate


def _setup():
    import jax.numpy as jnp

    from automem_jax.agent import prompts
    from automem_jax.engine.jax_engine import JaxEngine
    from automem_jax.envs.crafter_text import ACTIONS, instruction_prompt
    from automem_jax.memory import MemoryStore, load_spec
    from automem_jax.models.hub import embedded_model_dir
    import tempfile

    spec = load_spec(Path(__file__).resolve().parents[1] / "configs" / "specs" / "crafter_v0.yaml")
    store = MemoryStore(tempfile.mkdtemp(), spec)
    ctx = prompts.StepContext(step=1, observation=OBSERVATION, instruction=instruction_prompt(),
                              previous_action="Your previous action (step 0) was: Move West")
    msgs = {p.name: [{"role": "user", "content": prompts.render_phase_prompt(spec, p, ctx, store.file_index())}]
            for p in spec.phases}
    engine = JaxEngine(str(embedded_model_dir()), dtype=jnp.float32, cache_dtype=jnp.float32, max_batch=25,
                       max_seq_len=2048, decode_steps=8, min_prefill_bucket=128)
    return spec, list(ACTIONS), msgs, engine


def measure() -> dict:
    from automem_jax.engine.base import Request, SamplingParams
    from automem_jax.memory.grammar import phase_regex, reply_ok
    spec, actions, msgs, engine = _setup()
    out = {}
    for phase in spec.phases:
        regex = phase_regex(spec, phase, actions)
        row = {}
        for name, rx in (("free", None), ("constrained", regex)):
            sp = SamplingParams(temperature=1.0, max_new_tokens=MAX_NEW, seed=0, regex=rx)
            comps = engine.generate([Request(messages=msgs[phase.name], sampling=dataclasses.replace(sp, seed=i))
                                     for i in range(N)])
            row[name] = [c.text for c in comps]
            row[name + "_rate"] = sum(reply_ok(c.text, spec, phase, actions) for c in comps) / N
            row[name + "_errors"] = [c.error for c in comps if c.error]
        greedy = {}
        for name, rx in (("free", None), ("constrained", regex)):
            c = engine.generate([Request(messages=msgs[phase.name], sampling=SamplingParams(
                temperature=0.0, max_new_tokens=MAX_NEW, regex=rx))])[0]
            greedy[name] = c
        row["greedy"] = {k: v.text for k, v in greedy.items()}
        row["greedy_free_matches"] = bool(re.fullmatch(regex, greedy["free"].text))
        row["greedy_same"] = greedy["free"].token_ids == greedy["constrained"].token_ids
        out[phase.name] = row
    return out


@pytest.mark.slow
def test_embedded_model_parse_rate_with_and_without_grammar():
    result = measure()
    for phase, (free_rate, constrained_rate) in RECORDED.items():
        row = result[phase]
        assert not row["constrained_errors"]
        assert row["constrained_rate"] == constrained_rate == 1.0, row["constrained"][:5]
        assert row["free_rate"] == pytest.approx(free_rate, abs=0.05), row["free"][:5]
        if row["greedy_free_matches"]:  # the mask never changes a reply that was already in the language
            assert row["greedy_same"], row["greedy"]


if __name__ == "__main__":
    import json
    res = measure()
    json.dump({p: {k: v for k, v in r.items() if k not in ("free", "constrained")} | {
        "free_samples": r["free"][:5], "constrained_samples": r["constrained"][:8]} for p, r in res.items()},
        sys.stdout, indent=1)
