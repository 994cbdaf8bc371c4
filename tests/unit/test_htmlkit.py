"""One HTML report kit: every report page is built from tunesmith.htmlkit (one stylesheet, inline pictures, escaped
text), and no report writer builds its own document, stylesheet or picture encoder."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import tunesmith
from tunesmith import htmlkit

SRC = Path(tunesmith.__file__).parent
# A refusal answered by the studio's guard is a one-line error response, not a report.
NOT_REPORTS = {"studio/guard.py"}


def _sources() -> dict[str, str]:
    return {
        str(p.relative_to(SRC)): p.read_text(encoding="utf-8")
        for p in SRC.rglob("*.py")
        if p.name != "htmlkit.py" and str(p.relative_to(SRC)) not in NOT_REPORTS
    }


def test_no_report_writer_builds_its_own_document_or_pictures():
    own = {
        "a document": re.compile(r"<!doctype|<html", re.I),
        "a stylesheet": re.compile(r"<style"),
        "a PNG encoder": re.compile(r"^\s*import base64|FigureCanvasAgg|print_png|data:image/png", re.M),
        "pyplot (global state)": re.compile(r"pyplot|matplotlib\.use\("),
    }
    found = [f"{path}: {what}" for path, text in _sources().items() for what, rx in own.items() if rx.search(text)]
    assert not found, "build these with tunesmith.htmlkit:\n" + "\n".join(found)


def test_a_page_is_self_contained_and_escapes_what_it_is_given():
    fig = htmlkit.figure(2, 1)
    fig.add_subplot().plot([0, 1], [1, 0])
    picture = htmlkit.img(htmlkit.png(fig), 'loss "curve"')
    data = base64.b64decode(re.search(r"base64,([^\"]+)", picture).group(1))
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and 'alt="loss &quot;curve&quot;"' in picture
    body = htmlkit.table(["metric <x>", "value"], [[htmlkit.text("<script>"), "0.5"]], numeric=[1]) + picture
    doc = htmlkit.page("run <b>", body)
    assert doc.startswith("<!DOCTYPE html>") and htmlkit.CSS in doc
    assert "<title>run &lt;b&gt;</title>" in doc and "<h1>run &lt;b&gt;</h1>" in doc
    assert "<th>metric &lt;x&gt;</th>" in doc and "<td>&lt;script&gt;</td>" in doc and "<td class='num'>0.5</td>" in doc
    assert not re.search(r"(src|href)=[\"']https?:", doc) and "<link" not in doc  # nothing fetched
    assert htmlkit.text("x" * 10, limit=4) == "xxxx\n[... 6 more characters]"


def test_every_report_page_is_a_kit_page(tmp_path):
    from tunesmith.data.audit import AuditReport
    from tunesmith.data.html import render as audit_page
    from tunesmith.eval.report import write_html

    pages = {
        "data check": audit_page(AuditReport(files=["train.jsonl"])),
        "eval": write_html(tmp_path / "eval.html", {"run": "r", "summary": {}}, [], []).read_text(encoding="utf-8"),
    }
    for name, doc in pages.items():
        assert doc.startswith("<!DOCTYPE html>") and htmlkit.CSS in doc, name
