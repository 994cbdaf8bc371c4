"""Several replicas, one request log: two real uvicorn servers on the tiny model, built the way `tunesmith serve --log
postgresql://...` builds them, writing to a real PostgreSQL server; driven with the official openai client; then the
real `tunesmith monitor` and `feedback export` over the shared log. Skipped, with the reason, without PostgreSQL."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from serve_helpers import free_port, lora_adapter, run_cli

from tunesmith.monitor.report import read_report
from tunesmith.serve.server import ServeOptions, prepare
from tunesmith.serve.store import RequestLog

KEY, ADMIN = "sk-replica-test", "sk-replica-admin"
USER, ADMIN_AUTH = {"Authorization": f"Bearer {KEY}"}, {"Authorization": f"Bearer {ADMIN}"}


@dataclass
class Replica:
    url: str
    state: Any
    server: Any
    thread: threading.Thread

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=KEY, max_retries=0)


def wait_for(predicate, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def replica(model_dir, log_url: str, folder, replica_id: str | None = None, **options):
    """One replica: `prepare()` as `tunesmith serve MODEL --log URL [--replica-id ID]` calls it, run by uvicorn in a
    thread (stopped by setting should_exit, which is what SIGTERM does)."""
    import uvicorn

    port = free_port()
    opts = ServeOptions(str(model_dir), port=port, dir=folder, log_path=log_url, api_keys=[KEY], replica_id=replica_id, **options)
    prepared = prepare(opts)
    server = uvicorn.Server(uvicorn.Config(prepared.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: _healthy(prepared.url), 120)
    try:
        yield Replica(prepared.url, prepared.app.state.tunesmith, server, thread)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _password(url: str) -> str:
    return re.search(r":(pw-[0-9a-f]+)@", url).group(1)


def test_two_replicas_one_log_monitor_and_feedback(tiny_model_dir, pg_url, tmp_path):
    """Concurrent requests to both replicas: one row each, naming the replica (explicit id, or hostname:port); a 404
    is a row, a 401 none; feedback given to one replica on the other's answer is in the shared log, so `monitor`
    counts both replicas' traffic and `feedback export --log` exports it. The password shows nowhere."""
    with (
        replica(tiny_model_dir, pg_url, tmp_path / "s1", "web-1") as one,
        replica(tiny_model_dir, pg_url, tmp_path / "s2") as two,
    ):
        second = f"{socket.gethostname()}:{two.url.rsplit(':', 1)[1]}"
        model = one.state.engine.default_name
        clients = [one.client(), two.client()]

        def ask(i: int) -> tuple[int, str]:
            res = clients[i % 2].chat.completions.create(
                model=model, messages=[{"role": "user", "content": f"Question number {i}?"}], max_tokens=3, temperature=0
            )
            return i % 2, res.id

        with ThreadPoolExecutor(8) as pool:
            answered = list(pool.map(ask, range(16)))
        with pytest.raises(openai.NotFoundError):
            clients[1].chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}], max_tokens=2)
        for r in (one, two):
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=r.url + "/v1", api_key="wrong", max_retries=0).chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "x"}], max_tokens=2
                )
        metrics = httpx.get(two.url + "/metrics").text
        assert re.search(r'tunesmith_request_log_info\{backend="postgresql",location="postgresql://tunesmith:\*\*\*@', metrics)
        assert f'replica="{second}"' in metrics and _password(pg_url) not in metrics

        by_one = next(rid for side, rid in answered if side == 0)
        res = httpx.post(
            two.url + "/v1/feedback", headers=USER, json={"request_id": by_one, "rating": "down", "correction": "Forty-two."}
        )
        assert res.status_code == 200, res.text
        assert [f.request_id for f in one.state.store.iter_feedback()] == [by_one]  # replica one's own handle sees it

    log = RequestLog.open(pg_url)
    rows = list(log.iter_requests())
    assert len(rows) == len({r.request_id for r in rows}) == 17
    assert {rid for _, rid in answered} <= {r.request_id for r in rows}
    assert Counter((r.replica, r.status) for r in rows) == {("web-1", 200): 8, (second, 200): 8, (second, 404): 1}
    assert log.replica_counts() == {"web-1": 8, second: 9}
    (fb,) = log.iter_feedback()
    assert fb.replica == second and log.get_request(fb.request_id).replica == "web-1"

    res = run_cli(["monitor", "--log", pg_url, "--out", str(tmp_path / "report"), "--embedder", "char-ngrams"])
    assert res.returncode in (0, 3), res.stdout + res.stderr
    report = read_report(tmp_path / "report" / "monitor.json")
    assert report.recent.requests == 17 and report.serve_dir.startswith("postgresql://tunesmith:***@")
    assert {(r.replica, r.requests, r.answered, r.errors) for r in report.replicas} == {("web-1", 8, 8, 0), (second, 9, 8, 1)}
    assert "web-1" in res.stdout and second in res.stdout
    shown = res.stdout + res.stderr + (tmp_path / "report" / "monitor.json").read_text()
    assert _password(pg_url) not in shown + (tmp_path / "report" / "monitor.html").read_text()

    res = run_cli(["feedback", "export", "--log", pg_url, "--to", "sft", "--out", str(tmp_path / "sft.jsonl")])
    assert res.returncode == 0, res.stdout + res.stderr
    (row,) = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    asked = log.get_request(by_one).messages[-1].content
    assert row["messages"] == [{"role": "user", "content": asked}, {"role": "assistant", "content": "Forty-two."}]


def test_a_replica_stopping_with_requests_in_flight(tiny_model_dir, pg_url, tmp_path):
    """SIGTERM's path (should_exit) on one replica while four requests (one streamed) wait in its queue: it stops
    listening at once (a new request is refused: a connection error the client sees, and no row), finishes the four,
    and the other replica answers throughout. The shared log holds one row per answered request."""
    with (
        replica(tiny_model_dir, pg_url, tmp_path / "a", "a") as a,
        replica(tiny_model_dir, pg_url, tmp_path / "b", "b") as b,
    ):
        model = a.state.engine.default_name
        body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0}
        gate, real = threading.Event(), a.state.engine.generate_batch

        def gated(*args, **kwargs):
            assert gate.wait(60)
            return real(*args, **kwargs)

        def post(stream: bool) -> tuple[int, str | None]:
            with httpx.stream(
                "POST", a.url + "/v1/chat/completions", json={**body, "stream": stream}, headers=USER, timeout=60
            ) as res:
                text = res.read().decode()
                assert not stream or text.rstrip().endswith("data: [DONE]")
                return res.status_code, res.headers.get("x-request-id")

        a.state.engine.generate_batch = gated
        with ThreadPoolExecutor(4) as pool:
            in_flight = [pool.submit(post, s) for s in (False, False, False, True)]
            wait_for(lambda: a.state.batcher.depth == 4)
            a.server.should_exit = True
            wait_for(lambda: not _healthy(a.url))
            with pytest.raises(openai.APIConnectionError):
                a.client().chat.completions.create(**body)
            during = [b.client().chat.completions.create(**body).id for _ in range(3)]
            gate.set()
            finished = [f.result() for f in in_flight]
        a.thread.join(timeout=30)
        assert not a.thread.is_alive()
        assert [status for status, _ in finished] == [200, 200, 200, 200]
        after = b.client().chat.completions.create(**body).id

    rows = list(RequestLog.open(pg_url).iter_requests())
    assert len(rows) == len({r.request_id for r in rows}) == 8
    assert {r.request_id for r in rows if r.replica == "a"} == {rid for _, rid in finished}
    assert {r.request_id for r in rows if r.replica == "b"} == {*during, after}
    assert all(r.status == 200 for r in rows)


def test_an_adapter_in_the_shared_folder_is_hot_loaded_on_each_replica(tiny_model_dir, pg_url, tmp_path):
    """docs/deploy.md's rollout: the adapter lands in the folder every replica mounts as --adapters-dir, then the
    admin route is called on each replica (not through the load balancer, which would reach only one). Until a
    replica has it, that replica answers 404 for it; afterwards both answer, and the log says which replica did."""
    shared = tmp_path / "adapters"
    shared.mkdir()
    options = {"adapters_dir": shared, "admin_keys": [ADMIN]}
    with (
        replica(tiny_model_dir, pg_url, tmp_path / "a", "a", **options) as a,
        replica(tiny_model_dir, pg_url, tmp_path / "b", "b", **options) as b,
    ):
        lora_adapter(tiny_model_dir, shared / "support-r2")
        ask = {"model": "support-r2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
        res = httpx.post(a.url + "/v1/adapters", headers=ADMIN_AUTH, json={"name": "support-r2", "path": "support-r2"})
        assert res.status_code == 200, res.text
        assert httpx.post(a.url + "/v1/chat/completions", headers=USER, json=ask, timeout=60).status_code == 200
        missing = httpx.post(b.url + "/v1/chat/completions", headers=USER, json=ask, timeout=60)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
        res = httpx.post(b.url + "/v1/adapters", headers=ADMIN_AUTH, json={"name": "support-r2", "path": "support-r2"})
        assert res.status_code == 200, res.text
        assert httpx.post(b.url + "/v1/chat/completions", headers=USER, json=ask, timeout=60).status_code == 200
    rows = list(RequestLog.open(pg_url).iter_requests())
    assert [(r.replica, r.status, r.adapter) for r in rows] == [
        ("a", 200, "support-r2"),
        ("b", 404, None),
        ("b", 200, "support-r2"),
    ]


def test_a_log_it_cannot_write_makes_a_500_never_an_unlogged_answer(tiny_model_dir, postgres, tmp_path, caplog):
    """The database goes away under a running replica (dropped here, its sessions ended): serve tries to reconnect,
    cannot, and answers 500 instead of an answer without its row; the server log says why, password masked."""
    import uuid

    import psycopg
    from pg_helpers import new_database

    name = f"gone_{uuid.uuid4().hex[:8]}"
    url = new_database(postgres, name)
    with replica(tiny_model_dir, url, tmp_path / "a", "a") as a:
        body = {"model": a.state.engine.default_name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        a.client().chat.completions.create(**body)
        with psycopg.connect(postgres, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        with pytest.raises(openai.InternalServerError):
            a.client().chat.completions.create(**body)
    said = " ".join(r.getMessage() + str(r.exc_info[1] if r.exc_info else "") for r in caplog.records)
    assert f'database "{name}" does not exist' in said and "tunesmith:***@" in said and _password(url) not in said


def test_serve_refuses_a_log_it_cannot_open_without_showing_the_password(tiny_model_dir, pg_url, tmp_path):
    """A wrong password: one red paragraph with the URL masked, exit 1, no serve folder made; a blank --replica-id
    is refused too."""
    secret = "not-the-password-0815"
    wrong = re.sub(r":pw-[0-9a-f]+@", f":{secret}@", pg_url)
    args = ["serve", str(tiny_model_dir), "--port", str(free_port()), "--dir", str(tmp_path / "s")]
    res = run_cli([*args, "--log", wrong], timeout_s=120)
    said = " ".join((res.stdout + res.stderr).split())
    assert res.returncode == 1 and "password authentication failed" in said and "tunesmith:***@" in said
    assert secret not in said and "Traceback" not in said and not (tmp_path / "s").exists()
    res = run_cli([*args, "--log", pg_url, "--replica-id", " "], timeout_s=120)
    assert res.returncode == 1 and "--replica-id" in res.stdout + res.stderr and not (tmp_path / "s").exists()
