"""Canary and shadow rollouts: a live uvicorn server and the official openai client route a share of one model's
requests to a candidate adapter (or copy them to it), the request log says which side answered, /metrics counts
both, and `tunesmith rollout --check` promotes or rolls back on the live gates; a crash at any step of a promotion
leaves the previous adapter serving."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from serve_helpers import free_port, hand_run, live_server, lora_adapter
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.errors import RecipeError, RunError
from tunesmith.monitor import rollout as ro
from tunesmith.serve.rollout import candidate_name, read_rollout, rollout_path, routed
from tunesmith.serve.store import FeedbackRow, Message, RequestLog, RequestRow

KEY = "ts-test-key"


def _runs(tmp_path: Path, base: Path, names=("v1", "v2", "v3")) -> list[Path]:
    """Finished runs on the tiny base, each with its own random LoRA adapter (they answer differently)."""
    runs = []
    for seed, name in enumerate(names):
        run = hand_run(tmp_path / "runs", name, base)
        lora_adapter(base, run / "adapter", seed=seed + 1)
        runs.append(run)
    return runs


def _serve_folder(tmp_path: Path, primary: Path) -> Path:
    from tunesmith.serve.server import serve_dir

    folder = serve_dir(tmp_path / "serve")
    (folder / "adapters").mkdir()
    (folder / "adapters" / "support").symlink_to(primary)
    return folder


def test_routing_is_a_pure_function_of_the_request_id():
    ids = [f"req-{i:04d}" for i in range(4000)]
    assert all(routed(i, 1.0) for i in ids)
    picked = [i for i in ids if routed(i, 0.1)]
    assert 300 < len(picked) < 500 and picked == [i for i in ids if routed(i, 0.1)]  # about the share, every time
    assert set(picked) <= {i for i in ids if routed(i, 0.5)}  # a larger share keeps every request a smaller one routed


@pytest.fixture
def served(tmp_path, tiny_model_dir):
    """A serve folder whose adapters/support link names v1, the app serving the link, and two candidate runs."""
    from tunesmith.serve.server import ServeOptions, prepare

    v1, v2, v3 = _runs(tmp_path, tiny_model_dir)
    folder = _serve_folder(tmp_path, v1)
    port = free_port()
    opts = ServeOptions(
        str(tiny_model_dir), [f"support={folder / 'adapters' / 'support'}"], port=port, dir=folder, api_keys=[KEY],
        admin_keys=["ts-admin"], max_batch=4,
    )  # fmt: skip
    prepared = prepare(opts)
    prepared.app.state.tunesmith.rollouts.poll_s = 0.1
    return folder, prepared.app, port, (v1, v2, v3)


def _wait(condition, what: str, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = condition()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _rows(folder: Path) -> list[RequestRow]:
    with RequestLog.open(folder) as log:
        return list(log.iter_requests())


def _ask(client, n: int = 1, model: str = "support") -> list:
    return [
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"question {i}"}], max_tokens=4)
        for i in range(n)
    ]


def test_canary_then_promotion_then_shadow_then_rollback_on_a_live_server(served):
    import openai

    folder, api, port, (v1, v2, v3) = served
    with live_server(api, port=port) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY)
        health = lambda: httpx.get(url + "/health").json()
        _ask(client)  # before any rollout: the primary answers
        assert [r.variant for r in _rows(folder)] == ["primary"]

        # canary: half of support's requests, chosen by request id, answered by v2; the client sees `support`
        ro.start(folder, "support", v2, share=0.5, min_requests=3, gates=["live_error_rate_increase=<=0.5"])
        _wait(lambda: "support" in health().get("rollouts", {}), "the server to pick the rollout up")
        answers = []
        while sum(routed(a.id, 0.5) for a in answers) < 3 and len(answers) < 60:
            answers += _ask(client)
        assert all(a.model == "support" for a in answers)
        by_id = {r.request_id: r for r in _rows(folder)}
        for a in answers:
            row = by_id[a.id]
            assert row.variant == ("canary" if routed(a.id, 0.5) else "primary")
            assert row.run == str(v2 if row.variant == "canary" else v1)
        listed = [m.id for m in client.models.list().data]
        assert "support" in listed and candidate_name("support") not in listed
        with pytest.raises(openai.NotFoundError):  # the share is the rollout's: nobody asks for the candidate
            _ask(client, model=candidate_name("support"))
        canary = next(a for a in answers if routed(a.id, 0.5))
        httpx.post(
            url + "/v1/feedback", json={"request_id": canary.id, "rating": "up"}, headers={"Authorization": f"Bearer {KEY}"}
        )
        metrics = httpx.get(url + "/metrics").text
        assert 'tunesmith_variant_requests_total{model="support",status="200",variant="canary"}' in metrics
        assert 'tunesmith_variant_feedback_total{model="support",rating="up",variant="canary"} 1.0' in metrics
        assert 'tunesmith_rollout_share{mode="canary",model="support"} 0.5' in metrics

        decision = ro.check(folder, "support")
        assert decision.action == "promoted" and decision.candidate_requests >= 3, decision
        assert os.path.realpath(folder / "adapters" / "support") == str(v2)
        _wait(lambda: "rollouts" not in health(), "the server to end the rollout")
        before = len(_rows(folder))
        _ask(client, 2)
        assert {(r.variant, r.run) for r in _rows(folder)[before:]} == {("primary", str(v2))}  # v2 is the primary now
        assert 'tunesmith_rollout_live{figure="requests",model="support",variant="canary"}' in httpx.get(url + "/metrics").text

        # shadow: every request copied to v3, whose answers are logged and never returned
        ro.start(folder, "support", v3, share=1.0, mode="shadow", min_requests=2, gates=["live_output_length_change=<=-1"])
        _wait(lambda: health().get("rollouts", {}).get("support", {}).get("mode") == "shadow", "the shadow rollout")
        asked = _ask(client, 2)
        shadows = _wait(
            lambda: (s := [r for r in _rows(folder) if r.variant == "shadow"]) and len(s) >= 2 and s, "2 shadows", 120
        )
        assert {r.run for r in shadows} == {str(v3)} and all(r.request_id.startswith("shadow-") for r in shadows)
        primary = {r.request_id: r for r in _rows(folder)}
        assert all(primary[a.id].variant == "primary" and a.choices[0].message.content == primary[a.id].output for a in asked)
        res = httpx.post(
            url + "/v1/feedback",
            json={"request_id": shadows[0].request_id, "rating": "up"},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert res.status_code == 404  # no client ever saw a shadow answer
        metrics = httpx.get(url + "/metrics").text
        assert 'variant="shadow"' in metrics and 'tunesmith_requests_total{model="support",status="200"} ' in metrics

        decision = ro.check(folder, "support")  # a gate no candidate can hold: rolled back
        assert decision.action == "rolled_back" and "live_output_length_change" in decision.rollout.reason
        assert os.path.realpath(folder / "adapters" / "support") == str(v2)
        _wait(lambda: "rollouts" not in health(), "the server to stop copying")
        events = [json.loads(x)["event"] for x in (folder / "rollouts" / "support.log.jsonl").read_text().splitlines()]
        assert events[0] == "started" and "promoting" in events and "promoted" in events and events[-1] == "rolled back"


def _log_rows(folder: Path, started: datetime, canary_errors: int, n: int = 6) -> None:
    """Rows as a server writes them: n primary answers, n canary requests of which `canary_errors` failed."""
    with RequestLog.open(folder, create=True) as log:
        for i in range(n):
            at = started + timedelta(seconds=1 + i)
            ask = [Message(role="user", content=f"question {i}")]
            log.add_request(
                RequestRow(request_id=f"p{i}", time=at, model="support", messages=ask, output="an answer", latency_s=0.5)
            )
            failed = i < canary_errors
            log.add_request(
                RequestRow(
                    request_id=f"c{i}",
                    time=at,
                    model="support",
                    messages=ask,
                    output=None if failed else "an answer",
                    latency_s=0.6,
                    status=500 if failed else 200,
                    variant="canary",
                )  # fmt: skip
            )
        log.add_feedback(FeedbackRow(request_id="p0", rating="down"))


def _started(tmp_path, tiny_model_dir, **kw):
    v1, v2 = _runs(tmp_path, tiny_model_dir, ("v1", "v2"))
    folder = _serve_folder(tmp_path, v1)
    r = ro.start(folder, "support", v2, share=0.2, min_requests=kw.pop("min_requests", 6), **kw)
    return folder, r, v1, v2


def test_check_waits_then_rolls_back_a_candidate_that_errors(tmp_path, tiny_model_dir):
    folder, r, v1, v2 = _started(tmp_path, tiny_model_dir)
    assert r.gates == ro.DEFAULT_GATES and read_rollout(rollout_path(folder, "support")).status == "active"
    _log_rows(folder, r.started, canary_errors=2, n=3)
    waiting = ro.check(folder, "support")
    assert waiting.action == "waiting" and waiting.candidate_requests == 3
    assert read_rollout(rollout_path(folder, "support")).live["canary"]["errors"] == 2  # shown on /metrics meanwhile
    _log_rows(folder, r.started + timedelta(minutes=1), canary_errors=2, n=6)
    res = CliRunner().invoke(app, ["rollout", str(folder), "support", "--check"])
    assert res.exit_code == ro.ROLLED_BACK_EXIT, res.output
    assert "FAIL live_error_rate_increase" in res.output and "rolled back" in res.output
    assert os.path.realpath(folder / "adapters" / "support") == str(v1)
    assert not (folder / "adapters" / "support.promotion.json").exists()
    again = CliRunner().invoke(app, ["rollout", str(folder), "support", "--check"])  # decided: it stays decided
    assert again.exit_code == ro.ROLLED_BACK_EXIT and "already rolled back" in again.output


def test_check_promotes_a_candidate_that_holds_its_gates(tmp_path, tiny_model_dir):
    from tunesmith.monitor.retrain import read_promotion

    folder, r, v1, v2 = _started(tmp_path, tiny_model_dir, gates=["live_error_rate=<=0.1", "live_down_rate_increase=<=0.5"])
    _log_rows(folder, r.started, canary_errors=0)
    res = CliRunner().invoke(app, ["rollout", str(folder), "support", "--check"])
    # the candidate was never rated: a gate on ratings is not measured, and an unmeasured gate fails
    assert res.exit_code == ro.ROLLED_BACK_EXIT and "not measured" in res.output
    folder, r, v1, v2 = _started(tmp_path / "again", tiny_model_dir, gates=["live_error_rate=<=0.1"])
    _log_rows(folder, r.started, canary_errors=0)
    res = CliRunner().invoke(app, ["rollout", str(folder), "support", "--check"])
    assert res.exit_code == 0 and "promoted" in res.output, res.output
    assert os.path.realpath(folder / "adapters" / "support") == str(v2)
    record = read_promotion(folder / "adapters" / "support.promotion.json")
    assert record.run == str(v2) and record.previous == str(v1) and "rollout" in record.added_data


def test_a_rollout_is_refused_when_it_cannot_be_judged_or_served(tmp_path, tiny_model_dir):
    from tunesmith.serve.server import serve_dir

    v1, v2 = _runs(tmp_path, tiny_model_dir, ("v1", "v2"))
    bare = serve_dir(tmp_path / "bare")
    with pytest.raises(RunError, match="not an adapter link"):
        ro.start(bare, "support", v2, 0.1)
    folder = _serve_folder(tmp_path, v1)
    with pytest.raises(RecipeError, match="exact_match is not measured on live traffic"):
        ro.start(folder, "support", v2, 0.1, gates=["exact_match=>=0.9"])
    with pytest.raises(RunError, match="already served"):
        ro.start(folder, "support", v1, 0.1)
    ro.start(folder, "support", v2, 0.1)
    with pytest.raises(RunError, match="still running"):
        ro.start(folder, "support", v2, 0.1)
    res = CliRunner().invoke(app, ["rollout", str(folder), "support", "--abort"])
    assert res.exit_code == 0 and read_rollout(rollout_path(folder, "support")).status == "rolled_back"
    assert not list((folder / "rollouts").glob("*.tmp*"))


@pytest.mark.parametrize("action", [[], ["--check"], ["--abort"]], ids=["show", "check", "abort"])
def test_no_rollout_to_show_check_or_abort_is_one_clear_error(tmp_path, tiny_model_dir, action):
    """Every action on a name with no rollout says so and how to start one, and leaves the serve folder as it was."""
    v1 = _runs(tmp_path, tiny_model_dir, ("v1",))[0]
    folder = _serve_folder(tmp_path, v1)
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    res = CliRunner().invoke(app, ["rollout", str(folder), "support", *action], env={"COLUMNS": "200"})
    said = " ".join(res.output.split())
    assert res.exit_code == 1 and "no rollout of 'support'" in said and "--candidate RUN" in said, said
    assert "Traceback" not in res.output and sorted(p.relative_to(folder) for p in folder.rglob("*")) == before


STEPS = ["rollout promoting", "promotion pending", "link swap", "promotion promoted", "rollout promoted"]


@pytest.mark.parametrize("crash_at", range(len(STEPS)), ids=STEPS)
def test_a_crash_at_any_step_of_a_promotion_leaves_one_adapter_served(tmp_path, tiny_model_dir, monkeypatch, crash_at):
    """Kill the promotion at each of its atomic steps: until the link moves the previous adapter is served (by a
    server reading the folder, and by the records), after it the candidate; the next check finishes the job."""
    from tunesmith import atomic
    from tunesmith.monitor import retrain
    from tunesmith.serve import rollout as serve_rollout
    from tunesmith.serve.engine import load_engine
    from tunesmith.serve.rollout import Rollouts

    folder, r, v1, v2 = _started(tmp_path, tiny_model_dir, min_requests=2)
    _log_rows(folder, r.started, canary_errors=0, n=2)
    steps = {"n": 0}

    class Killed(BaseException):
        pass

    def step(real):
        def wrapped(*args, **kwargs):
            if steps["n"] == crash_at:
                raise Killed
            steps["n"] += 1
            return real(*args, **kwargs)

        return wrapped

    real_write, real_swap = atomic.write_text_atomic, atomic.replace_symlink
    monkeypatch.setattr(serve_rollout, "write_text_atomic", step(real_write))
    monkeypatch.setattr(retrain, "write_text_atomic", step(real_write))
    monkeypatch.setattr(retrain, "replace_symlink", step(real_swap))
    with pytest.raises(Killed):
        ro.check(folder, "support")
    monkeypatch.undo()

    swapped = crash_at > STEPS.index("link swap")
    link = os.path.realpath(folder / "adapters" / "support")
    assert link == str(v2 if swapped else v1)
    settled = ro.settle(folder, "support")
    assert settled.status == ("promoted" if swapped else "active")
    promotion = folder / "adapters" / "support.promotion.json"
    if promotion.exists():
        assert retrain.read_promotion(promotion).run == link  # the record never names another run than the link
    engine = load_engine(str(tiny_model_dir), {"support": str(folder / "adapters" / "support")})  # a server (re)starting
    watcher = Rollouts(folder, __import__("prometheus_client").CollectorRegistry())
    watcher.poll(engine)
    assert engine.resolve("support").run == str(v2 if swapped else v1)
    assert ro.check(folder, "support").action in ("promoted", "finished")  # the next check completes the promotion
    assert os.path.realpath(folder / "adapters" / "support") == str(v2)
    assert read_rollout(rollout_path(folder, "support")).status == "promoted"
    watcher.poll(engine)
    assert engine.resolve("support").run == str(v2)


def test_the_monitor_compares_the_variants_and_keeps_shadow_answers_out_of_drift(tmp_path, tiny_model_dir):
    from tunesmith.config import MonitorSection
    from tunesmith.monitor import traffic

    folder, r, v1, v2 = _started(tmp_path, tiny_model_dir)
    _log_rows(folder, r.started, canary_errors=2)
    with RequestLog.open(folder, create=True) as log:
        for i in range(3):
            log.add_request(RequestRow(request_id=f"shadow-{i}", time=r.started + timedelta(seconds=20), model="support",
                                       output="a much longer answer than any other", latency_s=0.7, variant="shadow"))  # fmt: skip
    cfg = MonitorSection(embedder="char-ngrams", min_requests=2)
    report = traffic.check(folder, None, cfg, until=r.started + timedelta(minutes=5))
    assert report.recent.requests == 12  # 6 primary + 6 canary answered clients; the 3 shadow copies did not
    got = {v.variant: v.figures for v in report.variants}
    assert set(got) == {"primary", "canary", "shadow"}
    assert got["canary"]["errors"] == 2 and got["primary"]["down_rate"] == 1.0 and got["shadow"]["requests"] == 3
    assert 0 < got["shadow"]["output_drift_p"] <= 1
    res = CliRunner().invoke(
        app, ["monitor", str(folder), "--embedder", "char-ngrams", "--until", (r.started + timedelta(minutes=5)).isoformat()]
    )
    assert "recent window by rollout variant" in res.output, res.output
    assert "Recent window by rollout variant" in (folder / "monitor" / "monitor.html").read_text()
