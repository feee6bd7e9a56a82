"""The batched AutoMem inner agent: LOG -> PLAN -> action commit for every env of every job in one loop.

Each env slot is a small state machine (`_Slot`). Every loop iteration, each slot that needs a model call adds one
chat Request and all of them go to `engine.generate` together; slots that finished their phase (ready to act) wait;
every job's ready slots then step in one batched `env.step` (others held with None). A finished episode writes its
summary line and its slot is reset with the job's next seed. Multi-turn phases only append messages, so an engine
with a prefix cache reuses the conversation so far.

Two roles: with `memory_adapter` set, LOG/PLAN run on that adapter; when the memory role's PLAN ends, the base
model (or `action_adapter`) continues the same chat after AutoMem's handoff (agent/handoff.py), may still read
memory up to the phase's turn cap, and commits the action. Spec `mode: history` is BALROG's naive agent (no memory,
the last N observation/action pairs) through the same loop.

Actions: the model's text (`raw_action` in the trace) goes through the spec's `action_repair` (none by default)
and the result (`action`) to the env, which validates it exactly as BALROG does (`executed_action`, `valid`).
"""
from __future__ import annotations

import collections
import dataclasses
import re
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from automem_jax.agent import prompts
from automem_jax.memory.action_repair import RepairOptions, repair
from automem_jax.agent.handoff import handoff_messages
from automem_jax.agent.runtime import StepRuntime
from automem_jax.agent.summary import agent_description, client_description, summarize
from automem_jax.agent.trace import EpisodeLog, TraceWriter, write_summary_json
from automem_jax.engine.base import Completion, Engine, Request, SamplingParams
from automem_jax.envs.base import Observation, TextEnv
from automem_jax.memory.grammar import phase_grammars
from automem_jax.memory.parser import parse_reply
from automem_jax.memory.spec import MemorySpec
from automem_jax.memory.store import MemoryStore


@dataclasses.dataclass
class EnvJob:
    env: TextEnv
    seeds: list[int]

    def __post_init__(self):
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"EnvJob({self.env.task}): seeds must be unique, got {self.seeds}")


@dataclasses.dataclass
class EpisodeResult:
    env: str
    task: str
    seed: int
    steps: int
    progression: float
    total_reward: float
    status: str  # done | truncated | crashed
    invalid_actions: int
    trace_path: str
    memory_dir: str
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    input_tokens: int = 0  # BALROG: prompt tokens of every model call of the episode
    output_tokens: int = 0
    failed_candidates: list[str] = dataclasses.field(default_factory=list)  # BALROG: invalid candidates, raw
    action_frequency: dict[str, int] = dataclasses.field(default_factory=dict)  # BALROG: executed action -> count

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def naive_action(text: str) -> str:
    """BALROG's naive agent: the stripped reply with letters, whitespace and colons only (digits are lost)."""
    return re.sub(r"[^a-zA-Z\s:]", "", text.strip())


class _Slot:
    """One env slot of one job: the episode running in it and where its agent step stands."""

    def __init__(self, job: int, index: int):
        self.job, self.index = job, index
        self.stage = "idle"  # idle | phase | commit | history | ready | finished

    def start(self, seed: int, episode: int, trace: TraceWriter, store: MemoryStore | None, memory_dir: str,
              history_length: int):
        self.seed, self.episode, self.trace, self.store, self.memory_dir = seed, episode, trace, store, memory_dir
        self.step = 0
        self.prev_obs_text: str | None = None
        self.unchanged = 0
        self.prev_raw: str | None = None
        self.prev_executed: str | None = None
        self.prev_valid = True
        self.history: collections.deque = collections.deque(maxlen=max(1, history_length))
        self.zero_streak = self.max_zero_streak = 0
        self.stats: dict[str, Any] = collections.defaultdict(int)
        self.stats["ops"] = collections.Counter()
        self.action_raw: str | None = None
        self.action_record: dict[str, Any] | None = None
        self.prev_reward = 0.0
        self.phase_wrote = False
        self.tokens_per_char = 0.0  # of the last prompt (chat template included): estimates the next one
        self.context_full = False  # the next turn of this phase would not fit the context: make it the last


CONTEXT_CUT_NOTE = "\n[... cut here: the context is full. Finish this phase now.]"


class Rollout:
    def __init__(self, jobs: Sequence[EnvJob], engine: Engine, spec: MemorySpec, out_dir: str | Path, *,
                 run_id: str, max_steps: int, sampling: SamplingParams, memory_adapter: str | None = None,
                 action_adapter: str | None = None, progress: Callable[[EpisodeResult], None] | None = None):
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.jobs, self.engine, self.spec = list(jobs), engine, spec
        self.out = Path(out_dir)
        self.run_id, self.max_steps, self.sampling = run_id, max_steps, sampling
        self.memory_adapter, self.action_adapter, self.progress = memory_adapter, action_adapter, progress
        self.two_model = memory_adapter is not None and spec.mode == "memory"
        self.repair_options = RepairOptions(tuple(spec.action_repair))
        self.log = EpisodeLog(self.out / "episodes.jsonl")
        done = self.log.finished()
        self.results: list[EpisodeResult] = []
        self.queues: list[collections.deque] = []
        for job in self.jobs:
            fam = job.env.family
            for r in self.log.records:
                if r["env"] == fam and r["task"] == job.env.task and int(r["seed"]) in job.seeds:
                    self.results.append(_result_from_record(r))
            self.queues.append(collections.deque(
                (k, s) for k, s in enumerate(job.seeds) if (fam, job.env.task, int(s)) not in done))
        self.slots = [[_Slot(j, i) for i in range(job.env.num_envs)] for j, job in enumerate(self.jobs)]
        self.counters = collections.Counter()
        self.error_kinds = collections.Counter()  # engine error messages, numbers masked (summary.json)
        # constrained phases: the reply regex per job (its env's action names) and phase, checked up front
        by_actions: dict[tuple[str, ...], dict[tuple[str, bool], str]] = {}
        for job in self.jobs:
            names = tuple(job.env.action_names)
            if names not in by_actions:
                by_actions[names] = phase_grammars(spec, names)
        self.grammars = [by_actions[tuple(job.env.action_names)] for job in self.jobs]

    # ----- episode lifecycle -----
    def _episode_paths(self, env: TextEnv, seed: int) -> tuple[Path, Path]:
        task = _safe(env.task)
        return (self.out / "traces" / env.family / task / f"seed_{seed}.jsonl",
                self.out / "memory" / env.family / task / f"seed_{seed}")

    def _refill(self, j: int, slots: list[_Slot]) -> None:
        """Start the job's next seeds in the given free slots with one batched reset."""
        job, starts = self.jobs[j], []
        for slot in slots:
            if not self.queues[j]:
                slot.stage = "finished"
                continue
            k, seed = self.queues[j].popleft()
            trace_path, mem_dir = self._episode_paths(job.env, seed)
            store = None
            if self.spec.mode == "memory":
                persistent = mem_dir.parent / "persistent" if self.spec.persistent else None
                store = MemoryStore(mem_dir, self.spec, persistent_dir=persistent)
            slot.start(seed, k, TraceWriter(trace_path), store, str(mem_dir), self.spec.history_length)
            slot.runtime = StepRuntime(self.spec, job.env.family, job.env.task, job.env.action_names)
            slot.runtime.reset(store)
            starts.append(slot)
        if not starts:
            return
        observations = job.env.reset([s.seed for s in starts], [s.index for s in starts])
        for slot, obs in zip(starts, observations):
            self._begin_step(slot, obs)

    def _finish(self, slot: _Slot, status: str) -> None:
        env = self.jobs[slot.job].env
        ep = env.episode(slot.index)
        stats = dict(slot.stats)
        stats["ops"] = dict(slot.stats["ops"])
        stats["max_zero_reward_streak"] = slot.max_zero_streak
        if slot.store is not None:
            stats["memory_bytes"] = slot.store.total_bytes()
            stats["memory_files"] = len(slot.store.list_files())
            slot.store.save_persistent()
        result = EpisodeResult(env=env.family, task=env.task, seed=slot.seed, steps=ep.steps,
                               progression=float(env.progression(slot.index)), total_reward=float(ep.total_reward),
                               status=status, invalid_actions=ep.invalid_actions, trace_path=str(slot.trace.path),
                               memory_dir=slot.memory_dir, stats=stats, input_tokens=int(stats.get("prompt_tokens", 0)),
                               output_tokens=int(stats.get("completion_tokens", 0)),
                               failed_candidates=list(ep.failed_candidates),
                               action_frequency=dict(ep.action_frequency))
        slot.trace.close()
        self.log.add(result.to_dict() | {"run_id": self.run_id, "spec": self.spec.name,
                                         "spec_version": self.spec.version, "episode": slot.episode})
        self.results.append(result)
        slot.stage = "idle"
        if self.progress is not None:
            self.progress(result)

    # ----- one agent step -----
    def _begin_step(self, slot: _Slot, obs: Observation) -> None:
        env = self.jobs[slot.job].env
        text = prompts.format_observation(obs)
        if slot.prev_obs_text is not None and text.strip() == slot.prev_obs_text.strip():
            slot.unchanged += 1
        else:
            slot.unchanged = 0
        slot.stats["unchanged_steps"] += slot.unchanged > 0
        slot.obs_text = text
        notice = prompts.diff_notice(slot.unchanged)
        slot.ctx = prompts.StepContext(
            step=slot.step, observation=text, instruction=env.instruction(),
            previous_action=prompts.previous_action_text(slot.step - 1, slot.prev_raw, slot.prev_executed,
                                                         slot.prev_valid) if slot.step > 0 else "",
            diff_notice=notice, stuck_warning=prompts.stuck_warning(notice, slot.prev_executed),
            map_analysis=prompts.map_analysis(text) if self.spec.map_analysis else "")
        slot.action_raw, slot.action_record = None, None
        slot.runtime.begin_step(step=slot.step, text=obs.text, status=obs.status, observation=text,
                                last_action=slot.prev_executed, last_raw=slot.prev_raw, last_valid=slot.prev_valid,
                                reward=slot.prev_reward, changed=slot.step > 0 and slot.unchanged == 0,
                                unchanged=slot.unchanged)
        if self.spec.mode == "history":
            slot.stage, slot.phase_idx, slot.iteration = "history", -1, 0
            slot.messages = prompts.history_messages(self.spec, slot.ctx.instruction, slot.history, text, slot.step)
            return
        slot.phase_idx = -1
        self._next_phase(slot)

    def _next_phase(self, slot: _Slot) -> None:
        if slot.phase_idx >= 0:
            slot.runtime.leave_phase(slot.phase.name, slot.phase_wrote)
        slot.phase_idx += 1
        while slot.phase_idx < len(self.spec.phases) and self.spec.phases[slot.phase_idx].skip_first_step \
                and slot.step == 0:
            slot.runtime.enter_phase(self.spec.phases[slot.phase_idx], skipped=True)
            slot.phase_idx += 1
        # The last phase (action) is never skippable (spec check); the runtime may override its prompt and ops.
        view = slot.runtime.enter_phase(self.spec.phases[slot.phase_idx])
        slot.phase, slot.phase_wrote = view.phase, False
        slot.stage, slot.iteration, slot.context_full = "phase", 0, False
        prompt = prompts.render_phase_prompt(self.spec, view.phase, slot.ctx, slot.store.file_index(), view.notices)
        slot.messages = [{"role": "user", "content": "\n\n".join(t for t in (view.top, prompt, view.bottom) if t)}]

    def _request(self, slot: _Slot) -> Request:
        env = self.jobs[slot.job].env
        phase = slot.phase.name if slot.stage == "phase" else slot.stage.upper()
        adapter = self.memory_adapter if slot.stage == "phase" else self.action_adapter
        sampling = self.sampling
        regex = None
        if slot.stage in ("phase", "commit"):  # a constrained phase's last iteration must close the phase
            spec_phase = self.spec.phases[slot.phase_idx]  # the base model's commit turns continue the action phase
            regex = self.grammars[slot.job].get((spec_phase.name, self._last_turn(slot, spec_phase)))
        elif slot.stage == "history":
            regex = self.grammars[slot.job].get(("HISTORY", False))
        if regex is not None:
            sampling = dataclasses.replace(sampling, regex=regex)
        if sampling.seed is not None:  # distinct, reproducible streams per env/step/turn
            mix = zlib.crc32(f"{env.task}/{slot.seed}/{slot.step}/{phase}/{slot.iteration}".encode())
            sampling = dataclasses.replace(sampling, seed=(sampling.seed + mix) % (2 ** 31))
        return Request(messages=list(slot.messages), sampling=sampling, adapter=adapter,
                       rid=f"{env.task}/{slot.seed}/{slot.step}/{phase}/{slot.iteration}")

    def _record(self, slot: _Slot, phase: str, prompt_msgs: list, comp: Completion, adapter: str | None,
                **fields) -> dict[str, Any]:
        env = self.jobs[slot.job].env
        slot.stats["prompt_tokens"] += comp.prompt_tokens
        slot.stats["completion_tokens"] += comp.completion_tokens
        slot.stats["cached_tokens"] += comp.cached_tokens
        slot.stats["model_calls"] += 1
        chars = sum(len(str(m.get("content") or "")) for m in prompt_msgs)
        if comp.prompt_tokens > 0 and chars > 0:
            slot.tokens_per_char = comp.prompt_tokens / chars
        return {"run_id": self.run_id, "spec": self.spec.name, "spec_version": self.spec.version, "adapter": adapter,
                "env": env.family, "task": env.task, "seed": slot.seed, "episode": slot.episode, "step": slot.step,
                "phase": phase, "iteration": slot.iteration, "messages": prompt_msgs, "completion": comp.text,
                "finish_reason": comp.finish_reason, "ops": [], "op_results": [], "errors": [], "action": None,
                "executed_action": None, "valid": None, "reward": None, "done": None,
                "progression": float(env.progression(slot.index)), "prompt_tokens": comp.prompt_tokens,
                "completion_tokens": comp.completion_tokens, "cached_tokens": comp.cached_tokens} | fields \
            | ({"runtime": events} if (events := slot.runtime.drain_events()) else {})

    def _on_completion(self, slot: _Slot, comp: Completion) -> None:
        text = comp.text if comp.finish_reason != "error" else ""
        if comp.finish_reason == "error":
            slot.stats["engine_errors"] += 1
            self.error_kinds[re.sub(r"\d+", "N", str(comp.error or "")[:160])] += 1
        prompt_msgs = list(slot.messages)
        errors = [comp.error] if comp.error else []
        if slot.stage == "history":
            rec = self._record(slot, "ACTION", prompt_msgs, comp, self.action_adapter, errors=errors)
            self._commit(slot, naive_action(text), "model", rec)  # "" goes to the env: invalid, as in BALROG
            return
        phase = slot.phase
        parsed = parse_reply(text, self.spec, phase)
        results_text, op_results = self._run_ops(slot, parsed)
        base_turn = slot.stage == "commit"  # the base model's turns after the two-role handoff
        name = "COMMIT" if base_turn else phase.name
        slot.stats[f"{name.lower()}_turns"] += 1
        rec = self._record(slot, name, prompt_msgs, comp, self.action_adapter if base_turn else self.memory_adapter,
                           ops=[c.to_dict() for c in parsed.ops], op_results=op_results,
                           errors=parsed.errors + errors)
        last_iteration = self._last_turn(slot, phase)
        if phase.ends_on == "done":
            slot.trace.write(rec)
            slot.messages.append({"role": "assistant", "content": text})
            if parsed.done or not parsed.ops or last_iteration:
                self._next_phase(slot)
            else:
                self._continue(slot, phase, results_text)
            return
        # The action phase (or the base model's turns after the handoff).
        if parsed.action is None and parsed.ops and not last_iteration:
            slot.trace.write(rec)
            slot.messages.append({"role": "assistant", "content": text})
            self._continue(slot, phase, results_text)
            return
        if self.two_model and not base_turn:
            slot.trace.write(rec | {"stripped_action": parsed.action})
            cont = prompts.render_continue(self.spec, phase, results_text, slot.store.file_index(), slot.step)
            slot.messages.extend(handoff_messages(self.spec, text, parsed.action, bool(parsed.ops), results_text,
                                                  cont))
            slot.stage, slot.iteration = "commit", 0
            self._check_context(slot)
            return
        action = slot.runtime.repair(parsed.action) if parsed.action is not None else None
        if action is not None and not last_iteration:
            rejected = slot.runtime.gate(action)  # two roles: only the committing (base) model is gated
            if rejected is not None:
                self._reject(slot, rec | {"action": action}, text, rejected)
                return
        self._commit(slot, action, "model" if action is not None else "fallback", rec | {"raw_action": parsed.action})

    def _run_ops(self, slot: _Slot, parsed) -> tuple[str, list[dict[str, Any]]]:
        """Run a reply's ops in order against the slot's memory: (results text the model sees next, per-op records)."""
        blocks, op_results = [], []
        for call in parsed.ops:
            slot.stats["ops"][call.name] += 1
            if call.error is not None:
                blocks.append(f"[ERROR: {call.error}]")
                op_results.append({"op": call.name, "error": call.error, "ok": False})
                slot.stats["op_errors"] += 1
                continue
            res = slot.store.run(call.name, call.args)
            slot.phase_wrote |= res.mutated
            blocks.append(res.formatted)
            op_results.append(res.to_dict())
            slot.stats["op_errors"] += not res.ok
        return "\n\n".join(blocks), op_results

    @staticmethod
    def _with_events(slot: _Slot, rec: dict[str, Any]) -> dict[str, Any]:
        """The record plus runtime events since it was made (repair, gate, prunes after the action phase)."""
        events = slot.runtime.drain_events()
        return rec | {"runtime": rec.get("runtime", []) + events} if events else rec

    def _reject(self, slot: _Slot, rec: dict[str, Any], text: str, message: str) -> None:
        """The gate refused the committed action: the model sees why and commits again (a turn of its phase)."""
        slot.stats["gate_rejections"] += 1
        slot.trace.write(self._with_events(slot, rec) | {"gate_rejection": message})
        slot.messages.append({"role": "assistant", "content": text})
        slot.messages.append({"role": "user", "content": message})
        slot.iteration += 1
        self._check_context(slot)

    def _continue(self, slot: _Slot, phase, results_text: str) -> None:
        slot.iteration += 1
        slot.messages.append({"role": "user", "content": prompts.render_continue(
            self.spec, phase, results_text, slot.store.file_index(), slot.step)})
        self._check_context(slot)

    def _last_turn(self, slot: _Slot, phase) -> bool:
        """The phase's last turn: its iteration cap, or a context that holds no further turn (`_check_context`)."""
        return slot.iteration + 1 >= phase.max_iterations or slot.context_full

    def _check_context(self, slot: _Slot) -> None:
        """Keep the coming turn inside the engine's context, and mark it the phase's last when the turn after it
        would overflow: the conversation grows by a reply and op results per turn, and a prompt over max_seq_len
        fails (the step's action would then be the fallback). Estimated from the last prompt's tokens per character
        (with a 10% margin) plus the growth of one more turn of the same size. Op results that alone would push
        the coming prompt over the context (a large READ) are cut to fit, with a note saying so; that turn is then
        the phase's last."""
        limit = getattr(self.engine, "max_seq_len", None)
        if not isinstance(limit, int) or slot.tokens_per_char <= 0:
            return
        tpc = 1.1 * slot.tokens_per_char
        room = 2 * self.sampling.max_new_tokens
        sizes = [len(str(m.get("content") or "")) for m in slot.messages]
        over = int((sum(sizes) * tpc + room - limit) / tpc) + 1  # characters past the context
        last = slot.messages[-1]
        if over > 0 and len(slot.messages) > 1 and last.get("role") == "user":
            keep = max(0, sizes[-1] - over - len(CONTEXT_CUT_NOTE))
            slot.messages[-1] = dict(last, content=str(last.get("content") or "")[:keep] + CONTEXT_CUT_NOTE)
            slot.stats["context_cuts"] += 1
            slot.context_full = True
            return
        growth = sum(sizes[-2:])  # the last reply and the op results just appended
        if self.two_model and slot.stage == "phase":  # the handoff to the base model adds the commit prompt
            growth += len(self.spec.commit_prompt) + sizes[-1]
        slot.context_full = (sum(sizes) + growth) * tpc + room >= limit

    def _commit(self, slot: _Slot, action: str | None, source: str, rec: dict[str, Any]) -> None:
        env = self.jobs[slot.job].env
        if action is None:
            action = self.spec.fallback_action(env.family, env.default_action)
            slot.stats["fallbacks"] += 1
        if slot.stage in ("phase", "commit"):
            slot.runtime.leave_phase(self.spec.phases[-1].name, slot.phase_wrote)
        slot.action_raw = repair(action, env.action_names, self.repair_options)
        slot.stats["repaired_actions"] += slot.action_raw != action
        raw = rec.get("raw_action") or action  # the model's own text before any repair (else the fallback)
        slot.action_record = self._with_events(slot, rec) | {"raw_action": raw, "action": slot.action_raw,
                                                             "action_source": source}
        slot.stage = "ready"

    def _after_env_step(self, slot: _Slot, st) -> None:
        env = self.jobs[slot.job].env
        executed, valid = st.info.get("executed_action"), bool(st.info.get("valid_action", True))
        progression = float(env.progression(slot.index))
        slot.trace.write(slot.action_record | {"executed_action": executed, "valid": valid,
                                               "reward": float(st.reward), "done": bool(st.done),
                                               "progression": progression})
        slot.stats["reward_steps"] += st.reward > 0
        slot.zero_streak = 0 if st.reward > 0 else slot.zero_streak + 1
        slot.max_zero_streak = max(slot.max_zero_streak, slot.zero_streak)
        slot.history.append((slot.obs_text, slot.action_raw))
        slot.prev_raw, slot.prev_executed, slot.prev_valid = slot.action_raw, executed, valid
        slot.prev_obs_text = slot.obs_text
        slot.prev_reward = float(st.reward)
        slot.step += 1
        self.counters["decisions"] += 1
        if st.done:
            status = env.episode(slot.index).status
            self._finish(slot, "done" if status == "running" else status)
        elif slot.step >= self.max_steps:
            self._finish(slot, "truncated")
        else:
            self._begin_step(slot, st.observation)

    # ----- the loop -----
    def run(self) -> list[EpisodeResult]:
        for j in range(len(self.jobs)):
            self._refill(j, self.slots[j])
        while True:
            waiting = [s for row in self.slots for s in row if s.stage in ("phase", "commit", "history")]
            if waiting:
                t0 = time.perf_counter()
                completions = self.engine.generate([self._request(s) for s in waiting])
                self.counters["generate_s"] += time.perf_counter() - t0
                self.counters["model_calls"] += len(waiting)
                if len(completions) != len(waiting):
                    raise RuntimeError(f"engine returned {len(completions)} completions for {len(waiting)} requests")
                for slot, comp in zip(waiting, completions):
                    self._on_completion(slot, comp)
            stepped = False
            for j, job in enumerate(self.jobs):
                ready = [s for s in self.slots[j] if s.stage == "ready"]
                if not ready:
                    continue
                stepped = True
                actions: list[str | None] = [None] * job.env.num_envs
                for s in ready:
                    actions[s.index] = s.action_raw
                t0 = time.perf_counter()
                steps = job.env.step(actions)
                self.counters["env_step_s"] += time.perf_counter() - t0
                for s in ready:
                    if steps[s.index] is None:
                        raise RuntimeError(f"{job.env.task}: env slot {s.index} was given an action but not stepped")
                    self._after_env_step(s, steps[s.index])
                free = [s for s in self.slots[j] if s.stage == "idle"]
                if free:
                    self._refill(j, free)
            if not waiting and not stepped:
                if all(s.stage == "finished" for row in self.slots for s in row):
                    break
                raise RuntimeError("rollout stalled: no slot needs the model or the env")  # a bug, never input
        return self.results


def run_episodes(jobs: Sequence[EnvJob], engine: Engine, spec: MemorySpec, out_dir: str | Path, *, run_id: str,
                 max_steps: int, sampling: SamplingParams | None = None, memory_adapter: str | None = None,
                 action_adapter: str | None = None, client: Mapping[str, Any] | None = None,
                 progress: Callable[[EpisodeResult], None] | None = None) -> list[EpisodeResult]:
    """Play every job's seeds to the end (or max_steps); resumable from out_dir. Writes traces, episodes.jsonl,
    summary.json (BALROG's; `client` describes the model server for its `client` block, e.g. backend and model)."""
    sampling = sampling or SamplingParams()
    rollout = Rollout(jobs, engine, spec, out_dir, run_id=run_id, max_steps=max_steps, sampling=sampling,
                      memory_adapter=memory_adapter, action_adapter=action_adapter, progress=progress)
    results = rollout.run()
    c = rollout.counters
    summary = summarize(results, client=client_description(engine, sampling, client),
                        agent=agent_description(spec, memory_adapter, action_adapter))
    write_summary_json(Path(out_dir) / "summary.json", summary,
                       {"run_id": run_id, "spec": spec.name, "spec_version": spec.version,
                        "decisions": c["decisions"], "model_calls": c["model_calls"],
                        "generate_s": round(c["generate_s"], 3), "env_step_s": round(c["env_step_s"], 3),
                        "engine_errors": dict(rollout.error_kinds.most_common(10))})
    return results


def _safe(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", task)


def _result_from_record(r: dict[str, Any]) -> EpisodeResult:
    return EpisodeResult(**{f.name: r[f.name] for f in dataclasses.fields(EpisodeResult) if f.name in r})
