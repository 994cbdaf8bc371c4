"""What serve refuses to do rather than serve silently wrong: retrieval without a working index, a run that would
shadow its base's name, a full fine-tune under the base's name, and the CLI's start-up mistakes (one paragraph, an
exit code, no traceback, no serve folder left behind)."""

from __future__ import annotations

import shutil
import socket

import httpx
import openai
import pytest
from serve_helpers import docs_index, free_port, hand_run, live_server, run_cli

from tunesmith.errors import ModelError
from tunesmith.serve.app import ServeSettings, create_app
from tunesmith.serve.batching import Params
from tunesmith.serve.engine import load_engine
from tunesmith.serve.security import KeyRing

ASK = [{"role": "user", "content": "Which form goes with a refund request?"}]


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return docs_index(tmp_path_factory.mktemp("serve-index"))


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_model_dir):
    """The tiny model in a folder named `tiny`: its served name."""
    out = tmp_path_factory.mktemp("bases") / "tiny"
    shutil.copytree(tiny_model_dir, out)
    return out


def _server(target, index=None, **kw):
    settings = ServeSettings(keys=KeyRing.build(["k"], []), index=None if index is None else str(index))
    return create_app(lambda: load_engine(target, **kw), settings)


def _broken_copy(index, root):
    broken = root / "broken"
    shutil.copytree(index, broken)
    for data in (broken / "chunks.lance" / "data").iterdir():
        data.write_bytes(b"not a lance file" * 64)
    return broken


@pytest.mark.parametrize("damage", ["missing", "not-an-index", "broken"])
def test_a_server_whose_index_cannot_search_never_reports_ready(base, index, tmp_path, damage):
    """--index missing, not an index, or with damaged data: /health is 503 naming the index, and every completion
    (with or without rag) is a 503, never a 500 and never a ready server that fails `"rag": true`."""
    bad = {"missing": tmp_path / "nowhere", "not-an-index": tmp_path, "broken": None}[damage]
    bad = bad if bad is not None else _broken_copy(index, tmp_path)
    app = _server(base, bad)
    with live_server(app) as url:
        health = httpx.get(url + "/health")
        assert health.status_code == 503 and not health.json()["ready"]
        assert str(bad) in health.json()["problem"] and "cannot be searched" in health.json()["problem"]
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        for extra in ({"rag": True}, {}):
            with pytest.raises(openai.InternalServerError) as err:
                client.chat.completions.create(model="tiny", messages=ASK, max_tokens=2, extra_body=extra)
            assert err.value.status_code == 503 and err.value.code == "not_ready" and "cannot be searched" in err.value.message


def test_an_index_that_breaks_while_serving_is_a_503_until_it_is_back(base, index, tmp_path):
    live = tmp_path / "idx"
    shutil.copytree(index, live)
    app = _server(base, live)
    with live_server(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        assert httpx.get(url + "/health").status_code == 200
        live.rename(tmp_path / "moved")
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(model="tiny", messages=ASK, max_tokens=2, extra_body={"rag": True})
        assert err.value.status_code == 503 and err.value.code == "retrieval_unavailable" and str(live) in err.value.message
        health = httpx.get(url + "/health")
        assert health.status_code == 503 and str(live) in health.json()["problem"]
        assert client.chat.completions.create(model="tiny", messages=ASK, max_tokens=2).choices  # no retrieval: served
        (tmp_path / "moved").rename(live)
        res = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=2, extra_body={"rag": True})
        assert res.model_extra["sources"] and httpx.get(url + "/health").status_code == 200


def test_an_adapter_whose_recipe_index_is_missing_is_refused_at_load(base, index, tmp_path):
    runs = tmp_path / "runs"
    hand_run(runs, "good-rag", base, rag_index=index)
    hand_run(runs, "lost-rag", base, rag_index=tmp_path / "gone")
    settings = ServeSettings(keys=KeyRing.build([], ["admin-k"]), adapters_dir=runs)
    app = create_app(lambda: load_engine(base), settings)
    with live_server(app) as url:
        auth = {"Authorization": "Bearer admin-k"}
        res = httpx.post(url + "/v1/adapters", headers=auth, json={"name": "lost", "path": "lost-rag"})
        assert res.status_code == 400 and "cannot be searched" in res.json()["error"]["message"]
        assert set(app.state.tunesmith.engine.models) == {"tiny"}
        assert httpx.post(url + "/v1/adapters", headers=auth, json={"name": "good", "path": "good-rag"}).status_code == 200


def test_a_run_named_like_its_base_never_shadows_it(base, tmp_path):
    """A run folder called `tiny` on the base `tiny`: refused (clients asking for the base would get the adapter);
    served under --name, the base answers as the base."""
    run = hand_run(tmp_path / "runs", "tiny", base)
    with pytest.raises(ModelError, match="name of its base model"):
        load_engine(run)
    engine = load_engine(run, name="tiny-tuned")
    assert set(engine.models) == {"tiny", "tiny-tuned"} and engine.default_name == "tiny-tuned"
    plain = load_engine(base)
    params = Params(max_tokens=6)
    base_answer = plain.generate_batch("tiny", [ASK], params)[0].text
    assert engine.generate_batch("tiny", [ASK], params)[0].text == base_answer
    assert engine.generate_batch("tiny-tuned", [ASK], params)[0].text != base_answer
    res = run_cli(["serve", str(run), "--dir", str(tmp_path / "s"), "--port", str(free_port())])
    assert res.returncode == 1 and "name of its base model" in res.stderr and "--name" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "s").exists()


def test_a_full_fine_tune_is_served_under_its_run_name(base, tmp_path):
    """A full fine-tune replaces the weights: it must not answer to the base's name."""
    engine = load_engine(hand_run(tmp_path / "runs", "tiny-full", base, full=True))
    assert set(engine.models) == {"tiny-full"} and engine.base_name == "tiny-full"
    assert engine.models["tiny-full"].run is not None


def test_cli_start_up_mistakes_are_one_paragraph_and_an_exit_code(base, index, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    keys = tmp_path / "keys"
    keys.write_text("ok-key\nadmin\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        cases = [
            (["--dir", str(a_file)], 1, "is a file, not a folder"),
            (["--port", "70000"], 2, "Invalid value for '--port'"),
            (["--port", "0"], 2, "Invalid value for '--port'"),
            (["--port", str(busy)], 1, f"cannot listen on 127.0.0.1:{busy}"),
            (["--host", "no-such-host.invalid"], 1, "cannot listen on no-such-host.invalid"),
            (["--index", str(tmp_path / "no-index")], 1, "is not a tunesmith index"),
            (["--adapters-dir", str(a_file)], 1, "is not a folder"),
            (["--adapter", f"x={index}"], 1, "holds no adapter"),
            (["--name", "../evil"], 1, "invalid adapter name"),
            (["--keys-file", str(keys)], 1, f"{keys}:2: expected `KEY` or `admin KEY`"),
            (["--keys-file", str(tmp_path / "no-keys")], 1, "cannot read the keys file"),
        ]
        for extra, code, said in cases:
            folder = tmp_path / "serve"
            res = run_cli(["serve", str(base), "--dir", str(folder), "--port", str(free_port()), *extra])
            out = " ".join((res.stdout + res.stderr).split())
            assert res.returncode == code and said in out, (extra, res.returncode, out)
            assert "Traceback" not in out, extra
            assert not folder.exists(), extra  # refused before the serve folder was made
    assert a_file.read_text() == "mine"
