"""The request log: every served request and every piece of feedback, in one SQLite file.

Rows are written and read here only, as `RequestRow` / `FeedbackRow` (pydantic, schema_version);
monitoring, `feedback export` and retraining read them through `RequestLog.open(path)`.
The file runs in WAL mode with synchronous=FULL and each row is committed before the server
answers, so a crash loses no acknowledged request.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunesmith.errors import RunError

REQUEST_ROW_VERSION = 1
FEEDBACK_ROW_VERSION = 1
DB_NAME = "requests.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY, time REAL NOT NULL, model TEXT NOT NULL, row TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS requests_time ON requests(time);
CREATE TABLE IF NOT EXISTS feedback (
    feedback_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, time REAL NOT NULL, row TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS feedback_time ON feedback(time);
"""


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(_Row):
    role: str
    content: str


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


class FeedbackRow(_Row):
    """A user's verdict on one served answer, with an optional corrected answer."""

    schema_version: int = FEEDBACK_ROW_VERSION
    feedback_id: str = Field(default_factory=lambda: f"fb-{uuid.uuid4().hex}")
    request_id: str
    time: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    rating: Literal["up", "down"]
    correction: str | None = Field(None, description="The answer the model should have given.")


def _epoch(value: datetime | float | None) -> float | None:
    if value is None or isinstance(value, (int, float)):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def _check_version(raw: str, model: type[_Row], version: int, path: Path) -> _Row:
    try:
        row = model.model_validate_json(raw)
    except ValidationError as exc:
        raise RunError(f"{path}: a stored {model.__name__} does not match its schema: {exc.errors()[0]['msg']}") from None
    if row.schema_version > version:  # type: ignore[attr-defined]
        raise RunError(
            f"{path} holds {model.__name__} schema_version {row.schema_version}, newer than this "  # type: ignore[attr-defined]
            f"tunesmith reads ({version})",
            hint="Upgrade tunesmith to read it.",
        )
    return row


class RequestLog:
    """Thread-safe access to one request-log database (one connection, serialised by a lock)."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | Path, *, create: bool = False) -> RequestLog:
        """Open the log at `path` (the .sqlite file, or a serve folder holding requests.sqlite).

        Readers open an existing log; serve passes create=True.
        """
        path = Path(path)
        if path.is_dir():
            path = path / DB_NAME
        if not path.exists() and not create:
            raise RunError(f"no request log at {path}", hint="Point at a serve folder (default ./serve) or its requests.sqlite.")
        if not create and path.stat().st_size == 0:  # a reader never turns an empty file into a database
            raise RunError(
                f"{path} is empty, not a tunesmith request log", hint="Point at a serve folder or its requests.sqlite."
            )
        existed = path.exists() and path.stat().st_size > 0
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError:
            tables = set()
        if existed and "requests" not in tables:  # never add tables to a file someone else made
            conn.close()
            raise RunError(f"{path} exists and is not a tunesmith request log", hint="Pass a new path.")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # WAL + FULL: a committed row survives power loss
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(_SCHEMA)
        return cls(path, conn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_request(self, row: RequestRow) -> None:
        """Insert (or replace, for a retried id) one request row and commit it before returning."""
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO requests (request_id, time, model, row) VALUES (?, ?, ?, ?)",
                (row.request_id, _epoch(row.time), row.model, row.model_dump_json()),
            )

    def add_feedback(self, row: FeedbackRow) -> None:
        """Store feedback for a logged request; RunError when the request id is unknown."""
        with self._lock:
            known = self._conn.execute("SELECT 1 FROM requests WHERE request_id = ?", (row.request_id,)).fetchone()
            if known is None:
                raise RunError(f"unknown request_id {row.request_id!r}")
            self._conn.execute(
                "INSERT INTO feedback (feedback_id, request_id, time, row) VALUES (?, ?, ?, ?)",
                (row.feedback_id, row.request_id, _epoch(row.time), row.model_dump_json()),
            )

    def get_request(self, request_id: str) -> RequestRow | None:
        with self._lock:
            hit = self._conn.execute("SELECT row FROM requests WHERE request_id = ?", (request_id,)).fetchone()
        return None if hit is None else _check_version(hit[0], RequestRow, REQUEST_ROW_VERSION, self.path)  # type: ignore[return-value]

    def iter_requests(self, since: datetime | float | None = None, until: datetime | float | None = None) -> Iterator[RequestRow]:
        """Request rows in arrival order, since <= time < until (datetimes, naive = UTC, or epoch seconds)."""
        lo, hi = _epoch(since), _epoch(until)
        sql = "SELECT row FROM requests WHERE time >= ? AND time < ? ORDER BY time, rowid"
        with self._lock:
            raws = [
                r[0]
                for r in self._conn.execute(
                    sql, (lo if lo is not None else float("-inf"), hi if hi is not None else float("inf"))
                )
            ]
        for raw in raws:
            yield _check_version(raw, RequestRow, REQUEST_ROW_VERSION, self.path)  # type: ignore[misc]

    def iter_feedback(self) -> Iterator[FeedbackRow]:
        """Feedback rows in the order they were given."""
        with self._lock:
            raws = [r[0] for r in self._conn.execute("SELECT row FROM feedback ORDER BY time, rowid")]
        for raw in raws:
            yield _check_version(raw, FeedbackRow, FEEDBACK_ROW_VERSION, self.path)  # type: ignore[misc]

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0])


def new_request_id() -> str:
    """An id the client sees (response `id`) and feedback refers to."""
    return f"req-{uuid.uuid4().hex}"


def now_utc() -> datetime:
    return datetime.fromtimestamp(time.time(), timezone.utc)
