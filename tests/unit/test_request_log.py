"""One request-log interface, two backends: every test runs on SQLite and on a real PostgreSQL server (pg_helpers),
which skips, with its reason, where no server can run."""

from __future__ import annotations

import json
import re
import sqlite3
import sys
import threading
from datetime import datetime, timedelta, timezone

import pytest
from serve_helpers import run_cli

from tunesmith.errors import RunError
from tunesmith.serve.log_schema import steps
from tunesmith.serve.store import (
    LOG_SCHEMA_VERSION,
    REQUEST_ROW_VERSION,
    FailedRequest,
    FeedbackRow,
    Message,
    RequestLog,
    RequestRow,
    UnknownRequest,
    mask_url,
    scrub,
)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _row(rid: str, when: datetime = T0, **kw) -> RequestRow:
    fields = {"model": "m", "messages": [Message(role="user", content="hi")], "output": "hello", **kw}
    return RequestRow(request_id=rid, time=when, **fields)


@pytest.fixture(params=["sqlite", "postgresql"])
def where(request, tmp_path):
    """A location with no log yet: a .sqlite path, or a new PostgreSQL database's URL."""
    return str(tmp_path / "requests.sqlite") if request.param == "sqlite" else request.getfixturevalue("pg_url")


def _raw(where: str):
    """A plain driver connection to the log's database (to shape it the way another program or version would)."""
    if where.startswith("postgresql://"):
        import psycopg

        return psycopg.connect(where, autocommit=True), "%s"
    return sqlite3.connect(where, isolation_level=None), "?"


def test_rows_round_trip_windows_feedback_and_replica(where):
    with RequestLog.open(where, create=True, replica="web-1:8000") as log:
        for i in range(3):
            log.add_request(_row(f"r{i}", T0 + timedelta(hours=i)))
        log.add_request(_row("r1", T0 + timedelta(hours=1), output="retried"))  # a retried id replaces its row
        log.add_feedback(FeedbackRow(request_id="r1", rating="down", correction="better"))
        assert log.schema_version == LOG_SCHEMA_VERSION
    reader = RequestLog.open(where)
    assert [r.request_id for r in reader.iter_requests()] == ["r0", "r1", "r2"]
    assert [r.request_id for r in reader.iter_requests(since=T0 + timedelta(hours=1), until=T0 + timedelta(hours=2))] == ["r1"]
    assert [r.request_id for r in reader.iter_requests(since=(T0 + timedelta(hours=2)).timestamp())] == ["r2"]
    row = reader.get_request("r1")
    assert row is not None and row.output == "retried" and row.replica == "web-1:8000" and row.messages[0].content == "hi"
    assert reader.get_request("nope") is None
    (fb,) = reader.iter_feedback()
    assert fb.rating == "down" and fb.correction == "better" and fb.replica == "web-1:8000"
    assert reader.count() == 3 and reader.count(since=T0 + timedelta(minutes=30)) == 2
    assert reader.replica_counts() == {"web-1:8000": 3}


def test_feedback_needs_an_answered_request(where):
    with RequestLog.open(where, create=True) as log:
        log.add_request(_row("busy", status=429, error="queue_full"))
        with pytest.raises(UnknownRequest, match="unknown request_id"):
            log.add_feedback(FeedbackRow(request_id="nope", rating="up"))
        with pytest.raises(FailedRequest, match="HTTP 429"):
            log.add_feedback(FeedbackRow(request_id="busy", rating="down"))
        assert list(log.iter_feedback()) == []


def test_readers_find_a_log_and_never_change_one(where):
    """A reader is refused where there is no log (and creates none there); a reader's handle cannot write."""
    if where.startswith("postgresql://"):
        with pytest.raises(RunError, match="holds no tunesmith request log"):
            RequestLog.open(where)
        conn, _ = _raw(where)
        assert conn.execute("SELECT to_regclass('requests')").fetchone()[0] is None
    else:
        with pytest.raises(RunError, match="no request log"):
            RequestLog.open(where)
    RequestLog.open(where, create=True).close()
    reader = RequestLog.open(where)
    with pytest.raises(RunError, match="read-?only"):
        reader.add_request(_row("r0"))
    assert reader.count() == 0


def test_a_newer_log_is_refused_by_writers_and_readers(where):
    RequestLog.open(where, create=True).close()
    conn, mark = _raw(where)
    conn.execute(f"UPDATE log_meta SET value = {mark} WHERE key = 'schema_version'", ("99",))
    for create in (True, False):
        with pytest.raises(RunError, match=f"schema_version 99, newer than this tunesmith knows \\({LOG_SCHEMA_VERSION}\\)"):
            RequestLog.open(where, create=create)


def test_a_newer_row_is_refused_as_newer(where):
    """A row of a later version, even one whose new fields this code cannot validate, is refused as newer."""
    with RequestLog.open(where, create=True) as log:
        log.add_request(_row("r0", schema_version=99))
        with pytest.raises(RunError, match="RequestRow schema_version 99, newer"):
            list(log.iter_requests())
    conn, mark = _raw(where)
    later = _row("r1").model_dump(mode="json") | {"schema_version": REQUEST_ROW_VERSION + 1, "a_later_field": 1}
    conn.execute(f"UPDATE requests SET row = {mark}", (json.dumps(later),))
    with pytest.raises(RunError, match=f"RequestRow schema_version {REQUEST_ROW_VERSION + 1}, newer than this tunesmith reads"):
        list(RequestLog.open(where).iter_requests())


def test_a_version_1_log_is_read_then_upgraded_by_serve(where):
    """The first layout (no log_meta, no replica column; rows without `replica`): readers read it as it is, serve
    upgrades it in place and keeps every row."""
    conn, mark = _raw(where)
    for sql in steps(1, "postgresql" if where.startswith("postgresql://") else "sqlite"):
        conn.execute(sql)
    old = _row("old").model_dump(mode="json", exclude={"replica"}) | {"schema_version": 1}
    conn.execute(
        f"INSERT INTO requests (request_id, time, model, row) VALUES ({mark}, {mark}, {mark}, {mark})",
        ("old", T0.timestamp(), "m", json.dumps(old)),
    )
    conn.close()
    reader = RequestLog.open(where)
    assert reader.schema_version == 1 and reader.replica_counts() == {"": 1}
    reader.close()
    with RequestLog.open(where, create=True, replica="b") as log:
        assert log.schema_version == LOG_SCHEMA_VERSION
        log.add_request(_row("new", T0 + timedelta(seconds=1)))
    reader = RequestLog.open(where)
    assert [(r.request_id, r.replica) for r in reader.iter_requests()] == [("old", None), ("new", "b")]
    assert reader.schema_version == LOG_SCHEMA_VERSION and reader.replica_counts() == {"": 1, "b": 1}


def test_a_version_2_log_gains_the_variant_column_and_keeps_its_rows(where):
    """Schema 3 adds requests.variant (which side of a rollout answered): a version-2 log is read as it is and
    upgraded in place by serve; its rows read as answered by the primary; a shadow row takes no feedback."""
    conn, mark = _raw(where)
    backend = "postgresql" if where.startswith("postgresql://") else "sqlite"
    for version in (1, 2):
        for sql in steps(version, backend):
            conn.execute(sql)
    conn.execute(f"INSERT INTO log_meta (key, value) VALUES ('schema_version', {mark})", ("2",))
    old = _row("old").model_dump(mode="json", exclude={"variant"}) | {"schema_version": 2, "replica": "a"}
    conn.execute(
        f"INSERT INTO requests (request_id, time, model, replica, row) VALUES ({mark}, {mark}, {mark}, {mark}, {mark})",
        ("old", T0.timestamp(), "m", "a", json.dumps(old)),
    )
    conn.close()
    reader = RequestLog.open(where)
    assert reader.schema_version == 2 and [r.variant for r in reader.iter_requests()] == ["primary"]
    reader.close()
    with RequestLog.open(where, create=True, replica="b") as log:
        assert log.schema_version == LOG_SCHEMA_VERSION == 3
        log.add_request(_row("c1", T0 + timedelta(seconds=1), variant="canary"))
        log.add_request(_row("s1", T0 + timedelta(seconds=2), variant="shadow"))
        with pytest.raises(UnknownRequest):
            log.add_feedback(FeedbackRow(request_id="s1", rating="up"))
    conn, mark = _raw(where)
    cur = conn.execute("SELECT request_id, variant FROM requests ORDER BY time")
    assert cur.fetchall() == [("old", "primary"), ("c1", "canary"), ("s1", "shadow")]  # the column, for SQL readers
    conn.close()
    assert [r.variant for r in RequestLog.open(where).iter_requests()] == ["primary", "canary", "shadow"]


def test_replicas_writing_at_once_give_one_row_per_request(where):
    """Two replicas' handles (and several opening at once, which migrates once), four writer threads each: every
    request one row, a retried id still one row, each row naming its replica."""
    handles: dict[str, RequestLog] = {}
    errors: list[BaseException] = []

    def open_one(name: str) -> None:
        try:
            handles[name] = RequestLog.open(where, create=True, replica=name)
        except BaseException as exc:
            errors.append(exc)

    openers = [threading.Thread(target=open_one, args=(n,)) for n in ("a", "b")]
    for t in openers:
        t.start()
    for t in openers:
        t.join()
    assert not errors, errors

    def write(name: str, worker: int) -> None:
        try:
            for i in range(25):
                rid = f"{name}-{worker}-{i}"
                handles[name].add_request(_row(rid, T0 + timedelta(milliseconds=i)))
                if i % 5 == 0:
                    handles[name].add_request(_row(rid, T0 + timedelta(milliseconds=i)))  # a retried write
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(n, w)) for n in ("a", "b") for w in range(4)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    assert not errors, errors
    reader = RequestLog.open(where)
    ids = [r.request_id for r in reader.iter_requests()]
    assert len(ids) == len(set(ids)) == 200 == reader.count()
    assert reader.replica_counts() == {"a": 100, "b": 100}


def test_url_passwords_are_masked():
    url = "postgresql://ops:s3cr%40t@db.internal:5432/tunesmith?sslmode=require"
    assert mask_url(url) == "postgresql://ops:***@db.internal:5432/tunesmith?sslmode=require"
    assert (
        mask_url("postgresql://db/x?password=hunter2&sslmode=require") == "postgresql://db/x?password=%2A%2A%2A&sslmode=require"
    )
    assert mask_url("postgresql://ops@db/x") == "postgresql://ops@db/x"
    assert (
        scrub(f"failed for {url}: s3cr@t", url)
        == "failed for postgresql://ops:***@db.internal:5432/tunesmith?sslmode=require: ***"
    )


def test_a_wrong_password_is_a_masked_error(pg_url, tmp_path):
    secret = "not-the-password-4711"
    wrong = re.sub(r":pw-[0-9a-f]+@", f":{secret}@", pg_url)
    with pytest.raises(RunError) as err:
        RequestLog.open(wrong, create=True)
    assert "password authentication failed" in str(err.value) and secret not in str(err.value) and "***" in str(err.value)
    res = run_cli(["monitor", "--log", wrong, "--out", str(tmp_path / "report")], timeout_s=120)
    said = " ".join((res.stdout + res.stderr).split())  # rich wraps long lines
    assert res.returncode == 1 and "password authentication failed" in said and "***" in said
    assert secret not in said and "Traceback" not in said and not (tmp_path / "report").exists()


def test_a_dropped_connection_is_reopened_without_a_second_row(pg_url, postgres):
    """The server ends serve's session (a restart, a failover): the next write reconnects and writes its row once."""
    import psycopg

    log = RequestLog.open(pg_url, create=True, replica="a")
    log.add_request(_row("r0"))
    database = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))
    log.add_request(_row("r1", T0 + timedelta(seconds=1)))
    assert [r.request_id for r in RequestLog.open(pg_url).iter_requests()] == ["r0", "r1"]


def test_without_the_driver_the_message_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(RunError) as err:
        RequestLog.open("postgresql://u:pw@127.0.0.1:1/x", create=True)
    assert "psycopg" in str(err.value) and "tunesmith[postgres]" in (err.value.hint or "")
