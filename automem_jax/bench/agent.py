"""Agent throughput: AutoMem decisions (committed env actions) per second, end to end.

`python -m automem_jax.bench.agent --json_out=bench/results/agent-<device>-<date>.json`
  1024 Craftax envs, spec crafter_v0 (LOG -> PLAN -> action), SmolLM2-135M shapes with random weights (the
  embedded model's tokenizer renders the chat), JAX engine. Random weights almost never write a valid op, so a step
  costs exactly one LOG and one PLAN call (one PLAN call at step 0): a fixed, reproducible load per decision.
  `--model=embedded` uses the real embedded SmolLM2 weights instead (replies then vary in length and op count).
`python -m automem_jax.bench.agent --small` is a CPU smoke run (tiny model, 4 envs, short prompts).

Everything the agent does is inside the timed region: env steps, prompt building, generation, parsing, memory ops,
trace writing. A warm-up run on other seeds compiles the engine's and the env's programs first; then `--repeats`
timed runs of the same work give the mean figures and the standard error of decisions/s.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import tempfile
import time
from pathlib import Path

import yaml
from absl import app, flags

from automem_jax.bench import agent_figures
from automem_jax.bench import common as bench_common
from automem_jax.agent.rollout import EnvJob, run_episodes
from automem_jax.engine import config as engine_config
from automem_jax.engine import make_engine
from automem_jax.engine.base import SamplingParams
from automem_jax.memory import load_spec

FLAGS = flags.FLAGS
flags.DEFINE_bool("small", False, "CPU smoke run: tiny random model, 4 envs, compact prompts")
flags.DEFINE_string("model", "preset:smollm2_135m",
                    "'preset:<name>' (random weights; tokenizer from --tokenizer), 'embedded', or an HF model dir")
flags.DEFINE_string("tokenizer", "embedded", "HF dir with tokenizer.json for preset models ('embedded' = SmolLM2)")
flags.DEFINE_string("spec", "crafter_v0", "spec name in configs/specs or a path to a spec YAML")
flags.DEFINE_string("env", "crafter", "env name for automem_jax.envs.make")
flags.DEFINE_integer("num_envs", 1024, "concurrent envs (one job)")
flags.DEFINE_integer("steps", 8, "timed decisions per env")
flags.DEFINE_integer("warmup_steps", 0, "decisions per env in the warm-up run, which compiles the programs the "
                     "timed run needs (0 = --steps: prompts grow step by step, so a shorter warm-up leaves compiles in "
                     "the timed run)")
flags.DEFINE_integer("repeats", 3, "timed runs (the same seeds and work each time): the figures are their mean, with "
                     "the standard error of decisions/s; host time varies ~20% from run to run on one GPU host")
flags.DEFINE_integer("max_batch", 0, "engine slots (0 = num_envs)")
flags.DEFINE_integer("max_new_tokens", 32, "tokens per reply")
flags.DEFINE_float("temperature", 1.0, "sampling temperature (AutoMem: 1.0)")
flags.DEFINE_bool("constrained", False, "turn constrained decoding on in every phase of the spec (memory/grammar.py). "
                  "Compare with --model=embedded: random-weight presets under a grammar write ops on every turn and "
                  "run each phase to its iteration cap")
# every other engine option: EngineConfig's flags, with this benchmark's scenario values as their defaults
engine_config.define_flags({"max_seq_len": 2048, "decode_steps": 16, "max_loras": 0}, skip=("max_batch",))
flags.adopt_module_key_flags(engine_config)  # --help lists the engine flags beside the benchmark's
flags.DEFINE_bool("host_profile", False, "cProfile the timed run: add the top 30 functions by own and by cumulative "
                  "time (the host's share of the wall clock)")
flags.DEFINE_integer("profile_call", 0, "run the N-th engine.generate call of the timed run (1-based) under the JAX "
                     "profiler and add its GPU busy time vs wall time and top kernels (that call's wall clock "
                     "includes the profiler's overhead)")
flags.DEFINE_string("profile_dir", None, "where --profile_call writes its trace (default: inside the out dir)")
flags.DEFINE_string("out_dir", None, "where traces go (default: a temp dir, deleted)")
flags.DEFINE_string("json_out", None, "write the JSON here too")

SPEC_DIR = Path(__file__).resolve().parents[2] / "configs" / "specs"


def _spec(small: bool):
    path = Path(FLAGS.spec) if FLAGS.spec.endswith((".yaml", ".yml")) else SPEC_DIR / f"{FLAGS.spec}.yaml"
    d = yaml.safe_load(path.read_text())
    for phase in (d.get("phases") or {}).values():
        phase["constrained"] = FLAGS.constrained or bool(phase.get("constrained"))
    if not small:
        return load_spec(d)
    # compact prompts: a CPU smoke run cannot afford 1-2k-token prompts
    if d.get("mode") == "memory":
        d["guidance"] = ""
        d["phases"]["LOG"].update(template="{previous_action}\n{observation}\n{file_index}\n{ops_help}",
                                  continue_template="{results}\n{file_index}")
        d["phases"]["PLAN"].update(template="{stuck_warning}\n{observation}\n{file_index}\n{ops_help}",
                                   continue_template="{results}")
    return load_spec(d)


def _engine_config() -> engine_config.EngineConfig:
    return engine_config.from_flags(max_batch=FLAGS.max_batch or FLAGS.num_envs)


def _engine(small: bool, workdir: Path):
    if small:
        from automem_jax.models.testing import save_tiny_hf_model
        model_dir = save_tiny_hf_model(workdir / "tiny_model")
        return make_engine("jax", model=str(model_dir), config=_engine_config()), f"tiny:{model_dir.name}"
    from automem_jax.models.hub import embedded_model_dir
    from automem_jax.models.loader import load_model
    from automem_jax.models.tokenizer import load_tokenizer
    if FLAGS.model.startswith("preset:"):
        tok_dir = embedded_model_dir() if FLAGS.tokenizer == "embedded" else Path(FLAGS.tokenizer)
        model = load_model(FLAGS.model.removeprefix("preset:"))
        return make_engine("jax", model=(model, load_tokenizer(tok_dir)), config=_engine_config()), FLAGS.model
    model_dir = embedded_model_dir() if FLAGS.model == "embedded" else Path(FLAGS.model)
    return make_engine("jax", model=str(model_dir), config=_engine_config()), FLAGS.model


def _profile_one_call(engine, n: int, log_dir: Path, into: dict) -> None:
    """Wrap engine.generate so that its n-th call runs under the profiler: `into` gets the call's GPU busy time
    (summed kernel durations) against its wall time, i.e. whether the GPU or the host was the bottleneck."""
    generate, count = engine.generate, [0]

    def wrapped(requests):
        count[0] += 1
        if count[0] != n:
            return generate(requests)
        out = []
        into.update(requests=len(requests), **bench_common.gpu_profile(lambda: out.append(generate(requests)),
                                                                        log_dir, steps=1, runs=1))
        return out[0]
    engine.generate = wrapped


def main(argv):
    del argv
    small = FLAGS.small
    if small:
        FLAGS.num_envs, FLAGS.steps, FLAGS.warmup_steps = min(FLAGS.num_envs, 4), min(FLAGS.steps, 2), 1
        FLAGS.max_seq_len, FLAGS.max_new_tokens = min(FLAGS.max_seq_len, 1024), min(FLAGS.max_new_tokens, 8)
    from automem_jax.envs import make
    tmp = tempfile.TemporaryDirectory(prefix="bench_agent_")
    out = Path(FLAGS.out_dir) if FLAGS.out_dir else Path(tmp.name)
    spec = _spec(small)
    engine, model_name = _engine(small, Path(tmp.name))
    env = make(FLAGS.env, FLAGS.num_envs)
    sampling = SamplingParams(temperature=FLAGS.temperature, max_new_tokens=FLAGS.max_new_tokens, seed=0)
    n = FLAGS.num_envs

    t0 = time.perf_counter()
    run_episodes([EnvJob(env, list(range(10_000, 10_000 + n)))], engine, spec, out / "warmup", run_id="warmup",
                 max_steps=FLAGS.warmup_steps or FLAGS.steps, sampling=sampling)
    warmup_s = time.perf_counter() - t0

    stats = getattr(engine, "stats", None)
    before = dict(stats) if stats is not None else {}
    compiles = getattr(engine, "compile_counts", {})  # JaxEngine has both
    compiled_before = sum(compiles.values())
    profiled: dict = {}
    if FLAGS.profile_call:
        _profile_one_call(engine, FLAGS.profile_call, Path(FLAGS.profile_dir or out / "profile"), profiled)
    profile = None
    runs = []
    repeats = 1 if FLAGS.host_profile or FLAGS.profile_call else max(1, FLAGS.repeats)
    for r in range(repeats):
        run_dir = out / ("timed" if r == 0 else f"timed_{r}")
        timed = functools.partial(run_episodes, [EnvJob(env, list(range(n)))], engine, spec, run_dir,
                                  run_id="timed", max_steps=FLAGS.steps, sampling=sampling)
        t0 = time.perf_counter()
        if FLAGS.host_profile:  # profiling slows the host: its wall clock is not comparable with a plain run's
            results, profile = bench_common.host_profile(timed, top=30)
        else:
            results = timed()
        wall = time.perf_counter() - t0
        runs.append(agent_figures.run_figures(results, json.loads((run_dir / "summary.json").read_text()), wall))
    figures = agent_figures.mean_figures(runs, warmup_s)
    result = {
        **bench_common.header("agent"),
        "config": {"model": model_name, "spec": spec.name, "env": FLAGS.env, "num_envs": n, "steps": FLAGS.steps,
                   "warmup_steps": FLAGS.warmup_steps or FLAGS.steps,
                   "max_batch": FLAGS.max_batch or n, "max_seq_len": FLAGS.max_seq_len,
                   "max_new_tokens": FLAGS.max_new_tokens, "temperature": FLAGS.temperature, "small": small,
                   "repeats": repeats,
                   "constrained": [p.name for p in spec.phases if p.constrained],
                   "engine_config": _engine_config().to_dict()},
        "figures": figures,
        "goal": {"decisions_per_s": 1000, "met": figures["decisions_per_s"] >= 1000},
    }
    if profile is not None:
        result["host_profile"] = profile
    if profiled:
        result["profiled_call"] = profiled
    runner = getattr(engine, "runner", None)
    if runner is not None:  # what ran: the resolved kernel paths, straight-line layers, packing, the mesh
        result["config"]["engine"] = {"kernels": dataclasses.asdict(runner.kernels), "unstacked": runner.unstacked,
                                      "packed_prefill": runner.packed_prefill,
                                      "mesh": None if runner.mesh is None else dict(runner.mesh.shape)}
    if stats is not None:  # where the engine's time went in the timed run (JaxEngine telemetry), and the programs
        # compiled inside it (the warm-up did not cover their shapes); per timed run
        result["engine_stats"] = {k: round((v - before.get(k, 0)) / repeats, 4) for k, v in stats.items()}
        result["engine_stats"]["programs_compiled"] = sum(compiles.values()) - compiled_before
    bench_common.emit(result, FLAGS.json_out)
    engine.close()
    env.close()
    tmp.cleanup()


if __name__ == "__main__":
    app.run(main)
