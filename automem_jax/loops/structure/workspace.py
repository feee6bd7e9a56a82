"""The proposer's workspace: one directory per attempt holding everything it may read, and where it writes.

Files (all written by `build_workspace`; the proposer only writes `spec.yaml` and `analysis.md`):
  TASK.md             what to produce and how it is judged
  spec.yaml           the current (incumbent) spec: edit it in place or overwrite it
  incumbent.yaml      read-only copy of the incumbent, for diffing
  op_registry.md/json built-in op semantics, argument grammars, template placeholders, spec schema
  spec_language.md    the `runtime:` section: derived fields, notices, kept files, prune, runtime ops, gate, repair,
                      prompt overrides, with a complete example (memory/spec_language.py)
  examples/           shipped evolved specs (crafter_v5, minihack_v4, nethack_v2) when the source tree has them
  rules.md            hard constraints (checked by the loop; a violation rejects the proposal)
  env_context.md      observation format and progression definition
  history.json/md     every earlier attempt: metrics, accept/reject reason
  episode_stats.jsonl per-episode statistics; stats.json their aggregate
  digest.md           sampled turns per episode, op usage, failing ops
  traces.md           paths of the full traces and memory folders
  continuation.md     (retries) why the previous proposal was rejected, with its metrics; previous/ holds it
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any, Mapping, Sequence

from automem_jax.loops.structure import stats as tstats
from automem_jax.loops.structure.history import atomic_write_json, atomic_write_text

# Per-family context used when the caller gives none (from BALROG's env wrappers; see REFERENCE.md §2).
ENV_CONTEXT: dict[str, str] = {
    "crafter": """# Crafter (BALROG text)
Observation: long-term text = optional sleeping/died line, `You see:` then lines like `- tree 3 steps to your
north-west` (closest instance of each item), a blank line, `You face grass at your front.`; short-term text =
`Your status:` (health/food/drink/energy as N/9) and `Your inventory:` (non-zero items).
Actions (17): Noop, Move West/East/North/South, Do, Sleep, Place Stone/Table/Furnace/Plant, Make Wood/Stone/Iron
Pickaxe, Make Wood/Stone/Iron Sword. An invalid action runs Noop and the next observation says so.
Progression: (number of the 22 achievements unlocked at least once) / 22, in [0, 1]; an episode ends on death or
after 2000 steps. Achievements: collect wood/stone/coal/iron/diamond/sapling/drink, place table/furnace/plant/stone,
make wood/stone/iron pickaxe and sword, eat cow/plant, defeat zombie/skeleton, wake up.
""",
    "minihack": """# MiniHack (BALROG text)
Observation: long-term text = `message:`, a language description of the surroundings (objects with distance and
compass direction), `cursor:` and the ASCII `map:`; short-term = `inventory:`.
Actions: compass moves (north, east, ...), far moves, up, down, wait, more, apply, open, close, eat, kick, pickup,
search, ... An invalid action runs the env default and the next observation says so.
Progression: 1.0 if the episode ends in success (reach the stairs down; Boxoban: all boulders on fountains), else 0;
episodes last at most 100 steps.
""",
    "nethack": """# NetHack (BALROG text)
Observation: long-term text = `message:`, `language observation:` (glyphs with distance/direction), `cursor:` and the
`map:` with both status lines (Dlvl, $, HP, Pw, AC, Xp, T); short-term = `inventory:`.
Actions: compass moves, far moves, up/down stairs, search, eat, pray, kick, open, apply, esc, more, letters for item
prompts, ... An invalid action runs the env default and the next observation says so.
Progression: running max over the episode of P(ascension | a human reached that dungeon level / experience level)
from BALROG's achievement table (Dlvl 1 and XL 1 score 0; Dlvl 5 ~2.65%, XL 5 ~2.91%).
""",
}

RULES = """# Hard constraints (checked automatically; a violation rejects the proposal)

1. Write the complete new spec to `spec.yaml` (YAML, same schema as the current one; see op_registry.md) and your
   reasoning to `analysis.md`. Nothing else is read. The spec is data: it is validated, never executed.
2. Memory ops stay LLM actions: memory changes only through ops the model emits (semantics from op_registry.md).
   No new semantics can be invented; compose the built-in ones (e.g. an upsert_keyed op bound to one file).
3. Two-phase invariant: mode stays `memory`; a phase that can write memory (at least one mutating op) runs before
   the last phase, and the last phase ends on the action (`ends_on: action`). LOG at step t records the outcome of
   the action taken at step t-1.
4. At least one STRUCTURAL change: ops (added, removed, semantics/file/limits changed), files (added, removed, caps
   or on_full changed), phases (added, removed, reordered, allowed ops or iteration caps changed), the memory
   limits, or the `runtime:` section (fields, rule conditions, gate, kept files, prune, runtime ops, repair,
   overrides; spec_language.md). Wording-only edits (templates, descriptions, purposes, guidance, initial content,
   notice/gate texts) do not count.
5. Size limits: spec.yaml <= {max_spec_bytes} bytes; each phase template <= {max_prompt_bytes} bytes; each file's
   initial content <= {max_file_bytes} bytes.
6. Each phase's templates must mention every op the phase allows (by name, e.g. SEARCH), or contain the
   `{{ops_help}}` placeholder that lists them.
7. `name`, `version`, `parent` and `env` are set by the loop; your values are ignored.

Validated: YAML syntax, schema (unknown fields, types, ranges), op names and semantics, files referenced by ops,
ops referenced by phases, template placeholders, the limits above, and rule 3/4. Then the candidate plays the
selection seeds and is accepted only if it beats the incumbent there under the configured rule (default: a
one-sided paired t-test on the per-seed differences; AutoMem's rule: a strictly higher mean).
"""

TASK = """# Task: propose a better memory spec

You are improving the memory scaffold of an LLM agent that plays {env} from text. The scaffold is a declarative
spec (`spec.yaml`): the phases the agent runs every step (e.g. LOG then PLAN), their prompts, the memory files and
the op vocabulary the model may emit.

Read: rules.md (binding), op_registry.md (what ops can do, the schema), spec_language.md (the runtime section:
derived fields, notices, gates, kept files, prune, repair; examples/ has complete specs using it), env_context.md,
history.md (earlier
attempts and why they failed), stats.json + episode_stats.jsonl (per-episode metrics: progression, invalid
actions, unchanged-observation streaks, redundant writes, empty searches, tokens/step, memory file sizes),
digest.md (sampled turns) and, if you need more, the full traces listed in traces.md.{continuation}

Analyse: memory utilisation (are files read before acting? are searches empty?), accuracy, impact on actions, gaps
(what the agent needed but had not written down), structural issues (files that grow without bound, duplicated
entries, ops never used, iteration caps hit or never approached).

Write `spec.yaml` (complete new spec) and `analysis.md` (findings, the change, and why it should raise progression).
"""


@dataclasses.dataclass(frozen=True)
class Limits:
    max_spec_bytes: int = 256 * 1024
    max_prompt_bytes: int = 16 * 1024
    max_file_bytes: int = 64 * 1024


def op_registry() -> dict[str, Any]:
    """OP_SEMANTICS and friends from the memory package, as JSON-able data (the proposer subprocess reads this file,
    so it does not need to import the memory package)."""
    from automem_jax.memory.action_repair import REPAIRS
    from automem_jax.memory import spec as mspec

    return {
        "action_repairs": {name: help_ for name, (_, help_) in REPAIRS.items()},
        "semantics": {name: {"description": desc, "grammar": mspec.ARG_GRAMMAR.get(name, ""),
                             "mutating": name in mspec.MUTATING_SEMANTICS}
                      for name, desc in mspec.OP_SEMANTICS.items()},
        "template_placeholders": sorted(mspec.TEMPLATE_PLACEHOLDERS),
        "continue_placeholders": sorted(mspec.CONTINUE_PLACEHOLDERS),
        "schema": {
            "file": {f.name: _default_repr(f) for f in dataclasses.fields(mspec.FileSpec)},
            "op": {f.name: _default_repr(f) for f in dataclasses.fields(mspec.OpSpec)},
            "phase": {f.name: _default_repr(f) for f in dataclasses.fields(mspec.PhaseSpec) if f.name != "name"},
        },
    }


def _default_repr(f: dataclasses.Field) -> str:
    return "required" if f.default is dataclasses.MISSING else f"default {f.default!r}"


def op_registry_markdown(reg: Mapping[str, Any]) -> str:
    lines = ["# Op registry", "", "Ops in a spec bind a NAME (what the model writes: `<|NAME|>args<|END|>`) to one of "
             "these built-in semantics. An op with a fixed `file` drops the `file|` part of its arguments.", "",
             "| semantics | arguments | mutates | what it does |", "|---|---|---|---|"]
    for name, s in reg["semantics"].items():
        lines.append(f"| {name} | `{s['grammar']}` | {'yes' if s['mutating'] else 'no'} | {s['description']} |")
    lines += ["", "## Template placeholders", "",
              "phase `template`: " + ", ".join(f"{{{p}}}" for p in reg["template_placeholders"]),
              "phase `continue_template`: " + ", ".join(f"{{{p}}}" for p in reg["continue_placeholders"]),
              "Write literal braces as {{ and }}.", "", "## Schema (fields and defaults)", ""]
    for kind, fields in reg["schema"].items():
        lines.append(f"- {kind}: " + "; ".join(f"`{k}` ({v})" for k, v in fields.items()))
    lines += ["", "## Action repair (top-level `action_repair`, a list of names; [] = exact action names only)", "",
              "The env accepts exact action names only (BALROG); anything else runs the default action and counts "
              "as invalid. Listed repairs rewrite the model's action text first:"]
    lines += [f"- `{name}`: {help_}" for name, help_ in reg.get("action_repairs", {}).items()]
    return "\n".join(lines) + "\n"


def _families(episode_stats: Sequence[Mapping[str, Any]], spec_env: str) -> list[str]:
    fams = sorted({str(s.get("env")) for s in episode_stats if s.get("env")})
    return fams or ([spec_env] if spec_env in ENV_CONTEXT else [])


def env_context_text(families: Sequence[str], given: str | None = None) -> str:
    if given:
        return given if given.endswith("\n") else given + "\n"
    texts = [ENV_CONTEXT[f] for f in families if f in ENV_CONTEXT]
    return "\n".join(texts) if texts else "# Environment\nNo context given; see the traces.\n"


def _make_read_only(path: Path) -> None:
    path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def build_workspace(ws: str | os.PathLike, *, incumbent_yaml: str, spec_env: str, trace_dirs: Sequence[str | Path],
                    history_records: list[dict], history_md: str, limits: Limits = Limits(),
                    env_context: str | None = None, continuation: Mapping[str, Any] | None = None,
                    digest_turns: int = 3, digest_chars: int = 40_000) -> dict[str, Any]:
    """Create (or recreate) the workspace directory; returns the aggregate trace statistics.

    `continuation`: {"reason", "decision", "proposal_yaml", "analysis", "diff"} of the rejected attempt this one
    continues (AutoMem's "Changes Did NOT Improve Performance" message).
    """
    ws = Path(ws)
    if ws.exists():
        shutil.rmtree(ws)  # a half-built workspace from a killed run: rebuild from scratch
    ws.mkdir(parents=True)

    reg = op_registry()
    episodes = tstats.load_episodes(trace_dirs)
    op_map = _op_semantics_map(incumbent_yaml)
    per_ep = [tstats.episode_stats(s, recs, op_map, mdir) for s, recs, mdir in episodes]
    agg = tstats.aggregate(per_ep)
    agg["op_semantics"] = op_map

    atomic_write_text(ws / "spec.yaml", incumbent_yaml)
    atomic_write_text(ws / "incumbent.yaml", incumbent_yaml)
    _make_read_only(ws / "incumbent.yaml")
    atomic_write_json(ws / "op_registry.json", reg)
    atomic_write_text(ws / "op_registry.md", op_registry_markdown(reg))
    atomic_write_text(ws / "rules.md", RULES.format(**dataclasses.asdict(limits)))
    from automem_jax.memory.spec_language import spec_language_markdown  # the validator's own tables

    atomic_write_text(ws / "spec_language.md", spec_language_markdown())
    _write_examples(ws / "examples")
    families = _families(per_ep, spec_env)
    atomic_write_text(ws / "env_context.md", env_context_text(families, env_context))
    atomic_write_json(ws / "history.json", {"attempts": history_records})
    atomic_write_text(ws / "history.md", history_md)
    atomic_write_text(ws / "episode_stats.jsonl", "".join(json.dumps(s, sort_keys=True) + "\n" for s in per_ep))
    atomic_write_json(ws / "stats.json", agg)
    atomic_write_text(ws / "digest.md", tstats.digest(episodes, per_ep, turns_per_episode=digest_turns,
                                                      max_chars=digest_chars) + _op_usage_md(agg))
    atomic_write_text(ws / "traces.md", "# Full traces and memory folders\n\n" + "".join(
        f"- trace: {s['trace_path']}\n  memory: {s['memory_dir']}\n" for s in per_ep))
    cont_note = ""
    if continuation:
        prev = ws / "previous"
        prev.mkdir()
        atomic_write_text(prev / "spec.yaml", continuation.get("proposal_yaml", ""))
        atomic_write_text(prev / "analysis.md", continuation.get("analysis", ""))
        atomic_write_text(prev / "diff.txt", continuation.get("diff", ""))
        atomic_write_text(ws / "continuation.md", continuation_markdown(continuation))
        cont_note = ("\n\nTHIS IS A CONTINUATION: your previous proposal (previous/spec.yaml, previous/analysis.md) "
                     "was rejected; read continuation.md and improve on it.")
    atomic_write_text(ws / "TASK.md", TASK.format(env=", ".join(families) or spec_env, continuation=cont_note))
    return agg


EXAMPLE_SPECS = ("crafter_v5.yaml", "minihack_v4.yaml", "nethack_v2.yaml")


def _write_examples(out: Path) -> None:
    """Copy the shipped evolved specs (configs/specs in a source checkout) as worked examples of every construct."""
    src = Path(__file__).resolve().parents[3] / "configs" / "specs"
    found = [src / n for n in EXAMPLE_SPECS if (src / n).is_file()]
    if not found:
        return
    out.mkdir(parents=True, exist_ok=True)
    for p in found:
        atomic_write_text(out / p.name, p.read_text(encoding="utf-8"))


def continuation_markdown(c: Mapping[str, Any]) -> str:
    d = c.get("decision") or {}
    lines = ["# Changes Did NOT Improve Performance", "", f"Reason: {c.get('reason', '')}", ""]
    if d:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in d.items() if k != "reason"]
    lines += ["", "Your previous proposal is in previous/ (spec.yaml, analysis.md, diff.txt against the incumbent).",
              "Revise it, or try a different structural change."]
    return "\n".join(lines) + "\n"


def _op_semantics_map(spec_yaml: str) -> dict[str, dict[str, Any]]:
    import yaml

    data = yaml.safe_load(spec_yaml) or {}
    return {str(o.get("name")): {"semantics": str(o.get("semantics")), "file": o.get("file")}
            for o in data.get("ops") or [] if isinstance(o, Mapping)}


def _op_usage_md(agg: Mapping[str, Any]) -> str:
    lines = ["", "## Op usage (all episodes)", "", "| op | calls | failed |", "|---|---|---|"]
    counts, failed = agg.get("op_counts", {}), agg.get("failed_ops", {})
    for op in sorted(set(counts) | set(failed) | set(agg.get("op_semantics", {}))):
        lines.append(f"| {op} | {counts.get(op, 0)} | {failed.get(op, 0)} |")
    return "\n".join(lines) + "\n"
