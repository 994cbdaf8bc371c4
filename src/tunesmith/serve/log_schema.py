"""The request log's tables, their `schema_version`, and the steps that upgrade them: one list for both backends.

requests (request_id, time, model, replica, variant, row), feedback (feedback_id, request_id, time, replica, row) and
log_meta (key, value: schema_version). `row` is the RequestRow / FeedbackRow as JSON; `time` is epoch seconds (UTC).
A log newer than this code is neither written nor read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tunesmith.errors import RunError

LOG_SCHEMA_VERSION = 3
"""1: requests + feedback (SQLite only); 2: log_meta, a `replica` column in both tables; 3: requests.variant (which
side of a rollout answered: primary, canary or shadow)."""

# Steps from version N-1 to N, `{backend: statements}` where the dialects differ. PostgreSQL has no rowid, so its
# tables carry `seq`, the insertion order among rows of equal time.
MIGRATIONS: dict[int, dict[str, tuple[str, ...]]] = {
    1: {
        "sqlite": (
            "CREATE TABLE requests (request_id TEXT PRIMARY KEY, time REAL NOT NULL, model TEXT NOT NULL, row TEXT NOT NULL)",
            "CREATE INDEX requests_time ON requests(time)",
            "CREATE TABLE feedback (feedback_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, time REAL NOT NULL, row TEXT NOT NULL)",
            "CREATE INDEX feedback_time ON feedback(time)",
        ),
        "postgresql": (
            "CREATE TABLE requests (seq BIGINT GENERATED ALWAYS AS IDENTITY, request_id TEXT PRIMARY KEY, "
            "time DOUBLE PRECISION NOT NULL, model TEXT NOT NULL, row TEXT NOT NULL)",
            "CREATE INDEX requests_time ON requests(time)",
            "CREATE TABLE feedback (seq BIGINT GENERATED ALWAYS AS IDENTITY, feedback_id TEXT PRIMARY KEY, "
            "request_id TEXT NOT NULL, time DOUBLE PRECISION NOT NULL, row TEXT NOT NULL)",
            "CREATE INDEX feedback_time ON feedback(time)",
        ),
    },
    2: {
        "any": (
            "CREATE TABLE log_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "ALTER TABLE requests ADD COLUMN replica TEXT",
            "ALTER TABLE feedback ADD COLUMN replica TEXT",
            "CREATE INDEX requests_replica ON requests(replica, time)",
        )
    },
    3: {
        "any": (
            "ALTER TABLE requests ADD COLUMN variant TEXT NOT NULL DEFAULT 'primary'",
            "CREATE INDEX requests_variant ON requests(model, variant, time)",
        )
    },
}
assert max(MIGRATIONS) == LOG_SCHEMA_VERSION


def steps(version: int, backend: str) -> tuple[str, ...]:
    """The statements that bring `backend`'s tables from version-1 to version."""
    step = MIGRATIONS[version]
    return step.get(backend, step.get("any", ()))


def check_log_version(found: int, where: str) -> None:
    """RunError when a log's tables are newer than this code: it neither writes nor reads them."""
    if found > LOG_SCHEMA_VERSION:
        raise RunError(
            f"{where} is a request log of schema_version {found}, newer than this tunesmith knows ({LOG_SCHEMA_VERSION})",
            hint="Upgrade tunesmith on every replica and wherever the log is read (monitor, feedback export, studio).",
        )


def upgrade(execute: Callable[[str, Sequence[Any]], Any], found: int, backend: str, where: str) -> int:
    """Run the steps from version `found` to LOG_SCHEMA_VERSION through `execute(sql, params)` (placeholder `?`),
    inside the caller's transaction, and record the version in log_meta."""
    check_log_version(found, where)
    for version in range(found + 1, LOG_SCHEMA_VERSION + 1):
        for sql in steps(version, backend):
            execute(sql, ())
    if found < LOG_SCHEMA_VERSION:
        execute(
            "INSERT INTO log_meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(LOG_SCHEMA_VERSION),),
        )
    return LOG_SCHEMA_VERSION
