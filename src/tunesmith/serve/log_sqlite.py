"""The request log in one SQLite file (the default: <serve folder>/requests.sqlite, one server).

WAL mode with synchronous=FULL and one connection serialised by a lock: a committed row survives power loss, and
readers (monitor, feedback export, the studio) open the file read-only, never changing it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunesmith.errors import RunError
from tunesmith.serve.log_schema import check_log_version, upgrade
from tunesmith.serve.store import DB_NAME, RequestLog


def _tables(conn: sqlite3.Connection) -> set[str]:
    """Table names of an open database; empty when the file is not SQLite (or cannot be read)."""
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError:
        return set()


def schema_version(conn: sqlite3.Connection) -> int:
    """0: no log tables; 1: the first layout (no log_meta); else log_meta's schema_version."""
    tables = _tables(conn)
    if "log_meta" in tables:
        hit = conn.execute("SELECT value FROM log_meta WHERE key = 'schema_version'").fetchone()
        return int(hit[0]) if hit else 0
    return 1 if {"requests", "feedback"} <= tables else 0


def _migrate(conn: sqlite3.Connection, path: Path) -> int:
    """Bring the tables to LOG_SCHEMA_VERSION in one transaction (a second writer waits, then finds them done)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = upgrade(conn.execute, schema_version(conn), "sqlite", str(path))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return version


def _connect_ro(path: Path, immutable: bool) -> sqlite3.Connection:
    uri = path.resolve().as_uri() + ("?immutable=1" if immutable else "?mode=ro")
    conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def _open_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection to an existing request log; RunError for a missing, empty or foreign file.

    A log in WAL mode needs its -shm file: when the folder is read-only and no -shm exists, the file is read as
    immutable, which is exact only while no -wal file holds rows not yet copied into the main file.
    """
    if not path.exists():
        raise RunError(f"no request log at {path}", hint="Point at a serve folder (default ./serve) or its requests.sqlite.")
    if not path.is_file():
        raise RunError(f"{path} is not a file", hint="Point at a serve folder or its requests.sqlite.")
    if path.stat().st_size == 0:
        raise RunError(
            f"{path} is empty (0 bytes): not a request log, so there is no traffic to read",
            hint="Point at the log of a server that answered requests (`tunesmith serve` writes <dir>/requests.sqlite).",
        )
    conn = None
    try:
        conn = _connect_ro(path, immutable=False)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.OperationalError as exc:  # e.g. the -shm file cannot be created in a read-only folder
        wal = path.with_name(path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise RunError(
                f"cannot read {path} read-only: {exc}; its {wal.name} holds rows not yet in the main file",
                hint="Copy the serve folder somewhere writable (or let serve stop cleanly) and read the copy.",
            ) from None
        if conn is not None:
            conn.close()
        conn = _connect_ro(path, immutable=True)
        tables = _tables(conn)
    except sqlite3.DatabaseError:
        tables = set()
    if not {"requests", "feedback"} <= tables:
        if conn is not None:
            conn.close()
        raise RunError(f"{path} is not a tunesmith request log", hint="Point at a serve folder or its requests.sqlite.")
    assert conn is not None
    return conn


def _open_writer(path: Path) -> tuple[sqlite3.Connection, int]:
    """serve's connection: the file created (or its tables upgraded) in WAL mode; never a file someone else made."""
    if path.exists() and not path.is_file():
        raise RunError(f"{path} is not a file", hint="Pass --log with a file path (or leave it out).")
    existed = path.exists() and path.stat().st_size > 0  # 0 bytes: an empty file holds nothing to lose
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    if existed and "requests" not in _tables(conn):  # never add tables to a file someone else made
        conn.close()
        raise RunError(f"{path} exists and is not a tunesmith request log", hint="Pass a new path.")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # WAL + FULL: a committed row survives power loss
    conn.execute("PRAGMA busy_timeout=5000")
    try:
        return conn, _migrate(conn, path)
    except BaseException:
        conn.close()
        raise


class SqliteLog(RequestLog):
    backend = "sqlite"
    order_tiebreak = "rowid"

    def __init__(self, path: Path, conn: sqlite3.Connection, replica: str | None, version: int) -> None:
        super().__init__(str(path), replica, version, path)
        self._conn = conn

    @classmethod
    def connect(cls, path: Path, *, create: bool, replica: str | None) -> SqliteLog:
        if path.is_dir():
            path = path / DB_NAME
        if create:
            conn, version = _open_writer(path)
        else:
            conn = _open_reader(path)
            version = schema_version(conn)
            try:
                check_log_version(version, str(path))
            except RunError:
                conn.close()
                raise
        return cls(path, conn, replica, version)

    def _run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:  # e.g. a write through a reader's read-only connection, a full disk
            raise RunError(f"request log {self.location}: {exc}") from None

    def _close(self) -> None:
        self._conn.close()
