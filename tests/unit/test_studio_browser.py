"""The studio in a real browser (Debian's chromium via Playwright) on loopback, against the tiny model.

One browser and one studio server for the module. Screenshots of each page go to tests/artifacts/studio/.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers import chat_rows, write_jsonl
from studio_helpers import fake_run

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "studio"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (apt-get install -y chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("studio") / "runs"
    (root / "data").mkdir(parents=True)
    write_jsonl(root / "data" / "train.jsonl", chat_rows(24, seed=1))
    write_jsonl(root / "data" / "eval.jsonl", chat_rows(6, seed=2))
    fake_run(root, "json-extractor", n_examples=60, seed=5)
    fake_run(root, "earlier-try", n_examples=6, seed=9)
    return root


@contextmanager
def serving(app, port: int):
    """`app` served by uvicorn on 127.0.0.1:`port` in a thread, for the duration of the block."""
    import uvicorn

    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(workspace, tiny_model_dir):
    from tunesmith.studio.app import StudioConfig, create_app

    port = _free_port()
    with serving(create_app(StudioConfig(runs=[workspace], port=port, models=[tiny_model_dir])), port) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = context.new_page()
    yield pg
    context.close()


def shot(pg, name: str) -> None:
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)


def test_runs_list_report_and_phone_width(page, server, browser):
    page.goto(server + "/")
    rows = page.locator("#runs tbody tr")
    assert rows.count() == 2 and "finished" in rows.first.inner_text()
    shot(page, "runs")
    page.locator("#runs tr", has_text="json-extractor").get_by_role("link", name="report").click()
    page.wait_for_selector("#summary")
    assert page.locator(".card.example").count() == 50 and "page 1 of 2" in page.content()
    shot(page, "report")
    page.check("input[name=losses]")
    page.click("text=Filter")
    assert all(j == "loss" for j in page.locator(".card.example .pill").all_inner_texts())
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True).new_page()
    phone.goto(server + "/")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling on a phone
    shot(phone, "runs-phone")
    phone.context.close()


def _judge(page, server: str, k: str, reviewer: str, keys: list[str]) -> None:
    page.goto(f"{server}/review/round?k={k}&r=1")
    page.fill("#reviewer", reviewer)
    page.keyboard.press("Enter")
    for key in keys:
        page.wait_for_selector("#answer-a")
        page.locator("body").click(position={"x": 5, "y": 5})  # focus off the inputs, as a keyboard user tabbing would
        with page.expect_navigation():
            page.keyboard.press(key)
    page.wait_for_selector("#all-done")


def test_blind_review_with_two_reviewers(page, server, workspace):
    from tunesmith.studio.agreement import cohen_kappa, wilson
    from tunesmith.studio.review import ReviewStore

    page.goto(server + "/")
    page.click("text=earlier-try")
    k = re.search(r"k=([^&]+)", page.url).group(1)
    page.click("text=Blind review")
    page.fill("input[name=name]", "pilot")
    page.click("text=Start a round")
    page.fill("#reviewer", "ann")
    page.keyboard.press("Enter")
    page.wait_for_selector("#answer-a")
    assert "tuned" not in page.inner_text("main") and "base" not in page.inner_text("main")  # no labels while open
    shot(page, "review")
    pressed = {"ann": ["a", "a", "b", "t", "a", "x"], "bob": ["a", "b", "b", "t", "b", "a"]}
    for reviewer, keys in pressed.items():
        _judge(page, server, k, reviewer, keys)
    page.goto(f"{server}/review/round?k={k}&r=1")
    page.click("#close-round")
    page.wait_for_selector("#stats")
    shot(page, "review-results")

    # What the keys meant, from the blind order each reviewer was shown (A is side y when swapped).
    store = ReviewStore.open(workspace / "earlier-try")
    items = store.items(1)
    sides = {
        r: [
            {"t": "tie", "x": "bad"}.get(key) or ("y" if (key == "a") == store.swapped(1, item.id, r) else "x")
            for item, key in zip(items, keys, strict=True)
        ]
        for r, keys in pressed.items()
    }
    store.close()
    agreed = [a for a, b in zip(sides["ann"], sides["bob"], strict=True) if a == b]
    wins, decided = agreed.count("y"), agreed.count("y") + agreed.count("x")
    if decided:
        lo, hi = wilson(wins, decided)
        assert page.inner_text("#win-rate") == f"{100 * wins / decided:.1f}% (95% CI {100 * lo:.1f}–{100 * hi:.1f}%)"
    else:
        assert page.inner_text("#win-rate") == "n/a"
    assert page.inner_text("#kappa") == f"cohen κ = {cohen_kappa(sides['ann'], sides['bob']):.3f}"
    assert f"Disagreements ({len(items) - len(agreed)})" in page.inner_text("main")


def test_launch_a_tiny_run_then_chat(page, server, workspace, tiny_model_dir):
    page.goto(server + "/launch")
    page.check("input[name=train][value$='data/train.jsonl']")
    page.check("input[name=eval_file][value$='data/eval.jsonl']")
    page.fill("input[name=base]", str(tiny_model_dir))
    page.fill("input[name=name]", "tiny-launch")
    page.fill("input[name=max_steps]", "3")
    page.click("#check")
    page.wait_for_selector("#audit-summary")
    assert "0 blocking errors" in page.inner_text("#audit-summary")
    recipe = page.input_value("#recipe")
    assert "# Training method" in recipe  # field help from the recipe schema
    recipe = recipe.replace("\ntraining:\n", "\ntraining:\n  logging_steps: 1\n  save_steps: 2\n")
    page.fill("#recipe", recipe)
    shot(page, "launch")
    page.click("#start")
    page.wait_for_selector("#status")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('finished')", timeout=240_000)
    assert int(page.inner_text("#step")) >= 1
    shot(page, "job")
    assert (workspace / "tiny-launch" / "manifest.json").exists()

    page.goto(server + "/")
    page.click("text=tiny-launch")
    page.click("text=Chat")
    page.fill("#msg", "<script>window.__xss = 1</script> Add 2 and 3.")
    page.click("#send")
    page.wait_for_selector(".answer.tuned.done", timeout=120_000)
    assert page.evaluate("window.__xss") is None
    assert "<script>window.__xss = 1</script>" in page.inner_text("#thread")
    page.check("input[name=mode][value=both]")
    page.fill("#msg", "And 4 and 5?")
    page.click("#send")
    page.wait_for_selector(".side .answer.tuned.done", timeout=120_000)
    assert page.locator(".side .answer.base.done").count() == 1
    shot(page, "chat")


@contextmanager
def another_site(html: str):
    """A second local web server, on another port (another origin), serving `html` at /."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/"
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_page_from_another_origin_cannot_launch_a_run(page, server, workspace, tiny_model_dir):
    from html import escape

    recipe = (
        f"name: evil\nmodel: {{base: {tiny_model_dir}}}\ndata: {{train: [{workspace / 'data' / 'train.jsonl'}]}}\n"
        f"training: {{max_steps: 1}}\noutput_dir: {workspace / 'evil-run'}\n"
    )
    form = (
        f'<form id="f" method="post" action="{server}/launch/start"><textarea name="recipe">{escape(recipe)}</textarea></form>'
        "<script>document.getElementById('f').submit()</script>"
    )
    page.goto(server + "/launch")  # the user has the studio open: its session cookie is in this browser
    with another_site(form) as evil:
        with page.expect_navigation(url=re.compile(re.escape(server) + "/launch/start")) as nav:
            page.goto(evil)
        assert nav.value.status == 403
        assert "Refused a request sent by another site (Sec-Fetch-Site: same-site)" in page.inner_text("body")
        shot(page, "cross-origin-refused")
        # The same with fetch (no-cors: the page cannot read the answer, but the request is still sent).
        page.goto(evil.replace("127.0.0.1", "localhost"))
        page.evaluate(
            """async ([url, recipe]) => { const body = new URLSearchParams({recipe});
                 await fetch(url, {method: "POST", mode: "no-cors", body}); }""",
            [server + "/launch/start", recipe],
        )
    assert not (workspace / "evil-run").exists()
    assert not [p for p in (workspace / ".studio" / "recipes").glob("*.yaml") if "evil" in p.name]
    page.goto(server + "/launch")  # the studio's own page, in the same browser, still changes state
    page.check("input[name=train][value$='data/train.jsonl']")
    page.fill("input[name=base]", str(tiny_model_dir))
    page.click("#check")
    page.wait_for_selector("#audit-summary")
    assert "0 blocking errors" in page.inner_text("#audit-summary")


def test_a_rebound_dns_name_reads_nothing(server, browser):
    """DNS rebinding, for real: chromium resolves rebind.example to 127.0.0.1, as a rebinding attacker's DNS would."""
    port = server.rsplit(":", 1)[1]
    rules = "--host-resolver-rules=MAP rebind.example 127.0.0.1"
    rebound = browser.browser_type.launch(executable_path=str(CHROMIUM), args=[*ARGS, rules])
    try:
        pg = rebound.new_page()
        res = pg.goto(f"http://rebind.example:{port}/")
        assert res.status == 421 and "json-extractor" not in pg.content()
        read = pg.evaluate("async () => { const r = await fetch('/run?k=0/json-extractor'); return [r.status, await r.text()]; }")
        assert read[0] == 421 and "json-extractor" not in read[1]
        assert pg.goto(f"http://127.0.0.1:{port}/").status == 200  # the studio's own name still works in that browser
    finally:
        rebound.close()


def test_data_page_shows_what_the_model_will_learn(page, server, tiny_model_dir):
    page.goto(server + "/data")
    option = page.locator("select[name=k] option", has_text="data/train.jsonl").first
    page.select_option("select[name=k]", option.get_attribute("value"))
    page.fill("#model", str(tiny_model_dir))
    page.click("text=Audit")
    page.wait_for_selector("#mask-view")
    view = page.locator("#mask-view")
    assert view.locator(".ts-row").count() == 5 and view.locator(".ts-trained").count() >= 5
    assert "trained: the model learns to write this" in view.inner_text()
    assert view.locator(".ts-special", has_text="<|im_end|>").count() >= 5  # special tokens shown, marked
    trained = view.locator(".ts-trained").first.inner_text()
    assert trained.endswith("<|im_end|>") and '"sum"' in trained  # the answer and its end of turn, nothing else
    shot(page, "data-mask")
