"""The real parts behind `Parts`: engine, envs, agent rollouts, structure loop, selection + dataset + LoRA trainer.

Everything heavy is imported and built lazily, so `python -m automem_jax` fails fast on a bad config and a run
that only has evaluation left does not pay for the trainer's imports.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import ml_collections
from absl import logging

from automem_jax.agent.trace import read_jsonl
from automem_jax.orchestrate.config import expand_envs, family_of, seed_range
from automem_jax.orchestrate.parts import Parts, Revision, RolloutCall, ScoreFn

STRUCTURE_OWN_FIELDS = ("enabled", "revisions")  # orchestrator fields; the rest goes to StructureConfig


def enable_compilation_cache(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """Point JAX's persistent compilation cache at config.engine.compilation_cache_dir (engine and trainer)."""
    path = str(config.engine.get("compilation_cache_dir", "") or "")
    if not path:
        return
    import jax
    cache = Path(path).expanduser()
    cache = cache if cache.is_absolute() else Path(workdir) / cache
    cache.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    logging.info("JAX persistent compilation cache: %s", cache)


def make_engine(config: ml_collections.ConfigDict, model_dir: str) -> Any:
    e = config.engine
    if e.backend == "jax":
        from automem_jax.engine.config import EngineConfig
        from automem_jax.engine.scheduler import JaxEngine
        return JaxEngine(model_dir, config=EngineConfig.of(EngineConfig.from_dict(e.to_dict()), seed=config.seed))
    from automem_jax.engine import make_engine as make
    if e.backend == "sglang":
        return make("sglang", base_url=e.url, timeout=e.timeout_s, retries=e.retries)
    return make("openai", base_url=e.url, model=e.openai_model or model_dir,
                regex_param=e.get("openai_regex_param") or None)


def proposer_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """config.structure.proposer with the run's own served model filled in.

    kind 'openai' with an empty base_url means "the model this run serves": the OpenAI-compatible API of
    engine.url (SGLang and our engine server both serve /v1/chat/completions) and its model name. When nothing
    serves one (the in-process jax engine), and whenever the heuristic is the configured kind, the offline heuristic
    proposes, with a warning: it only applies programmatic mutations, not an LLM's analysis."""
    p = dict(config.structure.proposer.to_dict())
    if p.get("kind") == "openai" and not p.get("base_url"):
        e = config.engine
        if e.backend in ("sglang", "openai") and str(e.url).startswith(("http://", "https://")):
            url = str(e.url).rstrip("/")
            p["base_url"] = url if url.endswith("/v1") else url + "/v1"
            p["model"] = p.get("model") or e.get("openai_model", "") or config.model
        else:
            logging.warning("structure.proposer: kind 'openai' with no base_url and no served model (engine.backend="
                            "%s); falling back to the offline heuristic proposer. Set --config.structure.proposer."
                            "base_url/model, or kind=command with a coding-agent CLI (docs/SPECS.md).", e.backend)
            p["kind"] = "heuristic"
    if p.get("kind") == "heuristic":
        logging.warning("structure.proposer: using the offline heuristic proposer (no LLM proposer configured)")
    return p


def structure_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """StructureConfig fields from config.structure plus the seed splits and the revision budget."""
    d = {k: v for k, v in config.structure.to_dict().items() if k not in STRUCTURE_OWN_FIELDS}
    d["proposer"] = proposer_config(config)
    budget = config.epochs if config.schedule == "interleaved" else config.structure.revisions
    d.update(max_revisions=int(budget), selection_seeds=list(seed_range(config, "selection")),
             test_seeds=list(seed_range(config, "test")), train_seeds=list(seed_range(config, "train")))
    return d


class _TrainProgress:
    """A tqdm bar fed by the trainer's metrics.jsonl (the trainer has no callback; this keeps it untouched)."""

    def __init__(self, metrics: Path, total: int | None, desc: str):
        from tqdm import tqdm
        self.metrics, self.bar = metrics, tqdm(total=total, desc=desc, unit="step")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        import json
        seen = 0
        while not self._stop.wait(1.0):
            if not self.metrics.exists():
                continue
            lines = self.metrics.read_text().splitlines()
            if len(lines) > seen:
                last = json.loads(lines[-1])
                self.bar.n = int(last.get("step", 0))
                self.bar.set_postfix(loss=f"{last.get('loss', float('nan')):.4f}")
                self.bar.refresh()
                seen = len(lines)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.bar.close()


class RealParts:
    """`engine`, `make_env(name, num_envs)`, `tokenizer` and `model` (a `mesh -> LoRA model` factory for the
    trainer) may be given for programmatic use (tests, notebooks); by default they come from the config."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: Path, *, engine: Any = None,
                 make_env: Callable[[str, int], Any] | None = None, tokenizer: Any = None, model: Any = None):
        self.config = config
        self.workdir = Path(workdir)
        from automem_jax.models import hub
        self.model_dir = hub.resolve_model(config.model) if model is None else ""
        self._engine = engine
        self._engine_given = engine is not None
        self._make_env = make_env
        self._tokenizer = tokenizer
        self._model = model
        self._envs: dict[str, Any] = {}
        enable_compilation_cache(config, self.workdir)

    # ----- lazily built resources -----
    @property
    def engine(self) -> Any:
        if self._engine is None:
            logging.info("engine: %s backend, model %s", self.config.engine.backend, self.model_dir)
            self._engine = make_engine(self.config, self.model_dir)
        return self._engine

    def env(self, name: str) -> Any:
        if name not in self._envs and self._make_env is not None:
            self._envs[name] = self._make_env(name, self.config.num_envs)
        if name not in self._envs:
            from automem_jax import envs
            kwargs = dict(self.config.env_kwargs.get(family_of(name), {}) or {})
            self._envs[name] = envs.make(name, self.config.num_envs, **kwargs)
        return self._envs[name]

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from automem_jax.models.loader import load_tokenizer
            self._tokenizer = load_tokenizer(self.model_dir)
        return self._tokenizer

    # ----- Parts -----
    @staticmethod
    def load_spec(path: str) -> Any:
        from automem_jax.memory import load_spec
        return load_spec(path)

    @staticmethod
    def spec_version(spec: Any) -> str:
        return f"v{spec.version}"

    def rollout(self, call: RolloutCall, engine: Any = None) -> list[Any]:
        """Every env plays call.seeds with call.spec on `engine` (default: the model's engine); the spec goes
        to out_dir/spec.yaml so the traces say what produced them (the proficiency teacher replays it)."""
        from tqdm import tqdm
        from automem_jax.agent.rollout import EnvJob, run_episodes
        from automem_jax.engine.base import SamplingParams
        from automem_jax.fileio import atomic_write_text
        call.out_dir.mkdir(parents=True, exist_ok=True)
        if self.config.get("constrained_phases", False):
            from automem_jax.memory.grammar import constrain_all
            call = dataclasses.replace(call, spec=constrain_all(call.spec))
        atomic_write_text(call.out_dir / "spec.yaml", call.spec.to_yaml())
        s = self.config.sampling
        sampling = SamplingParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                                  max_new_tokens=s.max_new_tokens, seed=self.config.seed)
        jobs = [EnvJob(env=self.env(name), seeds=call.seeds_for(family_of(name)))
                for name in expand_envs(self.config.envs) if call.seeds_for(family_of(name))]
        done = _finished_count(call.out_dir / "episodes.jsonl")
        total = sum(len(j.seeds) for j in jobs)
        bar = tqdm(total=total, initial=min(done, total), desc=call.desc, unit="episode")

        def progress(result: Any) -> None:
            bar.update(1)
            bar.set_postfix(last=f"{result.env}:{result.seed}={100 * result.progression:.1f}%")

        t0 = time.perf_counter()
        try:
            e = self.config.engine
            own = engine is None and not self._engine_given  # the engine config.engine describes
            client = {"client_name": e.backend if own else type(engine or self.engine).__name__,
                      "model_id": e.openai_model or self.config.model, "base_url": (e.url or None) if own else None}
            return run_episodes(jobs, engine or self.engine, call.spec, call.out_dir, run_id=call.run_id,
                                max_steps=self.config.max_steps, sampling=sampling, memory_adapter=call.adapter,
                                client=client, progress=progress)
        finally:
            bar.close()
            eng = engine or self._engine
            logging.info("%s: %.1fs; engine stats %s, compiled programs %s", call.desc, time.perf_counter() - t0,
                         dict(getattr(eng, "stats", {}) or {}), dict(getattr(eng, "compile_counts", {}) or {}))

    def revise(self, incumbent: Any, trace_dirs: Sequence[Path], history: Path, score_fn: ScoreFn) -> Revision:
        from automem_jax.loops.structure import StructureLoop
        loop = StructureLoop(structure_config(self.config), history, score_fn)
        res = loop.run(incumbent, [str(d) for d in trace_dirs])
        spec_path = str(loop.history.spec_path(res.version)) if res.accepted else ""
        d = res.decision or {}
        return Revision(accepted=res.accepted, version=f"v{res.version}", spec_path=spec_path,
                        candidate_score=_first(d, "mean_candidate"),
                        incumbent_score=_first(d, "mean_incumbent"),
                        detail={"reason": res.reason, "revision": res.revision, "decision": d})

    def train(self, trace_dirs: Sequence[Path], round_dir: Path, round_index: int) -> str | None:
        from automem_jax.loops.proficiency import select_decisions, write_selection
        from automem_jax.train import build_dataset, train_lora
        from automem_jax.train.data import DatasetInfo
        p = self.config.proficiency
        cfg = p.train
        round_dir.mkdir(parents=True, exist_ok=True)
        dataset_dir = round_dir / "dataset"
        if not (dataset_dir / "manifest.json").exists():
            if p.get("teacher", ""):
                trace_dirs = [self.teacher_rollout(trace_dirs, round_dir / "teacher", round_index)]
            examples, rep = select_decisions([str(d) for d in trace_dirs], p.selection.to_dict())
            write_selection(examples, rep, round_dir / "selection")
            logging.info("round %d: selected %d decisions from %d trace dirs", round_index, len(examples),
                         len(trace_dirs))
            if len(examples) < int(p.min_examples):
                logging.warning("round %d: %d examples < proficiency.min_examples=%d; not training", round_index,
                                len(examples), p.min_examples)
                return None
            info = build_dataset(examples, self.tokenizer(), dataset_dir, cfg.seq_len,
                                 loss_turns=cfg.get("loss_turns", "all"))
        else:
            info = DatasetInfo.load(dataset_dir)
        logging.info("round %d: dataset %d rows, %d loss tokens; training LoRA r=%d", round_index, info.num_rows,
                     info.num_loss_tokens, cfg.lora.rank)
        release = getattr(self._engine, "release_memory", None)
        if release is not None:  # the engine's KV cache (48 GB in crafter_gpu) and the trainer do not fit together
            logging.info("round %d: the engine's KV cache is dropped for training (rebuilt at its next call)",
                         round_index)
            release()
        total = cfg.max_steps if cfg.max_steps > 0 else None
        bar = _TrainProgress(round_dir / "train" / "metrics.jsonl", total, f"round {round_index} LoRA")
        try:
            result = train_lora(cfg, self._model or self.model_dir, dataset_dir, round_dir / "train")
        finally:
            bar.close()
        logging.info("round %d: trained %d steps, final loss %.4f, %.0f tokens/s", round_index, result.steps,
                     result.final_loss, result.tokens_per_s)
        return result.adapter_dir

    def teacher_rollout(self, trace_dirs: Sequence[Path], out_dir: Path, round_index: int) -> Path:
        """proficiency.teacher="rule": the rule teacher (agent.teacher on a ScriptedEngine) plays the seeds of the
        agent's epoch with the same spec into out_dir (resumable: finished episodes are skipped)."""
        import json
        from automem_jax.agent.teacher import make_teacher
        from automem_jax.engine.scripted import ScriptedEngine
        dirs = [Path(d) for d in trace_dirs if (Path(d) / "episodes.jsonl").exists()]
        if not dirs or not (dirs[0] / "spec.yaml").exists():
            raise FileNotFoundError(f"proficiency.teacher: need the epoch's episodes.jsonl and spec.yaml in one of "
                                    f"{[str(d) for d in trace_dirs]}; rerun that epoch's rollout")
        spec = self.load_spec(str(dirs[0] / "spec.yaml"))
        seeds = sorted({int(ep["seed"]) for d in dirs for ep in read_jsonl(d / "episodes.jsonl")})
        names = {self.env(n).task: list(self.env(n).action_names) for n in expand_envs(self.config.envs)}
        logging.info("round %d: proficiency data: %s teacher (quickstart), not the agent's own traces — %d seeds "
                     "x %d envs, spec v%s, into %s", round_index, self.config.proficiency.teacher, len(seeds),
                     len(names), spec.version, out_dir)
        engine = ScriptedEngine(make_teacher(spec, names))
        self.rollout(RolloutCall(spec=spec, seeds=seeds, out_dir=out_dir, run_id=f"teacher-r{round_index:02d}",
                                 desc=f"round {round_index} teacher"), engine=engine)
        return out_dir

    def load_adapter(self, name: str, path: str) -> None:
        from automem_jax.engine.base import EngineError
        try:
            self.engine.load_adapter(name, path)
        except EngineError as e:
            if "already" not in str(e).lower():
                raise
            # a resumed run against a long-lived server: replace the stale copy under the same name
            self.engine.unload_adapter(name)
            self.engine.load_adapter(name, path)

    @staticmethod
    def summarize(results: list[Any]) -> dict:
        from automem_jax.agent.summary import summarize
        return summarize(results)

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        if self._engine is not None:
            self._engine.close()


def _finished_count(path: Path) -> int:
    return sum(1 for _ in path.open()) if path.exists() else 0


def _first(d: dict, *keys: str) -> float | None:
    for k in keys:
        if isinstance(d.get(k), (int, float)):
            return float(d[k])
    return None


def build_parts(config: ml_collections.ConfigDict, workdir: str | Path, **overrides: Any) -> Parts:
    """Parts for `config`; `overrides` go to RealParts (engine=, make_env=, tokenizer=, model=)."""
    rp = RealParts(config, Path(workdir), **overrides)
    return Parts(load_spec=rp.load_spec, spec_version=rp.spec_version, rollout=rp.rollout, revise=rp.revise,
                 train=rp.train, load_adapter=rp.load_adapter, summarize=rp.summarize, close=rp.close)
