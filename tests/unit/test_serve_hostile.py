"""tunesmith serve under hostile input, on loopback with the official openai client: every route's caller, client
input answered 4xx (never 5xx), exactly one request-log row per answer (errors included), adapters that cannot
load refused, queued requests of a removed adapter answered 404, feedback only on answered requests."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import openai
import pytest
from serve_helpers import free_port, live_server, lora_adapter, run_cli

from helpers import save_tiny_llama
from tunesmith.serve.app import ServeSettings, create_app
from tunesmith.serve.engine import load_engine
from tunesmith.serve.security import KeyRing
from tunesmith.serve.store import RequestLog

KEY, ADMIN = "sk-user#1", "sk-admin-test"
USER, ADMIN_AUTH = {"Authorization": f"Bearer {KEY}"}, {"Authorization": f"Bearer {ADMIN}"}
ASK = [{"role": "user", "content": "Add 3 and 4."}]

# A Llama-2/Mistral-style template: roles must alternate user/assistant, anything else raise_exception()s.
STRICT_TEMPLATE = """{%- if messages[0]['role'] == 'system' %}{%- set loop_messages = messages[1:] %}
{%- else %}{%- set loop_messages = messages %}{%- endif %}
{%- for message in loop_messages %}
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
{%- endif %}
{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"""


@pytest.fixture(scope="module")
def strict_base(tmp_path_factory, tiny_model_dir):
    """The tiny model with a template that refuses role orders, and an adapters folder with two LoRA adapters for it."""
    root = tmp_path_factory.mktemp("strict")
    base = root / "strict-llama"
    shutil.copytree(tiny_model_dir, base)
    (base / "chat_template.jinja").write_text(STRICT_TEMPLATE, encoding="utf-8")
    for i, name in enumerate(("ad1", "ad2")):
        lora_adapter(base, root / "adapters" / name, seed=i)
    return base, root / "adapters"


@pytest.fixture(scope="module")
def server(strict_base, tmp_path_factory):
    base, adapters = strict_base
    store = RequestLog.open(tmp_path_factory.mktemp("serve-hostile"), create=True)
    settings = ServeSettings(keys=KeyRing.build([KEY], [ADMIN]), adapters_dir=adapters)
    app = create_app(lambda: load_engine(base), settings, store)
    with live_server(app) as url:
        yield url, app.state.tunesmith, store, app


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0)


@contextmanager
def gated(engine):
    """Non-streamed generations wait at a gate (outside the model lock) until the test opens it."""
    gate = threading.Event()
    real = engine.generate_batch

    def wait_then_generate(*args, **kwargs):
        assert gate.wait(60)
        return real(*args, **kwargs)

    engine.generate_batch = wait_then_generate
    try:
        yield gate
    finally:
        gate.set()
        del engine.generate_batch


def wait_for(predicate, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_who_may_call_each_route(server):
    """Only /health and /metrics are open; adapters need an admin key; the key is checked before the body is read."""
    from fastapi.routing import APIRoute

    url, app = server[0], server[3]
    routes = {(m, r.path) for r in app.routes if isinstance(r, APIRoute) for m in r.methods}
    assert routes == {
        ("GET", "/health"),
        ("GET", "/metrics"),
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/feedback"),
        ("POST", "/v1/adapters"),
        ("DELETE", "/v1/adapters/{name}"),
    }, "a route was added: decide who may call it, then update this test and docs/security.md"
    for method, path in sorted(routes):
        target = url + path.replace("{name}", "ad1")
        open_route = path in ("/health", "/metrics")
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer sk-user"}):
            res = httpx.request(method, target, headers={**headers, "Content-Type": "application/json"}, content=b"{bad")
            assert (res.status_code < 400) if open_route else res.status_code == 401, (method, path, headers, res.text)
        if path.startswith("/v1/adapters"):
            res = httpx.request(method, target, headers=USER, json={"name": "x", "path": "ad1"})
            assert res.status_code == 403 and res.json()["error"]["code"] == "admin_key_required"


def test_role_orders_the_template_refuses_are_400_messages(client, server):
    model = server[1].engine.base_name
    for messages, why in (
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "alternate"),
        ([{"role": "assistant", "content": "a"}], "alternate"),
        # this template renders no tool results: said before the template's own refusal
        ([{"role": "system", "content": "s"}, {"role": "tool", "content": "t"}], "does not render tool results"),
    ):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=model, messages=messages, max_tokens=2)
        assert err.value.param == "messages" and err.value.code == "invalid_messages"
        assert why in err.value.message
    ok = client.chat.completions.create(model=model, messages=[{"role": "system", "content": "s"}, *ASK], max_tokens=2)
    assert ok.choices[0].message.role == "assistant"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"seed": 2**64}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": float("inf")}, "top_p"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"messages": []}, "messages"),
    ],
)
def test_out_of_range_fields_are_400_naming_the_field(server, body, param):
    url, state = server[0], server[1]
    sent = {"model": state.engine.base_name, "messages": ASK, "max_tokens": 2, **body}
    res = httpx.post(url + "/v1/chat/completions", headers={**USER, "Content-Type": "application/json"}, content=_json(sent))
    assert res.status_code == 400, res.text
    assert res.json()["error"]["param"] == param


def _json(value) -> bytes:
    import json

    return json.dumps(value, allow_nan=True).encode()


def test_malformed_bodies_are_400_or_413(server):
    url = server[0]
    for raw, code in (
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),  # would be a RecursionError in the json module
        (b"[]", "invalid_json"),
        (b'"text"', "invalid_json"),
        (b"", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"{" + b" " * (9 * 2**20) + b"}", "request_too_large"),
    ):
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/feedback"):
            res = httpx.post(url + path, headers=USER, content=raw, timeout=60)
            assert 400 <= res.status_code < 500 and res.json()["error"]["code"] == code, (path, raw[:20], res.text)
    res = httpx.post(url + "/v1/adapters", headers=ADMIN_AUTH, content=b"[" * 100_000)
    assert res.status_code == 400 and res.json()["error"]["code"] == "invalid_json"


def test_every_answer_is_logged_once_and_feedback_only_on_answers(server, client):
    """The error cases, each answered 4xx/5xx (429, 499, 504, 500 included) and each with exactly one log row;
    requests queued for an adapter removed meanwhile are answered 404 and logged; feedback on a failed request is
    refused."""
    url, state, store = server[:3]
    base = state.engine.base_name
    before = {r.request_id for r in store.iter_requests()}
    answers: list[tuple[int, str | None]] = []
    lock = threading.Lock()

    def post(body: dict, timeout: float = 60) -> int:
        try:
            if body.get("stream"):
                with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=USER, timeout=timeout) as res:
                    res.read()
            else:
                res = httpx.post(url + "/v1/chat/completions", json=body, headers=USER, timeout=timeout)
        except httpx.ReadTimeout:
            return -1  # the client gave up: the server answers 499 to nobody
        with lock:
            answers.append((res.status_code, res.headers.get("x-request-id")))
        return res.status_code

    ask = {"model": base, "messages": ASK, "max_tokens": 3, "temperature": 0}
    assert post(ask) == 200
    assert post({**ask, "stream": True}) == 200
    assert post({**ask, "seed": 2**64}) == 400
    assert post({**ask, "messages": [ASK[0], ASK[0]]}) == 400  # the template refuses it
    assert post({**ask, "model": "nope"}) == 404
    assert post({**ask, "max_tokens": 10_000}) == 400
    res = httpx.post(url + "/v1/chat/completions", headers=USER, content=b'{"model": "x", "messages": [')
    answers.append((res.status_code, res.headers.get("x-request-id")))
    assert httpx.post(url + "/v1/chat/completions", json=ask).status_code == 401  # no key: not traffic, not logged

    def boom(module, args):
        raise RuntimeError("injected fault")

    model = state.engine.model
    hook = getattr(model, "get_base_model", lambda: model)().register_forward_pre_hook(boom)
    try:
        assert post(ask) == 500
        assert post({**ask, "stream": True}) == 500  # failed before its first token: a real status, not a 200
    finally:
        hook.remove()

    assert httpx.post(url + "/v1/adapters", headers=ADMIN_AUTH, json={"name": "ad1", "path": "ad1"}).status_code == 200
    with gated(state.engine) as gate, ThreadPoolExecutor(8) as pool:
        blocker = pool.submit(post, ask)
        wait_for(lambda: state.batcher.depth == 1)
        queued = [pool.submit(post, {**ask, "model": "ad1", "stream": s}) for s in (False, False, True)]
        wait_for(lambda: state.batcher.depth == 4)
        assert post({**ask, "max_tokens": 4}, timeout=0.6) == -1  # waits, then its client leaves: 499
        old_timeout, state.settings.timeout_s = state.settings.timeout_s, 0.5
        try:
            assert post({**ask, "max_tokens": 5}) == 504
        finally:
            state.settings.timeout_s = old_timeout
        old_queue, state.batcher.max_queue = state.batcher.max_queue, len(state.batcher._pending)
        try:
            assert post({**ask, "max_tokens": 6}) == 429
        finally:
            state.batcher.max_queue = old_queue
        assert httpx.delete(url + "/v1/adapters/ad1", headers=ADMIN_AUTH).status_code == 200
        gate.set()
        assert blocker.result() == 200
        assert [q.result() for q in queued] == [404, 404, 404]

    wait_for(lambda: any(r.status == 499 for r in store.iter_requests() if r.request_id not in before))
    rows = [r for r in store.iter_requests() if r.request_id not in before]
    statuses = Counter(r.status for r in rows)
    assert statuses == Counter([s for s, _ in answers] + [499]), (statuses, answers)
    assert all(rid in {r.request_id for r in rows} for _, rid in answers if rid), "an answer without its row"
    assert len(rows) == len({r.request_id for r in rows}) == len(answers) + 1
    removed = [r for r in rows if r.model == "ad1"]
    assert len(removed) == 3 and {r.error for r in removed} == {"model_not_found"}

    by_status = {s: rid for s, rid in answers}
    for status in (429, 404, 500, 400):
        res = httpx.post(url + "/v1/feedback", headers=USER, json={"request_id": by_status[status], "rating": "down"})
        assert res.status_code == 400 and res.json()["error"]["code"] == "request_not_answered", (status, res.text)
    ok = httpx.post(url + "/v1/feedback", headers=USER, json={"request_id": by_status[200], "rating": "up"})
    assert ok.status_code == 200
    assert {f.request_id for f in store.iter_feedback()} == {by_status[200]}


def test_adapters_that_cannot_load_are_refused_and_change_nothing(server, strict_base, tmp_path_factory):
    """config `[]`, corrupt or truncated weights, weights for another model: a 400 at load, the served models and
    their answers exactly as before."""
    url, state = server[0], server[1]
    _, adapters = strict_base
    ask = {"model": state.engine.base_name, "messages": ASK, "max_tokens": 6, "temperature": 0}
    before_models = set(state.engine.models)
    before = httpx.post(url + "/v1/chat/completions", json=ask, headers=USER).json()["choices"][0]["message"]["content"]
    good = adapters / "ad2"
    for name, change in (
        ("list-config", lambda d: (d / "adapter_config.json").write_text("[]")),
        ("no-type", lambda d: (d / "adapter_config.json").write_text("{}")),
        ("garbage", lambda d: (d / "adapter_model.safetensors").write_bytes(b"not safetensors" * 100)),
        ("truncated", lambda d: _truncate(d / "adapter_model.safetensors")),
        ("empty", lambda d: (d / "adapter_model.safetensors").write_bytes(b"")),
    ):
        shutil.copytree(good, adapters / name)
        change(adapters / name)
    lora_adapter(save_tiny_llama(tmp_path_factory.mktemp("other"), hidden=64), adapters / "other-shape")
    for name in ("list-config", "no-type", "garbage", "truncated", "empty", "other-shape"):
        res = httpx.post(url + "/v1/adapters", headers=ADMIN_AUTH, json={"name": name, "path": name})
        assert res.status_code == 400, (name, res.text)
        assert res.json()["error"]["code"] == "invalid_adapter" and "Traceback" not in res.text
    assert set(state.engine.models) == before_models
    after = httpx.post(url + "/v1/chat/completions", json=ask, headers=USER).json()["choices"][0]["message"]["content"]
    assert after == before
    added = httpx.post(url + "/v1/adapters", headers=ADMIN_AUTH, json={"name": "ad2", "path": "ad2"})
    assert added.status_code == 200  # the engine still takes a good adapter after the refusals
    assert httpx.delete(url + "/v1/adapters/ad2", headers=ADMIN_AUTH).status_code == 200


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_refused_adapter_on_a_plain_base_leaves_no_lora_layers(strict_base, tmp_path):
    """The first adapter on a plain base wraps it in peft: a failed load must not leave injected LoRA layers."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from tunesmith.errors import ModelError
    from tunesmith.serve.batching import Params

    base, adapters = strict_base
    engine = load_engine(base)
    answer = engine.generate_batch(engine.base_name, [ASK], Params(max_tokens=6))[0].text
    other = save_tiny_llama(tmp_path / "other", hidden=64)
    with pytest.raises(ModelError, match="cannot attach"):
        engine.add_adapter("bad", lora_adapter(other, tmp_path / "bad"))
    assert not any(isinstance(m, BaseTunerLayer) for m in engine.model.modules())
    assert engine.generate_batch(engine.base_name, [ASK], Params(max_tokens=6))[0].text == answer
    assert list(engine.models) == [engine.base_name]
    engine.add_adapter("good", adapters / "ad1")  # a good adapter still attaches and answers as on a fresh engine
    fresh = load_engine(base, {"good": str(adapters / "ad1")})
    tuned = fresh.generate_batch("good", [ASK], Params(max_tokens=6))[0].text
    assert engine.generate_batch("good", [ASK], Params(max_tokens=6))[0].text == tuned != answer
    engine.remove_adapter("good")
    assert engine.generate_batch(engine.base_name, [ASK], Params(max_tokens=6))[0].text == answer
    assert not any(isinstance(m, BaseTunerLayer) for m in engine.model.modules())


def test_cli_refuses_a_broken_adapter_before_loading(strict_base, tmp_path):
    base, adapters = strict_base
    bad = tmp_path / "bad"
    shutil.copytree(adapters / "ad2", bad)
    (bad / "adapter_config.json").write_text("[]")
    res = run_cli(["serve", str(base), "--adapter", f"bad={bad}", "--dir", str(tmp_path / "s"), "--port", str(free_port())])
    assert res.returncode == 1 and "not a peft adapter config" in " ".join(res.stderr.split()), res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "s").exists()  # refused before the serve folder was made
