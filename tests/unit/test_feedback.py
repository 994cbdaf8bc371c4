"""`tunesmith feedback export`: corrections become SFT rows, corrections and up/down pairs become OpenAI-shaped DPO rows;
the written files pass the data audit; an existing --out is never replaced."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.data.audit import audit
from tunesmith.data.formats import detect_shape
from tunesmith.errors import DataError
from tunesmith.monitor.feedback import export
from tunesmith.train.dpo import METHOD as DPO

T0 = datetime(2026, 5, 1, tzinfo=timezone.utc)


def log_with_feedback(serve_dir):
    from tunesmith.serve.store import FeedbackRow, RequestLog, RequestRow

    def ask(log, rid, text, output, minutes, **kw):
        log.add_request(
            RequestRow(
                request_id=rid,
                time=T0 + timedelta(minutes=minutes),
                model="m",
                messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}],
                output=output,
                **kw,
            )
        )

    with RequestLog.open(serve_dir, create=True) as log:
        ask(log, "a", "What is the capital of France?", "Lyon.", 1)
        log.add_feedback(FeedbackRow(request_id="a", rating="down", correction="Paris."))
        ask(log, "b1", "Reset the router?", "Hold the reset button for ten seconds.", 2)
        ask(log, "b2", "Reset the router?", "I cannot help with routers.", 3)
        log.add_feedback(FeedbackRow(request_id="b1", rating="up"))
        log.add_feedback(FeedbackRow(request_id="b2", rating="down"))
        ask(log, "c", "Lonely question", "An answer", 4)
        log.add_feedback(FeedbackRow(request_id="c", rating="up"))  # no counterpart: no pair
        log.add_request(RequestRow(request_id="d", time=T0, model="m", content_logged=False))
        log.add_feedback(FeedbackRow(request_id="d", rating="down", correction="Something"))
        ask(log, "e", "Two plus two?", "5", 5)
        log.add_feedback(FeedbackRow(request_id="e", rating="down", correction="3"))
        log.add_feedback(FeedbackRow(request_id="e", rating="down", correction="4"))  # the later verdict counts
        for i in range(10):  # the audit wants at least 10 rows
            ask(log, f"n{i}", f"What is {i} times {i + 3}?", str(i), 10 + i)
            log.add_feedback(FeedbackRow(request_id=f"n{i}", rating="down", correction=str(i * (i + 3))))
    return serve_dir


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sft_rows_are_corrections_and_pass_the_audit(tmp_path):
    done = export(log_with_feedback(tmp_path / "serve"), "sft", tmp_path / "sft.jsonl")
    got = rows(done.path)
    assert done.rows == 12 and done.skipped == {"request content not logged": 1}
    answers = {r["messages"][1]["content"]: r["messages"][-1]["content"] for r in got}
    assert answers["What is the capital of France?"] == "Paris." and answers["Two plus two?"] == "4"
    assert answers["What is 4 times 7?"] == "28" and "Reset the router?" not in answers
    assert all(r["messages"][0] == {"role": "system", "content": "Be brief."} for r in got)
    report = audit([str(done.path)])
    assert report.stats["rows"]["train_usable"] == 12 and not report.errors


def test_dpo_rows_are_openai_preference_pairs_and_pass_the_audit(tmp_path):
    done = export(log_with_feedback(tmp_path / "serve"), "dpo", tmp_path / "dpo.jsonl")
    got = rows(done.path)
    assert {detect_shape(r) for r in got} == {"openai_dpo"}
    pairs = {
        (r["input"]["messages"][-1]["content"], r["preferred_output"][0]["content"], r["non_preferred_output"][0]["content"])
        for r in got
    }
    router = ("Reset the router?", "Hold the reset button for ten seconds.", "I cannot help with routers.")
    france, plus = ("What is the capital of France?", "Paris.", "Lyon."), ("Two plus two?", "4", "5")
    assert len(got) == 12 and {france, plus, router} <= pairs
    # "c", and "n0" whose correction equals its answer
    assert done.skipped["rating without a counterpart on the same prompt"] == 2
    report = audit([str(done.path)], method=DPO)
    assert report.stats["shapes"] == {"openai_dpo": 12} and not report.errors


def test_nothing_to_export_and_an_existing_out_are_refused(tmp_path):
    from tunesmith.outputs import OutputError
    from tunesmith.serve.store import RequestLog

    with RequestLog.open(tmp_path / "empty", create=True):
        pass
    with pytest.raises(DataError, match="no corrected answers"):
        export(tmp_path / "empty", "sft", tmp_path / "x.jsonl")
    assert not (tmp_path / "x.jsonl").exists()
    mine = tmp_path / "mine.jsonl"
    mine.write_text("keep me\n")
    with pytest.raises(OutputError):
        export(log_with_feedback(tmp_path / "serve"), "sft", mine)
    assert mine.read_text() == "keep me\n"


def test_cli_prints_the_audit_of_the_written_file(tmp_path):
    runner = CliRunner()
    serve = log_with_feedback(tmp_path / "serve")
    res = runner.invoke(app, ["feedback", "export", str(serve), "--to", "dpo", "--out", str(tmp_path / "p.jsonl")])
    assert res.exit_code == 0, res.output
    assert "wrote 12 dpo rows" in res.output and "data check" in res.output and "no blocking errors" in res.output
    again = runner.invoke(app, ["feedback", "export", str(serve), "--to", "dpo", "--out", str(tmp_path / "p.jsonl")])
    assert again.exit_code == 73 and "already exists" in " ".join(again.output.split())
    bad = runner.invoke(app, ["feedback", "export", str(serve), "--to", "kto", "--out", str(tmp_path / "q.jsonl")])
    assert bad.exit_code != 0 and "sft or dpo" in " ".join(bad.output.split())


def test_feedback_on_a_failed_request_is_refused_and_never_exported(tmp_path):
    """A request answered 429 (or any error) has no answer: feedback on it is refused, and a log that holds such
    feedback anyway (written by an older server) exports no row from it."""
    import sqlite3

    from tunesmith.serve.store import FailedRequest, FeedbackRow, RequestLog, RequestRow

    serve = log_with_feedback(tmp_path / "serve")
    busy = RequestRow(
        request_id="busy",
        time=T0,
        model="m",
        messages=[{"role": "user", "content": "Capital of Spain?"}],
        output="",
        status=429,
        error="queue_full",
    )
    with RequestLog.open(serve, create=True) as log:
        path = log.path
        log.add_request(busy)
        with pytest.raises(FailedRequest, match="HTTP 429"):
            log.add_feedback(FeedbackRow(request_id="busy", rating="down", correction="Madrid."))
        assert [f for f in log.iter_feedback() if f.request_id == "busy"] == []
    old = FeedbackRow(request_id="busy", rating="down", correction="Madrid.")
    with sqlite3.connect(path) as db:  # what a server before this check let through
        db.execute(
            "INSERT INTO feedback (feedback_id, request_id, time, row) VALUES (?, ?, ?, ?)",
            (old.feedback_id, "busy", T0.timestamp(), old.model_dump_json()),
        )
    for to in ("sft", "dpo"):
        done = export(serve, to, tmp_path / f"{to}.jsonl")
        assert "Madrid." not in done.path.read_text() and done.skipped["request answered with an error"] == 1


def test_cli_reads_the_log_named_by_log_and_needs_one(tmp_path):
    """`feedback export --log FILE` reads that log (no serve folder argument); with neither, one clear error. `monitor
    --log URL` without SERVE_DIR or --out has no place for its report and says so before reading anything."""
    runner = CliRunner()
    db = log_with_feedback(tmp_path / "elsewhere.sqlite")
    res = runner.invoke(app, ["feedback", "export", "--log", str(db), "--to", "sft", "--out", str(tmp_path / "s.jsonl")])
    assert res.exit_code == 0, res.output
    assert "wrote 12 sft rows" in res.output and len(rows(tmp_path / "s.jsonl")) == 12
    res = runner.invoke(app, ["feedback", "export", "--to", "sft", "--out", str(tmp_path / "t.jsonl")])
    assert res.exit_code == 1 and "no request log to read" in res.output and not (tmp_path / "t.jsonl").exists()
    res = runner.invoke(app, ["monitor", "--log", "postgresql://u:hunter2@127.0.0.1:1/x"])
    said = " ".join(res.output.split())
    assert res.exit_code == 1 and "--out DIR" in said and "hunter2" not in said
