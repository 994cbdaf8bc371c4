"""The studio on damaged records and malformed requests: a 4xx or a page that says what is wrong, never a 500;
the synthetic-data review never writes over an accepted file; review rows from a newer tunesmith are refused."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from urllib.parse import quote

import pytest

from helpers import chat_rows, write_jsonl
from studio_helpers import StudioClient, fake_run
from tunesmith.errors import RunError
from tunesmith.studio.app import StudioConfig, create_app

BROKEN_RECIPES = {
    "bad-yaml": (b"name: [unclosed\n", "not readable YAML"),
    "a-list": (b"- a\n- b\n", "not a mapping"),
    "not-utf8": (b"name: \xff\xfe\n", "not readable YAML"),
    "wrong-types": (b"model: 5\nadapter: [1]\nname: typed\n", None),  # readable: shown with what it holds
}


@pytest.fixture
def studio(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    fake_run(root, "good", n_examples=6)
    fake_run(root, "peer", n_examples=6, seed=4)
    for name, (raw, _) in BROKEN_RECIPES.items():
        (fake_run(root, name, finished=False) / "run.yaml").write_bytes(raw)
    broken = fake_run(root, "bad-manifest")
    (broken / "manifest.json").write_text("{broken")
    app = create_app(StudioConfig(runs=[root]))
    return StudioClient(app, raise_server_exceptions=False), root


def test_one_malformed_run_does_not_take_the_runs_chat_or_review_pages_down(studio):
    client, _ = studio
    runs = client.get("/")
    assert runs.status_code == 200
    for name, (_, reason) in BROKEN_RECIPES.items():
        row = re.search(rf"{name}</div>.*?</tr>", runs.text, re.S).group(0)
        if reason:
            assert "s-unreadable" in row and f"run.yaml is {reason}" in row, name
    row = re.search(r"bad-manifest</div>.*?</tr>", runs.text, re.S).group(0)
    assert "s-unreadable" in row and "manifest.json is not readable JSON" in row
    assert "typed" in runs.text and re.search(r'href="/run\?k=0/good">good</a>', runs.text)  # the rest is kept
    chat = client.get("/chat")
    assert chat.status_code == 200 and "good" in chat.text
    review = client.get("/review?k=0/good")
    assert review.status_code == 200 and "peer" in review.text
    for name in [*BROKEN_RECIPES, "bad-manifest"]:
        page = client.get(f"/run?k=0/{name}")
        assert page.status_code == 200, name
        assert client.get(f"/report?k=0/{name}").status_code == 200, name


def test_odd_files_in_a_run_folder_do_not_break_its_pages(studio):
    client, root = studio
    run = root / "good"
    (run / "checkpoints" / "checkpoint-abc").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-4").mkdir()
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write("not json\n[1, 2]\n")
    page = client.get("/run?k=0/good")
    assert page.status_code == 200
    assert re.search(r"<td>checkpoint-abc</td><td>\?</td>.*<td>checkpoint-4</td><td>4</td>", page.text, re.S)
    assert "metrics.jsonl: 2 unreadable line(s) skipped (first: line 11)" in page.text and "drawLines" in page.text
    (run / "eval" / "predictions.jsonl").write_text('{"id": "ex0"}\nnot json\n')
    report = client.get("/report?k=0/good&page_no=1")
    assert report.status_code == 200 and "eval/predictions.jsonl row 2 is not a JSON object" in report.text
    assert client.post("/review/new", data={"k": "0/good"}).status_code == 404  # says why, makes no round
    assert not (run / "review").exists()


CHAT = {"k": "0/good", "messages": [{"role": "user", "content": "hi"}]}
MALFORMED_CHAT = {
    "not JSON": (b"{not json", "JSON"),
    "a list": (b"[]", "body"),
    "a number": (b"5", "body"),
    "empty object": (b"{}", "k"),
    "k not a string": (json.dumps({**CHAT, "k": 5}).encode(), "k"),
    "messages a string": (json.dumps({**CHAT, "messages": "hi"}).encode(), "messages"),
    "no messages": (json.dumps({**CHAT, "messages": []}).encode(), "messages"),
    "message not an object": (json.dumps({**CHAT, "messages": [1]}).encode(), "messages.0"),
    "message without content": (json.dumps({**CHAT, "messages": [{"role": "user"}]}).encode(), "messages.0.content"),
    "unknown role": (json.dumps({**CHAT, "messages": [{"role": "root", "content": "x"}]}).encode(), "messages.0.role"),
    "huge max_new_tokens": (json.dumps({**CHAT, "max_new_tokens": 10**30}).encode(), "max_new_tokens"),
    "infinite max_new_tokens": (json.dumps(CHAT)[:-1].encode() + b', "max_new_tokens": 1e400}', "max_new_tokens"),
    "max_new_tokens a word": (json.dumps({**CHAT, "max_new_tokens": "many"}).encode(), "max_new_tokens"),
    "unknown side": (json.dumps({**CHAT, "side": "left"}).encode(), "side"),
    "extra field": (json.dumps({**CHAT, "temperature": 2}).encode(), "temperature"),
}


@pytest.mark.parametrize("case", list(MALFORMED_CHAT))
def test_every_malformed_chat_body_is_a_4xx_naming_the_field(studio, case):
    client, _ = studio
    body, field = MALFORMED_CHAT[case]
    res = client.post("/chat/stream", content=body, headers={"Content-Type": "application/json"})
    assert res.status_code == 422, res.text[:300]
    error = res.json()["error"]
    assert field in error["message"] and error["status"] == 422


def test_chat_refusals_for_the_run_or_the_turns_are_4xx_too(studio):
    client, _ = studio
    res = client.post("/chat/stream", json={**CHAT, "k": "0/../../etc"})
    assert res.status_code == 404 and "outside" in res.json()["error"]["message"]
    res = client.post("/chat/stream", json={**CHAT, "messages": [{"role": "assistant", "content": "x"}]})
    assert res.status_code == 404 and "end with a user message" in res.json()["error"]["message"]


GARBAGE = ["", "x", "-1", "99999999999999999999999", "1e400", "0/../..", "\x00", "<script>"]


def test_no_field_of_any_form_or_query_can_make_a_500(studio, tmp_path):
    client, root = studio
    write_jsonl(root / "synth.jsonl", chat_rows(6))
    client.post("/review/new", data={"k": "0/good"})
    forms = {
        "/launch/preview": ["train", "eval_file", "base", "method", "adapter", "name", "max_steps"],
        "/launch/start": ["recipe"],
        "/job/stop": ["k"],
        "/job/resume": ["k"],
        "/data/synth/decide": ["k", "n", "line", "verdict", "reason", "row"],
        "/data/synth/write": ["k", "n"],
        "/review/new": ["k", "other", "name"],
        "/review/verdict": ["k", "r", "item", "reviewer", "choice", "correction"],
        "/review/close": ["k", "r"],
        "/review/export": ["k", "r", "to", "min_agree"],
    }
    valid = {"k": "0/good", "r": "1", "item": "1", "line": "1", "n": "4", "verdict": "accept", "choice": "a", "to": "sft"}
    valid |= {"train": "0/synth.jsonl", "base": str(root / "good"), "reviewer": "ann", "recipe": "name: x\n"}
    for path, fields in forms.items():
        for field in fields:
            for junk in GARBAGE:
                data = {f: valid.get(f, "") for f in fields} | {field: junk}
                res = client.post(path, data=data)
                assert res.status_code < 500, (path, field, junk, res.text[-500:])
    queries = ["/run?k={}", "/report?k=0/good&page_no={}", "/review/round?k=0/good&r={}", "/review/results?k=0/good&r={}"]
    queries += ["/data/row?k=0/synth.jsonl&line={}", "/data/synth?k=0/synth.jsonl&n={}", "/monitor?offset={}", "/job?k={}"]
    for url in queries:
        for junk in GARBAGE:
            assert client.get(url.format(quote(junk, safe=""))).status_code < 500, (url, junk)


def decided_review(client, root, n: int = 4) -> str:
    write_jsonl(root / "synth.jsonl", chat_rows(12, seed=4))
    k = "0/synth.jsonl"
    for _ in range(n):
        line = re.search(r'name="line" value="(\d+)"', client.get(f"/data/synth?k={k}&n={n}").text).group(1)
        client.post("/data/synth/decide", data={"k": k, "n": n, "line": line, "verdict": "accept"})
    return k


def test_writing_the_accepted_rows_twice_in_one_second_keeps_both_files(studio, monkeypatch):
    from tunesmith.studio import synth_review

    client, root = studio
    k = decided_review(client, root)
    monkeypatch.setattr(synth_review.time, "strftime", lambda fmt, *a: "20260101-120000")  # both clicks in one second
    first = client.post("/data/synth/write", data={"k": k, "n": 4})
    assert first.status_code == 200
    folder = next((root / ".studio" / "synth").glob("synth-*"))
    accepted = folder / "accepted-20260101-120000.jsonl"
    kept = accepted.read_text()
    line = re.search(r'name="line" value="(\d+)"', client.get(f"/data/synth?k={k}&n=4").text)
    assert line is None  # every sampled row is decided; change one and write again
    store = sqlite3.connect(folder / "review.db")
    (row_line, row) = store.execute("SELECT line, row FROM decisions LIMIT 1").fetchone()
    store.execute(
        "UPDATE decisions SET row=? WHERE line=?",
        (row.replace('"accept"', '"reject"').replace('"reason":null', '"reason":"bad"'), row_line),
    )
    store.commit()
    store.close()
    assert client.post("/data/synth/write", data={"k": k, "n": 4}).status_code == 200
    assert accepted.read_text() == kept  # the first file is untouched
    second = folder / "accepted-20260101-120000-2.jsonl"
    assert len(second.read_text().splitlines()) == len(kept.splitlines()) - 1
    assert json.loads((folder / "acceptance.json").read_text())["out_file"] == str(second)
    assert str(accepted) in first.text


def test_concurrent_writes_and_a_planted_link_never_overwrite(studio, monkeypatch, tmp_path):
    from tunesmith.studio import synth_review

    client, root = studio
    k = decided_review(client, root)
    monkeypatch.setattr(synth_review.time, "strftime", lambda fmt, *a: "20260101-120000")
    client.get(f"/data/synth?k={k}&n=4")
    folder = next((root / ".studio" / "synth").glob("synth-*"))
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    (folder / "accepted-20260101-120000.jsonl").symlink_to(victim)  # planted where the first write would go
    token = client.csrf()
    results: list[int] = []

    def click() -> None:
        results.append(client.post("/data/synth/write", data={"k": k, "n": 4}, headers={"X-CSRF-Token": token}).status_code)

    threads = [threading.Thread(target=click) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 4 and victim.read_text() == "mine"
    written = sorted(p.name for p in folder.glob("accepted-*.jsonl") if not p.is_symlink())
    assert written == [f"accepted-20260101-120000-{n}.jsonl" for n in (2, 3, 4, 5)]
    assert not list(folder.glob(".*staged*"))  # no temp file left behind


def test_review_rows_from_a_newer_tunesmith_are_refused(studio):
    from typer.testing import CliRunner

    from tunesmith.cli import app
    from tunesmith.studio.review import ReviewStore

    client, root = studio
    client.post("/review/new", data={"k": "0/good", "name": "r1"})
    db = root / "good" / "review" / "review.db"
    conn = sqlite3.connect(db)
    (row,) = conn.execute("SELECT row FROM rounds WHERE id=1").fetchone()
    conn.execute("UPDATE rounds SET row=? WHERE id=1", (json.dumps({**json.loads(row), "schema_version": 2, "quorum": 3}),))
    conn.commit()
    conn.close()
    store = ReviewStore.open(root / "good", create=False)
    with pytest.raises(RunError, match=r"schema_version 2, newer than this tunesmith reads \(1\)"):
        store.rounds()
    store.close()
    page = client.get("/review?k=0/good")
    assert page.status_code == 404 and "newer than this tunesmith reads" in page.text and "Upgrade tunesmith" in page.text
    res = CliRunner().invoke(app, ["review", "stats", str(root / "good")], env={"COLUMNS": "200"})
    assert res.exit_code != 0 and "newer than this tunesmith reads" in res.output and "Traceback" not in res.output


def test_synthetic_review_decisions_from_a_newer_tunesmith_are_refused(studio):
    client, root = studio
    k = decided_review(client, root, n=2)
    db = next((root / ".studio" / "synth").glob("synth-*")) / "review.db"
    conn = sqlite3.connect(db)
    conn.execute("UPDATE decisions SET row=json_set(row, '$.schema_version', 5)")
    conn.commit()
    conn.close()
    page = client.get(f"/data/synth?k={k}&n=2")
    assert page.status_code == 404 and "schema_version 5, newer than this tunesmith reads" in page.text
