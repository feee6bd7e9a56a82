"""Trace statistics and a compact trajectory digest for the proposer.

Input: rollout directories written by the agent (`episodes.jsonl` + one trace JSONL per episode with one record per
turn: step, phase, iteration, completion, ops [{op, args, ok, result}], action, valid, prompt/completion tokens, ...).
Output: per-episode stats (what AutoMem's meta-LLM was given, plus memory-specific signals), an aggregate used by
the heuristic proposer, and a digest small enough to put into an LLM prompt.
"""
from __future__ import annotations

import collections
import difflib
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

# Built-in semantics that add to / replace file content, and that look things up (memory/OP_SEMANTICS names).
WRITE_SEMANTICS = frozenset({"append", "write", "upsert_keyed"})
SEARCH_SEMANTICS = frozenset({"search", "count"})
# A search result that found nothing. Matches "[0 line(s) matching ...]", "no match(es)", "not found", empty text.
_EMPTY_RESULT = re.compile(r"^\s*$|\[0 line|\bno (?:matches|match|results|lines?)\b|\bnot found\b|\b0 matches\b",
                           re.IGNORECASE)
_NORMALIZE_DIGITS = re.compile(r"\d+")
NEAR_DUPLICATE_RATIO = 0.9
_RECENT_WINDOW = 20  # near-duplicate check against the last N entries of the same file (keeps it O(n))


def read_jsonl(path: str | Path) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                # A rollout killed mid-write leaves a torn last line; skip it, keep the rest.
                continue
    return out


def split_op_args(args: Any) -> tuple[str, str]:
    """(file, payload) from an op's args as the agent records them: "file|text", [file, text] or {file, text}."""
    if isinstance(args, Mapping):
        f = args.get("file") or args.get("name") or args.get("path") or ""
        rest = [str(v) for k, v in args.items() if k not in ("file", "name", "path")]
        return str(f), "|".join(rest)
    if isinstance(args, (list, tuple)):
        return (str(args[0]) if args else ""), "|".join(str(a) for a in args[1:])
    text = "" if args is None else str(args)
    head, _, tail = text.partition("|")
    return head.strip(), tail.strip()


def _normalize(text: str) -> str:
    """Lower-case, numbers -> '#', collapse whitespace: 'Step 12 moved north' == 'step 13 moved north'."""
    return " ".join(_NORMALIZE_DIGITS.sub("#", text.lower()).split())


def op_info(op_name: str, op_map: Mapping[str, Mapping[str, Any]]) -> tuple[str, str | None]:
    """(semantics, fixed file or None) of an op by name via the spec's op table (`{name: {semantics, file}}`);
    unknown names fall back to the lower-cased name as semantics (AutoMem's op names are the semantics)."""
    info = op_map.get(op_name) or op_map.get(str(op_name).upper()) or {}
    return str(info.get("semantics") or str(op_name).lower()), info.get("file")


_UNCHANGED_MARKERS = ("IDENTICAL to the previous step", "UNCHANGED for")


def _first_user_message(record: Mapping[str, Any]) -> str | None:
    msgs = record.get("messages") or []
    users = [m.get("content", "") for m in msgs if isinstance(m, Mapping) and m.get("role") == "user"]
    return users[0] if users else None


def _step_unchanged(records: list[dict], prev_obs: str | None) -> tuple[bool, str | None]:
    """(observation unchanged since the previous step?, this step's observation key).

    Prefers an explicit `observation` field; else the agent's diff notice in the step's first prompt (AutoMem's
    "IDENTICAL to the previous step" / "UNCHANGED for N"); else equality of the first prompts of the step's action
    phase (comparing the same phase each step, since phases word their prompts differently)."""
    action_phase = records[-1].get("phase")
    first = next((r for r in records if r.get("phase") == action_phase), records[0])
    if isinstance(first.get("observation"), str):
        return first["observation"] == prev_obs, first["observation"]
    user = _first_user_message(first)
    if user is None:
        return False, None
    if any(m in user for m in _UNCHANGED_MARKERS):
        return True, user
    return user == prev_obs, user


def turn_ops(record: Mapping[str, Any]) -> list[dict]:
    """The turn's ops with their outcome: {op, args, ok, result}. The agent records the parsed calls in `ops` and
    their results in `op_results` (same order); records that already carry ok/result are taken as they are."""
    ops = [dict(o) for o in record.get("ops") or [] if isinstance(o, Mapping)]
    results = record.get("op_results")
    if isinstance(results, list) and results:
        for o, r in zip(ops, results):
            if isinstance(r, Mapping):
                o["ok"] = bool(r.get("ok", "error" not in r))
                o["result"] = r.get("result", r.get("error", ""))
    for o in ops:
        if "ok" not in o:
            o["ok"] = "error" not in o
        if "result" not in o and "error" in o:
            o["result"] = o["error"]
    return ops


def memory_file_sizes(memory_dir: str | Path | None) -> dict[str, dict[str, int]]:
    if not memory_dir or not Path(memory_dir).is_dir():
        return {}
    out = {}
    for p in sorted(Path(memory_dir).rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            out[str(p.relative_to(memory_dir))] = {"bytes": len(data), "lines": data.count(b"\n")}
    return out


def episode_stats(summary: Mapping[str, Any], records: list[dict], op_map: Mapping[str, Mapping[str, Any]],
                  memory_dir: str | Path | None = None) -> dict[str, Any]:
    """Stats for one episode from its summary line and its per-turn trace records."""
    by_step: dict[int, list[dict]] = collections.defaultdict(list)
    for r in records:
        by_step[int(r.get("step", 0))].append(r)
    steps = sorted(by_step)

    # Unchanged-observation streaks (AutoMem's "STUCK" signal).
    max_streak = streak = unchanged_steps = 0
    prev = None
    for s in steps:
        same, prev = _step_unchanged(by_step[s], prev)
        if same:
            streak += 1
            unchanged_steps += 1
            max_streak = max(max_streak, streak)
        else:
            streak = 0
    summary_stats = summary.get("stats") if isinstance(summary.get("stats"), Mapping) else {}
    unchanged_steps = int(summary_stats.get("unchanged_steps", unchanged_steps))

    op_counts: collections.Counter = collections.Counter()
    op_fail: collections.Counter = collections.Counter()
    fail_examples: dict[str, str] = {}
    writes_per_file: collections.Counter = collections.Counter()
    bytes_per_file: collections.Counter = collections.Counter()
    near_dup_per_file: collections.Counter = collections.Counter()
    empty_searches = 0
    searches = 0
    seen_entries: dict[str, list[str]] = collections.defaultdict(list)
    iterations: dict[str, list[int]] = collections.defaultdict(list)
    invalid_turns = 0
    prompt_tokens = completion_tokens = 0
    for s in steps:
        per_phase: dict[str, int] = {}
        for r in by_step[s]:
            phase = str(r.get("phase", "?"))
            per_phase[phase] = max(per_phase.get(phase, 0), int(r.get("iteration", 0)) + 1)
            prompt_tokens += int(r.get("prompt_tokens") or 0)
            completion_tokens += int(r.get("completion_tokens") or 0)
            if r.get("action") is not None and r.get("valid") is False:
                invalid_turns += 1
            for op in turn_ops(r):
                name = str(op.get("op", "?"))
                sem, fixed_file = op_info(name, op_map)
                op_counts[name] += 1
                ok = op.get("ok", True)
                if not ok:
                    op_fail[name] += 1
                    fail_examples.setdefault(name, str(op.get("result", ""))[:200])
                    continue
                if fixed_file:
                    fname, payload = fixed_file, str(op.get("args") or "")
                else:
                    fname, payload = split_op_args(op.get("args"))
                if sem in WRITE_SEMANTICS:
                    writes_per_file[fname] += 1
                    bytes_per_file[fname] += len(payload.encode())
                    norm = _normalize(payload)
                    recent = seen_entries[fname]
                    if norm and any(e == norm or difflib.SequenceMatcher(None, e, norm).ratio() >= NEAR_DUPLICATE_RATIO
                                    for e in recent[-_RECENT_WINDOW:]):
                        near_dup_per_file[fname] += 1
                    recent.append(norm)
                elif sem in SEARCH_SEMANTICS:
                    searches += 1
                    if _EMPTY_RESULT.search(str(op.get("result", ""))):
                        empty_searches += 1
        for phase, n in per_phase.items():
            iterations[phase].append(n)

    n_steps = int(summary.get("steps", len(steps)) or len(steps))
    return {
        "env": summary.get("env"), "task": summary.get("task"), "seed": summary.get("seed"),
        "steps": n_steps, "progression": float(summary.get("progression", 0.0) or 0.0),
        "total_reward": float(summary.get("total_reward", 0.0) or 0.0), "status": summary.get("status"),
        "invalid_actions": int(summary.get("invalid_actions", invalid_turns) or 0),
        "unchanged_obs_steps": unchanged_steps, "unchanged_obs_max_streak": max_streak,
        "max_zero_reward_streak": int(summary_stats.get("max_zero_reward_streak", 0) or 0),
        "gate_rejections": int(summary_stats.get("gate_rejections", 0) or 0),
        "op_counts": dict(op_counts), "failed_ops": dict(op_fail), "failed_op_examples": fail_examples,
        "writes_per_file": dict(writes_per_file), "bytes_written_per_file": dict(bytes_per_file),
        "redundant_writes": sum(near_dup_per_file.values()), "near_duplicate_writes_per_file": dict(near_dup_per_file),
        "searches": searches, "empty_searches": empty_searches,
        "iterations_per_phase": {p: {"mean": sum(v) / len(v), "max": max(v)} for p, v in iterations.items()},
        "prompt_tokens_per_step": prompt_tokens / max(n_steps, 1),
        "completion_tokens_per_step": completion_tokens / max(n_steps, 1),
        "memory_files": memory_file_sizes(memory_dir),
        "trace_path": str(summary.get("trace_path", "")), "memory_dir": str(memory_dir or ""),
    }


def _resolve(base: Path, p: Any) -> Path | None:
    if not p:
        return None
    p = Path(str(p))
    return p if p.is_absolute() else base / p


def load_episodes(trace_dirs: Iterable[str | Path]) -> list[tuple[dict, list[dict], Path | None]]:
    """(summary, records, memory_dir) for every episode listed in each dir's episodes.jsonl."""
    out = []
    for d in trace_dirs:
        d = Path(d)
        index = d / "episodes.jsonl"
        if not index.exists():
            raise FileNotFoundError(f"trace dir {d} has no episodes.jsonl; pass rollout output directories")
        for summary in read_jsonl(index):
            tp = _resolve(d, summary.get("trace_path"))
            records = read_jsonl(tp) if tp is not None and tp.exists() else []
            summary = dict(summary, trace_path=str(tp) if tp else "")
            out.append((summary, records, _resolve(d, summary.get("memory_dir"))))
    return out


def aggregate(stats: list[dict]) -> dict[str, Any]:
    """Totals over episodes: what the heuristic proposer and the prompt's summary table read."""
    n = len(stats)
    agg: dict[str, Any] = {"episodes": n}
    if not n:
        return agg
    prog = [s["progression"] for s in stats]
    agg["mean_progression"] = sum(prog) / n
    agg["se_progression"] = math.sqrt(sum((p - agg["mean_progression"]) ** 2 for p in prog) / n) / math.sqrt(n)
    total_steps = sum(s["steps"] for s in stats)
    agg["total_steps"] = total_steps
    for key in ("invalid_actions", "unchanged_obs_steps", "redundant_writes", "searches", "empty_searches"):
        agg[key] = sum(s[key] for s in stats)
    agg["max_unchanged_obs_streak"] = max(s["unchanged_obs_max_streak"] for s in stats)
    agg["max_zero_reward_streak"] = max(s.get("max_zero_reward_streak", 0) for s in stats)
    agg["gate_rejections"] = sum(s.get("gate_rejections", 0) for s in stats)
    agg["prompt_tokens_per_step"] = sum(s["prompt_tokens_per_step"] * s["steps"] for s in stats) / max(total_steps, 1)
    for key in ("op_counts", "failed_ops", "writes_per_file", "bytes_written_per_file",
                "near_duplicate_writes_per_file"):
        c: collections.Counter = collections.Counter()
        for s in stats:
            c.update(s[key])
        agg[key] = dict(c)
    sizes: dict[str, list[int]] = collections.defaultdict(list)
    for s in stats:
        for f, v in s["memory_files"].items():
            sizes[f].append(v["bytes"])
    agg["memory_file_bytes"] = {f: {"mean": sum(v) / len(v), "max": max(v)} for f, v in sizes.items()}
    its: dict[str, list[float]] = collections.defaultdict(list)
    its_max: dict[str, int] = collections.defaultdict(int)
    for s in stats:
        for p, v in s["iterations_per_phase"].items():
            its[p].append(v["mean"])
            its_max[p] = max(its_max[p], v["max"])
    agg["iterations_per_phase"] = {p: {"mean": sum(v) / len(v), "max": its_max[p]} for p, v in its.items()}
    return agg


def _clip(text: Any, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def digest(episodes: list[tuple[dict, list[dict], Path | None]], stats: list[dict], *, turns_per_episode: int = 3,
           max_chars: int = 40_000) -> str:
    """Markdown: per episode one stats line and a few sampled steps (first, evenly spaced, last, and steps where an
    op failed), each turn with its clipped completion, ops + results and action."""
    parts = ["# Trajectory digest", ""]
    for (summary, records, _), st in zip(episodes, stats):
        parts.append(f"## {st['env']}/{st['task']} seed {st['seed']}: {st['steps']} steps, progression "
                     f"{st['progression']:.3f}, status {st['status']}, invalid {st['invalid_actions']}, "
                     f"stuck streak {st['unchanged_obs_max_streak']}, redundant writes {st['redundant_writes']}, "
                     f"empty searches {st['empty_searches']}/{st['searches']}")
        parts.append(f"trace: {st['trace_path']}  memory: {st['memory_dir']}")
        steps = sorted({int(r.get("step", 0)) for r in records})
        if steps:
            k = max(1, turns_per_episode)
            picks = {steps[round(i * (len(steps) - 1) / max(k - 1, 1))] for i in range(k)}
            picks |= {int(r.get("step", 0)) for r in records if any(not o["ok"] for o in turn_ops(r))}
            for s in sorted(picks)[: k + 2]:
                parts.append(f"### step {s}")
                for r in (r for r in records if int(r.get("step", 0)) == s):
                    parts.append(f"- {r.get('phase')}#{r.get('iteration', 0)}: `{_clip(r.get('completion', ''), 240)}`")
                    for o in turn_ops(r):
                        parts.append(f"  - {o.get('op')}({_clip(o.get('args', ''), 80)}) "
                                     f"{'ok' if o['ok'] else 'FAILED'}: {_clip(o.get('result', ''), 120)}")
                    if r.get("action") is not None:
                        parts.append(f"  - action: {r.get('action')} (valid={r.get('valid')})")
        parts.append("")
    text = "\n".join(parts)
    if len(text) > max_chars:
        text = text[: max_chars - 60] + "\n\n[digest truncated; read the full traces for more]\n"
    return text
