"""Canary and shadow rollouts in a running server: a candidate adapter next to the served one, chosen per request.

A rollout is a file, SERVE_DIR/rollouts/<name>.json (a `Rollout` record), written by `tunesmith rollout` (and the
loop) and watched by the server: every `poll_s` seconds the server reads the folder and applies what changed.

- `active` (or `promoting`): the candidate run is attached as the adapter `<name>.candidate`. In `canary` mode a
  request for <name> whose request id hashes below `share` (see `routed`) is answered by the candidate; in `shadow`
  mode such a request is answered by the served adapter and, once that answer is logged, a copy runs on the candidate
  and its answer is logged (variant `shadow`) but never returned. Clients cannot ask for the candidate by name.
- `promoted`: the candidate answers every request for <name> (the adapter link was moved by then).
- `rolled_back`, or the file removed: routing stops; the candidate is detached once requests queued for it are done.

Every answer's log row says which side gave it (RequestRow.variant); /metrics counts requests, latency and feedback
per variant and shows the figures of the last `tunesmith rollout --check` (reward-model score, drift). Deciding
(promotion, rollback) is tunesmith.monitor.rollout's job; this module only reads the files.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
import uuid
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from tunesmith.atomic import write_text_atomic
from tunesmith.errors import RunError, TunesmithError
from tunesmith.records import GateResult, Record, read_record
from tunesmith.serve.batching import Job, QueueFull
from tunesmith.serve.metrics import LATENCY_BUCKETS

log = logging.getLogger(__name__)

ROLLOUT_VERSION = 1
FOLDER = "rollouts"
ACTIVE = ("active", "promoting")


class Rollout(Record):
    """SERVE_DIR/rollouts/<name>.json: one candidate against the adapter served under `name`."""

    schema_version: int = ROLLOUT_VERSION
    name: str = Field(..., description="The served model name clients ask for.")
    candidate: str = Field(..., description="Run folder of the candidate adapter.")
    primary: str = Field(..., description="Run folder served under `name` when the rollout started (the link's target).")
    mode: Literal["canary", "shadow"]
    share: float = Field(..., gt=0, le=1, description="canary: share of requests answered by the candidate; shadow: copied.")
    min_requests: int = Field(..., ge=1, description="Candidate requests (answers and errors) before a decision.")
    gates: dict[str, str | float] = Field(default_factory=dict, description="Live gates (metric -> rule), docs/monitoring.md.")
    reward_model: str | None = Field(None, description="Reward run scoring both sides' answers (the reward_model figures).")
    started: datetime
    status: Literal["active", "promoting", "promoted", "rolled_back"] = "active"
    decided: datetime | None = None
    reason: str = Field("", description="Why it was promoted or rolled back.")
    results: list[GateResult] = Field(default_factory=list, description="The gates at the last check.")
    live: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="variant -> figure -> value at the last check (shown on /metrics)."
    )


def rollout_path(serve_dir: str | Path, name: str) -> Path:
    return Path(serve_dir) / FOLDER / f"{name}.json"


def candidate_name(name: str) -> str:
    """The engine name the candidate adapter is attached under (hidden from clients)."""
    return f"{name}.candidate"


def routed(request_id: str, share: float) -> bool:
    """Whether a request goes to the candidate: the first 32 bits of SHA-256(request id) / 2^32 < share. The same id
    always gets the same answer, so a test (or an operator reading the log) can recompute it."""
    return int(hashlib.sha256(request_id.encode()).hexdigest()[:8], 16) / 2**32 < share


def read_rollout(path: str | Path) -> Rollout:
    """A rollout file; RunError when missing, unreadable, malformed or newer than this code."""
    return read_record(Path(path), Rollout, ROLLOUT_VERSION)


def write_rollout(serve_dir: str | Path, rollout: Rollout, event: str) -> Path:
    """Replace the rollout file in one atomic rename, then append `event` to SERVE_DIR/rollouts/<name>.log.jsonl."""
    path = rollout_path(serve_dir, rollout.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, rollout.model_dump_json(indent=1) + "\n")
    line = {"time": datetime.now().astimezone().isoformat(), "event": event, "status": rollout.status, "reason": rollout.reason}
    with open(path.with_name(f"{rollout.name}.log.jsonl"), "a", encoding="utf-8") as fh:
        fh.write(json.dumps({**line, "candidate": rollout.candidate, "primary": rollout.primary}) + "\n")
    return path


def _detach(engine: Any, cname: str) -> None:
    """Remove a candidate's engine name; its weights too, unless a promoted name serves them now."""
    with engine.lock:
        served = engine.models.get(cname)
        if served is None:
            return
        if any(m.peft_name == served.peft_name for n, m in engine.models.items() if n != cname):
            del engine.models[cname]
            return
    engine.remove_adapter(cname)


class RolloutMetrics:
    """The per-variant series on /metrics."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        r = registry
        self.requests = Counter(
            "tunesmith_variant_requests",
            "Requests by model, rollout variant and status.",
            ["model", "variant", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "tunesmith_variant_latency_seconds", "Latency of answered requests by variant.", ["model", "variant"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.feedback = Counter(
            "tunesmith_variant_feedback", "Feedback by model, variant and rating.", ["model", "variant", "rating"], registry=r
        )
        self.dropped = Counter("tunesmith_shadow_dropped", "Shadow copies not run (queue full).", ["model"], registry=r)
        self.share = Gauge("tunesmith_rollout_share", "Share routed to (canary) or copied for (shadow) the candidate.",
                           ["model", "mode"], registry=r)  # fmt: skip
        self.live = Gauge("tunesmith_rollout_live", "Figures of the last rollout check (reward_model, drift, ...).",
                          ["model", "variant", "figure"], registry=r)  # fmt: skip


class Rollouts:
    """The server's view of SERVE_DIR/rollouts, applied to its engine by a polling thread."""

    def __init__(self, serve_dir: Path, metrics_registry: Any, poll_s: float = 1.0, grace_s: float = 300.0) -> None:
        self.folder = Path(serve_dir) / FOLDER
        self.metrics = RolloutMetrics(metrics_registry)
        self.poll_s, self.grace_s = poll_s, grace_s
        self.current: dict[str, Rollout] = {}  # name -> the rollout routing requests now
        self.problems: dict[str, str] = {}
        self._seen: dict[str, int] = {}  # file -> mtime (ns) applied
        self._detach: dict[str, float] = {}  # candidate engine name -> when to detach it
        self._stop = threading.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- the watcher -----------------------------------------------------------------------------------------------
    def start(self, state: Any) -> None:
        threading.Thread(target=self._run, args=(state,), name="tunesmith-rollouts", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self, state: Any) -> None:
        while not self._stop.wait(self.poll_s):
            if state.engine is not None:
                try:
                    self.poll(state.engine)
                except Exception:  # one bad file or attach must not stop the watcher
                    log.exception("rollout watcher")

    def poll(self, engine: Any) -> None:
        """Read every rollout file that changed and apply it; detach candidates whose grace period is over."""
        files = {p.stem: p for p in self.folder.glob("*.json")} if self.folder.is_dir() else {}
        for name in [n for n in self.current if n not in files]:  # a removed file ends its rollout
            self._end(engine, name)
        for name, path in files.items():
            mtime = path.stat().st_mtime_ns
            if self._seen.get(name) == mtime:
                continue
            self._seen[name] = mtime
            try:
                self._apply(engine, read_rollout(path))
                self.problems.pop(name, None)
            except TunesmithError as exc:
                self.problems[name] = str(exc)
                log.error("rollout %s: %s", name, exc)
        now = time.monotonic()
        for cname, when in list(self._detach.items()):
            if now >= when:
                del self._detach[cname]
                _detach(engine, cname)

    def _apply(self, engine: Any, r: Rollout) -> None:
        cname = candidate_name(r.name)
        if r.status in ACTIVE:
            if r.name not in engine.models:
                raise RunError(f"the rollout names {r.name!r}, which this server does not serve")
            attached = engine.models.get(cname)
            if attached is not None and attached.run != str(Path(r.candidate).resolve()):  # an earlier candidate
                _detach(engine, cname)
            if cname not in engine.models:
                engine.add_adapter(cname, r.candidate)
            self._detach.pop(cname, None)
            self.current[r.name] = r
            self.metrics.share.labels(r.name, r.mode).set(r.share)
        elif r.status == "promoted":
            self._promote(engine, r)
            self._end(engine, r.name)
        else:
            self._end(engine, r.name)
        for variant, figures in r.live.items():
            for figure, value in figures.items():
                self.metrics.live.labels(r.name, variant, figure).set(value)

    def _promote(self, engine: Any, r: Rollout) -> None:
        """Serve the candidate under `name` (the link already names it); the old adapter's weights are dropped."""
        cname = candidate_name(r.name)
        old = engine.models.get(r.name)
        if old is None or old.run == str(Path(r.candidate).resolve()):
            return
        if cname not in engine.models:
            engine.add_adapter(cname, r.candidate)
        with engine.lock:
            new = engine.models[cname]
            engine.models[r.name] = replace(new, name=r.name)  # queued requests for `name` now get the candidate
            if old.peft_name and old.peft_name != new.peft_name and old.peft_name in getattr(engine.model, "peft_config", {}):
                engine.model.set_adapter(new.peft_name)  # peft moves off a deleted active adapter with a warning
                engine.model.delete_adapter(old.peft_name)
        log.info("rollout %s: promoted %s", r.name, r.candidate)

    def _end(self, engine: Any, name: str) -> None:
        """Stop routing; the candidate stays attached for grace_s so requests already queued for it finish."""
        ended = self.current.pop(name, None)
        if ended is not None:
            self.metrics.share.labels(name, ended.mode).set(0)
        if candidate_name(name) in engine.models:
            self._detach.setdefault(candidate_name(name), time.monotonic() + self.grace_s)

    # -- the request path -------------------------------------------------------------------------------------------
    @staticmethod
    def hides(name: str) -> bool:
        """Candidate names (the reserved suffix .candidate) are never a client's to ask for, nor listed."""
        return name.endswith(".candidate")

    def route(self, state: Any, call: Any) -> None:
        """Canary: send this request to the candidate when its id is routed. A client naming the candidate is told
        the model does not exist (the share is the rollout's to decide)."""
        from tunesmith.serve.schemas import ApiError

        if self.hides(call.model):
            raise ApiError(404, f"the model {call.model!r} does not exist (GET /v1/models lists them)", param="model",
                           code="model_not_found")  # fmt: skip
        r = self.current.get(call.model)
        if r is not None and r.mode == "canary" and routed(call.request_id, r.share):
            call.served = state.engine.resolve(candidate_name(r.name))
            call.variant = "canary"

    def finished(self, state: Any, call: Any) -> None:
        """After a request's log row: count it by variant; start a shadow copy of a routed primary answer."""
        if not call.model:
            return
        ok = call.status < 400
        self.metrics.requests.labels(call.model, call.variant, str(call.status)).inc()
        if ok:
            self.metrics.latency.labels(call.model, call.variant).observe(time.monotonic() - call.t0)
        r = self.current.get(call.model)
        copied = r is not None and r.mode == "shadow" and routed(call.request_id, r.share)
        if ok and call.variant == "primary" and call.logged and copied:
            task = asyncio.get_running_loop().create_task(self._shadow(state, call, r))  # type: ignore[arg-type]
            self._tasks.add(task)  # held until done: the loop keeps only weak references to tasks
            task.add_done_callback(self._tasks.discard)

    async def _shadow(self, state: Any, call: Any, r: Rollout) -> None:
        """Run the request on the candidate (never streamed, with the request's tools), log its answer (its calls
        parsed as a client's would be) as variant shadow, return nothing."""
        from tunesmith.serve.handlers import Call, finish, read_calls
        from tunesmith.serve.schemas import ApiError

        try:
            served = state.engine.resolve(candidate_name(r.name))
        except TunesmithError:
            return
        copy = Call(call.kind, body=call.body, request_id=f"shadow-{uuid.uuid4().hex}", model=call.model, served=served,
                    conversation=call.conversation, tools=call.tools, choice=call.choice, passages=call.passages,
                    params=call.params, prompt_tokens=call.prompt_tokens, variant="shadow")  # fmt: skip
        loop = asyncio.get_running_loop()
        job = Job(served.name, call.conversation, call.params, loop, deadline=time.monotonic() + state.settings.timeout_s,
                  tools=call.tools)  # fmt: skip
        job.future = loop.create_future()
        try:
            state.batcher.submit(job)
        except QueueFull:  # the copy never takes a client's place in the queue
            self.metrics.dropped.labels(call.model).inc()
            return
        try:
            done = await asyncio.wait_for(job.future, state.settings.timeout_s)
            copy.output, copy.finish_reason, copy.completion_tokens = done.text, done.finish_reason, done.completion_tokens
            if copy.tools and copy.choice.parses:
                read_calls(state, copy, done)
            await finish(state, copy)
        except ApiError as err:  # a forced tool_choice the candidate's answer does not meet: logged as the client's 422
            await finish(state, copy, err)
        except Exception as exc:  # the candidate failing is what a shadow rollout is there to see: logged, not raised
            job.cancel.set()
            await finish(state, copy, ApiError(500, f"shadow generation failed: {type(exc).__name__}", code="generation_failed"))

    def feedback(self, store: Any, request_id: str, rating: str) -> None:
        """Count a verdict under the variant of the request it judges."""
        row = store.get_request(request_id)
        if row is not None:
            self.metrics.feedback.labels(row.model, row.variant, rating).inc()

    def describe(self) -> dict[str, Any]:
        """For /health: each rollout being routed, and any rollout file the server could not apply."""
        out: dict[str, Any] = {
            name: {"mode": r.mode, "share": r.share, "candidate": r.candidate, "status": r.status}
            for name, r in self.current.items()
        }
        for name, problem in self.problems.items():
            out.setdefault(name, {})["problem"] = problem
        return out
