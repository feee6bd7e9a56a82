"""The structure loop: propose -> validate -> score on selection seeds -> accept or reject, with a resumable history.

One `run()` is one revision: up to `attempts_per_revision` fresh attempts, each followed (if rejected) by up to
`continuations_per_attempt` continuations that see why it was rejected, stopping at the first accept (AutoMem:
5 revisions x 3 attempts + 1 continuation). Decisions use only selection seeds; `report()` uses only test seeds.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from automem_jax import fileio, memory
from automem_jax.loops.structure import acceptance
from automem_jax.loops.structure.history import (History, atomic_write_json, atomic_write_text, attempt_id,
                                                 read_json, render_markdown)
from automem_jax.loops.structure.proposers import ProposerConfig, run_proposer
from automem_jax.loops.structure.validation import ProposalRejected, check_proposal
from automem_jax.loops.structure.workspace import Limits, build_workspace

log = logging.getLogger(__name__)
_CHECKING = "checking"  # marker in an attempt dir: its proposal is being checked (removed once it passed)


@dataclasses.dataclass(frozen=True)
class StructureConfig:
    proposer: ProposerConfig = ProposerConfig()
    selection_seeds: tuple[int, ...] = ()
    test_seeds: tuple[int, ...] = ()
    train_seeds: tuple[int, ...] = ()  # only checked for disjointness
    accept_rule: str = "t_test"  # "t_test": one-sided paired t-test at `alpha` | "paper": strictly higher mean
    alpha: float = 0.1
    max_revisions: int = 5
    attempts_per_revision: int = 3
    continuations_per_attempt: int = 1
    limits: Limits = Limits()
    require_structural: bool = True
    rescore_incumbent: bool = True  # score an accepted spec afresh as the next incumbent (no winner's-curse reuse)
    env_context: str | None = None  # observation format / progression text; None = per-family text
    digest_turns: int = 3

    @classmethod
    def coerce(cls, cfg: Any) -> "StructureConfig":
        """Accept a StructureConfig, a dict or an ml_collections ConfigDict (nested proposer / limits dicts)."""
        if isinstance(cfg, cls):
            return cfg
        d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"structure config: unknown field(s) {unknown}; known: {sorted(known)}")
        for key, typ in (("proposer", ProposerConfig), ("limits", Limits)):
            if isinstance(d.get(key), Mapping):
                sub = dict(d[key])
                known_sub = {f.name for f in dataclasses.fields(typ)}
                bad = sorted(set(sub) - known_sub)
                if bad:
                    raise ValueError(f"structure.{key}: unknown field(s) {bad}; known: {sorted(known_sub)}")
                d[key] = typ(**sub)
        for k in ("selection_seeds", "test_seeds", "train_seeds"):
            if k in d:
                d[k] = tuple(int(s) for s in d[k])
        return cls(**d)


@dataclasses.dataclass
class RevisionResult:
    revision: int
    accepted: bool
    spec: "memory.MemorySpec"  # the incumbent after this revision (the new spec when accepted)
    version: int
    reason: str
    decision: dict | None = None
    attempts: list[dict] = dataclasses.field(default_factory=list)
    budget_exhausted: bool = False


ScoreFn = Callable[["memory.MemorySpec", list[int], str], Mapping[int, float]]


class StructureLoop:
    def __init__(self, cfg: Any, history_dir: str | Path, score_fn: ScoreFn):
        self.cfg = StructureConfig.coerce(cfg)
        if len(self.cfg.selection_seeds) < 2:
            raise ValueError("structure.selection_seeds needs >= 2 seeds for a paired test")
        acceptance.check_disjoint(self.cfg.selection_seeds, self.cfg.test_seeds, self.cfg.train_seeds)
        self.history = History(history_dir)
        self.score_fn = score_fn

    # ----- public -----
    def incumbent(self) -> "memory.MemorySpec | None":
        v = self.history.latest_version()
        return None if v is None else memory.load_spec(self.history.spec_path(v))

    def run(self, incumbent: "memory.MemorySpec | str | Path | Mapping", trace_dirs: Sequence[str | Path],
            revision: int | None = None) -> RevisionResult:
        """Run (or resume) the next revision against the latest accepted spec.

        `revision` (1-based) pins which revision this call is, so a caller that restarts after a kill gets the
        recorded result of a revision that already finished instead of starting the next one."""
        inc = self._adopt(incumbent)
        missing = [str(d) for d in trace_dirs if not (Path(d) / "episodes.jsonl").is_file()]
        if missing:
            raise FileNotFoundError(f"trace_dirs without episodes.jsonl: {missing[:4]}; pass rollout output dirs")
        rev = self._next_revision()[0] if revision is None else int(revision)
        if rev < 1:
            raise ValueError(f"revision must be >= 1, got {rev}")
        if rev > self.cfg.max_revisions:
            return RevisionResult(rev - 1, False, inc, inc.version,
                                  f"revision budget exhausted ({self.cfg.max_revisions} revisions)",
                                  budget_exhausted=True)
        for a in range(1, self.cfg.attempts_per_revision + 1):
            for c in range(0, self.cfg.continuations_per_attempt + 1):
                aid = attempt_id(rev, a, c)
                rec = self.history.record(aid)
                if rec is None:
                    if c > 0 and self.history.record(attempt_id(rev, a, c - 1)) is None:
                        break  # its predecessor never ran (budget changed); nothing to continue
                    rec = self._attempt(rev, a, c, inc, trace_dirs)
                if rec["status"] == "accepted":
                    spec = memory.load_spec(self.history.spec_path(rec["new_version"]))
                    return RevisionResult(rev, True, spec, spec.version, rec["reason"], rec.get("decision"),
                                          self._revision_records(rev))
        last = self._revision_records(rev)
        reason = last[-1]["reason"] if last else "no attempt ran"
        return RevisionResult(rev, False, inc, inc.version, f"all attempts rejected; last: {reason}",
                              last[-1].get("decision") if last else None, last)

    def run_revisions(self, incumbent: Any, traces_for: Callable[["memory.MemorySpec"], Sequence[str | Path]]
                      ) -> list[RevisionResult]:
        """AutoMem's order: revise until the revision budget is spent; `traces_for(spec)` rolls out the current
        incumbent on training seeds and returns the rollout directories."""
        out, spec = [], self._adopt(incumbent)
        while True:
            res = self.run(spec, traces_for(spec))
            if res.budget_exhausted:
                return out
            out.append(res)
            spec = res.spec

    def report(self, spec: "memory.MemorySpec | None" = None, tag: str | None = None) -> dict[str, Any]:
        """Score a spec (default: the latest accepted) on the TEST seeds only; cached per version."""
        spec = spec or self.incumbent()
        if spec is None:
            raise ValueError("no accepted spec yet: call run() first or pass a spec")
        seeds = list(self.cfg.test_seeds)
        if not seeds:
            raise ValueError("structure.test_seeds is empty; give held-out seeds to report on")
        scores = self.history.load_scores(spec.version, "test", seeds)
        if scores is None:
            scores = acceptance.score_on(self.score_fn, spec, seeds, tag or f"v{spec.version}_test")
            self.history.save_scores(spec.version, "test", seeds, scores)
        mean, se = acceptance.mean_se(scores)
        return {"version": spec.version, "split": "test", "seeds": seeds, "scores": scores, "mean": mean, "se": se}

    # ----- internals -----
    def _adopt(self, incumbent: Any) -> "memory.MemorySpec":
        inc = incumbent if isinstance(incumbent, memory.MemorySpec) else memory.load_spec(incumbent)
        latest = self.history.latest_version()
        if latest is None:
            self.history.write_version(inc.version, inc.to_yaml())
            return inc
        stored = memory.load_spec(self.history.spec_path(latest))
        if stored.to_yaml() != inc.to_yaml():
            # On resume the history is authoritative: it holds what was accepted.
            log.warning("structure loop: given incumbent %s v%s differs from history's latest v%s; using v%s",
                        inc.name, inc.version, latest, latest)
        return stored

    def _revision_records(self, rev: int) -> list[dict]:
        return [r for r in self.history.records() if r["revision"] == rev]

    def _next_revision(self) -> tuple[int, bool]:
        """(revision to work on, whether the previous one is complete)."""
        recs = self.history.records()
        if not recs:
            return 1, False
        rev = max(r["revision"] for r in recs)
        mine = [r for r in recs if r["revision"] == rev]
        slots = self.cfg.attempts_per_revision * (1 + self.cfg.continuations_per_attempt)
        complete = any(r["status"] == "accepted" for r in mine) or len(mine) >= slots
        return (rev + 1, True) if complete else (rev, False)

    def _continuation(self, rev: int, a: int, c: int) -> dict | None:
        if c == 0:
            return None
        prev_id = attempt_id(rev, a, c - 1)
        prev = self.history.record(prev_id) or {}
        pdir = self.history.attempt_dir(prev_id)
        read = lambda n: (pdir / n).read_text(encoding="utf-8", errors="replace") if (pdir / n).is_file() else ""
        return {"reason": prev.get("reason", ""), "decision": prev.get("decision"),
                "proposal_yaml": read("proposal.yaml") or read("proposal_raw.yaml"),
                "analysis": read("analysis.md"), "diff": read("diff.txt")}

    def _incumbent_scores(self, inc: "memory.MemorySpec", seeds: list[int]) -> dict[int, float]:
        scores = self.history.load_scores(inc.version, "selection", seeds)
        if scores is None:
            scores = acceptance.score_on(self.score_fn, inc, seeds, f"v{inc.version}_selection")
            self.history.save_scores(inc.version, "selection", seeds, scores)
        return scores

    def _attempt(self, rev: int, a: int, c: int, inc: "memory.MemorySpec", trace_dirs: Sequence) -> dict:
        aid = attempt_id(rev, a, c)
        adir = self.history.attempt_dir(aid)
        adir.mkdir(parents=True, exist_ok=True)
        pcfg = self.cfg.proposer
        rec: dict[str, Any] = {"id": aid, "revision": rev, "attempt": a, "continuation": c,
                               "base_version": inc.version, "kind": pcfg.kind, "started": time.time(),
                               "workspace": str(adir / "workspace")}
        decision_path = adir / "decision.json"
        if decision_path.exists():  # killed after deciding, before recording: finish the bookkeeping only
            return self._finish(read_json(decision_path), adir, inc)
        try:
            cand, changes, meta = self._proposal(adir, rev, a, c, inc, trace_dirs, rec)
        except ProposalRejected as e:
            return self._finish(dict(rec, status="rejected", stage=e.stage, reason=e.reason), adir, inc)
        rec.update(structural_changes=changes, proposer_meta=meta)
        seeds = list(self.cfg.selection_seeds)
        inc_scores = self._incumbent_scores(inc, seeds)
        scores_path = adir / "scores.json"
        saved = read_json(scores_path)
        if saved and sorted(saved["seeds"]) == sorted(seeds):
            cand_scores = {int(k): float(v) for k, v in saved["candidate"].items()}
        else:
            try:
                cand_scores = acceptance.score_on(self.score_fn, cand, seeds, f"{aid}_candidate")
            except Exception as e:  # the candidate broke the agent: a rejection, not a loop crash
                log.exception("structure loop: scoring candidate %s failed", aid)
                return self._finish(dict(rec, status="rejected", stage="scoring",
                                         reason=f"scoring the candidate failed: {type(e).__name__}: {e}"), adir, inc)
            atomic_write_json(scores_path, {"seeds": seeds, "candidate": {str(k): v for k, v in cand_scores.items()},
                                            "incumbent": {str(k): v for k, v in inc_scores.items()}})
        d = acceptance.paired_decision(cand_scores, inc_scores, seeds, self.cfg.accept_rule, self.cfg.alpha)
        rec.update(status="accepted" if d.accept else "rejected", stage="acceptance", reason=d.reason,
                   decision=d.to_dict())
        if d.accept:
            rec["new_version"] = (self.history.latest_version() or 0) + 1
        atomic_write_json(decision_path, rec)
        return self._finish(rec, adir, inc)

    def _proposal(self, adir: Path, rev: int, a: int, c: int, inc: "memory.MemorySpec", trace_dirs: Sequence,
                  rec: dict) -> tuple["memory.MemorySpec", list[str], dict]:
        """Run the proposer (or reuse a validated proposal from a killed run) and validate its output."""
        val = read_json(adir / "validation.json")
        if val and val.get("ok") and (adir / "proposal.yaml").exists():
            rec["proposer"] = val.get("proposer")
            return memory.load_spec(adir / "proposal.yaml"), val["structural_changes"], val.get("meta") or {}
        checking = adir / _CHECKING
        if checking.exists():  # a check that hangs or kills the process must not do so again on every rerun
            raise ProposalRejected("check", "checking this proposal did not finish in an earlier run (the process "
                                            "was killed or crashed during the check); rejected so the loop moves on")
        ws = adir / "workspace"
        build_workspace(ws, incumbent_yaml=inc.to_yaml(), spec_env=inc.env, trace_dirs=trace_dirs,
                        history_records=self.history.records(),
                        history_md=render_markdown(self.history.records()), limits=self.cfg.limits,
                        env_context=self.cfg.env_context, continuation=self._continuation(rev, a, c),
                        digest_turns=self.cfg.digest_turns)
        inc_path = self.history.spec_path(inc.version)
        inc_text = inc_path.read_text(encoding="utf-8")
        run = run_proposer(self.cfg.proposer, ws, adir / "proposer.log")
        rec["proposer"] = {"returncode": run.returncode, "timed_out": run.timed_out,
                           "duration_s": round(run.duration_s, 3)}
        if not inc_path.is_file() or inc_path.read_text(encoding="utf-8") != inc_text:
            # The proposer is untrusted and ran with our permissions: put the incumbent back, reject the attempt.
            self.history.restore_version(inc.version, inc_text)
            raise ProposalRejected("safety", f"the proposer modified {inc_path.name} outside its workspace; "
                                             "restored it")
        atomic_write_text(checking, f"checking since {time.time()}\n")
        try:
            out = self._check_output(adir, inc, run, rec)
        except ProposalRejected:
            raise
        except Exception as e:  # any failure of a proposal is a recorded rejection, never a loop crash
            log.exception("structure loop: checking the proposal of %s failed", adir.name)
            raise ProposalRejected("check", f"checking the proposal failed: {type(e).__name__}: "
                                            f"{' '.join(str(e).split())[:300]}") from None
        checking.unlink()
        return out

    def _check_output(self, adir: Path, inc: "memory.MemorySpec", run: Any, rec: dict
                      ) -> tuple["memory.MemorySpec", list[str], dict]:
        """Check what the proposer left in its workspace (exit status, spec.yaml, analysis) and record it."""
        ws = adir / "workspace"
        for name, dest in (("analysis.md", "analysis.md"), ("meta.json", "meta.json")):
            if (ws / name).is_file() and (ws / name).stat().st_size <= self.cfg.limits.max_spec_bytes:
                fileio.atomic_copy(ws / name, adir / dest)
        if (ws / "spec.yaml").is_file() and (ws / "spec.yaml").stat().st_size <= self.cfg.limits.max_spec_bytes:
            fileio.atomic_copy(ws / "spec.yaml", adir / "proposal_raw.yaml")
        meta = read_json(adir / "meta.json", {}) if (adir / "meta.json").exists() else {}
        rec["proposer_meta"] = meta
        if run.timed_out:
            raise ProposalRejected("proposer", f"proposer killed at its time limit ({self.cfg.proposer.timeout_s}s)")
        if run.returncode != 0:
            tail = " ".join(run.log_tail.split())[-400:]
            raise ProposalRejected("proposer", f"proposer exited with code {run.returncode}: {tail}")
        if (ws / "spec.yaml").is_file() and (ws / "spec.yaml").read_bytes() == inc.to_yaml().encode():
            raise ProposalRejected("output", "the proposer did not write spec.yaml (it is unchanged)")
        cand, changes, _analysis = check_proposal(ws, inc, self.cfg.limits, self.cfg.require_structural)
        atomic_write_text(adir / "proposal.yaml", cand.to_yaml())
        atomic_write_text(adir / "diff.txt", memory.spec_diff(inc, cand, f"v{inc.version}", "candidate"))
        atomic_write_json(adir / "validation.json", {"ok": True, "structural_changes": changes, "meta": meta,
                                                     "proposer": rec["proposer"]})
        return cand, changes, meta

    def _finish(self, rec: dict, adir: Path, inc: "memory.MemorySpec") -> dict:
        """Idempotent tail of an attempt: write the accepted version (if any), the decision and the record."""
        rec = dict(rec, finished=rec.get("finished") or time.time())
        if rec["status"] == "accepted":
            cand = memory.load_spec(adir / "proposal.yaml")
            new = cand.with_version(rec["new_version"], parent=inc.version)
            self.history.write_version(rec["new_version"], new.to_yaml())
            if not self.cfg.rescore_incumbent:
                saved = read_json(adir / "scores.json")
                self.history.save_scores(new.version, "selection", saved["seeds"],
                                         {int(k): v for k, v in saved["candidate"].items()})
        atomic_write_json(adir / "decision.json", rec)
        self.history.add_record(rec)
        log.info("structure loop %s: %s (%s)", rec["id"], rec["status"], rec["reason"])
        return rec
