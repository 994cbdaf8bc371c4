"""Drift monitoring: the MMD test's false-positive rate and power, every signal on a synthetic log, the CLI's exit code,
monitor.json/html, --export-retrain, and the studio's monitor page showing the signals."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

import pytest
from serve_helpers import run_cli
from typer.testing import CliRunner

from helpers import write_jsonl
from studio_helpers import fake_run
from tunesmith.cli import app
from tunesmith.config import MonitorSection
from tunesmith.monitor import drift
from tunesmith.monitor.report import DRIFT_EXIT, MONITOR_REPORT_VERSION, read_report

TOPICS = ["router", "headphones", "blender", "lamp", "tripod", "keyboard", "mouse", "speaker", "doorbell", "heater"]
ASK = [
    "How do I reset my {t}?",
    "My {t} stopped working after an update, what should I do?",
    "Is the {t} covered by the warranty if it was dropped?",
    "Can I return the {t} after {n} days?",
    "What is the battery life of the {t}?",
    "Where can I find the manual for the {t}?",
]
SHIFTED = [
    "Write a poem about the {t} in the style of Shakespeare, with {n} stanzas.",
    "Translate the sentence 'the {t} is broken' into German, French and Spanish.",
    "Summarise the history of the Roman empire in {n} bullet points.",
    "Explain quantum entanglement to a five year old using a {t} as the example.",
]
UNTIL = datetime(2026, 5, 1, 12, tzinfo=timezone.utc)


def prompts(n: int, seed: int, shifted: bool = False) -> list[str]:
    rng = random.Random(seed)
    pool = SHIFTED if shifted else ASK
    return [rng.choice(pool).format(t=rng.choice(TOPICS), n=rng.randint(2, 60)) for _ in range(n)]


def answer(prompt: str) -> str:
    return f"Thanks for asking. For '{prompt[:30]}', hold the button for ten seconds and check the manual."


def test_mmd_false_positive_rate_and_power_over_repeats():
    embed, alpha, repeats = drift.CharNgramEmbedder(), 0.05, 40
    false_pos = hits = 0
    for i in range(repeats):
        a, same, other = prompts(50, 1000 + i), prompts(50, 5000 + i), prompts(50, 9000 + i, shifted=True)
        false_pos += drift.mmd_test(embed.encode(a), embed.encode(same), 200, seed=i).p_value < alpha
        hits += drift.mmd_test(embed.encode(a), embed.encode(other), 200, seed=i).p_value < alpha
    assert false_pos / repeats <= 0.1
    assert hits / repeats >= 0.95


def test_mmd_is_seeded_and_symmetric_in_its_verdict():
    embed = drift.CharNgramEmbedder()
    x, y = embed.encode(prompts(30, 1)), embed.encode(prompts(30, 2, shifted=True))
    assert drift.mmd_test(x, y, 100, seed=3) == drift.mmd_test(x, y, 100, seed=3)
    assert drift.mmd_test(x, y, 100).mmd2 > 0.05 > abs(drift.mmd_test(x, embed.encode(prompts(30, 4)), 100).mmd2)


def test_real_minilm_flags_a_topic_shift_and_not_a_resample():
    from tunesmith.rag.embed import load_embedder

    minilm = load_embedder(None)
    ref = minilm.encode(prompts(40, 11))
    shifted = drift.mmd_test(ref, minilm.encode(prompts(40, 12, shifted=True)), 300, seed=0)
    same = drift.mmd_test(ref, minilm.encode(prompts(40, 13)), 300, seed=0)
    assert shifted.p_value < 0.05 <= same.p_value


def write_log(serve_dir, recent_shifted: bool, n: int = 40) -> None:
    """Earlier window: steady traffic; recent window: shifted (topic, slower, errors, refusals, rated down) or steady."""
    from tunesmith.serve.store import FeedbackRow, RequestLog, RequestRow

    serve_dir.mkdir(parents=True, exist_ok=True)
    (serve_dir / ".tunesmith-serve").touch()
    with RequestLog.open(serve_dir, create=True) as log:
        for window, texts in (("earlier", prompts(n, 1)), ("recent", prompts(n, 2, shifted=recent_shifted))):
            for i, text in enumerate(texts):
                bad = window == "recent" and recent_shifted
                rid = f"{window}-{i}"
                hours_back = (36 if window == "earlier" else 12) - i * 0.25
                failed = bad and i % 5 == 0
                log.add_request(
                    RequestRow(
                        request_id=rid,
                        time=UNTIL - timedelta(hours=hours_back),
                        model="m",
                        messages=[{"role": "user", "content": text}],
                        output=("I'm sorry, I can't help with that." if bad and i % 3 == 0 else answer(text)),
                        latency_s=(2.0 if bad else 0.5) + 0.01 * (i % 7),
                        status=500 if failed else 200,
                    )
                )
                if i % 4 == 0 and not failed:  # a failed request has no answer to rate
                    log.add_feedback(FeedbackRow(request_id=rid, rating="down" if bad else "up"))


def baseline(tmp_path):
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": answer(p)}]} for p in prompts(60, 0)]
    return fake_run(tmp_path / "runs", "base-run", data_file=write_jsonl(tmp_path / "train.jsonl", rows))


@pytest.mark.parametrize("shifted", [True, False])
def test_check_flags_each_signal_of_a_shifted_window_and_nothing_in_a_steady_one(tmp_path, shifted):
    from tunesmith.monitor.traffic import check
    from tunesmith.run import load_run

    write_log(tmp_path / "serve", recent_shifted=shifted)
    cfg = MonitorSection(embedder="char-ngrams", permutations=200)
    report = check(tmp_path / "serve", load_run(baseline(tmp_path)), cfg, until=UNTIL)
    drifted = {(s.name, s.reference) for s in report.drifted}
    assert report.recent.requests == report.earlier.requests == 40
    if shifted:
        for name in ("input_embedding", "input_vocabulary", "refusal_rate", "down_rate", "latency_p95", "error_rate"):
            assert (name, "earlier") in drifted, name
        assert ("input_embedding", "training") in drifted and ("refusal_rate", "training") in drifted
    else:
        assert drifted == set(), report.drifted
    assert all(s.status != "skip" for s in report.signals if s.name != "down_rate" or s.reference == "earlier")


def test_too_few_requests_are_skipped_not_judged(tmp_path):
    from tunesmith.monitor.traffic import check

    write_log(tmp_path / "serve", recent_shifted=True, n=6)
    report = check(tmp_path / "serve", None, MonitorSection(embedder="char-ngrams", permutations=50), until=UNTIL)
    assert report.signals and all(s.status == "skip" for s in report.signals) and not report.drifted


def test_cli_exit_code_report_files_and_retrain_export(tmp_path):
    runner = CliRunner()
    run = baseline(tmp_path)
    write_log(tmp_path / "steady", recent_shifted=False)
    ok = runner.invoke(
        app,
        [
            "monitor",
            str(tmp_path / "steady"),
            "--baseline",
            str(run),
            "--embedder",
            "char-ngrams",
            "--until",
            UNTIL.strftime("%Y-%m-%dT%H:%M:%S"),
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert "no drift" in ok.output
    write_log(tmp_path / "serve", recent_shifted=True)
    out = tmp_path / "next.jsonl"
    res = runner.invoke(
        app,
        [
            "monitor",
            str(tmp_path / "serve"),
            "--baseline",
            str(run),
            "--embedder",
            "char-ngrams",
            "--until",
            UNTIL.strftime("%Y-%m-%dT%H:%M:%S"),
            "--export-retrain",
            str(out),
        ],
    )
    assert res.exit_code == DRIFT_EXIT, res.output
    assert "DRIFT" in res.output and "input_embedding" in res.output
    report = read_report(tmp_path / "serve" / "monitor" / "monitor.json")
    assert report.schema_version == MONITOR_REPORT_VERSION and report.drifted and report.hours
    page = (tmp_path / "serve" / "monitor" / "monitor.html").read_text()
    assert "data:image/png;base64," in page and "input_embedding" in page
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    asked = {r["messages"][0]["content"] for r in rows}
    assert rows and asked <= set(prompts(40, 2, shifted=True))  # only recent, drifted prompts
    assert all(r["messages"][-1]["role"] == "assistant" for r in rows)
    again = runner.invoke(
        app,
        [
            "monitor",
            str(tmp_path / "serve"),
            "--baseline",
            str(run),
            "--embedder",
            "char-ngrams",
            "--until",
            UNTIL.strftime("%Y-%m-%dT%H:%M:%S"),
            "--export-retrain",
            str(out),
        ],
    )
    assert again.exit_code == 73 and "already exists" in " ".join(again.output.split())  # the export is never overwritten


def test_studio_monitor_page_shows_the_latest_signals(tmp_path):
    from fastapi.testclient import TestClient

    from tunesmith.studio.app import StudioConfig, create_app

    write_log(tmp_path / "serve", recent_shifted=True)
    CliRunner().invoke(
        app, ["monitor", str(tmp_path / "serve"), "--embedder", "char-ngrams", "--until", UNTIL.strftime("%Y-%m-%dT%H:%M:%S")]
    )
    fake_run(tmp_path / "runs", "r")
    studio = create_app(StudioConfig(runs=[tmp_path / "runs"], serve_dir=tmp_path / "serve"))
    page = TestClient(studio, base_url="http://127.0.0.1:7860").get("/monitor").text  # the address it answers to
    assert 'id="drift"' in page and "latency_p95" in page and "drift" in page


def test_an_empty_log_file_is_reported_not_converted(tmp_path):
    """A 0-byte requests.sqlite is an empty log, not "no drift": nothing is written into it or beside it."""
    serve = tmp_path / "serve"
    serve.mkdir()
    (serve / "requests.sqlite").touch()
    res = CliRunner().invoke(app, ["monitor", str(serve), "--embedder", "char-ngrams", "--out", str(tmp_path / "m")])
    assert res.exit_code == 1, res.output
    assert "empty (0 bytes)" in " ".join(res.output.split()) and "no drift" not in res.output
    assert sorted(p.name for p in serve.iterdir()) == ["requests.sqlite"] and (serve / "requests.sqlite").stat().st_size == 0
    bad = CliRunner().invoke(app, ["feedback", "export", str(serve), "--to", "sft", "--out", str(tmp_path / "x.jsonl")])
    assert bad.exit_code == 1 and "empty (0 bytes)" in " ".join(bad.output.split())


@pytest.mark.parametrize("folder_mode", [0o555, 0o777], ids=["read-only folder", "read-only file"])
def test_a_read_only_log_is_read(tmp_path, folder_mode):
    """A log the reader may not write (a copy from a server, another user's folder) is read, not refused."""
    import hashlib

    serve = tmp_path / "serve"
    write_log(serve, recent_shifted=False)
    (serve / ".tunesmith-serve").unlink()
    db = serve / "requests.sqlite"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    db.chmod(0o444)
    serve.chmod(folder_mode)
    try:
        res = run_cli(
            ["monitor", str(serve), "--embedder", "char-ngrams", "--until", UNTIL.isoformat()[:19], "--out", str(tmp_path / "m")],
            as_reader=True,
        )
    finally:
        serve.chmod(0o755)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no drift" in res.stdout and "Traceback" not in res.stderr
    assert read_report(tmp_path / "m" / "monitor.json").recent.requests == 40
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
