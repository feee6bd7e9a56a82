"""Constrained decoding cost: grammar table build time and device memory per vocabulary, and JAX-engine decode
throughput at batch 256 with and without a grammar on every row.

`python -m automem_jax.bench.grammar --json_out=bench/results/grammar-<device>-<date>.json`
  tables: crafter_v0's LOG and PLAN reply grammars (memory/grammar.py, the 17 Crafter actions) compiled over each
  vocabulary of --tokenizers ("embedded" = SmolLM2's 49,152 tokens; "NAME=DIR" = any HF tokenizer.json dir, e.g.
  qwen=/path/to/Qwen2.5-7B-Instruct): vocabulary bytes, index build, table build, states, classes, device bytes.
  decode: for each preset of --presets (random weights), --batch requests of --prompt_len random tokens generate
  --max_new_tokens tokens at temperature 1, first unconstrained, then every row with the LOG grammar (ops and
  free text between them, so the mask and the state step run on every token; the token budget closes each reply
  with its last tokens). The grammar runs on the first tokenizer whose vocabulary fits the preset's logits (token ids past the
  tokenizer are never allowed): Qwen2.5 shapes with SmolLM2's tokenizer cost the same [B, 151936] mask work.
  Goal: constrained decode at most 10 percent slower.
`--small`: a CPU smoke run (tiny model, 8 rows, 24 tokens).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from absl import app, flags

from automem_jax.bench import common as bench_common

FLAGS = flags.FLAGS
flags.DEFINE_bool("small", False, "CPU smoke run: tiny random model, 8 rows, 24 new tokens")
flags.DEFINE_list("tokenizers", ["embedded"], "vocabularies for the table part: 'embedded' or NAME=HF_DIR")
flags.DEFINE_list("presets", ["smollm2_135m", "qwen2p5_0p5b"], "model presets (random weights) for the decode part")
flags.DEFINE_list("parts", ["tables", "decode"], "tables and/or decode")
flags.DEFINE_integer("batch", 256, "decode rows")
flags.DEFINE_integer("prompt_len", 512, "prompt tokens per row")
flags.DEFINE_integer("max_new_tokens", 256, "tokens per reply")
flags.DEFINE_integer("decode_steps", 16, "tokens per fused decode call")
flags.DEFINE_integer("repeats", 2, "timed generate calls per variant (after one warm-up call)")
flags.DEFINE_string("json_out", None, "write the JSON here too")

SPEC = Path(__file__).resolve().parents[2] / "configs" / "specs" / "crafter_v0.yaml"


def _tokenizers() -> list[tuple[str, object]]:
    from automem_jax.models.hub import embedded_model_dir
    from automem_jax.models.tokenizer import load_tokenizer
    out = []
    for item in FLAGS.tokenizers:
        name, _, path = item.partition("=")
        out.append((name, load_tokenizer(embedded_model_dir() if name == "embedded" and not path else path,
                                         require_chat_template=False)))
    return out


def _grammars() -> dict[str, str]:
    from automem_jax.envs.crafter_text import ACTIONS
    from automem_jax.memory import load_spec
    from automem_jax.memory.grammar import phase_regex
    spec = load_spec(SPEC)
    return {p.name: phase_regex(spec, p, ACTIONS) for p in spec.phases}


def tables_part(tokenizers, grammars: dict[str, str]) -> dict:
    """Per vocabulary: time to read the token bytes and build outlines' vocabulary, then per phase grammar the
    compile time, automaton size and the device tables' bytes (both grammars loaded together)."""
    import jax

    from automem_jax.engine import grammar as g
    out = {}
    for name, tok in tokenizers:
        t0 = time.perf_counter()
        vocab = g.TokenVocab(tuple(g.token_bytes_of(tok)), tuple(tok.eos_token_ids), tok.vocab_size)
        _ = vocab.outlines
        row = {"vocab_size": tok.vocab_size, "vocab_s": time.perf_counter() - t0, "phases": {}}
        bank = g.GrammarBank(vocab)
        for phase, regex in grammars.items():
            t0 = time.perf_counter()
            a = g.compile_regex(regex, vocab)
            row["phases"][phase] = {"compile_s": time.perf_counter() - t0, "states": a.num_states,
                                    "classes": a.num_classes, "min_tokens": a.min_tokens,
                                    "host_table_bytes": int(a.next.nbytes + a.token_class.nbytes)}
            bank.acquire(regex)
        t0 = time.perf_counter()
        jax.block_until_ready(bank.tables())
        row["device_tables_s"] = time.perf_counter() - t0
        row["device"] = bank.describe()
        out[name] = row
    return out


def _engine(preset: str, tokenizer, small: bool):
    import tempfile

    import jax.numpy as jnp

    from automem_jax.engine.jax_engine import JaxEngine
    from automem_jax.models.loader import load_model
    opts = dict(max_batch=FLAGS.batch, max_seq_len=FLAGS.prompt_len + FLAGS.max_new_tokens + 64,
                decode_steps=FLAGS.decode_steps)
    if small:  # a tiny random HF dir with its own byte-level tokenizer
        from automem_jax.models.testing import save_tiny_hf_model
        model_dir = save_tiny_hf_model(Path(tempfile.mkdtemp(prefix="bench_grammar_")) / "tiny")
        return JaxEngine(str(model_dir), dtype=jnp.float32, cache_dtype=jnp.float32, min_prefill_bucket=32, **opts)
    return JaxEngine(load_model(preset, dtype=jnp.bfloat16), tokenizer=tokenizer, **opts)


def _timed(engine, regex: str | None, seed: int) -> dict:
    from automem_jax.engine.base import Request, SamplingParams
    rng = np.random.default_rng(seed)
    vocab = min(engine.config.vocab_size, 49152)

    def call(k: int):
        reqs = [Request(prompt_ids=rng.integers(3, vocab, FLAGS.prompt_len).tolist(), sampling=SamplingParams(
            temperature=1.0, max_new_tokens=FLAGS.max_new_tokens, seed=k * 100_000 + i, regex=regex))
            for i in range(FLAGS.batch)]  # fresh random prompts: no prefix reuse across calls
        before = dict(engine.stats)
        t0 = time.perf_counter()
        comps = engine.generate(reqs)
        wall = time.perf_counter() - t0
        errors = [c.error for c in comps if c.error]
        if errors:
            raise RuntimeError(f"bench.grammar: {len(errors)} requests failed, e.g. {errors[0]}")
        tokens = sum(c.completion_tokens for c in comps)
        return {"wall_s": wall, "tokens": tokens, "decode_s": engine.stats["decode_s"] - before.get("decode_s", 0),
                "decode_calls": engine.stats["decode_calls"] - before.get("decode_calls", 0)}

    call(0), call(0)  # compiles (the second call meets slots that hold retained prefixes, as the timed ones do)
    runs = [call(k + 1) for k in range(FLAGS.repeats)]
    tokens, decode_s = sum(r["tokens"] for r in runs), sum(r["decode_s"] for r in runs)
    return {"decode_tokens_per_s": tokens / decode_s, "tokens_per_s_wall": tokens / sum(r["wall_s"] for r in runs),
            "mean_reply_tokens": tokens / (FLAGS.batch * len(runs)), "runs": runs}


def decode_part(tokenizers, grammars: dict[str, str], small: bool) -> dict:
    out = {}
    from automem_jax.models.config import PRESETS
    for preset in FLAGS.presets:
        width = PRESETS[preset].vocab_size if not small else 0
        tok_name, tok = next(((n, t) for n, t in tokenizers if t.vocab_size <= width), (None, None))
        if small:
            tok_name = "tiny"
        elif tok is None:
            out[preset] = {"skipped": f"no tokenizer of --tokenizers fits vocab_size {width}"}
            continue
        engine = _engine(preset, tok, small)
        free = _timed(engine, None, 1)
        constrained = _timed(engine, grammars["LOG"], 2)
        out[preset] = {"tokenizer": tok_name, "free": free, "constrained": constrained,
                       "slowdown": free["decode_tokens_per_s"] / constrained["decode_tokens_per_s"] - 1.0,
                       "grammar_tables": engine.grammars.describe() if engine.grammars else None,
                       "programs_compiled": dict(engine.compile_counts)}
    return out


def main(argv):
    del argv
    small = FLAGS.small
    if small:
        FLAGS.presets, FLAGS.batch, FLAGS.prompt_len, FLAGS.max_new_tokens = ["tiny"], 8, 32, 24
        FLAGS.decode_steps, FLAGS.repeats = 8, 1
    tokenizers, grammars = _tokenizers(), _grammars()
    result = {**bench_common.header("grammar"),
              "config": {k: getattr(FLAGS, k) for k in ("tokenizers", "presets", "parts", "batch", "prompt_len",
                                                         "max_new_tokens", "decode_steps", "repeats", "small")},
              "grammar_regex_chars": {k: len(v) for k, v in grammars.items()}}
    if "tables" in FLAGS.parts:
        result["tables"] = tables_part(tokenizers, grammars)
    if "decode" in FLAGS.parts:
        result["decode"] = decode_part(tokenizers, grammars, small)
        slow = [v["slowdown"] for v in result["decode"].values() if "slowdown" in v]
        result["goal"] = {"max_slowdown": 0.10, "met": bool(slow) and max(slow) <= 0.10}
    bench_common.emit(result, FLAGS.json_out)


if __name__ == "__main__":
    app.run(main)
