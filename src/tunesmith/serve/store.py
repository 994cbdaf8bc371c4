"""The request log: every served request and every piece of feedback, behind one interface with two backends.

Rows are written and read here only, as `RequestRow` / `FeedbackRow` (pydantic, schema_version); serve, monitoring,
`feedback export` and the studio all go through `RequestLog.open(location)`, where location is

- a serve folder or a .sqlite file: SQLite (tunesmith.serve.log_sqlite), the default, for one server;
- a postgresql:// URL: PostgreSQL (tunesmith.serve.log_postgres), one log shared by several replicas.

Both backends hold the same tables (tunesmith.serve.log_schema: requests, feedback, log_meta, upgraded by schema_version),
and commit each row before the server answers, so a crash loses no acknowledged request. Every row names the replica
that wrote it. A password in a URL is never shown: messages and labels carry `mask_url(url)`.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunesmith.errors import RunError
from tunesmith.serve.log_schema import LOG_SCHEMA_VERSION as LOG_SCHEMA_VERSION  # re-exported: the log's version

REQUEST_ROW_VERSION = 4  # 2: `replica`; 3: `variant`; 4: `tools`, `tool_calls`, tool fields on messages
FEEDBACK_ROW_VERSION = 3  # 2: `replica`; 3: `tool_calls` (a corrected call)
DB_NAME = "requests.sqlite"
URL_SCHEMES = ("postgresql://", "postgres://")
# backend name -> its RequestLog subclass. log_sqlite.py and log_postgres.py add themselves when imported, and
# tunesmith/serve/__init__.py imports both, so they are here before any log is opened (and they import this
# module, not the other way round).
BACKENDS: dict[str, Any] = {}


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(_Row):
    role: str
    content: str
    tool_calls: list[dict[str, Any]] | None = Field(None, description="An assistant turn's calls, as sent.")
    tool_call_id: str | None = Field(None, description="A tool result: the call it answers.")

    def as_message(self) -> dict[str, Any]:
        """The chat message as it was sent (its calls and call id only when it had them)."""
        extra = {k: v for k, v in (("tool_calls", self.tool_calls), ("tool_call_id", self.tool_call_id)) if v is not None}
        return {"role": self.role, "content": self.content, **extra}


class SourceRef(_Row):
    """A retrieved passage that went into the prompt (text omitted: the index holds it)."""

    source: str = Field(..., description="File the passage came from.")
    line: int = Field(..., description="First line of the passage in that file (1-based).")
    chunk_id: str
    score: float


class RequestRow(_Row):
    """One served request and its response. Content fields are None when serve ran with --no-log-content."""

    schema_version: int = REQUEST_ROW_VERSION
    request_id: str
    time: datetime = Field(..., description="When the request arrived (UTC).")
    endpoint: Literal["chat", "completions"] = "chat"
    model: str = Field(..., description="The `model` the client asked for: the base's name or an adapter's.")
    adapter: str | None = Field(None, description="Adapter name that answered; None for the base.")
    run: str | None = Field(None, description="Run folder the adapter came from.")
    base_model: str = Field("", description="Base model path or id the server loaded.")
    data_hash: str | None = Field(None, description="SHA-256 of the adapter run's training data (first file).")
    messages: list[Message] | None = Field(None, description="Chat messages as sent (chat endpoint).")
    prompt: str | None = Field(None, description="Prompt text as sent (completions endpoint).")
    output: str | None = None
    tools: list[dict[str, Any]] | None = Field(None, description="The functions the request offered (chat).")
    tool_calls: list[dict[str, Any]] | None = Field(None, description="The calls returned (OpenAI's shape), parsed from output.")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = Field(0.0, description="Arrival to last token, seconds.")
    ttft_s: float | None = Field(None, description="Arrival to first token, seconds (streamed requests).")
    status: int = Field(200, description="HTTP status the client got.")
    finish_reason: str | None = None
    error: str | None = None
    stream: bool = False
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 0
    rag: bool = False
    sources: list[SourceRef] = Field(default_factory=list)
    content_logged: bool = True
    replica: str | None = Field(None, description="The server that answered (serve --replica-id, default host:port).")
    variant: Literal["primary", "canary", "shadow"] = Field(
        "primary",
        description="Which side of a rollout answered (serve/rollout.py): primary (the served adapter), canary (the "
        "candidate, answer returned) or shadow (the candidate on a copy of the request, answer never returned).",
    )

    @property
    def answered(self) -> bool:
        """Did the client get an answer (HTTP status below 400)? Errors, 429s and 499s did not."""
        return self.status < 400


class UnknownRequest(RunError):
    """Feedback names a request id that is not in the log."""


class FailedRequest(RunError):
    """Feedback names a request that was answered with an error, so there is no answer to judge."""


class FeedbackRow(_Row):
    """A user's verdict on one served answer, with an optional corrected answer."""

    schema_version: int = FEEDBACK_ROW_VERSION
    feedback_id: str = Field(default_factory=lambda: f"fb-{uuid.uuid4().hex}")
    request_id: str
    time: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    rating: Literal["up", "down"]
    correction: str | None = Field(None, description="The answer the model should have given.")
    tool_calls: list[dict[str, Any]] | None = Field(None, description="The calls the model should have made (a correction).")
    replica: str | None = Field(None, description="The server the feedback was given to.")


def is_url(location: str | Path) -> bool:
    """Does `location` name a PostgreSQL database (rather than a file or folder)?"""
    return isinstance(location, str) and location.startswith(URL_SCHEMES)


def mask_url(url: str) -> str:
    """`url` with its password (in the user part or a `password=` parameter) shown as ***."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{host}"
    query = parts.query
    if "password=" in query:
        query = urlencode([(k, "***" if k == "password" else v) for k, v in parse_qsl(query, keep_blank_values=True)])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub(text: str, url: str) -> str:
    """`text` (a driver's message) with every occurrence of `url`'s password replaced by ***."""
    from urllib.parse import unquote

    parts = urlsplit(url)
    secrets = [parts.password or ""] + [v for k, v in parse_qsl(parts.query) if k == "password"]
    for secret in filter(None, secrets):
        text = text.replace(secret, "***").replace(unquote(secret), "***")
    return text.replace(url, mask_url(url))


def _epoch(value: datetime | float | None) -> float | None:
    if value is None or isinstance(value, (int, float)):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def _check_version(raw: str, model: type[_Row], version: int, where: str) -> _Row:
    """The stored row; RunError when it is newer than this code (told as such, even when its new fields are what
    fails validation) or does not match its schema."""
    try:
        row = model.model_validate_json(raw)
        found = row.schema_version  # type: ignore[attr-defined]
    except ValidationError as exc:
        try:
            found = int(json.loads(raw).get("schema_version", 0))
        except (ValueError, TypeError, AttributeError):
            found = 0
        if found <= version:
            raise RunError(f"{where}: a stored {model.__name__} does not match its schema: {exc.errors()[0]['msg']}") from None
    if found > version:
        raise RunError(
            f"{where} holds {model.__name__} schema_version {found}, newer than this tunesmith reads ({version})",
            hint="Upgrade tunesmith to read it.",
        )
    return row


def _window(since: datetime | float | None, until: datetime | float | None) -> tuple[str, list[float]]:
    """WHERE clause (`?` placeholders) and parameters for since <= time < until; either end may be open."""
    clauses, params = [], []
    for op, bound in ((">=", _epoch(since)), ("<", _epoch(until))):
        if bound is not None:
            clauses.append(f"time {op} ?")
            params.append(float(bound))
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


class RequestLog(ABC):
    """One request log, thread-safe: the shared logic of both backends over their `_run` (one statement, committed).

    SQL here is written with `?` placeholders and syntax both SQLite and PostgreSQL accept.
    """

    backend: ClassVar[str] = ""
    order_tiebreak: ClassVar[str] = ""  # the column that keeps insertion order among rows of equal time

    def __init__(self, location: str, replica: str | None, schema_version: int, path: Path | None = None) -> None:
        self.location = location  # for people: a file path, or the URL with its password masked
        self.replica = replica
        self.schema_version = schema_version
        self.path = path  # the SQLite file (None for PostgreSQL)
        self._lock = threading.Lock()

    @classmethod
    def open(cls, location: str | Path, *, create: bool = False, replica: str | None = None) -> RequestLog:
        """Open the log at `location`: a postgresql:// URL, a .sqlite file, or a serve folder holding requests.sqlite.

        Readers (the default) open an existing log read-only and never change it; serve passes create=True, which
        creates the tables or upgrades older ones. `replica` is written into every row this handle adds.
        """
        if is_url(location):
            log = BACKENDS["postgresql"].connect(str(location), create=create, replica=replica)
        else:
            log = BACKENDS["sqlite"].connect(Path(location), create=create, replica=replica)
        return cast(RequestLog, log)

    # --- what a backend provides ---------------------------------------------------------------------------------

    @abstractmethod
    def _run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Execute one statement (committed at once); its rows, or [] for a statement that returns none."""

    @abstractmethod
    def _close(self) -> None:
        """Close the connection (called once, under the lock)."""

    # --- the interface -------------------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stamp(self, row: Any) -> Any:
        return row.model_copy(update={"replica": self.replica}) if row.replica is None and self.replica else row

    def add_request(self, row: RequestRow) -> None:
        """Insert (or replace, for a retried id) one request row and commit it before returning."""
        row = self._stamp(row)
        with self._lock:
            self._run(
                "INSERT INTO requests (request_id, time, model, replica, variant, row) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (request_id) DO UPDATE SET time = excluded.time, model = excluded.model, "
                "replica = excluded.replica, variant = excluded.variant, row = excluded.row",
                (row.request_id, _epoch(row.time), row.model, row.replica, row.variant, row.model_dump_json()),
            )

    def add_feedback(self, row: FeedbackRow) -> None:
        """Store feedback on a logged, successfully answered request (whichever replica answered it).

        UnknownRequest when the id is not in the log; FailedRequest when it was answered with an error
        (4xx/5xx, a client that left): there is no answer to judge, and it must never become a training row.
        """
        row = self._stamp(row)
        with self._lock:
            hit = self._run("SELECT row FROM requests WHERE request_id = ?", (row.request_id,))
            if not hit:
                raise UnknownRequest(f"unknown request_id {row.request_id!r}")
            asked: RequestRow = _check_version(hit[0][0], RequestRow, REQUEST_ROW_VERSION, self.location)  # type: ignore[assignment]
            if asked.variant == "shadow":  # a shadow answer was never returned: no client can have judged it
                raise UnknownRequest(f"unknown request_id {row.request_id!r}")
            if not asked.answered:
                raise FailedRequest(
                    f"request {row.request_id!r} was answered with HTTP {asked.status} ({asked.error or 'error'}): "
                    "there is no answer to give feedback on"
                )
            self._run(
                "INSERT INTO feedback (feedback_id, request_id, time, replica, row) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (feedback_id) DO NOTHING",
                (row.feedback_id, row.request_id, _epoch(row.time), row.replica, row.model_dump_json()),
            )

    def get_request(self, request_id: str) -> RequestRow | None:
        with self._lock:
            hit = self._run("SELECT row FROM requests WHERE request_id = ?", (request_id,))
        return _check_version(hit[0][0], RequestRow, REQUEST_ROW_VERSION, self.location) if hit else None  # type: ignore[return-value]

    def iter_requests(self, since: datetime | float | None = None, until: datetime | float | None = None) -> Iterator[RequestRow]:
        """Request rows in arrival order, since <= time < until (datetimes, naive = UTC, or epoch seconds)."""
        where, params = _window(since, until)
        with self._lock:
            raws = [r[0] for r in self._run(f"SELECT row FROM requests{where} ORDER BY time, {self.order_tiebreak}", params)]
        for raw in raws:
            yield _check_version(raw, RequestRow, REQUEST_ROW_VERSION, self.location)  # type: ignore[misc]

    def iter_feedback(self) -> Iterator[FeedbackRow]:
        """Feedback rows in the order they were given."""
        with self._lock:
            raws = [r[0] for r in self._run(f"SELECT row FROM feedback ORDER BY time, {self.order_tiebreak}")]
        for raw in raws:
            yield _check_version(raw, FeedbackRow, FEEDBACK_ROW_VERSION, self.location)  # type: ignore[misc]

    def count(self, since: datetime | float | None = None, until: datetime | float | None = None) -> int:
        """Request rows (every answer, errors included), since <= time < until."""
        return sum(self.replica_counts(since, until).values())

    def replica_counts(self, since: datetime | float | None = None, until: datetime | float | None = None) -> dict[str, int]:
        """Request rows per replica, since <= time < until; rows written without a replica id count under ''."""
        where, params = _window(since, until)
        # A version-1 log opened read-only has no replica column: all its rows count under ''.
        sql = (
            "SELECT replica, COUNT(*) FROM requests{} GROUP BY replica"
            if self.schema_version >= 2
            else "SELECT NULL, COUNT(*) FROM requests{}"
        )
        with self._lock:
            hits = self._run(sql.format(where), params)
        return {replica or "": int(n) for replica, n in hits if n}


def log_metrics(registry: Any, store: RequestLog) -> None:
    """`tunesmith_request_log_info{backend, location, replica} 1` on the server's /metrics (the password masked)."""
    from prometheus_client import Gauge

    info = Gauge(
        "tunesmith_request_log_info",
        "Where this server writes its request log.",
        ["backend", "location", "replica"],
        registry=registry,
    )
    info.labels(store.backend, store.location, store.replica or "").set(1)


def new_request_id() -> str:
    """An id the client sees (response `id`) and feedback refers to."""
    return f"req-{uuid.uuid4().hex}"


def now_utc() -> datetime:
    return datetime.fromtimestamp(time.time(), timezone.utc)
