"""Select good memory decisions from agent traces (AutoMem's Loop 2 data engine, made programmatic).

A *decision* is one memory-phase turn: a LOG turn, or the memory-consultation part of a PLAN turn (the action
commit is cut away by `postprocess`). Criteria, each switchable in `SelectionConfig`:
  episode_outcome  the episode's progression is in the top `top_quantile` of its (env, task) group (ties at the
                   threshold pass, except at the group's floor: where most episodes score the minimum, e.g. 0 in
                   short Crafter episodes, ">= median" would keep every episode, so only those above the floor pass);
  reward_window    some reward > `reward_threshold` arrives within `reward_k` steps after the decision;
  op_validity      every op the turn issued ran without error;
  redundant_write  the turn does not repeat a write (same op, same args) already made earlier in the episode;
  judge            (optional) an Engine answers "yes" to "was this a good memory decision?".
The report counts, per criterion, how many memory turns fail it on its own (`failed`) and how many survive
the criteria applied in the order above (`funnel`), so a too-strict criterion is visible at once.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from automem_jax.agent.trace import read_jsonl
from automem_jax.loops.proficiency.postprocess import postprocess

REQUIRED_FIELDS = ("env", "seed", "episode", "step", "phase")  # every record
MEMORY_FIELDS = ("messages", "completion", "ops")  # memory-phase records additionally
WRITE_OPS = frozenset({"APPEND", "WRITE", "CREATE", "UPSERT", "UPSERT_MAP", "UPSERT_KEYED", "DELETE"})
CRITERIA = ("episode_outcome", "reward_window", "op_validity", "redundant_write", "postprocess", "judge")

JUDGE_PROMPT = """You review one memory decision of an agent that plays {env} from text and keeps notes in files.
Below is the chat the agent saw and its reply (phase {phase}, step {step}). A good decision records or retrieves
accurate, useful, non-redundant information with well-formed memory ops. Answer with one word: yes or no.

=== CONTEXT (last user message) ===
{context}

=== REPLY ===
{reply}

Was this a good memory decision? Answer yes or no."""


@dataclasses.dataclass
class SelectionConfig:
    phases: tuple[str, ...] = ("LOG", "PLAN")
    top_quantile: float | None = 0.5  # keep episodes at or above the (1 - q) quantile of progression; None = off
    reward_k: int | None = None  # None = off; else reward must arrive within k steps after the decision
    reward_threshold: float = 0.0
    require_valid_ops: bool = True
    no_redundant_writes: bool = True
    judge_engine: Any = None  # any object with generate(list[Request]) -> list[Completion]
    judge_max_context_chars: int = 6000
    max_examples: int | None = None  # a uniform sample (seeded by `seed`) of the selected decisions, not a prefix
    seed: int = 0
    write_ops: frozenset[str] = WRITE_OPS

    def __post_init__(self):
        if self.top_quantile is not None and not 0 < self.top_quantile <= 1:
            raise ValueError(f"selection.top_quantile must be in (0, 1] or None, got {self.top_quantile}")
        if self.reward_k is not None and self.reward_k < 0:
            raise ValueError(f"selection.reward_k must be >= 0 or None, got {self.reward_k}")
        if not self.phases or not all(isinstance(p, str) and p for p in self.phases):
            raise ValueError(f"selection.phases must be non-empty phase names (e.g. ('LOG', 'PLAN')), "
                             f"got {self.phases!r}")

    @classmethod
    def from_dict(cls, d: dict | Any) -> "SelectionConfig":
        d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"selection config: unknown fields {sorted(unknown)}")
        if "phases" in d:
            d["phases"] = tuple(d["phases"])
        return cls(**d)


def _collect(trace_paths: Iterable[str | Path]) -> tuple[list[Path], dict[str, float]]:
    """Trace files, and progression per trace file from any episodes.jsonl found beside them."""
    files: list[Path] = []
    progression: dict[str, float] = {}
    for p in map(Path, trace_paths):
        if not p.exists():
            raise FileNotFoundError(f"selection: trace path {p} does not exist")
        if p.is_dir():
            summaries = sorted(p.rglob("episodes.jsonl"))
            for s in summaries:
                for ep in read_jsonl(s):
                    if "trace_path" in ep and "progression" in ep:
                        tp = Path(ep["trace_path"])
                        tp = tp if tp.is_absolute() else s.parent / tp
                        progression[str(tp.resolve())] = float(ep["progression"])
            files += [f for f in sorted(p.rglob("*.jsonl")) if f.name != "episodes.jsonl"]
        else:
            files.append(p)
    return files, progression


def _episode_key(rec: dict) -> tuple:
    return (rec.get("run_id"), rec["env"], rec.get("task"), rec["seed"], rec["episode"])


def _check_fields(rec: dict, where: str, fields: Sequence[str]) -> None:
    missing = [f for f in fields if f not in rec]
    if missing:
        raise ValueError(f"{where}: trace record lacks field(s) {missing}; expected the agent's trace format "
                         f"(every record: {list(REQUIRED_FIELDS)}; memory turns also {list(MEMORY_FIELDS)})")


def _op_ok(rec: dict) -> list[bool]:
    """Per op of a turn: parsed without error and (when results are recorded) ran ok."""
    ops = rec.get("ops") or []
    results = rec.get("op_results") or []
    oks = [not o.get("error") and o.get("ok", True) for o in ops]
    for i, r in enumerate(results[:len(oks)]):
        oks[i] = oks[i] and bool(r.get("ok", True))
    return oks


def _quantile_thresholds(episodes: dict[tuple, dict], q: float | None) -> dict[tuple, tuple[float, bool]]:
    """(env, task) -> (threshold, strict): an episode passes at progression >= threshold, or > it when strict."""
    groups: dict[tuple, list[float]] = {}
    for key, ep in episodes.items():
        groups.setdefault((key[1], key[2]), []).append(ep["progression"])
    if q is None:
        return {g: (-np.inf, False) for g in groups}
    out = {}
    for g, v in groups.items():
        t = float(np.quantile(v, 1.0 - q, method="higher"))  # at most about the top-q fraction
        out[g] = (t, t == min(v) < max(v))  # at the floor, ties would let (nearly) every episode through
    return out


def _is_yes(text: str) -> bool:
    return text.strip().lower().lstrip("*\"' ").startswith("yes")


def _judge(cfg: SelectionConfig, candidates: list[dict]) -> list[bool]:
    from automem_jax.engine.base import Request, SamplingParams

    requests = []
    for ex in candidates:
        meta = ex["meta"]
        users = [m["content"] for m in ex["messages"][:-1] if m.get("role") == "user"]
        context = (users[-1] if users else "")[-cfg.judge_max_context_chars:]
        prompt = JUDGE_PROMPT.format(env=meta["env"], phase=meta["phase"], step=meta["step"], context=context,
                                     reply=ex["messages"][-1]["content"])
        requests.append(Request(messages=[{"role": "user", "content": prompt}],
                                sampling=SamplingParams(temperature=0.0, max_new_tokens=4)))
    completions = cfg.judge_engine.generate(requests)
    return [c.finish_reason != "error" and _is_yes(c.text) for c in completions]


def select_decisions(trace_paths: Sequence[str | Path], cfg: SelectionConfig | dict | None = None
                     ) -> tuple[list[dict], dict]:
    """Pick good memory decisions from traces -> (examples, report).

    `trace_paths`: trace JSONL files and/or directories (searched recursively; `episodes.jsonl` there gives
    each episode's final progression, else the trace's own maximum `progression` is used).
    Each example is {'messages': chat ending in the cleaned assistant reply, 'meta': {...where it came from}}.
    """
    cfg = cfg if isinstance(cfg, SelectionConfig) else SelectionConfig.from_dict(cfg or {})
    files, ep_progress = _collect(trace_paths)
    episodes: dict[tuple, dict] = {}
    n_records = 0
    for f in files:
        for i, rec in enumerate(read_jsonl(f)):
            _check_fields(rec, f"{f}:{i + 1}", REQUIRED_FIELDS)
            if rec["phase"] in cfg.phases:
                _check_fields(rec, f"{f}:{i + 1}", MEMORY_FIELDS)
            n_records += 1
            ep = episodes.setdefault(_episode_key(rec), {"records": [], "trace": str(f.resolve()),
                                                         "progression": 0.0})
            ep["records"].append(rec)
            ep["progression"] = max(ep["progression"], float(rec.get("progression") or 0.0))
    for ep in episodes.values():
        ep["progression"] = ep_progress.get(ep["trace"], ep["progression"])
    thresholds = _quantile_thresholds(episodes, cfg.top_quantile)

    failed = {c: 0 for c in CRITERIA}
    funnel = {c: 0 for c in CRITERIA}
    survivors: list[dict] = []
    n_memory = 0
    for key, ep in episodes.items():
        records = ep["records"]  # trace files are written in turn order
        reward_by_step: dict[int, float] = {}
        for r in records:
            reward_by_step[r["step"]] = reward_by_step.get(r["step"], 0.0) + float(r.get("reward") or 0.0)
        t, strict = thresholds[(key[1], key[2])]
        outcome_ok = ep["progression"] > t if strict else ep["progression"] >= t
        writes_seen: set[tuple[str, str]] = set()
        for r in records:
            ops, oks = r.get("ops") or [], _op_ok(r)
            turn_writes = [(o.get("op", "").upper(), json.dumps(o.get("args"), sort_keys=True))
                           for o, ok in zip(ops, oks) if ok and o.get("op", "").upper() in cfg.write_ops]
            if r["phase"] not in cfg.phases:
                writes_seen.update(turn_writes)
                continue
            n_memory += 1
            verdict = {
                "episode_outcome": outcome_ok,
                "reward_window": cfg.reward_k is None or any(
                    reward_by_step.get(s, 0.0) > cfg.reward_threshold
                    for s in range(r["step"], r["step"] + cfg.reward_k + 1)),
                "op_validity": not cfg.require_valid_ops or all(oks),
                "redundant_write": not cfg.no_redundant_writes or (
                    not any(w in writes_seen for w in turn_writes) and len(set(turn_writes)) == len(turn_writes)),
            }
            writes_seen.update(turn_writes)
            example = {
                "messages": list(r["messages"]) + [{"role": "assistant", "content": r["completion"] or ""}],
                "meta": {"run_id": r.get("run_id"), "spec_version": r.get("spec_version"), "env": r["env"],
                         "task": r.get("task"), "seed": r["seed"], "episode": r["episode"], "step": r["step"],
                         "phase": r["phase"], "iteration": r.get("iteration", 0),
                         "episode_progression": ep["progression"], "trace_path": ep["trace"]},
            }
            cleaned = postprocess(example)
            verdict["postprocess"] = cleaned is not None
            alive = True
            for c in CRITERIA[:-1]:
                failed[c] += not verdict[c]
                alive = alive and verdict[c]
                funnel[c] += alive
            if alive:
                survivors.append(cleaned)

    if cfg.judge_engine is not None and survivors:
        votes = _judge(cfg, survivors)
        failed["judge"] = votes.count(False)
        survivors = [ex for ex, ok in zip(survivors, votes) if ok]
    funnel["judge"] = len(survivors)

    # identical (chat, reply) pairs teach nothing twice
    seen, examples = set(), []
    for ex in survivors:
        sig = json.dumps(ex["messages"], sort_keys=True)
        if sig not in seen:
            seen.add(sig)
            examples.append(ex)
    duplicates = len(survivors) - len(examples)
    if cfg.max_examples is not None and len(examples) > cfg.max_examples:
        keep = np.random.default_rng(cfg.seed).choice(len(examples), cfg.max_examples, replace=False)
        examples = [examples[i] for i in sorted(keep)]
    report = {
        "trace_files": len(files), "records": n_records, "episodes": len(episodes), "memory_turns": n_memory,
        "progression_thresholds": {f"{k[0]}/{k[1]}": (f"> {v[0]}" if v[1] else v[0]) for k, v in thresholds.items()},
        "failed": failed, "funnel": funnel, "duplicates": duplicates, "selected": len(examples),
        "by_phase": {p: sum(ex["meta"]["phase"] == p for ex in examples) for p in cfg.phases},
        "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("judge_engine", "write_ops")}
                  | {"judge": cfg.judge_engine is not None},
    }
    return examples, report


def write_selection(examples: list[dict], report: dict, out_dir: str | Path) -> Path:
    """examples.jsonl + report.json in out_dir, each written to a temp file then renamed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("examples.jsonl", "".join(json.dumps(e) + "\n" for e in examples)),
                       ("report.json", json.dumps(report, indent=2, default=str))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)
    return out
