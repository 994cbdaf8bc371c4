"""tunesmith serve on loopback with the official openai client: chat, streaming, adapters per request, errors, auth,
the request log and feedback, runtime adapters, disconnects, the deploy check. Tiny model, two 2-step runs."""

from __future__ import annotations

import json
import shutil
import time

import httpx
import openai
import pytest
import yaml
from serve_helpers import free_port, live_server

from helpers import chat_rows, write_jsonl
from tunesmith.serve.app import ServeSettings, create_app
from tunesmith.serve.engine import load_engine
from tunesmith.serve.security import KeyRing
from tunesmith.serve.store import RequestLog

KEY, ADMIN = "sk-user-test", "sk-admin-test"
ASK = [{"role": "system", "content": "Answer with JSON."}, {"role": "user", "content": "Add 3 and 4."}]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """Two adapters on the tiny base (2 steps each, different learning rates), each evaluated."""
    from tunesmith.config import load_recipe
    from tunesmith.train import sft
    from tunesmith.train.methods import evaluate

    root = tmp_path_factory.mktemp("serve-runs")
    write_jsonl(root / "train.jsonl", chat_rows(24, seed=1))
    write_jsonl(root / "eval.jsonl", chat_rows(6, seed=2))
    out = {}
    for name, lr in (("alpha", 5e-2), ("beta", 2e-1)):
        recipe = {
            "name": name,
            "model": {"base": str(tiny_model_dir)},
            "data": {"train": ["train.jsonl"], "eval": "eval.jsonl", "max_length": 128},
            "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
            "training": {"max_steps": 2, "batch_size": 4, "learning_rate": lr, "logging_steps": 1, "save_steps": 2},
            "eval": {"max_new_tokens": 8, "batch_size": 4},
            "output_dir": f"runs/{name}",
        }
        (root / f"{name}.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
        run = sft.run(load_recipe(root / f"{name}.yaml"))
        evaluate(run)
        out[name] = run.dir
    return out


def _settings(port: int, **kw) -> ServeSettings:
    return ServeSettings(keys=KeyRing.build([KEY], [ADMIN]), check_url=f"http://127.0.0.1:{port}", **kw)


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    """alpha (the served run) + beta, deploy check on, request log in a serve folder."""
    folder = tmp_path_factory.mktemp("serve")
    port = free_port()
    store = RequestLog.open(folder, create=True)
    app = create_app(
        lambda: load_engine(runs["alpha"], {"beta": str(runs["beta"])}),
        _settings(port, check=True, adapters_dir=runs["alpha"].parent),
        store,
    )
    with live_server(app, port=port) as url:
        yield url, app.state.tunesmith, store


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0)


def test_health_models_and_lineage(server, client, runs):
    url, state, _ = server
    health = httpx.get(url + "/health").json()
    assert health["ready"] and health["check"]["passed"]
    models = {m.id: m for m in client.models.list().data}
    assert {"alpha", "beta", state.engine.base_name} == set(models)
    beta = models["beta"].model_dump()
    assert beta["parent"] == state.engine.base_name and beta["lineage"]["run"] == str(runs["beta"])
    assert len(beta["lineage"]["data_hash"]) == 64


def test_adapters_switch_per_request_and_equal_offline_generate(client, runs):
    from tunesmith.eval.generate import generate
    from tunesmith.loader import load_target

    served = {}
    for name in ("alpha", "beta", "alpha"):
        res = client.chat.completions.create(model=name, messages=ASK, max_tokens=8, temperature=0)
        served.setdefault(name, res.choices[0].message.content)
        assert res.choices[0].message.content == served[name]  # switching back gives the same answer
        assert res.usage.completion_tokens > 0 and res.usage.prompt_tokens > 0
    assert served["alpha"] != served["beta"]
    for name in ("alpha", "beta"):
        loaded = load_target(runs[name])
        assert generate(loaded.model, loaded.tokenizer, [ASK], 8)[0] == served[name]


def test_streaming_equals_non_streaming(client):
    full = client.chat.completions.create(model="beta", messages=ASK, max_tokens=8, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="beta", messages=ASK, max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_text_completions(client):
    res = client.completions.create(model="alpha", prompt="Add 3 and 4.", max_tokens=5, temperature=0)
    assert res.object == "text_completion" and res.usage.completion_tokens <= 5
    assert res.choices[0].finish_reason in ("stop", "length")


def test_errors_are_openai_shaped(server, client):
    url = server[0]
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="nope", messages=ASK)
    assert err.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="alpha", messages=ASK, max_tokens=100_000)
    assert err.value.code == "context_length_exceeded"
    for field, value in (("temperature", 3.5), ("top_p", 0.0), ("max_tokens", 0), ("n", 2)):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="alpha", messages=ASK, **{field: value})
        assert err.value.param == field, field
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    res = httpx.post(url + "/v1/chat/completions", content=b'{"model": "alpha", "messages": [', headers=auth)
    assert res.status_code == 400 and res.json()["error"]["code"] == "invalid_json"
    res = httpx.post(url + "/v1/chat/completions", json={"model": "alpha"}, headers=auth)
    assert res.status_code == 400 and res.json()["error"]["param"] == "messages"
    assert "Traceback" not in res.text


def test_auth(server):
    url = server[0]
    body = {"model": "alpha", "messages": ASK, "max_tokens": 2}
    assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 401
    assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(url + "/health").status_code == 200
    assert httpx.get(url + "/metrics").status_code == 200
    user = {"Authorization": f"Bearer {KEY}"}
    assert httpx.delete(url + "/v1/adapters/beta", headers=user).status_code == 403


def test_request_log_and_feedback(server, client):
    url, _, store = server
    res = client.chat.completions.create(model="alpha", messages=ASK, max_tokens=6, temperature=0)
    row = store.get_request(res.id)
    assert row is not None and row.adapter == "alpha" and row.output == res.choices[0].message.content
    assert row.messages[-1].content == ASK[-1]["content"] and row.completion_tokens == res.usage.completion_tokens
    auth = {"Authorization": f"Bearer {KEY}"}
    ok = httpx.post(url + "/v1/feedback", json={"request_id": res.id, "rating": "down", "correction": '{"sum": 7}'}, headers=auth)
    assert ok.status_code == 200
    assert [f.correction for f in store.iter_feedback() if f.request_id == res.id] == ['{"sum": 7}']
    assert httpx.post(url + "/v1/feedback", json={"request_id": "req-none", "rating": "up"}, headers=auth).status_code == 404
    assert httpx.post(url + "/v1/feedback", json={"request_id": res.id, "rating": "meh"}, headers=auth).status_code == 400
    assert all(r.request_id != "" for r in store.iter_requests())


def test_runtime_adapters_admin_and_contained(server, runs, tmp_path):
    url = server[0]
    admin = {"Authorization": f"Bearer {ADMIN}"}
    res = httpx.post(url + "/v1/adapters", json={"name": "beta.v2", "path": "beta"}, headers=admin)
    assert res.status_code == 200, res.text
    c = openai.OpenAI(base_url=url + "/v1", api_key=ADMIN, max_retries=0)
    a = c.chat.completions.create(model="beta.v2", messages=ASK, max_tokens=8, temperature=0).choices[0].message.content
    b = c.chat.completions.create(model="beta", messages=ASK, max_tokens=8, temperature=0).choices[0].message.content
    assert a == b
    assert httpx.delete(url + "/v1/adapters/beta.v2", headers=admin).status_code == 200
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="beta.v2", messages=ASK, max_tokens=2)
    (runs["alpha"].parent / "escape").symlink_to(tmp_path)
    for name, path in (("x", "../beta"), ("x", str(runs["beta"])), ("x", "escape"), ("../x", "beta"), ("alpha", "beta")):
        res = httpx.post(url + "/v1/adapters", json={"name": name, "path": path}, headers=admin)
        assert res.status_code == 400, (name, path, res.text)


def test_disconnect_cancels_generation(server):
    url, state, _ = server
    calls = []

    def slow(module, args):
        calls.append(time.monotonic())
        time.sleep(0.02)

    hook = state.engine.model.get_base_model().model.register_forward_pre_hook(slow)
    try:
        body = {"model": "alpha", "messages": ASK, "max_tokens": 400, "temperature": 0.8, "stream": True}
        with httpx.stream(
            "POST", url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30
        ) as res:
            next(res.iter_lines())
        gone = time.monotonic()
        deadline = gone + 5
        while state.batcher.depth and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state.batcher.depth == 0
        assert len([t for t in calls if t > gone]) < 50  # 400 steps at 20 ms would run for 8 s
    finally:
        hook.remove()
    metrics = httpx.get(url + "/metrics").text
    assert 'tunesmith_cancelled_total{reason="disconnect"}' in metrics


def test_waiting_request_of_a_client_that_left_is_dropped(server):
    """A non-streamed request whose client gave up while it waited never runs; its row says 499."""
    import threading

    url, state, store = server
    hook = state.engine.model.get_base_model().model.register_forward_pre_hook(lambda m, a: time.sleep(0.02))
    auth = {"Authorization": f"Bearer {KEY}"}
    try:
        busy = {"model": "alpha", "messages": ASK, "max_tokens": 60, "temperature": 0.8}
        blocker = threading.Thread(target=lambda: httpx.post(url + "/v1/chat/completions", json=busy, headers=auth, timeout=30))
        blocker.start()
        time.sleep(0.2)  # the worker is now busy with the first request
        gave_up = {"model": "beta", "messages": ASK, "max_tokens": 60, "temperature": 0.5}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/chat/completions", json=gave_up, headers=auth, timeout=0.3)
        blocker.join()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not [r for r in store.iter_requests() if r.status == 499 and not r.stream]:
            time.sleep(0.1)
    finally:
        hook.remove()
    dropped = [r for r in store.iter_requests() if r.status == 499 and not r.stream]
    assert dropped and dropped[-1].model == "beta" and dropped[-1].completion_tokens == 0


def test_per_request_timeout(server):
    """Past the server's time limit a waiting request gets 504 and a stream is cut short (finish_reason length)."""
    url, state, _ = server
    hook = state.engine.model.get_base_model().model.register_forward_pre_hook(lambda m, a: time.sleep(0.02))
    old, state.settings.timeout_s = state.settings.timeout_s, 0.3
    auth = {"Authorization": f"Bearer {KEY}"}
    try:
        # Greedy: a sampled answer could stop early by chance (at any of the family's stop tokens) and beat the limit.
        body = {"model": "alpha", "messages": ASK, "max_tokens": 30, "temperature": 0}
        res = httpx.post(url + "/v1/chat/completions", json=body, headers=auth, timeout=30)
        assert res.status_code == 504 and res.json()["error"]["code"] == "timeout"
        started = time.monotonic()
        with httpx.stream(
            "POST", url + "/v1/chat/completions", json={**body, "max_tokens": 300, "stream": True}, headers=auth, timeout=30
        ) as stream:
            lines = [line for line in stream.iter_lines() if line.startswith("data: {")]
        assert time.monotonic() - started < 4  # 300 steps at 20 ms would take 6 s
        assert json.loads(lines[-1][6:])["choices"][0]["finish_reason"] == "length"
    finally:
        state.settings.timeout_s = old
        hook.remove()


def test_deploy_check_fails_for_sabotaged_adapters(runs, tmp_path):
    """A zeroed adapter and one whose run recorded another chat template: /health never turns ready."""
    from safetensors.torch import load_file, save_file

    zeroed, other = tmp_path / "zeroed", tmp_path / "template"
    for dst in (zeroed, other):
        shutil.copytree(runs["alpha"], dst)
    weights = zeroed / "adapter" / "adapter_model.safetensors"
    save_file({k: v * 0 for k, v in load_file(weights).items()}, weights)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["chat_template_sha256"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    port = free_port()
    app = create_app(
        lambda: load_engine(runs["alpha"], {"zeroed": str(zeroed), "template": str(other)}), _settings(port, check=True)
    )
    with live_server(app, port=port) as url:
        res = httpx.get(url + "/health")
        assert res.status_code == 503
        report = {a["name"]: a for a in res.json()["check"]["adapters"]}
        assert report["alpha"]["passed"]
        assert not report["zeroed"]["passed"] and report["zeroed"]["base_like"] > 0
        assert not report["template"]["passed"] and "chat template" in report["template"]["reason"]
        assert "zeroed" in res.json()["problem"]


def test_no_log_content_and_bounded_queue(runs, tmp_path):
    """Metadata-only logging; concurrency within the queue bound never sees 429, beyond it 429 + Retry-After, never 5xx."""
    import asyncio

    port = free_port()
    store = RequestLog.open(tmp_path, create=True)
    app = create_app(lambda: load_engine(runs["alpha"]), _settings(port, log_content=False, max_queue=3), store)

    async def load(url: str, clients: int, seconds: float) -> list[int]:
        codes: list[int] = []
        end = time.monotonic() + seconds
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as http:

            async def one() -> None:
                n = 0
                while time.monotonic() < end:
                    n += 1  # prompts of different lengths: batches are padded while other threads count tokens
                    ask = [{"role": "user", "content": "Add 3 and 4. " * (n % 5 + 1)}]
                    res = await http.post(
                        url + "/v1/chat/completions", json={"model": "alpha", "messages": ask, "max_tokens": 16, "temperature": 0}
                    )
                    codes.append(res.status_code)
                    if res.status_code == 429:
                        assert res.headers["retry-after"] == "1"
                        await asyncio.sleep(0.05)

            await asyncio.gather(*(one() for _ in range(clients)))
        return codes

    with live_server(app, port=port) as url:
        within = asyncio.run(load(url, 3, 1.5))  # 3 clients: at most 3 waiting, never over the bound
        beyond = asyncio.run(load(url, 12, 1.5))
    assert within and set(within) == {200}
    assert 429 in beyond and set(beyond) <= {200, 429}
    row = next(store.iter_requests())
    assert not row.content_logged and row.output is None and row.messages is None and row.completion_tokens > 0


def test_grafana_dashboard_queries_only_exported_metrics(server):
    """Every series configs/grafana/tunesmith-serve.json queries is declared on /metrics."""
    import re
    from pathlib import Path

    from tunesmith.serve.metrics import exported_names, metric_exprs

    dashboard = json.loads((Path(__file__).parents[2] / "configs" / "grafana" / "tunesmith-serve.json").read_text())
    queried = {name for expr in metric_exprs(dashboard) for name in re.findall(r"\btunesmith_[a-z_]+", expr)}
    exported = exported_names(httpx.get(server[0] + "/metrics").text)
    assert len(queried) >= 10 and queried <= exported, queried - exported


def test_cli_serve_with_check_and_generated_key(runs, tmp_path):
    """`tunesmith serve RUN --adapter beta=RUN --check`: a key is generated (0600), /health turns ready, the log fills."""
    import os
    import subprocess
    import sys

    port, folder = free_port(), tmp_path / "serve"
    cmd = [
        sys.executable,
        "-m",
        "tunesmith",
        "serve",
        str(runs["alpha"]),
        "--adapter",
        f"beta={runs['beta']}",
        "--port",
        str(port),
        "--dir",
        str(folder),
        "--check",
    ]
    env = {k: v for k, v in os.environ.items() if k != "TUNESMITH_API_KEY"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, health = time.monotonic() + 180, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(url + "/health", timeout=5)
                if health.status_code == 200 or health.json().get("problem"):
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert health is not None and health.status_code == 200, health.text if health is not None else proc.poll()
        assert health.json()["check"]["passed"] and (folder / ".tunesmith-serve").exists()
        key_file = folder / "api_key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        auth = {"Authorization": f"Bearer {key_file.read_text().strip()}"}
        res = httpx.post(
            url + "/v1/chat/completions", headers=auth, json={"model": "beta", "messages": ASK, "max_tokens": 4, "temperature": 0}
        )
        assert res.status_code == 200
        assert RequestLog.open(folder).get_request(res.json()["id"]) is not None
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0]
    assert "Traceback" not in out, out


def test_engine_removes_every_adapter_and_keeps_the_base(runs):
    """Removing adapters (the last one too) leaves the base answering as before; re-adding works."""
    from tunesmith.serve.batching import Params

    engine = load_engine(runs["alpha"], {"beta": str(runs["beta"])})
    ask, params = [ASK], Params(max_tokens=6)
    base, beta = (engine.generate_batch(n, ask, params)[0].text for n in (engine.base_name, "beta"))
    engine.remove_adapter("alpha")
    assert engine.default_name == engine.base_name
    assert engine.generate_batch("beta", ask, params)[0].text == beta
    engine.remove_adapter("beta")
    assert list(engine.models) == [engine.base_name]
    assert engine.generate_batch(engine.base_name, ask, params)[0].text == base
    engine.add_adapter("again", runs["beta"])
    assert engine.generate_batch("again", ask, params)[0].text == beta
