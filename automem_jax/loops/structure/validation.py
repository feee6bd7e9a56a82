"""Check a proposer's output before anything runs it: presence, size, YAML, schema, rules, structural change.

A proposal is untrusted text. Every check raises `ProposalRejected(stage, reason)`; the loop writes the reason to the
history and hands it to the next attempt. The incumbent is only ever read.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from automem_jax import memory
from automem_jax.loops.structure.workspace import Limits
from automem_jax.memory.yaml_safe import load_yaml
from automem_jax.short_repr import short_repr

log = logging.getLogger(__name__)

# Fields that are wording, not structure (AutoMem: "wording alone does not count"); action_repair is no memory
# structure either (a revision must change memory, not only how actions are read).
_TOP_WORDING = {"name", "version", "parent", "env", "description", "guidance", "commit_prompt", "history_template",
                "action_repair"}
_FILE_WORDING = {"purpose", "content"}
_OP_WORDING = {"description", "key_grammar"}
_PHASE_WORDING = {"template", "continue_template"}
# Wording inside the runtime section: texts shown to the model; conditions, fields and policies are structure.
_RUNTIME_WORDING = {"text", "reason", "header", "message", "template", "content", "marker"}


class ProposalRejected(Exception):
    def __init__(self, stage: str, reason: str):
        self.stage, self.reason = stage, reason
        super().__init__(f"[{stage}] {reason}")


def _strip(d: Mapping[str, Any], drop: set[str]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in drop}


def _fmt(v: Any) -> str:
    return short_repr(v, 80)


def _strip_wording(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: _strip_wording(v) for k, v in x.items() if k not in _RUNTIME_WORDING}
    if isinstance(x, list):
        return [_strip_wording(v) for v in x]
    return x


def structural_changes(a: "memory.MemorySpec", b: "memory.MemorySpec") -> list[str]:
    """Human-readable list of structural differences from spec a to spec b ([] = wording only or identical)."""
    da, db = a.to_dict(), b.to_dict()
    out: list[str] = []
    for key in sorted((set(da) | set(db)) - _TOP_WORDING - {"files", "ops", "phases", "runtime"}):
        if da.get(key) != db.get(key):
            out.append(f"{key}: {_fmt(da.get(key))} -> {_fmt(db.get(key))}")
    for kind, drop in (("file", _FILE_WORDING), ("op", _OP_WORDING)):
        ia = {x["name"]: _strip(x, drop) for x in da[kind + "s"]}
        ib = {x["name"]: _strip(x, drop) for x in db[kind + "s"]}
        out += [f"{kind} {n} added" for n in ib if n not in ia]
        out += [f"{kind} {n} removed" for n in ia if n not in ib]
        for n in ia.keys() & ib.keys():
            for k in sorted(set(ia[n]) | set(ib[n])):
                if ia[n].get(k) != ib[n].get(k):
                    out.append(f"{kind} {n}: {k} {_fmt(ia[n].get(k))} -> {_fmt(ib[n].get(k))}")
    ra, rb = da.get("runtime") or {}, db.get("runtime") or {}
    for key in sorted(set(ra) | set(rb)):
        a, b = _strip_wording(ra.get(key)), _strip_wording(rb.get(key))
        if a != b:
            na, nb = (len(x) if isinstance(x, list) else int(x is not None) for x in (a, b))
            out.append(f"runtime.{key}: {na} -> {nb} entries" if na != nb else f"runtime.{key} changed")
    pa, pb = da["phases"], db["phases"]
    if list(pa) != list(pb):
        out.append(f"phases: {list(pa)} -> {list(pb)}")
    for n in pa.keys() & pb.keys():
        xa, xb = _strip(pa[n], _PHASE_WORDING), _strip(pb[n], _PHASE_WORDING)
        for k in sorted(set(xa) | set(xb)):
            if xa.get(k) != xb.get(k):
                out.append(f"phase {n}: {k} {_fmt(xa.get(k))} -> {_fmt(xb.get(k))}")
    return sorted(out)


def check_rules(spec: "memory.MemorySpec", limits: Limits) -> None:
    """Size limits, prompts mention their ops, two-phase invariant. Raises ProposalRejected(stage='rules')."""
    for p in spec.phases:
        for field in ("template", "continue_template"):
            n = len(getattr(p, field).encode())
            if n > limits.max_prompt_bytes:
                raise ProposalRejected("rules", f"phases.{p.name}.{field} is {n} bytes > max_prompt_bytes "
                                                f"{limits.max_prompt_bytes}; shorten the prompt")
        text = p.template + "\n" + p.continue_template
        if "{ops_help}" not in p.template:
            missing = [o for o in p.ops if not re.search(rf"\b{re.escape(o)}\b", text)]
            if missing:
                raise ProposalRejected("rules", f"phases.{p.name}: the prompt does not mention allowed op(s) "
                                                f"{missing}; name them in the template or use {{ops_help}}")
    if len(spec.history_template.encode()) > limits.max_prompt_bytes:
        raise ProposalRejected("rules", f"history_template is over max_prompt_bytes {limits.max_prompt_bytes}")
    for f in spec.files:
        n = len(f.content.encode())
        if n > limits.max_file_bytes:
            raise ProposalRejected("rules", f"files[{f.name}].content is {n} bytes > max_file_bytes "
                                            f"{limits.max_file_bytes}; shorten the initial content")
    if spec.mode != "memory":
        raise ProposalRejected("rules", f"mode is {spec.mode!r}: memory ops must stay LLM actions (mode: memory)")
    phases = list(spec.phases)
    if len(phases) < 2 or phases[-1].ends_on != "action":
        raise ProposalRejected("rules", "two-phase invariant: need a memory-writing phase followed by a last phase "
                                        "that ends on the action (e.g. LOG then PLAN)")
    writers = [p.name for p in phases[:-1] if any((o := spec.op(n)) is not None and o.mutating for n in p.ops)]
    if not writers:
        raise ProposalRejected("rules", "two-phase invariant: no phase before the action phase can write memory; "
                                        "keep at least one mutating op (append/write/upsert_keyed) in LOG")


def check_proposal(ws: str | os.PathLike, incumbent: "memory.MemorySpec", limits: Limits,
                   require_structural: bool = True, require_analysis: bool = True
                   ) -> tuple["memory.MemorySpec", list[str], str]:
    """Validate `ws/spec.yaml` against the rules; returns (candidate, structural changes, analysis text).

    The candidate keeps the incumbent's name/env, version incumbent+1 and parent incumbent (provisional: the loop
    renumbers on accept).
    """
    ws = Path(ws)
    path = ws / "spec.yaml"
    if not path.is_file():
        raise ProposalRejected("output", "the proposer wrote no spec.yaml into the workspace")
    size = path.stat().st_size
    if size > limits.max_spec_bytes:
        raise ProposalRejected("size", f"spec.yaml is {size} bytes > max_spec_bytes {limits.max_spec_bytes}")
    analysis_path = ws / "analysis.md"
    analysis = analysis_path.read_text(encoding="utf-8", errors="replace") if analysis_path.is_file() else ""
    if require_analysis and not analysis.strip():
        raise ProposalRejected("output", "the proposer wrote no analysis.md (or an empty one)")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = load_yaml(text)
    except yaml.YAMLError as e:
        raise ProposalRejected("yaml", f"spec.yaml is not valid YAML: {' '.join(str(e).split())[:300]}") from None
    if not isinstance(data, dict):
        raise ProposalRejected("yaml", f"spec.yaml must be a YAML mapping, got {type(data).__name__}")
    data.update(name=incumbent.name, env=incumbent.env, version=incumbent.version + 1, parent=incumbent.version)
    try:
        cand = memory.validate_spec(data)
        check_rules(cand, limits)
        changes = structural_changes(incumbent, cand)
    except memory.SpecError as e:
        raise ProposalRejected("schema", f"invalid spec: {e}") from None
    except ProposalRejected:
        raise
    except Exception as e:  # a proposal the checks did not foresee: rejected with the error, never a loop crash
        log.exception("structure loop: checking a proposal raised")
        raise ProposalRejected("check", f"checking the proposal failed: {type(e).__name__}: "
                                        f"{' '.join(str(e).split())[:300]}") from None
    if require_structural and not changes:
        raise ProposalRejected("structure", "no structural change (ops, files, phases or memory limits must differ; "
                                            "wording-only edits do not count)")
    return cand, changes, analysis
