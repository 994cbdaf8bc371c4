"""The studio over HTTP (no browser): run statuses, path safety, escaping, the token, report pages, review, monitor."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from helpers import chat_rows, write_jsonl
from studio_helpers import StudioClient, fake_run
from tunesmith.errors import RunError
from tunesmith.studio.app import StudioConfig, check_bind, create_app

SECRET = "TOP-SECRET-CONTENT"


@pytest.fixture
def studio(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    (tmp_path / "secret.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": SECRET}]}) + "\n")
    (tmp_path / "secret.png").write_bytes(b"\x89PNG" + SECRET.encode())
    (root / "link.png").symlink_to(tmp_path / "secret.png")  # symlinks pointing out of the roots
    (root / "linkdir").symlink_to(tmp_path, target_is_directory=True)
    fake_run(root, "good", n_examples=120, seed=3)
    fake_run(root, "live", finished=False)
    stopped = fake_run(root, "halted", finished=False)
    (stopped / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    import os

    os.utime(stopped / "metrics.jsonl", (0, 0))  # an old log: nothing is writing it any more
    (root / "data").mkdir()
    write_jsonl(root / "data" / "train.jsonl", chat_rows(12))
    client = StudioClient(create_app(StudioConfig(runs=[root])))
    return client, root, tmp_path


def keys(html: str) -> dict[str, str]:
    return {m.group(2): m.group(1) for m in re.finditer(r'href="/run\?k=([^"]+)">([^<]+)</a>', html)}


def test_runs_page_lists_every_run_with_status_and_figures(studio):
    client, _, _ = studio
    html = client.get("/").text
    assert set(keys(html)) == {"good", "live", "halted"}
    assert "s-finished" in html and "s-running" in html and "s-stopped" in html
    assert "exact_match" in html and "cdcdcdcdcdcd" in html  # key eval figure and the data hash
    run = client.get(f"/run?k={keys(html)['good']}").text
    assert "Resolved recipe" in run and "chat_template_sha256" in run and "drawLines" in run


@pytest.mark.parametrize(
    "url",
    [
        "/run?k=0/../secret.jsonl",
        "/run?k=0/%2e%2e/",
        "/run?k=0%2F%2e%2e%2F",
        "/run?k=/etc",
        "/run?k=0//etc",
        "/file?k=0/../secret.png",
        "/file?k=0/%2e%2e/secret.png",
        "/file?k=0//tmp/x.png",
        "/file?k=7/x.png",
        "/data?k=0/../secret.jsonl",
        "/data?k=0/%2E%2E/secret.jsonl",
        "/data/row?k=0/../secret.jsonl&line=1",
        "/report?k=0/..",
        "/review?k=0/../",
        "/job?k=0/../../",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/static/../app.py",
        "/file?k=0/link.png",
        "/data?k=0/linkdir/secret.jsonl",
        "/data/synth?k=0/linkdir/secret.jsonl",
    ],
)
def test_no_path_outside_the_roots_is_readable(studio, url):
    client, _, _ = studio
    res = client.get(url)
    assert res.status_code in (404, 422) and SECRET not in res.text
    assert "def create_app" not in res.text
    assert "secret.jsonl" not in client.get("/launch").text  # nor is a file outside listed


def test_form_input_and_records_are_escaped(studio):
    client, root, _ = studio
    run_dir = fake_run(root, "xss", n_examples=2)
    rows = [json.loads(line) for line in (run_dir / "eval" / "predictions.jsonl").read_text().splitlines()]
    rows[0]["prompt"] = "<script>alert('p')</script>"
    rows[0]["tuned"] = "<img src=x onerror=alert(1)>"
    (run_dir / "eval" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    k = keys(client.get("/").text)["xss"]
    html = client.get(f"/report?k={k}").text
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    assert "<img src=x" not in html and "onerror=alert(1)&gt;" in html
    res = client.post("/review/new", data={"k": k, "name": "<script>evil()</script>"}, follow_redirects=True)
    assert "<script>evil()" not in res.text and "&lt;script&gt;evil()" in res.text
    page = client.get(f"/review/round?k={k}&r=1&reviewer=<b>ann</b>").text
    assert "<b>ann</b>" not in page and "&lt;script&gt;alert" in page


def test_access_token_is_required_when_set(tmp_path):
    fake_run(tmp_path, "r")
    client = StudioClient(create_app(StudioConfig(runs=[tmp_path], token="s3cret")))
    assert client.get("/").status_code == 401
    assert client.get("/?token=wrong").status_code == 401
    assert client.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/?token=s3cret").status_code == 200
    assert client.get("/").status_code == 200  # the cookie set by the first visit


def test_binding_beyond_loopback_needs_a_token():
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    with pytest.raises(RunError, match="without an access token"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "tok")


def test_report_pages_and_filters(studio):
    client, root, _ = studio
    k = keys(client.get("/").text)["good"]
    html = client.get(f"/report?k={k}").text
    assert html.count('class="card example"') == 50 and "page 1 of 3" in html
    assert client.get(f"/report?k={k}&page_no=3").text.count('class="card example"') == 20
    losses = client.get(f"/report?k={k}&losses=true").text
    lines = (root / "good/eval/predictions.jsonl").read_text().splitlines()
    n_losses = sum(json.loads(line)["judgement"] == "loss" for line in lines)
    assert losses.count('class="card example"') == min(50, n_losses) and '<span class="pill win">' not in losses
    worse = client.get(f"/report?k={k}&metric=exact_match").text
    assert worse.count('class="card example"') == min(50, n_losses)  # a loss here is exactly a drop in exact_match
    assert "passed" in html and "No ladder yet" in html  # gates shown; no ladder.json -> says how to get one


def test_review_round_is_blind_until_closed(studio):
    client, root, _ = studio
    fake_run(root, "small", n_examples=6)
    k = keys(client.get("/").text)["small"]
    client.post("/review/new", data={"k": k, "name": "r1"})
    item = client.get(f"/review/round?k={k}&r=1&reviewer=ann").text
    assert "Answer A" in item and "side x" not in item and "base" not in item.split("<main>")[1].lower()
    early = client.get(f"/review/results?k={k}&r=1").text
    assert "once the round is closed" in early and "win-rate" not in early
    for _ in range(7):
        html = client.get(f"/review/round?k={k}&r=1&reviewer=ann").text
        if 'id="all-done"' in html:
            break
        item_id = re.search(r'name="item" value="(\d+)"', html).group(1)
        client.post("/review/verdict", data={"k": k, "r": 1, "item": item_id, "reviewer": "ann", "choice": "tie"})
    client.post("/review/close", data={"k": k, "r": 1})
    res = client.get(f"/review/results?k={k}&r=1").text
    assert "side y = <b>tuned</b>" in res and "tie 6" in res


def test_monitor_without_and_with_a_serve_dir(tmp_path):
    from datetime import datetime, timezone

    from tunesmith.serve.store import RequestLog, RequestRow

    fake_run(tmp_path / "runs", "r")
    page = StudioClient(create_app(StudioConfig(runs=[tmp_path / "runs"]))).get("/monitor").text
    assert "--serve-dir" in page and "tunesmith serve" in page
    (tmp_path / "serve").mkdir()
    with RequestLog.open(tmp_path / "serve", create=True) as log:
        log.add_request(
            RequestRow(
                request_id="q1",
                time=datetime.now(timezone.utc),
                model="m",
                prompt="hello <there>",
                output="hi",
                latency_s=0.25,
                prompt_tokens=3,
                completion_tokens=1,
            )
        )
    page = StudioClient(create_app(StudioConfig(runs=[tmp_path / "runs"], serve_dir=tmp_path / "serve"))).get("/monitor").text
    assert "hello &lt;there&gt;" in page and "0.250" in page and 'id="signals"' in page
    # a log elsewhere (a copied file, or a postgresql:// URL shared by replicas): read-only, no serve folder needed
    moved = tmp_path / "copied.sqlite"
    moved.write_bytes((tmp_path / "serve" / "requests.sqlite").read_bytes())
    before = moved.read_bytes()
    page = StudioClient(create_app(StudioConfig(runs=[tmp_path / "runs"], log=str(moved)))).get("/monitor").text
    assert "hello &lt;there&gt;" in page and str(moved) in page and 'id="drift"' not in page
    assert moved.read_bytes() == before
    page = StudioClient(create_app(StudioConfig(runs=[tmp_path / "runs"], log=str(tmp_path / "none.sqlite")))).get("/monitor")
    assert page.status_code == 200 and "No request log at" in page.text


def test_monitor_reads_a_shared_postgresql_log(tmp_path, pg_url):
    from datetime import datetime, timezone

    from tunesmith.serve.store import RequestLog, RequestRow

    fake_run(tmp_path / "runs", "r")
    for replica in ("web-1", "web-2"):
        with RequestLog.open(pg_url, create=True, replica=replica) as log:
            log.add_request(RequestRow(request_id=f"q-{replica}", time=datetime.now(timezone.utc), model="m", prompt=replica))
    page = StudioClient(create_app(StudioConfig(runs=[tmp_path / "runs"], log=pg_url))).get("/monitor").text
    assert page.count("<td>web-1</td>") == 2 and page.count("<td>web-2</td>") == 2  # replica column and prompt
    assert "postgresql://" in page and 'id="drift"' not in page


def test_launch_preview_audits_and_refuses_paths_outside(studio):
    client, root, tmp_path = studio
    offered = re.findall(r'name="train" value="([^"]+)"', client.get("/launch").text)
    data_key = next(m for m in offered if m.endswith("train.jsonl"))
    html = client.post("/launch/preview", data={"train": [data_key], "base": str(tmp_path / "nope"), "name": "new"}).text
    assert 'id="audit-summary"' in html and "0 blocking errors" in html
    assert "model.base: `" in html and "is not a catalog model" in html  # a folder outside: refused, never loaded
    assert "# Training method" in html  # field help comes from the recipe schema's descriptions
    recipe = re.search(r'<textarea name="recipe"[^>]*>(.*?)</textarea>', html, re.DOTALL).group(1)
    import html as html_mod

    outside = html_mod.unescape(recipe).replace(str(root / "new"), str(tmp_path / "elsewhere"))
    res = client.post("/launch/start", data={"recipe": outside})
    assert res.status_code == 422 and "outside the studio" in res.text


def test_data_audit_links_findings_to_rows(studio):
    client, root, _ = studio
    bad = root / "data" / "bad.jsonl"
    bad.write_text('{"messages": []}\nnot json\n')
    k = re.search(r'<option value="([^"]+)"[^>]*>[^<]*bad.jsonl', client.get("/data").text).group(1)
    html = client.get(f"/data?k={k}").text
    assert "invalid_json" in html and f"/data/row?k={k}&line=2" in html
    assert "messages" in client.get(f"/data/row?k={k}&line=1").text


def test_data_page_shows_the_mask_with_a_model_inside_its_folders_only(studio, tiny_model_dir):
    import shutil

    client, root, tmp_path = studio
    k = re.search(r'<option value="([^"]+)"[^>]*>[^<]*train.jsonl', client.get("/data").text).group(1)
    outside = client.get(f"/data?k={k}&model={tiny_model_dir}").text  # not in the studio's folders: refused
    assert 'id="model-note"' in outside and "ts-row" not in outside
    shutil.copytree(tiny_model_dir, root / "models" / "tiny")
    html = client.get(f"/data?k={k}&model={root / 'models' / 'tiny'}&reasoning=mask").text
    assert html.count("class='ts-row'") == 5 and "class='ts-trained'" in html and "--reasoning mask" in html


def test_report_shows_the_ladder_and_its_recommendation(studio):
    from tunesmith.eval.ladder_report import (
        LadderReport,
        Recommendation,
        RungResult,
        write_ladder_report,
    )

    client, root, _ = studio
    rungs = [
        RungResult(name="base", label="base", metrics={"exact_match": 0.2}, cost_per_1k=0.01),
        RungResult(name="tuned", label="tuned <adapter>", metrics={"exact_match": 0.8}, cost_per_1k=0.01),
    ]
    write_ladder_report(
        root / "good-ladder" / "ladder.json",
        LadderReport(
            run="good",
            base_model="tiny",
            n_examples=6,
            json_mode=True,
            primary_metric="exact_match",
            cost_basis="tokens",
            price=0.001,
            rungs=rungs,
            recommendation=Recommendation(rung="tuned", sentence="Ship tuned: it meets every target."),
        ),
    )
    html = client.get(f"/report?k={keys(client.get('/').text)['good']}").text
    assert "Ship tuned: it meets every target." in html and "tuned &lt;adapter&gt; ★" in html
    assert 'style="width:100.0%"' in html and 'style="width:25.0%"' in html  # bars scaled to the best rung


FAKE_TRAIN = """
import json, signal, sys, time
from pathlib import Path
out = Path(sys.argv[1]).with_suffix("").parent / "run"   # stands in for `tunesmith train RECIPE`: logs steps, exits 75 on SIGTERM
out.mkdir(exist_ok=True)
(out / "run.yaml").write_text("name: run\\n")
signal.signal(signal.SIGTERM, lambda *a: sys.exit(75))
start = 10 if "--resume" in sys.argv else 0
for step in range(start + 1, start + 4):
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": step, "loss": 1.0 / step}) + "\\n")
    time.sleep(0.2 if "--resume" in sys.argv else 30)
(out / "manifest.json").write_text("{}")
"""


def test_launcher_follows_stops_and_resumes(tmp_path):
    import sys
    import time

    from tunesmith.studio import launch
    from tunesmith.studio.runs import Roots, run_status

    roots = Roots([tmp_path])
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    launcher = launch.Launcher(roots.studio_dir)
    launcher.command = [sys.executable, str(tmp_path / "fake_train.py")]
    recipe, run_dir = tmp_path / "recipe.yaml", tmp_path / "run"
    recipe.write_text("name: run\n")
    launcher.start(recipe, run_dir)
    deadline = time.monotonic() + 20
    while not (run_dir / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run_status(run_dir, roots) == "running"
    assert launcher.stop(run_dir)
    events = list(launch.follow(roots.studio_dir, run_dir, timeout_s=20))
    assert 'event: metrics\ndata: {"step": 1, "loss": 1.0}' in "".join(events)
    assert events[-1] == 'event: status\ndata: {"exit_code": 75, "finished": false}\n\n'
    assert run_status(run_dir, roots) == "stopped"
    job = launcher.resume(run_dir)
    assert job.cmd[-1] == "--resume" and job.recipe == str(recipe)
    events = list(launch.follow(roots.studio_dir, run_dir, timeout_s=20))
    assert '"exit_code": 0, "finished": true' in events[-1] and run_status(run_dir, roots) == "finished"


def test_synthetic_rows_review_writes_an_audited_file_and_the_rate(studio):
    client, root, _ = studio
    synth = root / "data" / "synth.jsonl"
    write_jsonl(synth, chat_rows(12, seed=4))
    before = synth.read_text()
    k = "0/data/synth.jsonl"
    for i in range(4):
        html = client.get(f"/data/synth?k={k}&n=4").text
        line = int(re.search(r'name="line" value="(\d+)"', html).group(1))
        form = {"k": k, "n": 4, "line": line, "verdict": ["accept", "reject", "edit", "accept"][i], "reason": "wrong sum"}
        if i == 2:
            edited = [{"role": "user", "content": "<b>hi</b>"}, {"role": "assistant", "content": "ok"}]
            form["row"] = json.dumps({"messages": edited})
        assert client.post("/data/synth/decide", data=form).status_code == 200
    assert "Every sampled row is decided" in client.get(f"/data/synth?k={k}&n=4").text
    html = client.post("/data/synth/write", data={"k": k, "n": 4}).text
    assert "acceptance rate 75%" in html and "1 rejected" in html
    outcome = json.loads(next((root / ".studio" / "synth").glob("synth-*/acceptance.json")).read_text())
    written = [json.loads(x) for x in Path(outcome["out_file"]).read_text().splitlines()]
    assert len(written) == 3 and {"role": "user", "content": "<b>hi</b>"} in written[1]["messages"]
    assert outcome["reasons"] == {"wrong sum": 1} and outcome["audit_errors"] == 1  # too_few_examples: 3 rows
    assert synth.read_text() == before  # the input is never modified


def test_review_round_between_two_runs(studio):
    client, root, _ = studio
    fake_run(root, "other", n_examples=6, seed=8)
    fake_run(root, "mine", n_examples=6, seed=3)
    k = keys(client.get("/").text)["mine"]
    home = client.get(f"/review?k={k}").text
    other = re.search(r'<option value="([^"]+)">this run vs other', home).group(1)
    client.post("/review/new", data={"k": k, "other": other, "name": "mine vs other"})
    from tunesmith.studio.review import ReviewStore

    store = ReviewStore.open(root / "mine")
    rnd, items = store.rounds()[0], store.items(1)
    store.close()
    rows = [json.loads(x) for x in (root / "other/eval/predictions.jsonl").read_text().splitlines()]
    theirs = {r["id"]: r["tuned"] for r in rows}
    assert (rnd.label_x, rnd.label_y) == ("mine", "other") and all(i.answer_y == theirs[i.example_id] for i in items)


def test_run_page_shows_faults_and_failed_runs(studio):
    client, root, _ = studio
    run_dir = fake_run(root, "bumpy")
    events = [
        {"step": 3, "loss": "nan"},
        {"event": "oom_backoff", "step": 4, "batch_size": 2, "grad_accum": 2},
        {"event": "resumed", "step": 4, "checkpoint": "checkpoint-4", "dropped_rows": 1},
    ]
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.writelines(json.dumps(e) + "\n" for e in events)
    html = client.get(f"/run?k={keys(client.get('/').text)['bumpy']}").text
    assert "nonfinite_loss" in html and "oom_backoff" in html and "batch_size=2" in html and "checkpoint-4" in html
    broken = fake_run(root, "broken", finished=False)
    import os

    os.utime(broken / "metrics.jsonl", (0, 0))
    row = re.search(r"broken</a>.*?</tr>", client.get("/").text, re.S).group(0)
    assert "s-failed" in row  # no manifest, no checkpoint, nothing writing: failed


def test_studio_cli_refuses_a_public_bind_without_a_token(tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    res = CliRunner().invoke(app, ["studio", "--runs", str(tmp_path), "--host", "0.0.0.0"], env={"COLUMNS": "200"})
    assert res.exit_code == 1 and "without an access token" in res.output


def test_launch_preview_keeps_the_choices_made(studio):
    client, _, tmp_path = studio
    offered = re.findall(r'name="train" value="([^"]+)"', client.get("/launch").text)
    data_key = next(m for m in offered if m.endswith("train.jsonl"))
    html = client.post(
        "/launch/preview",
        data={
            "train": [data_key],
            "base": str(tmp_path / "nope"),
            "name": "kept",
            "method": "sft",
            "adapter": "dora",
            "max_steps": 7,
        },
    ).text
    assert f'value="{data_key}" aria-label="train' in html and re.search(rf'value="{data_key}"[^>]*checked', html)
    assert 'value="kept"' in html and 'value="7"' in html and "<option selected>dora</option>" in html


def test_chat_stream_with_rag_sends_sources_then_text(tmp_path, tiny_model_dir):
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.rag.embed import load_embedder
    from tunesmith.rag.index import build_index
    from tunesmith.studio import chat

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "shipping.md").write_text("# Shipping\n\nParcels leave the warehouse in Rotterdam every Tuesday.\n")
    build_index([tmp_path / "docs"], tmp_path / "idx", embedder=load_embedder(None))
    rag = SimpleNamespace(index=str(tmp_path / "idx"), embedder=None, k=1, template=None, mode="hybrid")
    loaded = SimpleNamespace(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(),
        tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir),
        has_adapter=False,
        thinking=None,  # the run's thinking mode (loader.Loaded.thinking): the template's default here
        run=SimpleNamespace(recipe=SimpleNamespace(rag=rag)),
    )
    messages = [{"role": "user", "content": "Where do parcels leave from?"}]
    augmented, sources = chat._with_rag(loaded, messages)
    assert "Rotterdam" in augmented[0]["content"] and sources[0]["source"].endswith("shipping.md")
    assert messages == [{"role": "user", "content": "Where do parcels leave from?"}]  # the input is not modified
    cache = chat.ModelCache()
    cache._loaded[str(tmp_path / "run")] = loaded
    events = list(chat.stream_reply(cache, tmp_path / "run", messages, rag=True, max_new_tokens=4))
    assert events[0].startswith("event: sources") and "shipping.md" in events[0]
    assert events[-1].startswith("event: done") and any(e.startswith("event: delta") for e in events[1:-1])
    base = list(chat.stream_reply(cache, tmp_path / "run", messages, side="base"))
    assert base == ['event: error\ndata: "the base side needs an adapter run (this target has no adapter to disable)"\n\n']


def test_a_job_left_by_an_earlier_studio_session_can_be_stopped_and_ends(tmp_path):
    import subprocess
    import sys

    from tunesmith.studio import launch
    from tunesmith.studio.runs import Roots, run_status

    roots = Roots([tmp_path])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.yaml").write_text("name: run\n")
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    launch.Launcher(roots.studio_dir)  # the earlier session: it made .studio, then went away
    launch._write_job(
        roots.studio_dir,
        launch.Job(run_dir=str(run_dir.resolve()), recipe="r.yaml", cmd=["x"], pid=orphan.pid, log=str(tmp_path / "none.log")),
    )
    assert run_status(run_dir, roots) == "running"
    assert launch.Launcher(roots.studio_dir).stop(run_dir) and orphan.wait(timeout=10) != 0  # a new session stops it
    events = list(launch.follow(roots.studio_dir, run_dir, timeout_s=20))
    assert events[-1] == 'event: status\ndata: {"exit_code": null, "finished": false}\n\n'
    assert run_status(run_dir, roots) == "failed"  # no checkpoint was left


@pytest.mark.parametrize(
    "args, code, said",
    [
        (["--port", "70000"], 2, "less than or equal to 65535"),
        (["--port", "0"], 2, "--port"),
        (["--models", "no-such-folder"], 1, "not a folder: no-such-folder"),
    ],
)
def test_studio_cli_refuses_bad_options_in_one_paragraph(tmp_path, args, code, said):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    res = CliRunner().invoke(app, ["studio", "--runs", str(tmp_path), *args], env={"COLUMNS": "200"})
    assert res.exit_code == code and said in res.output and "Traceback" not in res.output


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("data.jsonl", "is not a tunesmith request log"),
        ("mine", "no request log at"),
        ("mysql://host/db", "not a request log location"),
    ],
)
def test_studio_cli_refuses_a_log_that_is_not_one_and_changes_nothing(tmp_path, monkeypatch, given, said):
    """--log naming a data file, a folder of the user's own files or another database: one clear error before the
    server starts, and the named file or folder stays as it was."""
    import uvicorn
    from typer.testing import CliRunner

    from tunesmith.cli import app

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the studio started"))
    (tmp_path / "data.jsonl").write_text('{"messages": []}\n')
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.md").write_text("my notes")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    location = given if "://" in given else str(tmp_path / given)
    res = CliRunner().invoke(app, ["studio", "--runs", str(tmp_path), "--log", location], env={"COLUMNS": "200"})
    assert res.exit_code == 1 and said in " ".join(res.output.split()) and "Traceback" not in res.output, res.output
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_restart_within_the_same_second_gets_its_own_log(tmp_path, monkeypatch):
    import sys
    import time as time_mod

    from tunesmith.studio import launch

    launcher = launch.Launcher(tmp_path / ".studio")
    launcher.command = [sys.executable, "-c", "pass"]
    recipe, run_dir = tmp_path / "recipe.yaml", tmp_path / "run"
    recipe.write_text("name: run\n")
    monkeypatch.setattr(time_mod, "time", lambda: 1_800_000_000.0)  # every start in one second
    logs = []
    for _ in range(3):
        job = launcher.start(recipe, run_dir)
        launcher.procs[str(run_dir.resolve())].wait()
        logs.append(job.log)
    assert len(set(logs)) == 3 and all(Path(p).exists() for p in logs)
