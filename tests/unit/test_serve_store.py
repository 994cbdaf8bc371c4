"""The request log: typed rows, time-window reads, feedback tied to a known request, durable commits."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from tunesmith.errors import RunError
from tunesmith.serve.store import (
    FeedbackRow,
    Message,
    RequestLog,
    RequestRow,
    SourceRef,
)


def _row(rid: str, when: datetime, **kw) -> RequestRow:
    return RequestRow(request_id=rid, time=when, model="m", messages=[Message(role="user", content="hi")], output="hello", **kw)


def test_rows_round_trip_and_window(tmp_path):
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with RequestLog.open(tmp_path, create=True) as log:
        for i in range(3):
            log.add_request(
                _row(f"r{i}", t0 + timedelta(hours=i), sources=[SourceRef(source="a.md", line=3, chunk_id="c", score=0.5)])
            )
        log.add_feedback(FeedbackRow(request_id="r1", rating="down", correction="better"))
    log = RequestLog.open(tmp_path / "requests.sqlite")
    assert [r.request_id for r in log.iter_requests()] == ["r0", "r1", "r2"]
    assert [r.request_id for r in log.iter_requests(since=t0 + timedelta(hours=1), until=t0 + timedelta(hours=2))] == ["r1"]
    row = log.get_request("r0")
    assert row is not None and row.sources[0].source == "a.md" and row.messages[0].content == "hi"
    fb = list(log.iter_feedback())
    assert len(fb) == 1 and fb[0].rating == "down" and fb[0].correction == "better"
    mode = sqlite3.connect(log.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_feedback_for_unknown_request_and_missing_log(tmp_path):
    with RequestLog.open(tmp_path, create=True) as log, pytest.raises(RunError, match="unknown request_id"):
        log.add_feedback(FeedbackRow(request_id="nope", rating="up"))
    with pytest.raises(RunError, match="no request log"):
        RequestLog.open(tmp_path / "elsewhere.sqlite")


def test_acknowledged_row_visible_to_a_second_connection(tmp_path):
    """A row is committed when add_request returns: another process-level connection sees it at once."""
    log = RequestLog.open(tmp_path, create=True)
    log.add_request(_row("r0", datetime.now(timezone.utc)))
    other = sqlite3.connect(log.path)
    assert other.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 1


def test_newer_schema_is_refused(tmp_path):
    log = RequestLog.open(tmp_path, create=True)
    log.add_request(_row("r0", datetime.now(timezone.utc), schema_version=99))
    with pytest.raises(RunError, match="newer"):
        list(log.iter_requests())
