"""The server's engine side: one collector thread owns the engine and runs every HTTP request as part of a batch.

Handler threads never touch the engine. They submit a `Job` (the items of one HTTP request) and wait on it; the
collector drains the queue every few milliseconds and runs everything it found as ONE `engine.generate` call
(continuous batching happens inside). Through generate's `on_tokens` hook it forwards each step's tokens to
streaming jobs, records that the engine made progress (what /health checks) and cancels the rows of jobs whose
client went away. A batch that raises is re-run job by job, so one bad request fails alone.
"""
from __future__ import annotations

import dataclasses
import inspect
import queue
import threading
import time
from typing import Any, Sequence

from absl import logging

from automem_jax.engine.base import Completion, EngineError, Request, SamplingParams
from automem_jax.engine.scoring import TokenLogprobs
from automem_jax.engine.server_requests import Item


@dataclasses.dataclass(eq=False)
class Job:
    items: list[Item]
    stream: bool = False
    events: queue.SimpleQueue = dataclasses.field(default_factory=queue.SimpleQueue)  # (item index, new ids)
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    results: list[Completion] | None = None
    scores: list[TokenLogprobs | None] | None = None
    error: BaseException | None = None
    got_tokens: bool = False
    probe: bool = False  # a health check's own request (not counted as a client's)

    @property
    def requests(self) -> list[Request]:
        return [it.request for it in self.items]

    def cancel(self) -> None:
        self.cancelled.set()

    def finish(self, results: list[Completion] | None = None, scores: list | None = None,
               error: BaseException | None = None) -> None:
        self.results, self.scores, self.error = results, scores, error
        self.done.set()


class Batcher:
    """Runs Jobs on the engine from one collector thread (see module docstring)."""

    def __init__(self, engine: Any, wait_s: float = 0.005):
        self.engine, self.wait_s = engine, wait_s
        self._queue: queue.Queue[Job] = queue.Queue()
        self._hooks = "on_tokens" in inspect.signature(engine.generate).parameters
        self.last_progress = 0.0  # monotonic time the engine last produced a token or finished a job
        self.jobs_done = 0
        self.cancelled = 0  # requests stopped because their client went away (before or while they ran)
        self._thread = threading.Thread(target=self._loop, name="engine-collector", daemon=True)
        self._thread.start()

    @property
    def streams(self) -> bool:
        """Whether tokens reach jobs as they are produced (else a stream gets one chunk at the end)."""
        return self._hooks

    def submit(self, items: Sequence[Item], stream: bool = False, probe: bool = False) -> Job:
        job = Job(list(items), stream=stream, probe=probe)
        self._queue.put(job)
        return job

    def run(self, items: Sequence[Item]) -> list[Completion]:
        """Submit and wait (warm-up, tests); raises what the engine raised."""
        job = self.submit(items)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.results

    def probe(self, timeout: float) -> bool:
        """Health: True once the engine produces a token within `timeout` (any job's, or a 1-token greedy request
        this submits: an idle engine is asked, a busy one is not interrupted); False if none comes."""
        tic = time.monotonic()
        job = self.submit([Item(Request(prompt_ids=[0], sampling=SamplingParams(temperature=0.0, max_new_tokens=1),
                                        rid=f"HEALTH_CHECK_{time.time()}"))], probe=True)
        try:
            while time.monotonic() - tic < timeout:
                if job.done.wait(0.05):
                    return job.error is None and job.results[0].finish_reason != "error"
                if self.last_progress > tic:
                    return True
            return False
        finally:
            job.cancel()

    def _loop(self) -> None:
        while True:
            jobs = [self._queue.get()]
            deadline = time.monotonic() + self.wait_s
            while (left := deadline - time.monotonic()) > 0:
                try:
                    jobs.append(self._queue.get(timeout=left))
                except queue.Empty:
                    break
            live = []
            for job in jobs:
                if job.cancelled.is_set():  # its client left before the engine took it
                    self.cancelled += 0 if job.probe else len(job.items)
                    job.finish(error=EngineError("request cancelled before it started"))
                else:
                    live.append(job)
            if not live:
                continue
            try:
                self._run(live)
            except Exception as e:  # noqa: BLE001 - a bug here must fail these jobs, not stop the collector
                logging.exception("server: running a batch failed")
                for job in live:
                    if not job.done.is_set():
                        job.finish(error=EngineError(f"server failure: {type(e).__name__}: {e}"))

    def _run(self, jobs: list[Job]) -> None:
        owner = [(job, i) for job in jobs for i in range(len(job.items))]
        requests = [r for job in jobs for r in job.requests]

        def on_tokens(index: int, ids: list[int]) -> bool:
            job, i = owner[index]
            self.last_progress = time.monotonic()
            job.got_tokens = True
            if job.stream and ids:
                job.events.put((i, ids))
            return not job.cancelled.is_set()

        try:
            out = self.engine.generate(requests, on_tokens=on_tokens) if self._hooks else \
                self.engine.generate(requests)
        except Exception as e:  # noqa: BLE001 - the engine broke on this batch: find whose request it was
            logging.exception("engine.generate failed on a batch of %d job(s)", len(jobs))
            if len(jobs) == 1:
                jobs[0].finish(error=EngineError(f"engine failure: {type(e).__name__}: {e}"))
                return
            for job in jobs:
                if job.got_tokens:  # part of it was already streamed: a re-run would repeat it
                    job.finish(error=EngineError(f"engine failure: {type(e).__name__}: {e}"))
                else:
                    self._run([job])
            return
        self.last_progress = time.monotonic()
        i = 0
        for job in jobs:
            results = out[i:i + len(job.items)]
            i += len(job.items)
            self.cancelled += 0 if job.probe else sum(bool(c.meta.get("cancelled")) for c in results)
            scores = []
            for k, (item, c) in enumerate(zip(job.items, results)):
                try:
                    scores.append(self._score(item, c))
                except Exception as e:  # noqa: BLE001 - that request fails, with the reason
                    logging.exception("server: scoring logprobs failed")
                    results[k] = Completion(text="", token_ids=list(c.token_ids), finish_reason="error", rid=c.rid,
                                            error=f"return_logprob: scoring failed: {type(e).__name__}: {e}")
                    scores.append(None)
            job.finish(results, scores)
            self.jobs_done += 1

    def _score(self, item: Item, c: Completion) -> TokenLogprobs | None:
        """Logprobs of a request that asked for them (engine.score over its prompt and reply)."""
        if item.logprobs is None or c.finish_reason == "error":
            return None
        req = item.request
        seq = list(req.prompt_ids) + list(c.token_ids)
        if len(seq) < 2:
            return None
        return self.engine.score(seq, adapter=req.adapter, temperature=req.sampling.temperature,
                                 top_k=item.logprobs.top)


def warm_up(batcher: Batcher, vocab_size: int, max_batch: int, decode_steps: int,
            prompt_lengths: Sequence[int]) -> float:
    """Compile what the first requests run before READY: for each prompt length (one per prefill bucket the
    server expects short requests to use) a greedy and a sampled request (prefill of that bucket, decode at the
    smallest window, both sampling modes), then a prompt head reused by two requests at once (in place, and
    copied into a second slot). Returns the seconds it took."""
    t0 = time.monotonic()
    n = decode_steps + 1  # the prefill's token and one full decode call

    def prompt(length: int, salt: int) -> list[int]:
        return [(salt + 13 * i) % vocab_size for i in range(length)]

    def item(ids: list[int], temperature: float) -> Item:
        return Item(Request(prompt_ids=ids, sampling=SamplingParams(temperature=temperature, max_new_tokens=n,
                                                                    seed=0)))
    for k, length in enumerate(prompt_lengths):
        for temperature in (0.0, 1.0):
            batcher.run([item(prompt(length, 7 + 2 * k + int(temperature)), temperature)])
    head = prompt(min(prompt_lengths[-1], 40), 3)
    batcher.run([item(head, 1.0)])
    shared = [item(head[:32] + prompt(8, 5), 1.0)] + ([item(head[:32] + prompt(8, 11), 1.0)] if max_batch > 1 else [])
    batcher.run(shared)
    return time.monotonic() - t0
