"""The AutoMem experiment: rollouts -> structure revisions -> proficiency rounds -> evaluation -> reports.

`Experiment(config, workdir, parts).run()` walks `orchestrate.schedule.plan(config)`, skipping phases that
`state.json` records as finished. Each phase resumes its own partial work (rollouts skip finished episodes, the
structure loop keeps its history, training restarts from orbax checkpoints), so rerunning the same command after a
kill continues where it stopped. All hosts run every phase on their share of the seeds; results are all-gathered so
every host takes the same decisions; only process 0 writes reports.
"""
from __future__ import annotations

import hashlib
import json
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import ml_collections
from absl import logging

from automem_jax import fileio, report
from automem_jax.report.paired import REJECTED, final_index, per_seed_progression
from automem_jax.loops.structure.acceptance import paired_decision
from automem_jax.orchestrate import distributed
from automem_jax.orchestrate.config import check_resume, paper_seeds, seed_range, train_seeds
from automem_jax.orchestrate.parts import Parts, RolloutCall
from automem_jax.orchestrate.schedule import Phase, plan
from automem_jax.orchestrate.state import RunState

REPO_ROOT = Path(__file__).resolve().parents[1]


class EpisodeRecord:
    """An EpisodeResult's scalar fields, rebuilt from a gathered dict (multi-host) for summarize()."""

    def __init__(self, **fields: Any):
        self.__dict__.update(fields)

    def __repr__(self) -> str:
        return f"EpisodeRecord({self.__dict__})"


def record_of(r: Any) -> dict[str, Any]:
    get = (lambda k, d=None: r.get(k, d)) if isinstance(r, dict) else (lambda k, d=None: getattr(r, k, d))
    return {"env": str(get("env")), "task": str(get("task")), "seed": int(get("seed")),
            "progression": float(get("progression")), "steps": int(get("steps", 0) or 0),
            "total_reward": float(get("total_reward", 0.0) or 0.0), "status": str(get("status", "")),
            "invalid_actions": int(get("invalid_actions", 0) or 0),
            "input_tokens": int(get("input_tokens", 0) or 0), "output_tokens": int(get("output_tokens", 0) or 0),
            "failed_candidates": [str(a) for a in get("failed_candidates", None) or []],
            "stats": {k: int(v) for k, v in (get("stats", None) or {}).items() if k in COUNTED_STATS}}


# Per-episode counters summed into state["timings"] (the report's wall-time table).
COUNTED_STATS = ("model_calls", "fallbacks", "prompt_tokens", "completion_tokens", "engine_errors")


def count_results(results: Sequence[Any]) -> dict[str, int]:
    out = {"episodes": len(results), "steps": 0, **{k: 0 for k in COUNTED_STATS}}
    for r in results:
        get = r.get if isinstance(r, dict) else (lambda k, d=None, r=r: getattr(r, k, d))
        out["steps"] += int(get("steps", 0) or 0)
        stats = get("stats", None) or {}
        for k in COUNTED_STATS:
            out[k] += int(stats.get(k, 0) or 0)
    return out


def resolve_path(path: str) -> Path:
    """A config path as given (absolute or from the cwd), else relative to the repository root."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return REPO_ROOT / p


class Experiment:
    def __init__(self, config: ml_collections.ConfigDict, workdir: str | Path, parts: Parts, *,
                 process_index: int = 0, process_count: int = 1):
        self.config = config
        self.workdir = Path(workdir)
        self.parts = parts
        self.pi, self.pc = process_index, process_count
        self.is_chief = process_index == 0
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state = RunState.load(self.workdir)
        self._loaded_adapters: dict[str, str] = {}
        self._counts: dict[str, int] = {}  # the running phase's rollout counters (count_results)
        self._check_config()
        self.tb = report.Scalars(self.workdir / "tensorboard",
                                 enabled=self.is_chief and bool(config.report.tensorboard))

    # ----- helpers -----
    def _check_config(self) -> None:
        """Save the config on first start; on resume, refuse a change to what the run measures (ConfigError) and
        name the changed fields that may differ (engine, report, ...)."""
        path = self.workdir / "config.json"
        current = json.loads(self.config.to_json_best_effort())
        changed = check_resume(self.config, self.workdir)
        if changed:
            logging.warning("resuming %s with changed %s (how the run executes or reports, not what it measures); "
                            "finished phases are kept", self.workdir, ", ".join(changed))
        if self.is_chief:
            report.atomic_write_text(path, json.dumps(current, indent=2, sort_keys=True) + "\n")

    def _host_dir(self, *parts: str) -> Path:
        return self.workdir.joinpath(*parts, f"host_{self.pi}")

    def _all_host_dirs(self, *parts: str) -> list[Path]:
        return [self.workdir.joinpath(*parts, f"host_{i}") for i in range(self.pc)]

    def _rollout(self, spec: Any, seeds: Sequence[int], dir_parts: Sequence[str], run_id: str,
                 adapter: str | None, desc: str, seeds_by_family: dict[str, list[int]] | None = None) -> list[Any]:
        """This host's share of `seeds` (or of each family's `seeds_by_family`) on every env; returns all hosts'
        results (gathered)."""
        if adapter is not None:
            self._ensure_adapter(adapter)
        mine = distributed.shard(seeds, self.pi, self.pc)
        by_family = None if seeds_by_family is None else \
            {f: distributed.shard(s, self.pi, self.pc) for f, s in seeds_by_family.items()}
        out_dir = self._host_dir(*dir_parts)
        out_dir.mkdir(parents=True, exist_ok=True)
        call = RolloutCall(spec=spec, seeds=mine, out_dir=out_dir, run_id=run_id, adapter=adapter, desc=desc,
                           seeds_by_family=by_family)
        results = self.parts.rollout(call) if mine or any((by_family or {}).values()) else []
        if self.pc > 1:
            gathered = distributed.allgather_json([record_of(r) for r in results], self.pc)
            results = [EpisodeRecord(**d) for host in gathered for d in host]
        for k, v in count_results(results).items():
            self._counts[k] = self._counts.get(k, 0) + v
        return list(results)

    def _score(self, spec: Any, seeds: Sequence[int], tag: str, adapter: str | None) -> dict[int, float]:
        """Per-seed progression of `spec` (+ adapter) on `seeds`. A system already scored on the same seeds (the
        structure loop's accepted candidate is the proficiency round's base incumbent) reuses that measurement."""
        text = spec.to_yaml() if hasattr(spec, "to_yaml") else json.dumps(spec, sort_keys=True, default=str)
        key = hashlib.sha256(json.dumps([text, adapter, sorted(seeds)]).encode()).hexdigest()[:24]
        known = self.state["seed_scores"].get(key)
        if known is not None:
            scores = {int(s): float(v) for s, v in known["scores"].items()}
            logging.info("score %s: the same system was scored on these seeds as %s; reusing it", tag, known["tag"])
        else:
            results = self._rollout(spec, seeds, ("scores", tag), f"score-{tag}", adapter, f"score {tag}")
            scores = per_seed_progression(results)
            self.state["seed_scores"][key] = {"tag": tag, "scores": {str(s): v for s, v in scores.items()}}
        mean = statistics.fmean(scores.values()) if scores else 0.0
        self.state["scores"][tag] = mean
        self.state.save()
        logging.info("score %s on %d selection seeds: %.2f%%", tag, len(scores), 100 * mean)
        return scores

    def _ensure_adapter(self, name: str, adapter_dir: str | None = None) -> None:
        """Load an adapter into the engine once per process (a resumed run reloads the accepted one)."""
        if name in self._loaded_adapters:
            return
        if adapter_dir is None:
            known = [self.state["adapter"] or {}] + [{"name": r.get("name"), "dir": r.get("adapter_dir")}
                                                     for r in self.state["rounds"].values()]
            adapter_dir = next((k["dir"] for k in known if k.get("name") == name and k.get("dir")), None)
            if adapter_dir is None:
                raise RuntimeError(f"adapter {name!r} is not loaded and the state does not record its directory")
        logging.info("loading LoRA adapter %s from %s", name, adapter_dir)
        self.parts.load_adapter(name, str(adapter_dir))
        self._loaded_adapters[name] = str(adapter_dir)

    def _adapter_name(self) -> str | None:
        return self.state["adapter"]["name"] if self.state["adapter"] else None

    def _incumbent(self) -> tuple[Any, str]:
        inc = self.state["incumbent"]
        return self.parts.load_spec(inc["path"]), inc["version"]

    def _start(self) -> None:
        """First start: copy spec v0 into the workdir (the run's spec history starts there)."""
        if self.state["incumbent"] is not None:
            return
        src = resolve_path(self.config.spec)
        if not src.exists():
            raise FileNotFoundError(f"config.spec: {src} does not exist; point it at a spec YAML "
                                    "(configs/specs/<env>_v0.yaml)")
        version = self.parts.spec_version(self.parts.load_spec(str(src)))
        dst = self.workdir / "specs" / f"{version}.yaml"
        if self.is_chief:
            dst.parent.mkdir(parents=True, exist_ok=True)
            fileio.atomic_copy(src, dst)
        distributed.barrier("spec-v0", self.pc)
        self.state["incumbent"] = {"version": version, "path": str(dst)}
        self.state["specs"] = [{"version": version, "path": str(dst), "epoch": -1}]
        self.state.save()
        logging.info("spec %s copied from %s", version, src)

    def _log_results(self, prefix: str, results: Sequence[Any], step: int) -> dict[str, Any]:
        if not results:
            return {}
        s = self.parts.summarize(list(results))
        envs, avg, se = report.figures_from_summary(s)
        logging.info("%s: average progression %.2f%% ± %.2f (%s)", prefix, avg, se,
                     ", ".join(f"{k} {v.mean:.2f}% n={v.episodes}" for k, v in envs.items()))
        self.tb.log(f"{prefix}/average_progress", avg, step)
        self.tb.log_dict(prefix, {k: v.mean for k, v in envs.items()}, step)
        return s

    # ----- phases -----
    def run_rollout(self, phase: Phase) -> None:
        spec, version = self._incumbent()
        seeds = train_seeds(self.config, phase.epoch)
        adapter = self._adapter_name()
        logging.info("epoch %d: rollouts of spec %s%s on %d training seeds x %d envs", phase.epoch, version,
                     f" + adapter {adapter}" if adapter else "", len(seeds), len(self.config.envs))
        results = self._rollout(spec, seeds, ("rollouts", f"epoch{phase.epoch:03d}"), f"epoch{phase.epoch:03d}",
                                adapter, f"epoch {phase.epoch} rollouts")
        self._log_results("train", results, phase.epoch)

    def run_structure(self, phase: Phase) -> None:
        spec, version = self._incumbent()
        trace_dirs = self._all_host_dirs("rollouts", f"epoch{phase.epoch:03d}")
        history = self.workdir / "structure" if self.pc == 1 else self._host_dir("structure")
        adapter = self._adapter_name()
        logging.info("epoch %d: structure revision of spec %s from %d trace dirs (history in %s)", phase.epoch,
                     version, len(trace_dirs), history)

        def score_fn(candidate: Any, seeds: list[int], tag: str) -> dict[int, float]:
            return self._score(candidate, seeds, f"structure-{tag}", adapter)

        rev = self.parts.revise(spec, trace_dirs, history, score_fn)
        self.state["revisions"][str(phase.epoch)] = {
            "accepted": rev.accepted, "version": rev.version, "candidate_score": rev.candidate_score,
            "incumbent_score": rev.incumbent_score, "from": version}
        if rev.accepted:
            dst = self.workdir / "specs" / f"{rev.version}.yaml"
            if self.is_chief and Path(rev.spec_path).resolve() != dst.resolve():
                dst.parent.mkdir(parents=True, exist_ok=True)
                fileio.atomic_copy(rev.spec_path, dst)
            distributed.barrier(f"spec-{rev.version}", self.pc)
            self.state["incumbent"] = {"version": rev.version, "path": str(dst)}
            self.state["specs"].append({"version": rev.version, "path": str(dst), "epoch": phase.epoch})
        logging.info("epoch %d: revision %s (candidate %s vs incumbent %s) -> spec %s", phase.epoch,
                     "ACCEPTED" if rev.accepted else "rejected", _pct(rev.candidate_score),
                     _pct(rev.incumbent_score), self.state["incumbent"]["version"])
        if rev.candidate_score is not None:
            self.tb.log("structure/candidate_score", 100 * rev.candidate_score, phase.epoch)
        self.tb.log("structure/accepted", float(rev.accepted), phase.epoch)

    def run_proficiency(self, phase: Phase) -> None:
        spec, version = self._incumbent()
        r = phase.round
        trace_dirs = self._all_host_dirs("rollouts", f"epoch{phase.epoch:03d}")
        round_dir = self.workdir / "proficiency" / f"round{r:02d}"
        logging.info("round %d: proficiency — select decisions from epoch %d traces, build dataset, train LoRA "
                     "(in %s)", r, phase.epoch, round_dir)
        teacher = self.config.proficiency.get("teacher", "")
        adapter_dir = self.parts.train(trace_dirs, round_dir, r)
        info: dict[str, Any] = {"accepted": False, "adapter_dir": adapter_dir, "spec": version,
                                "data": f"{teacher} teacher" if teacher else "agent traces"}
        if adapter_dir is None:
            logging.warning("round %d: no training data selected; the adapter stays %s", r, self._adapter_name())
        else:
            name = f"{self.config.name}-r{r:02d}"
            info["name"] = name
            self._ensure_adapter(name, adapter_dir)
            rule = self.config.proficiency.accept
            if rule == "always":
                info["accepted"] = True
            else:
                sel = list(seed_range(self.config, "selection"))
                inc_adapter = self._adapter_name()
                cand = self._score(spec, sel, f"{version}+{name}", name)
                inc = self._score(spec, sel, f"{version}+{inc_adapter or 'base'}", inc_adapter)
                d = paired_decision(cand, inc, sorted(cand), rule, float(self.config.structure.alpha))
                info.update(candidate_score=d.mean_candidate, incumbent_score=d.mean_incumbent, accepted=d.accept,
                            decision=d.to_dict())
                self.tb.log("proficiency/candidate_score", 100 * d.mean_candidate, r)
            if info["accepted"]:
                self.state["adapter"] = {"name": name, "dir": str(adapter_dir), "round": r, "spec": version,
                                         "selection_score": info.get("candidate_score")}
            logging.info("round %d: adapter %s %s (candidate %s vs incumbent %s)", r, name,
                         "ACCEPTED" if info["accepted"] else "rejected", _pct(info.get("candidate_score")),
                         _pct(info.get("incumbent_score")))
        self.state["rounds"][str(r)] = info

    def eval_rows(self) -> list[tuple[str, str, str, str | None]]:
        """(label, kind, spec path, adapter) for each evaluated system, in report order."""
        rows: list[tuple[str, str, str, str | None]] = []
        if self.config.baseline_spec:
            rows.append(("baseline", "baseline", str(resolve_path(self.config.baseline_spec)), None))
        for label, path in self.config.get("extra_eval_specs", ()):
            rows.append((str(label), "reference", str(resolve_path(path)), None))
        for s in self.state["specs"]:
            rows.append((s["version"], "spec", s["path"], None))
        inc = self.state["incumbent"]
        if self.state["adapter"]:
            rows.append((f"{inc['version']}+LoRA", "lora", inc["path"], self.state["adapter"]["name"]))
        last = self.state["rounds"].get(str(max(map(int, self.state["rounds"]), default=-1)), {})
        if self.config.report.get("eval_rejected_adapter", False) and last.get("name") and not last["accepted"]:
            # what the selection rule turned down, measured on the test seeds (it never decides anything)
            rows.append((f"{inc['version']}+LoRA{REJECTED}", "lora", inc["path"], last["name"]))
        return rows

    def run_evaluate(self, phase: Phase) -> None:
        self._evaluate("rows", "eval", list(seed_range(self.config, "test")), None)
        if self.config.report.get("paper_table", False):
            by_family = paper_seeds(self.config)
            self._evaluate("paper_rows", "eval_paper", sorted(set().union(*by_family.values())), by_family)

    def _evaluate(self, key: str, dirname: str, seeds: list[int], by_family: dict[str, list[int]] | None) -> None:
        """Every report row (baseline, specs, +LoRA) on `seeds` into state[key]: the held-out test table ("rows")
        or the table on AutoMem's evaluation seeds ("paper_rows")."""
        rows = list(enumerate(self.eval_rows()))
        # v0 and the final system first: their paired test is the run's headline, so a run that stops early (a
        # device budget) has it before the other rows; the report keeps eval_rows' order
        final = final_index([label for _, (label, *_) in rows])
        rows.sort(key=lambda r: (r[1][0] != "v0", r[0] != final))
        for i, (label, kind, spec_path, adapter) in rows:
            if label in self.state[key]:
                logging.info("%s %s: already done", dirname, label)
                continue
            if not Path(spec_path).exists():
                raise FileNotFoundError(f"evaluation row {label!r}: spec {spec_path} does not exist (set "
                                        "config.baseline_spec='' to skip the no-memory baseline)")
            logging.info("%s %s on %s x %d envs", dirname, label,
                         by_family or f"{len(seeds)} test seeds", len(self.config.envs))
            results = self._rollout(self.parts.load_spec(spec_path), seeds, (dirname, label.replace("+", "_")),
                                    f"{dirname}-{label}", adapter, f"{dirname} {label}", by_family)
            row = report.make_row(label, kind, results, self.parts.summarize)
            self.state[key][label] = report.row_to_json(row)
            self.state.save()
            self.tb.log(f"{dirname}/average_progress", row.average, i)
            self.tb.log_dict(f"{dirname}/{label}", {k: v.mean for k, v in row.envs.items()}, 0)
            logging.info("%s %s: %.2f%% ± %.2f", dirname, label, row.average, row.average_se)

    def report_rows(self, key: str = "rows") -> list[report.Row]:
        return [report.row_from_json(self.state[key][label]) for label, *_ in self.eval_rows()
                if label in self.state[key]]

    def report_notes(self) -> list[str]:
        """Caveats results.md must state next to the table."""
        adapter = self.state["adapter"]
        data = (self.state["rounds"].get(str(adapter["round"])) or {}).get("data", "") if adapter else ""
        notes = []
        if data.endswith("teacher"):
            notes.append(f"+LoRA: the adapter was trained on a {data}'s memory decisions (proficiency.teacher), not "
                         "on the agent's own traces (AutoMem's method); it shows the pipeline runs, not a result.")
        phases = [p.name for p in getattr(self._incumbent()[0], "phases", ()) if getattr(p, "constrained", False)]
        if phases:
            notes.append(f"Constrained decoding (our extension, not AutoMem's) shaped the replies of phases "
                         f"{', '.join(phases)}: each reply matched the phase's grammar (memory/grammar.py).")
        return notes

    def paper_notes(self) -> list[str]:
        """How the paper-seed table relates to the seeds the loops decided on (AutoMem reported on those)."""
        sel = set(seed_range(self.config, "selection"))
        notes = []
        for fam, seeds in paper_seeds(self.config).items():
            both = sel & set(seeds)
            if both:
                notes.append(f"{fam}: {len(both)} of these {len(seeds)} seeds are also selection seeds the loops "
                             "accepted on (as in the paper): selection-biased, not held out.")
        return notes

    def run_report(self, phase: Phase) -> dict[str, Path]:
        paths = {k: self.workdir / f for k, f in
                 (("summary", "summary.json"), ("results", "results.md"), ("plot", "progression.png"))}
        if self.is_chief:
            refs = [tuple(r) for r in self.config.report.references]
            meta = {"name": self.config.name, "envs": list(self.config.envs), "schedule": self.config.schedule,
                    "test_seeds": list(seed_range(self.config, "test")), "revisions": self.state["revisions"],
                    "rounds": self.state["rounds"], "adapter": self.state["adapter"]}
            paper = None
            if self.config.report.get("paper_table", False):
                meta["paper_seeds"] = paper_seeds(self.config)
                paper = report.PaperTable(self.report_rows("paper_rows"), meta["paper_seeds"], self.paper_notes())
            title = f"AutoMem — {self.config.name}"
            paths = report.write_reports(self.workdir, self.report_rows(), refs, title=title, meta=meta,
                                         notes=self.report_notes(), paper=paper, timings=self.state["timings"])
        distributed.barrier("report", self.pc)
        return paths

    # ----- driver -----
    def run(self) -> dict[str, Path]:
        self._start()
        runners = {"rollout": self.run_rollout, "structure": self.run_structure,
                   "proficiency": self.run_proficiency, "evaluate": self.run_evaluate}
        phases = plan(self.config)
        paths: dict[str, Path] = {}
        try:
            for phase in phases:
                if phase.kind == "report":
                    paths = self.run_report(phase)
                    self.state.mark_done(phase.name)
                    continue
                if self.state.done(phase.name):
                    logging.info("phase %s: done in a previous run, skipping", phase.name)
                    continue
                logging.info("phase %s: starting", phase.name)
                self._run_timed(phase, runners[phase.kind])
        finally:
            self.tb.close()
        return paths


    def _run_timed(self, phase: Phase, runner: Any) -> None:
        """Run a phase and record its wall time and rollout counters in state["timings"]. A phase resumed after a
        kill is marked so: its time counts only the run that finished it."""
        timings = self.state["timings"]
        resumed = phase.name in timings  # started before (the entry is written at start) but never finished
        timings[phase.name] = {"started": True}
        self.state.save()
        self._counts, t0 = {}, time.perf_counter()
        runner(phase)
        distributed.barrier(phase.name, self.pc)
        timings[phase.name] = {"wall_s": round(time.perf_counter() - t0, 2), "resumed": resumed, **self._counts}
        self.state.mark_done(phase.name)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"
