"""The request log in a PostgreSQL database: one log shared by every replica behind a load balancer.

`tunesmith serve --log postgresql://USER@HOST[:PORT]/DB` (the password from ~/.pgpass, $PGPASSWORD or the URL) creates
the tables, or upgrades older ones, under an advisory lock, so replicas starting together migrate once. Each row is
an autocommitted upsert keyed by its request id: a statement retried after a dropped connection never writes a second
row. Readers run in read-only sessions. The driver is psycopg 3 (`pip install 'tunesmith[postgres]'`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunesmith.errors import RunError
from tunesmith.serve.log_schema import check_log_version, upgrade
from tunesmith.serve.store import RequestLog, mask_url, scrub

MIGRATION_LOCK = 0x74756E65736D6974  # pg_advisory_xact_lock key ("tunesmit"): one migrating replica at a time
_COLUMNS = {"request_id", "time", "model", "row"}


def _driver() -> Any:
    try:
        import psycopg
    except ImportError:
        raise RunError(
            "a postgresql:// request log needs the psycopg driver, which is not installed",
            hint="pip install 'tunesmith[postgres]'",
        ) from None
    return psycopg


def _connect(url: str, read_only: bool) -> Any:
    """An autocommit connection (read-only session for readers); RunError naming the masked URL when it fails."""
    psycopg = _driver()
    try:
        limits = {} if "connect_timeout" in url else {"connect_timeout": 10}  # the URL's own setting wins
        conn = psycopg.connect(url, autocommit=True, application_name="tunesmith", **limits)
        if read_only:
            conn.execute("SET default_transaction_read_only = on")
        return conn
    except psycopg.Error as exc:
        raise RunError(
            f"cannot open the request log {mask_url(url)}: {scrub(str(exc).strip(), url)}",
            hint="Check the host, port, database, user and password (~/.pgpass or $PGPASSWORD keep it out of the URL).",
        ) from None


def schema_version(conn: Any, shown: str) -> int:
    """0: no log tables; 1: requests + feedback without log_meta; else log_meta's schema_version."""
    meta, requests = conn.execute("SELECT to_regclass('log_meta'), to_regclass('requests')").fetchone()
    if meta is not None:
        hit = conn.execute("SELECT value FROM log_meta WHERE key = 'schema_version'").fetchone()
        return int(hit[0]) if hit else 0
    if requests is None:
        return 0
    columns = {
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'requests' AND table_schema = current_schema()"
        )
    }
    if not _COLUMNS.issubset(columns):  # never add tables next to someone else's `requests`
        raise RunError(
            f"{shown} has a `requests` table that is not a tunesmith request log",
            hint="Use another database (or a schema: ?options=-csearch_path%3Dtunesmith in the URL).",
        )
    return 1


def _migrate(conn: Any, shown: str) -> int:
    """Create or upgrade the tables in one transaction, holding the advisory lock the other replicas wait on."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        return upgrade(
            lambda sql, params: conn.execute(sql.replace("?", "%s"), params), schema_version(conn, shown), "postgresql", shown
        )


class PostgresLog(RequestLog):
    backend = "postgresql"
    order_tiebreak = "seq"

    def __init__(self, url: str, conn: Any, replica: str | None, version: int, read_only: bool) -> None:
        super().__init__(mask_url(url), replica, version)
        self._url = url
        self._conn = conn
        self._read_only = read_only

    @classmethod
    def connect(cls, url: str, *, create: bool, replica: str | None) -> PostgresLog:
        shown = mask_url(url)
        conn = _connect(url, read_only=not create)
        psycopg = _driver()
        try:
            if create:
                version = _migrate(conn, shown)
            else:
                version = schema_version(conn, shown)
                if version == 0:
                    raise RunError(
                        f"{shown} holds no tunesmith request log",
                        hint="Point --log at the database `tunesmith serve --log URL` writes to (serve creates the tables).",
                    )
                check_log_version(version, shown)
        except psycopg.Error as exc:
            conn.close()
            raise RunError(f"request log {shown}: {scrub(str(exc).strip(), url)}") from None
        except BaseException:
            conn.close()
            raise
        return cls(url, conn, replica, version, read_only=not create)

    def _run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """One statement; a connection the server dropped (restart, failover) is reopened and the statement retried
        once, which is safe because every write here is an upsert or insert-if-absent by primary key."""
        psycopg = _driver()
        sql = sql.replace("?", "%s")  # the shared SQL uses `?`; no statement here has a literal `?` or `%`
        for attempt in (1, 2):
            try:
                if self._conn.closed:
                    self._conn = _connect(self._url, self._read_only)
                cur = self._conn.execute(sql, tuple(params))
                return cur.fetchall() if cur.description else []
            except psycopg.OperationalError as exc:
                if attempt == 2 or not self._conn.closed:
                    raise RunError(f"request log {self.location}: {scrub(str(exc).strip(), self._url)}") from None
            except psycopg.Error as exc:
                raise RunError(f"request log {self.location}: {scrub(str(exc).strip(), self._url)}") from None
        raise AssertionError("unreachable")

    def _close(self) -> None:
        self._conn.close()
