"""The studio lists sweeps and shows one sweep's trials: in a real browser (Debian's chromium via Playwright), and
through the HTTP client for what must be refused."""

from __future__ import annotations

import re

import pytest
from test_studio_browser import ARGS, ARTIFACTS, CHROMIUM, _free_port, serving

from studio_helpers import StudioClient, fake_sweep
from tunesmith.studio.app import StudioConfig, create_app


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("studio-sweeps") / "runs"
    fake_sweep(root, "lr-and-rank", [0.5, 0.75, 0.625, None])
    return root


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (apt-get install -y chromium)")
def test_sweeps_page_lists_sweeps_and_links_each_trial_to_its_run(workspace):
    from playwright.sync_api import sync_playwright

    port = _free_port()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with serving(create_app(StudioConfig(runs=[workspace], port=port)), port) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
        page.goto(url + "/")
        page.get_by_role("link", name="Sweeps").click()
        rows = page.locator("#sweeps tbody tr")
        assert rows.count() == 1 and "3 complete" in rows.first.inner_text() and "trial 1: 0.7500" in rows.first.inner_text()
        page.get_by_role("link", name="lr-and-rank").click()
        page.wait_for_selector("#trials")
        trials = page.locator("#trials tbody tr")
        assert (
            trials.count() == 4 and "★" in trials.nth(1).inner_text() and "winner" in (trials.nth(1).get_attribute("class") or "")
        )
        assert "needs ~2.0 h" in trials.nth(3).inner_text()
        assert page.locator("#chart").evaluate("img => img.complete && img.naturalWidth > 0")
        page.screenshot(path=str(ARTIFACTS / "sweep.png"))
        page.locator("#trials").get_by_role("link", name="trial 2").click()  # each trial is a normal run
        page.wait_for_url(re.compile(r"/run\?k="))
        assert "trial-02" in page.content()
        browser.close()


def test_a_sweep_outside_the_folders_or_not_a_sweep_is_refused(workspace, tmp_path):
    client = StudioClient(create_app(StudioConfig(runs=[workspace])))
    assert client.get("/sweep", params={"k": "0/lr-and-rank"}).status_code == 200
    for k in ("0/../../etc", "0/lr-and-rank/trials", "7/x"):
        assert client.get("/sweep", params={"k": k}).status_code == 404
    empty = StudioClient(create_app(StudioConfig(runs=[tmp_path])))
    assert "No sweeps under" in empty.get("/sweeps").text
