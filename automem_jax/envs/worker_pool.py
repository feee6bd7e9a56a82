"""A pool of worker processes, each hosting several env instances, driven with small messages.

Shared by every CPU-bound env family (NetHack and MiniHack through NLE, the reference Crafter): a family supplies
a picklable `SlotSpec` whose `make_slot()` builds one `SlotEnv` inside a worker. Requests carry key presses per
env slot in; replies carry rendered text, reward, done flags and a small `info` dict out (the text is rendered in
the worker, so rendering scales with the workers too, and the games' own buffers never leave the process).
A worker that dies or misses its deadline is killed and replaced; the slots it hosted are reported as lost, so
their episodes end as "crashed" while the rest of the batch goes on. Workers are daemonic, ignore SIGINT (the
parent decides), exit when the parent's pipe closes, and every pool is closed at interpreter exit.
"""
from __future__ import annotations

import atexit
import dataclasses
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import time
import traceback
import weakref
from typing import Any, Protocol, Sequence, runtime_checkable


@dataclasses.dataclass
class SlotResult:
    """One env slot's outcome of a reset/step, as it crosses the pipe. `info` holds the family's extras
    (NLE: message, blstats, end_status; Crafter: achievements), small and picklable."""

    text: str = ""
    status: str = ""
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    render_s: float = 0.0
    crashed: bool = False
    error: str = ""

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated or self.crashed


# ----------------------------------------------------------------- worker side
@runtime_checkable
class SlotEnv(Protocol):
    """One env instance inside a worker process; its results cross the pipe as `SlotResult`s."""

    def reset(self, seed: int) -> "SlotResult": ...
    def step(self, keys: tuple[int, ...]) -> "SlotResult": ...
    def action_keys(self) -> list[int]: ...
    def close(self) -> None: ...


@runtime_checkable
class SlotSpec(Protocol):
    """A picklable recipe (a frozen dataclass) that each worker calls once per env slot it hosts."""

    family: str

    def make_slot(self) -> SlotEnv: ...


class _Worker:
    def __init__(self, spec: SlotSpec, slots: Sequence[int]):
        self.spec = spec
        self.envs = {s: spec.make_slot() for s in slots}

    def action_keys(self) -> list[int]:
        return next(iter(self.envs.values())).action_keys()

    def reset(self, slot: int, seed: int) -> SlotResult:
        return self.envs[slot].reset(seed)

    def step(self, slot: int, keys: Sequence[int]) -> SlotResult:
        return self.envs[slot].step(tuple(keys))

    def guarded(self, fn, slot: int, arg) -> SlotResult:
        """One env's failure (an exception in the game) crashes that episode only; the env is rebuilt."""
        try:
            return fn(slot, arg)
        except Exception:  # noqa: BLE001 - reported to the parent as a crashed episode
            err = traceback.format_exc(limit=3)
            try:
                self.envs[slot].close()
            except Exception:  # noqa: BLE001
                pass
            self.envs[slot] = self.spec.make_slot()
            return SlotResult(crashed=True, error=err)


def _worker_main(conn, spec: SlotSpec, slots: Sequence[int]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which closes the pool
    worker = _Worker(spec, slots)
    while True:
        try:
            op, payload = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            break  # parent gone
        if op == "close":
            break
        if op == "run":  # [(slot, "reset", seed) | (slot, "step", keys)], in order
            reply = [(s, worker.guarded(worker.reset if kind == "reset" else worker.step, s, arg))
                     for s, kind, arg in payload]
        elif op == "action_keys":
            reply = worker.action_keys()
        elif op == "sleep":  # tests: make this worker miss its deadline
            time.sleep(float(payload))
            reply = None
        else:
            reply = RuntimeError(f"unknown op {op!r}")
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            break
    for env in worker.envs.values():
        try:
            env.close()
        except Exception:  # noqa: BLE001
            pass


# ----------------------------------------------------------------- parent side
_LIVE_POOLS: "weakref.WeakSet[WorkerPool]" = weakref.WeakSet()


@atexit.register
def _close_all_pools() -> None:
    for pool in list(_LIVE_POOLS):
        pool.close()


class WorkerError(RuntimeError):
    pass


class WorkerPool:
    """`num_envs` env slots spread over `num_workers` processes (contiguous blocks of slots per worker)."""

    def __init__(self, spec: SlotSpec, num_envs: int, num_workers: int, *, start_method: str = "forkserver",
                 step_timeout: float = 60.0, reset_timeout: float = 600.0):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if start_method not in ("forkserver", "spawn", "fork"):
            raise ValueError(f"start_method must be 'forkserver' or 'spawn', got {start_method!r}")
        self.spec, self.num_envs = spec, num_envs
        self.num_workers = min(num_workers, num_envs)
        self.step_timeout, self.reset_timeout = step_timeout, reset_timeout
        self._ctx = mp.get_context(start_method)
        bounds = [round(w * num_envs / self.num_workers) for w in range(self.num_workers + 1)]
        self.worker_slots = [list(range(bounds[w], bounds[w + 1])) for w in range(self.num_workers)]
        self._slot_worker = {s: w for w, slots in enumerate(self.worker_slots) for s in slots}
        self._procs: list[Any] = [None] * self.num_workers
        self._conns: list[Any] = [None] * self.num_workers
        self.restarts = 0
        self._closed = False
        for w in range(self.num_workers):
            self._start(w)
        _LIVE_POOLS.add(self)

    # ----- processes -----
    def _start(self, w: int) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, args=(child, self.spec, self.worker_slots[w]),
                                 daemon=True, name=f"{self.spec.family}-worker-{w}")
        proc.start()
        child.close()
        self._procs[w], self._conns[w] = proc, parent

    def _kill(self, w: int) -> None:
        proc, conn = self._procs[w], self._conns[w]
        if conn is not None:
            conn.close()
        if proc is not None:
            if proc.is_alive():
                proc.kill()
            proc.join(timeout=10)
        self._procs[w] = self._conns[w] = None

    def _replace(self, w: int) -> None:
        self._kill(w)
        self._start(w)
        self.restarts += 1

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def worker_of(self, slot: int) -> int:
        return self._slot_worker[slot]

    # ----- messaging -----
    def _roundtrip(self, requests: dict[int, tuple[str, Any]], timeout: float) -> dict[int, Any]:
        """Send one request to each listed worker, then collect; a dead or late worker maps to a WorkerError."""
        if self._closed:
            raise RuntimeError("WorkerPool is closed")
        sent: dict[int, float] = {}
        replies: dict[int, Any] = {}
        for w, msg in requests.items():
            try:
                self._conns[w].send(msg)
                sent[w] = time.monotonic()
            except (BrokenPipeError, OSError) as e:
                replies[w] = WorkerError(f"worker {w} unreachable: {e}")
        for w, t0 in sent.items():
            conn = self._conns[w]
            try:
                if conn.poll(max(0.0, t0 + timeout - time.monotonic())):
                    replies[w] = conn.recv()
                else:
                    replies[w] = WorkerError(f"worker {w} timed out after {timeout:.0f}s")
            except (EOFError, OSError) as e:
                code = self._procs[w].exitcode if self._procs[w] is not None else None
                replies[w] = WorkerError(f"worker {w} died (exit code {code}): {e!r}")
        for w, reply in replies.items():
            if isinstance(reply, WorkerError):
                self._replace(w)
        return replies

    def action_keys(self) -> list[int]:
        reply = self._roundtrip({0: ("action_keys", None)}, self.reset_timeout)[0]
        if isinstance(reply, Exception):
            raise WorkerError(f"could not read the env's actions: {reply}")
        return reply

    def reset(self, slot_seeds: dict[int, int]) -> dict[int, SlotResult]:
        """Reset slots; a worker that fails is replaced and asked once more (reset has no episode to lose)."""
        return self.step_reset({}, slot_seeds)[1]

    def step(self, slot_keys: dict[int, tuple[int, ...]]) -> tuple[dict[int, SlotResult], set[int]]:
        """Step slots; returns (results, lost): crashed workers' requested slots get `crashed` results and
        `lost` lists every slot those workers hosted (held slots lose their game too)."""
        results, _, lost = self.step_reset(slot_keys, {})
        return results, lost

    def step_reset(self, slot_keys: dict[int, tuple[int, ...]], slot_seeds: dict[int, int]
                   ) -> tuple[dict[int, SlotResult], dict[int, SlotResult], set[int]]:
        """Step some slots and reset others in ONE round trip (no worker idles through a separate reset round).

        Returns (step results, reset results, lost). Resets on a worker that failed are retried once on its
        replacement (a reset has no episode to lose); a second failure raises WorkerError.
        """
        if set(slot_keys) & set(slot_seeds):
            raise ValueError(f"slots {sorted(set(slot_keys) & set(slot_seeds))} are both stepped and reset")
        by_worker: dict[int, list] = {}
        for s, seed in slot_seeds.items():
            by_worker.setdefault(self._slot_worker[s], []).append((s, "reset", int(seed)))
        for s, keys in slot_keys.items():
            by_worker.setdefault(self._slot_worker[s], []).append((s, "step", tuple(int(k) for k in keys)))
        timeout = self.reset_timeout if slot_seeds else self.step_timeout
        replies = self._roundtrip({w: ("run", ops) for w, ops in by_worker.items()}, timeout)
        stepped: dict[int, SlotResult] = {}
        reset: dict[int, SlotResult] = {}
        lost: set[int] = set()
        retry: dict[int, int] = {}
        for w, reply in replies.items():
            if isinstance(reply, Exception):
                lost.update(self.worker_slots[w])
                for s, kind, arg in by_worker[w]:
                    if kind == "reset":
                        retry[s] = arg
                    else:
                        stepped[s] = SlotResult(crashed=True, error=str(reply))
            else:
                for s, r in reply:
                    (reset if s in slot_seeds else stepped)[s] = r
        if retry:
            by_worker = {}
            for s, seed in retry.items():
                by_worker.setdefault(self._slot_worker[s], []).append((s, "reset", seed))
            for w, reply in self._roundtrip({w: ("run", ops) for w, ops in by_worker.items()},
                                            self.reset_timeout).items():
                if isinstance(reply, Exception):
                    raise WorkerError(f"reset failed twice: {reply}")
                reset.update(reply)
        return stepped, reset, lost

    # ----- raw asynchronous access (benchmarks: keep every worker busy, no lockstep) -----
    def submit(self, w: int, ops: list[tuple[int, str, Any]]) -> None:
        """Send worker `w` a list of (slot, "reset"|"step", seed|keys); collect its reply with `collect`."""
        self._conns[w].send(("run", ops))

    def collect(self, timeout: float) -> list[tuple[int, list[tuple[int, SlotResult]]]]:
        """Replies of every worker that has one ready within `timeout` (no crash handling: benchmarks only)."""
        ready = mp.connection.wait([c for c in self._conns if c is not None], timeout)
        index = {id(c): w for w, c in enumerate(self._conns)}
        return [(index[id(c)], c.recv()) for c in ready]

    def sleep_worker(self, w: int, seconds: float, timeout: float) -> Any:
        """Test hook: ask worker `w` to sleep; with `timeout` < `seconds` it is treated as hung and replaced."""
        return self._roundtrip({w: ("sleep", seconds)}, timeout)[w]

    # ----- shutdown -----
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for conn in self._conns:
            try:
                if conn is not None:
                    conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + 5.0
        for w, proc in enumerate(self._procs):
            if proc is not None:
                proc.join(timeout=max(0.0, deadline - time.monotonic()))
            self._kill(w)  # terminate stragglers, reap (no zombies)
        _LIVE_POOLS.discard(self)

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


def alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie (for tests)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
