"""The batching queue: concurrent requests for the same model and sampling parameters share one generate() call.

One worker thread owns the model. It takes the oldest waiting request, gathers every other waiting
non-streamed request with the same key (model, max_tokens, temperature, top_p, stop; greedy requests
ignore top_p and seed), and runs them as one left-padded batch through tunesmith.eval.generate.
A seeded sampled request runs alone so its seed reproduces. Streamed requests run one at a time and
forward text deltas. The queue is bounded; a cancelled request that has not started is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tunesmith.serve.engine import NoSuchModel

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More requests are waiting than --max-queue allows."""


@dataclass(frozen=True)
class Params:
    """Decoding parameters of one request (max_tokens in tokens)."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def key(self, model: str) -> tuple[Any, ...] | None:
        """Requests with equal keys may share a batch; None: this request runs alone."""
        if self.temperature == 0:
            return (model, self.max_tokens, 0.0, 1.0, self.stop)
        if self.seed is not None:
            return None
        return (model, self.max_tokens, self.temperature, self.top_p, self.stop)


@dataclass
class Job:
    """One request in the queue. Results go back to the event loop that submitted it."""

    model: str
    conversation: list[dict[str, Any]]
    params: Params
    loop: asyncio.AbstractEventLoop
    tools: list[dict[str, Any]] | None = None  # the functions the request offers (rendered into its prompt)
    stream: bool = False
    deadline: float = float("inf")  # time.monotonic() after which the generation is cancelled
    cancel: threading.Event = field(default_factory=threading.Event)
    future: asyncio.Future[Any] | None = None  # non-stream: resolves to a Completion
    deltas: asyncio.Queue[Any] | None = None  # stream: str deltas, then the finished TextStream (or an exception)
    started: float | None = None
    cancel_reason: str | None = None

    def _call(self, fn: Any, *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the event loop closed (server shutting down): nobody is waiting any more
            pass

    def resolve(self, value: Any) -> None:
        def set_value() -> None:
            if self.future is not None and not self.future.done():
                if isinstance(value, BaseException):
                    self.future.set_exception(value)
                else:
                    self.future.set_result(value)

        self._call(set_value)

    def push(self, item: Any) -> None:
        assert self.deltas is not None
        self._call(self.deltas.put_nowait, item)


class Batcher:
    """A bounded queue in front of the engine, drained by one worker thread."""

    def __init__(
        self,
        engine: Any,
        *,
        max_batch: int = 8,
        max_queue: int = 64,
        window_s: float = 0.005,
        batching: bool = True,
        timeout_s: float = 600.0,
        metrics: Any = None,
    ) -> None:
        self.engine = engine
        self.max_batch = max_batch if batching else 1
        self.max_queue = max_queue
        self.window_s = window_s
        self.timeout_s = timeout_s
        self.metrics = metrics
        self._pending: deque[Job] = deque()
        self._running = 0
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._work, name="tunesmith-batcher", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting plus running."""
        return len(self._pending) + self._running

    def submit(self, job: Job) -> None:
        with self._cond:
            if len(self._pending) >= self.max_queue:
                raise QueueFull
            self._pending.append(job)
            self._gauge()
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.depth)

    def _take(self) -> list[Job] | None:
        """The next group to run (oldest first), or None when stopping."""
        with self._cond:
            while not self._pending and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return None
        if self.window_s and self.max_batch > 1:
            time.sleep(self.window_s)  # let requests that arrive together land in one batch
        with self._cond:
            first = self._pending.popleft()
            group = [first]
            key = None if first.stream else first.params.key(first.model)
            if key is not None:
                for job in list(self._pending):
                    if len(group) >= self.max_batch:
                        break
                    if not job.stream and job.params.key(job.model) == key:
                        group.append(job)
                        self._pending.remove(job)
            self._running = len(group)
            self._gauge()
            return group

    def _work(self) -> None:
        while True:
            group = self._take()
            if group is None:
                return
            live = [j for j in group if not j.cancel.is_set()]  # the client left or timed out while waiting
            try:
                if live and live[0].stream:
                    self._run_stream(live[0])
                elif live:
                    self._run_batch(live)
            except Exception as exc:
                if isinstance(exc, NoSuchModel):  # its adapter was removed while it waited: each is answered 404
                    log.warning("%d queued request(s) for a removed model: %s", len(live), exc)
                else:
                    log.exception("generation failed")
                for job in live:
                    job.push(exc) if job.stream else job.resolve(exc)
            finally:
                with self._cond:
                    self._running = 0
                    self._gauge()

    def _run_batch(self, jobs: list[Job]) -> None:
        now = time.monotonic()
        for job in jobs:
            job.started = now
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(jobs))
        tools = [j.tools for j in jobs]
        kwargs = {"tools": tools} if any(tools) else {}  # an engine without tools support still serves plain requests
        results = self.engine.generate_batch(jobs[0].model, [j.conversation for j in jobs], jobs[0].params, **kwargs)
        for job, completion in zip(jobs, results, strict=True):
            job.resolve(completion)

    def _run_stream(self, job: Job) -> None:
        job.started = time.monotonic()
        if self.metrics is not None:
            self.metrics.batch_size.observe(1)
        for delta, ts in self.engine.stream(job.model, job.conversation, job.params, job.cancel, self.timeout_s):
            if time.monotonic() > job.deadline and not job.cancel.is_set():
                job.cancel_reason = "timeout"
                job.cancel.set()
            if delta:
                job.push(delta)
            elif ts.finish_reason is not None:
                job.push(ts)
