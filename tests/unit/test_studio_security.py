"""The studio against the other pages in the user's browser: CSRF, origin and Host checks on every route.

Every state-changing route is found from the app itself, sent a request that would take effect from the studio's
own page (valid fields), and sent it again as another site would; the second must be refused (403) and leave
every file as it was. Every page route is fetched under foreign Host names (DNS rebinding) and refused (421).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from helpers import chat_rows, write_jsonl
from studio_helpers import ORIGIN, StudioClient, fake_run, fake_sweep
from tunesmith.studio import launch
from tunesmith.studio.app import HERE, StudioConfig, create_app

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}

PAGES = HERE / "pages"
MARKER_PY = "import pathlib, sys; pathlib.Path(sys.argv[1]).with_suffix('.started').write_text('ran')"


def snapshot(*dirs: Path) -> dict[str, tuple[int, int]]:
    """Every file under `dirs` with its size and modification time (ns), and every folder (a folder's own time
    moves when SQLite opens and removes its journal beside a database, which changes nothing)."""
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (0, 0) for d in dirs for p in sorted(d.rglob("*"))
    }


@pytest.fixture
def world(tmp_path):
    """A studio with a finished run, an open review round, a synthetic-data review, a stopped job, and a launcher
    whose `train` only leaves a `.started` file next to its recipe (so a start is visible and instant)."""
    root, data = tmp_path / "runs", tmp_path / "data"
    root.mkdir()
    data.mkdir()
    write_jsonl(data / "train.jsonl", chat_rows(12))
    write_jsonl(data / "synth.jsonl", chat_rows(12, seed=4))
    fake_run(root, "done", n_examples=6)
    fake_run(root, "other", n_examples=6, seed=2)
    fake_sweep(root, "sweep", [0.5, 0.6, 0.7, None])
    app = create_app(StudioConfig(runs=[root], data=[data]))
    client = StudioClient(app)
    app.state.launcher = launch.Launcher(root / ".studio")
    app.state.launcher.command = [sys.executable, "-c", MARKER_PY]
    assert client.post("/review/new", data={"k": "0/done", "name": "r1"}).status_code == 200
    synth = client.get("/data/synth?k=1/synth.jsonl&n=4").text
    line = re.search(r'name="line" value="(\d+)"', synth).group(1)
    assert client.post("/data/synth/decide", data={"k": "1/synth.jsonl", "n": 4, "line": line, "verdict": "accept"}).is_success
    (root / "stopped").mkdir()
    recipe = root / ".studio" / "recipes" / "stopped.yaml"
    recipe.parent.mkdir(parents=True)
    recipe.write_text("name: stopped\n")
    launch._write_job(
        root / ".studio",
        launch.Job(
            run_dir=str((root / "stopped").resolve()), recipe=str(recipe), cmd=["x"], pid=2**22 + 1, log="x", exit_code=75
        ),
    )
    return app, client, root, data, int(line)


def launch_recipe(root: Path, data: Path) -> str:
    return (
        f"name: new\nmodel: {{base: smollm2-135m-instruct}}\ndata: {{train: [{data / 'train.jsonl'}]}}\n"
        f"training: {{max_steps: 1}}\noutput_dir: {root / 'new'}\n"
    )


def requests_for(root: Path, data: Path, line: int) -> dict[tuple[str, str], dict]:
    """A request for each state-changing route that the studio's own page would send and the studio would carry out."""
    chat = {"k": "0/done", "messages": [{"role": "user", "content": "hi"}], "max_new_tokens": 2}
    return {
        ("POST", "/launch/preview"): {"data": {"train": ["1/train.jsonl"], "base": "smollm2-135m-instruct", "name": "p"}},
        ("POST", "/launch/start"): {"data": {"recipe": launch_recipe(root, data)}},
        ("POST", "/job/stop"): {"data": {"k": "0/stopped"}},
        ("POST", "/job/resume"): {"data": {"k": "0/stopped"}},
        ("POST", "/chat/stream"): {"json": chat},
        ("POST", "/data/synth/decide"): {
            "data": {"k": "1/synth.jsonl", "n": 4, "line": line, "verdict": "edit", "row": '{"messages": []}'}
        },
        ("POST", "/data/synth/write"): {"data": {"k": "1/synth.jsonl", "n": 4}},
        ("POST", "/review/new"): {"data": {"k": "0/done", "name": "evil", "other": "0/other"}},
        ("POST", "/review/verdict"): {
            "data": {"k": "0/done", "r": 1, "item": 1, "reviewer": "eve", "choice": "a", "correction": "4"}
        },
        ("POST", "/review/close"): {"data": {"k": "0/done", "r": 1}},
        ("POST", "/review/export"): {"data": {"k": "0/done", "r": 1, "to": "sft"}},
    }


def routes(app) -> set[tuple[str, str]]:
    """(METHOD, path) of every route of the app, from its own route table (the OpenAPI view of it)."""
    return {(m.upper(), path) for path, ops in app.openapi()["paths"].items() for m in ops}


def changing_routes(app) -> set[tuple[str, str]]:
    return {(m, path) for m, path in routes(app) if m not in SAFE_METHODS}


ATTACKS = {
    "another site, even with a stolen token": ({"Origin": "http://evil.example"}, True),
    "another port of 127.0.0.1 (same-site)": ({"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-site"}, True),
    "a cross-site fetch with no Origin": ({"Sec-Fetch-Site": "cross-site"}, True),
    "a sandboxed page (Origin: null)": ({"Origin": "null"}, True),
    "a plain form post without the token": ({}, False),
    "the studio's origin but no token": ({"Origin": ORIGIN, "Sec-Fetch-Site": "same-origin"}, False),
    "a token made up by the page": ({"X-CSRF-Token": "0" * 64}, False),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_every_state_change_from_another_origin_is_refused_and_changes_nothing(world, attack):
    app, client, root, data, line = world
    reqs = requests_for(root, data, line)
    assert changing_routes(app) == set(reqs)  # a new state-changing route must be added to this test
    headers, with_token = ATTACKS[attack]
    token = client.csrf()
    before = snapshot(root, data)
    for (method, path), kwargs in reqs.items():
        sent = {**headers, **({"X-CSRF-Token": token} if with_token else {})}
        res = TestClient.request(client, method, path, headers=sent, **kwargs)  # as sent, without the page's token
        assert res.status_code == 403, (path, res.status_code, res.text[:300])
        assert "Refused" in res.text
    assert snapshot(root, data) == before  # no run, job, recipe, review, verdict, decision or export appeared
    assert app.state.launcher.procs == {}  # and no training process started


def test_the_same_requests_from_the_studios_own_pages_take_effect(world):
    """The control: the requests above succeed with the page's token (form field or header) and own origin."""
    app, client, root, data, line = world
    token = client.csrf()
    own = {"Origin": ORIGIN, "Sec-Fetch-Site": "same-origin"}
    for (method, path), kwargs in requests_for(root, data, line).items():
        if "data" in kwargs:
            kwargs = {"data": {**kwargs["data"], "csrf_token": token}}
            res = TestClient.request(client, method, path, headers=own, **kwargs)
        else:
            res = client.request(method, path, headers={**own, "X-CSRF-Token": token}, **kwargs)
        assert res.status_code in (200, 303), (path, res.status_code, res.text[:300])
    jobs = list(app.state.launcher.procs.values())
    assert len(jobs) == 2 and all(p.wait(timeout=60) == 0 for p in jobs)  # the launch and the resume ran
    assert len(list((root / ".studio" / "recipes").glob("*.started"))) == 2
    assert (root / "done" / "review").is_dir() and list((root / ".studio" / "synth").glob("*/accepted-*.jsonl"))


def test_every_post_form_in_every_page_carries_the_token():
    forms = 0
    for template in PAGES.glob("*.html"):
        for form in re.finditer(r"<form\b([^>]*)>(.*?)</form>", template.read_text(), re.S):
            if 'method="post"' in form.group(1):
                forms += 1
                assert 'name="csrf_token" value="{{ request.state.csrf_token }}"' in form.group(2), template.name
    assert forms >= 9
    assert 'name="csrf-token"' in (PAGES / "base.html").read_text()
    assert '"X-CSRF-Token": csrf' in (PAGES / "chat.html").read_text()  # the chat page's fetch sends it


def test_a_token_is_bound_to_its_session_and_to_this_studio_process(world):
    app, client, root, data, _ = world
    other = StudioClient(app)
    stolen = other.csrf()  # a valid token, but of another session (another browser, or a cookie planted by a page)
    res = client.post("/review/close", data={"k": "0/done", "r": 1}, headers={"X-CSRF-Token": stolen})
    assert res.status_code == 403
    restarted = StudioClient(create_app(StudioConfig(runs=[root], data=[data])))
    restarted.cookies.update(client.cookies)  # the old session cookie meets a studio that started again
    res = restarted.post("/review/close", data={"k": "0/done", "r": 1}, headers={"X-CSRF-Token": client.csrf()})
    assert res.status_code == 403 and "reload the page" in res.text


def test_refusals_are_json_for_json_requests(world):
    _, client, _, _, _ = world
    res = TestClient.request(
        client, "POST", "/chat/stream", json={"k": "0/done", "messages": []}, headers={"Origin": "http://evil.example"}
    )
    assert res.status_code == 403 and "evil.example" in res.json()["error"]["message"]


def test_with_an_access_token_state_changes_still_need_the_csrf_token(tmp_path):
    fake_run(tmp_path, "r", n_examples=4)
    app = create_app(StudioConfig(runs=[tmp_path], token="s3cret"))
    browser = TestClient(app, base_url=ORIGIN)
    assert browser.get("/?token=s3cret").status_code == 200  # the access cookie is now set, as in the user's browser
    res = browser.post("/review/new", data={"k": "0/r"}, headers={"Origin": "http://127.0.0.1:9999"})
    assert res.status_code == 403 and not (tmp_path / "r" / "review").exists()
    res = browser.post("/review/new", data={"k": "0/r"})  # no token, no origin: a form from nowhere
    assert res.status_code == 403 and not (tmp_path / "r" / "review").exists()
    script = TestClient(app, base_url=ORIGIN)  # a script with the access token in a header: a browser never adds one
    assert script.post("/review/new", data={"k": "0/r"}, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert script.post("/review/new", data={"k": "0/r"}, headers={"Authorization": "Bearer nope"}).status_code == 401


FOREIGN_HOSTS = [
    "attacker.example:7860",
    "attacker.example",
    "localhost.attacker.example:7860",
    "127.0.0.1.nip.io:7860",
    "127.0.0.1:7861",
    "localhost:80",
    "[::2]:7860",
    "127.0.0.1:7860@evil",
    "",
]


def page_urls(app) -> list[str]:
    """One URL for every page route (GET), with parameters that make it answer 200 in the `world` studio."""
    urls = {
        "/": "/",
        "/run": "/run?k=0/done",
        "/file": "/file?k=0/done/loss.png",
        "/report": "/report?k=0/done",
        "/healthz": "/healthz",
        "/review": "/review?k=0/other",
        "/review/round": "/review/round?k=0/done&r=1&reviewer=ann",
        "/review/results": "/review/results?k=0/done&r=1",
        "/launch": "/launch",
        "/job": "/job?k=0/stopped",
        "/job/events": "/job/events?k=0/stopped",
        "/chat": "/chat",
        "/data": "/data?k=1/train.jsonl",
        "/data/row": "/data/row?k=1/train.jsonl&line=1",
        "/data/synth": "/data/synth?k=1/train.jsonl&n=3",
        "/monitor": "/monitor",
        "/monitor/cycle": "/monitor/cycle",
        "/sweeps": "/sweeps",
        "/sweep": "/sweep?k=0/sweep",
    }
    assert {path for m, path in routes(app) if m == "GET"} == set(urls)
    return [*urls.values(), "/static/studio.css"]


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
def test_foreign_host_names_get_nothing(world, host):
    app, client, _, _, _ = world
    for url in page_urls(app):
        res = client.get(url, headers={"Host": host})
        assert res.status_code == 421, (url, res.status_code)
        assert "done" not in res.text and "tunesmith studio" not in res.text
    assert client.post("/review/close", data={"k": "0/done", "r": 1}, headers={"Host": host}).status_code == 421


def test_page_routes_answer_their_own_names_and_change_nothing(world):
    app, client, root, data, _ = world
    (root / "done" / "loss.png").write_bytes(b"\x89PNG")
    before = snapshot(root, data)
    for host in ("127.0.0.1:7860", "localhost:7860", "[::1]:7860", "LOCALHOST:7860"):
        for url in page_urls(app):
            assert client.get(url, headers={"Host": host}).status_code == 200, (host, url)
    assert snapshot(root, data) == before  # no GET writes anything (no review.db, no synth review folder)


def test_hosts_for_other_binds(tmp_path):
    from tunesmith.studio.guard import Guard

    wild = Guard("0.0.0.0", 8000, token="t", allow_hosts=["box.lan"])
    assert wild.host_ok("192.168.1.20:8000") and wild.host_ok("box.lan:8000") and wild.host_ok("[fe80::1]:8000")
    assert not wild.host_ok("evil.example:8000") and not wild.host_ok("192.168.1.20:8001")
    lan = Guard("192.168.1.20", 80)
    assert lan.host_ok("192.168.1.20") and lan.host_ok("192.168.1.20:80") and not lan.host_ok("10.0.0.1")
    v6 = Guard("::1", 7860)
    assert v6.host_ok("[::1]:7860") and not v6.host_ok("::1:7860")
