"""Proposers: a subprocess, with a time limit, that reads the workspace and writes spec.yaml + analysis.md.

Kinds:
  command    any command line (e.g. a coding-agent CLI), run by the shell with cwd = the workspace and
             AUTOMEM_WORKSPACE set;
  openai     a chat-completions endpoint; the prompt is built from the workspace, the reply's ```yaml block is the spec;
  local      the same prompt through our own engine (`make_engine("jax", model)`);
  heuristic  programmatic mutations driven by the trace statistics (offline; the default without an LLM).
Every kind runs as a child process in its own process group (openai/local/heuristic through
`python -m automem_jax.loops.structure.proposers --kind=... --workspace=DIR`), so a hang is killed as a whole group
at the time limit and a crash cannot take the loop down.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

KINDS = ("command", "openai", "local", "heuristic")


@dataclasses.dataclass(frozen=True)
class ProposerConfig:
    kind: str = "heuristic"
    command: str = ""  # kind=command: shell command line
    timeout_s: float = 3600.0
    model: str = ""  # openai: model name; local: HF dir or preset for make_engine("jax", ...)
    base_url: str = ""  # openai: e.g. https://api.openai.com/v1
    api_key_env: str = "OPENAI_API_KEY"  # openai: name of the env var holding the key (never the key itself)
    max_tokens: int = 4096
    temperature: float = 0.7
    prompt_chars: int = 60_000  # size budget of the prompt built from the workspace (the digest is clipped to fit)
    max_seq_len: int = 8192  # local: engine context length
    seed: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"proposer.kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "command" and not self.command.strip():
            raise ValueError("proposer.command is empty; give the command line to run in the workspace")
        if self.kind == "openai" and not (self.model and self.base_url):
            raise ValueError("proposer kind 'openai' needs proposer.model and proposer.base_url")
        if self.kind == "local" and not self.model:
            raise ValueError("proposer kind 'local' needs proposer.model (a model dir or preset name)")
        if self.timeout_s <= 0:
            raise ValueError(f"proposer.timeout_s must be > 0, got {self.timeout_s}")


@dataclasses.dataclass(frozen=True)
class ProposerRun:
    returncode: int | None  # None when killed at the time limit
    timed_out: bool
    duration_s: float
    log_tail: str


def command_line(cfg: ProposerConfig, ws: Path) -> list[str] | str:
    if cfg.kind == "command":
        return cfg.command
    args = [sys.executable, "-m", "automem_jax.loops.structure.proposers", f"--kind={cfg.kind}",
            f"--workspace={ws}", f"--seed={cfg.seed}", f"--max_tokens={cfg.max_tokens}",
            f"--temperature={cfg.temperature}", f"--prompt_chars={cfg.prompt_chars}"]
    if cfg.kind == "openai":
        args += [f"--model={cfg.model}", f"--base_url={cfg.base_url}", f"--api_key_env={cfg.api_key_env}"]
    elif cfg.kind == "local":
        args += [f"--model={cfg.model}", f"--max_seq_len={cfg.max_seq_len}"]
    return args


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the child's process group, then SIGKILL whatever is left (the group is ours: start_new_session)."""
    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader so a zombie does not keep the group "alive"
            try:
                os.killpg(proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.05)


def _tail(path: Path, n: int = 2000) -> str:
    if not path.exists():
        return ""
    data = path.read_bytes()[-n:]
    return data.decode("utf-8", errors="replace")


def run_proposer(cfg: ProposerConfig, ws: str | os.PathLike, log_path: str | os.PathLike) -> ProposerRun:
    """Run the proposer in `ws`; stdout+stderr go to `log_path`. Kills the whole process group on timeout."""
    ws, log_path = Path(ws).resolve(), Path(log_path)
    env = dict(os.environ, AUTOMEM_WORKSPACE=str(ws))
    if cfg.kind == "local":
        # The loop's own engine may hold the accelerator: the proposer's JAX must not grab 75% of it up front.
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    cmd = command_line(cfg, ws)
    start = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, shell=isinstance(cmd, str), cwd=ws, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=cfg.timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            rc, timed_out = None, True
        # Also reap anything the proposer left running in its group (e.g. a backgrounded helper).
        _kill_group(proc)
        proc.wait()
    return ProposerRun(rc, timed_out, time.monotonic() - start, _tail(log_path))


# ---------------------------------------------------------------------------------------------------------------
# Prompt from the workspace (openai / local kinds)
# ---------------------------------------------------------------------------------------------------------------
SYSTEM_PROMPT = (
    "You design the memory scaffold of an LLM agent that plays a game from text. The scaffold is a declarative "
    "YAML spec (phases, prompts, memory files, op vocabulary). Analyse the evidence, then propose ONE coherent "
    "revision with at least one structural change. Reply with your analysis in markdown, then exactly one fenced "
    "```yaml block holding the COMPLETE new spec (every field, not a diff).")

# (file, title) in the order the prompt shows them; _PRIORITY says what keeps its room when the budget is short.
_SECTIONS = (("TASK.md", "TASK.md"), ("rules.md", "rules.md"), ("op_registry.md", "op_registry.md"),
             ("spec_language.md", "spec_language.md"),
             ("env_context.md", "env_context.md"), ("history.md", "history.md"),
             ("continuation.md", "continuation.md"), ("previous/diff.txt", "previous/diff.txt"),
             ("stats", "stats.json (aggregate over episodes)"), ("spec.yaml", "spec.yaml (current incumbent)"),
             ("digest.md", "digest.md"))
_PRIORITY = ("TASK.md", "rules.md", "spec.yaml", "continuation.md", "previous/diff.txt", "op_registry.md",
             "spec_language.md", "env_context.md", "stats", "history.md", "digest.md")


def _read(ws: Path, name: str) -> str:
    p = ws / name
    return p.read_text(encoding="utf-8", errors="replace") if p.is_file() else ""


def _stats_summary(ws: Path) -> str:
    agg = json.loads(_read(ws, "stats.json") or "{}")
    agg.pop("op_semantics", None)
    return json.dumps(agg, indent=1, sort_keys=True)


def _section_text(ws: Path, name: str) -> str:
    if name == "stats":
        return _stats_summary(ws)
    if name == "spec.yaml":
        return f"```yaml\n{_read(ws, name).rstrip()}\n```"
    return _read(ws, name).strip()


def build_messages(ws: str | os.PathLike, prompt_chars: int = 60_000) -> list[dict[str, str]]:
    """System + one user message holding the workspace's sections, at most `prompt_chars` characters: sections get
    room in priority order (task, rules, spec first; history and digest last) and the one that overflows is clipped."""
    ws = Path(ws)
    texts = {name: _section_text(ws, name) for name, _ in _SECTIONS}
    room = prompt_chars - len(SYSTEM_PROMPT) - 120
    budget: dict[str, int] = {}
    for name in _PRIORITY:
        budget[name] = max(0, min(len(texts[name]), room))
        room -= budget[name] + 40
    parts = []
    for name, title in _SECTIONS:
        text, n = texts[name], budget.get(name, 0)
        if not text or n <= 0:
            continue
        parts.append(f"=== {title} ===\n" + (text if n >= len(text) else text[:n] + "\n[clipped]"))
    user = "\n\n".join(parts) + "\n\nNow write your analysis, then the complete new spec in one ```yaml block."
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_-]*)[ \t]*\n(.*?)(?:\n```|\Z)", re.DOTALL)


def parse_reply(text: str) -> tuple[str, str]:
    """(spec YAML, analysis) from a model reply: the last fenced block (```yaml preferred) that parses to a mapping
    with phases or ops; the analysis is the reply without that block. Raises ValueError when there is none."""
    import yaml

    from automem_jax.memory.yaml_safe import load_yaml

    blocks = [(m.group(1).lower(), m.group(2), m.span()) for m in _FENCE.finditer(text)]
    blocks.sort(key=lambda b: b[0] in ("yaml", "yml"))  # stable: yaml blocks last, so tried first below
    for lang, body, span in reversed(blocks):
        try:
            data = load_yaml(body)  # bounded: a model's reply is as untrusted as a proposal
        except yaml.YAMLError:
            continue
        if isinstance(data, dict) and ("phases" in data or "ops" in data):
            analysis = (text[: span[0]] + text[span[1]:]).strip()
            return body.strip() + "\n", analysis or "(no analysis given)"
    raise ValueError("the reply has no fenced ```yaml block holding a spec (a mapping with phases/ops)")


def _write_outputs(ws: Path, reply: str) -> None:
    from automem_jax.loops.structure.history import atomic_write_text

    atomic_write_text(ws / "reply.md", reply)
    spec_text, analysis = parse_reply(reply)  # raises -> non-zero exit, the loop records the message
    atomic_write_text(ws / "spec.yaml", spec_text)
    atomic_write_text(ws / "analysis.md", analysis + "\n")


def _openai(args: argparse.Namespace, ws: Path) -> None:
    import requests

    key = os.environ.get(args.api_key_env, "")
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    else:
        print(f"warning: env var {args.api_key_env} is unset; calling {args.base_url} without a key", file=sys.stderr)
    body = {"model": args.model, "messages": build_messages(ws, args.prompt_chars), "max_tokens": args.max_tokens,
            "temperature": args.temperature, "seed": args.seed}
    r = requests.post(args.base_url.rstrip("/") + "/chat/completions", json=body, headers=headers, timeout=None)
    if r.status_code != 200:
        raise RuntimeError(f"{args.base_url} answered HTTP {r.status_code}: {r.text[:500]}")
    _write_outputs(ws, r.json()["choices"][0]["message"]["content"] or "")


def _make_jax_engine(model: str, max_seq_len: int):
    from automem_jax.engine import make_engine  # lazy: heuristic/openai proposers never load JAX

    return make_engine("jax", model=model, max_batch=1, max_seq_len=max_seq_len, max_loras=0)


def _local(args: argparse.Namespace, ws: Path) -> None:
    from automem_jax.engine.base import Request, SamplingParams

    engine = _make_jax_engine(args.model, args.max_seq_len)
    try:
        # A local model has a short context: shrink the prompt until prompt + reply fit (measured in its tokens).
        room = max(args.max_seq_len - args.max_tokens, 16)
        chars, msgs = args.prompt_chars, build_messages(ws, args.prompt_chars)
        for _ in range(8):
            n = len(engine.tokenizer.apply_chat_template(msgs, add_generation_prompt=True))
            if n <= room:
                break
            chars = max(256, int(chars * room / n * 0.9))
            msgs = build_messages(ws, chars)
        sampling = SamplingParams(temperature=args.temperature, max_new_tokens=args.max_tokens, seed=args.seed)
        comp = engine.generate([Request(messages=msgs, sampling=sampling)])[0]
    finally:
        engine.close()
    if comp.finish_reason == "error":
        raise RuntimeError(f"local engine failed: {comp.error}")
    _write_outputs(ws, comp.text)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Structure-loop proposer (run by the loop in a workspace).")
    ap.add_argument("--kind", choices=("openai", "local", "heuristic"), required=True)
    ap.add_argument("--workspace", default=os.environ.get("AUTOMEM_WORKSPACE", "."))
    ap.add_argument("--model", default="")
    ap.add_argument("--base_url", default="")
    ap.add_argument("--api_key_env", default="OPENAI_API_KEY")
    ap.add_argument("--max_tokens", type=int, default=4096)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--prompt_chars", type=int, default=60_000)
    ap.add_argument("--max_seq_len", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    ws = Path(args.workspace).resolve()
    if not (ws / "spec.yaml").is_file():
        print(f"error: --workspace {ws} has no spec.yaml; pass a workspace built by the structure loop",
              file=sys.stderr)
        return 2
    if args.kind == "heuristic":
        from automem_jax.loops.structure.heuristic import propose_in_workspace

        propose_in_workspace(ws, seed=args.seed)
    elif args.kind == "openai":
        _openai(args, ws)
    else:
        _local(args, ws)
    return 0


if __name__ == "__main__":
    sys.exit(main())
