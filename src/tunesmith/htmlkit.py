"""The one HTML report kit: every report page tunesmith writes (eval, ladder, data check, retrieval eval, monitor,
loop cycle, sweep) is a `page` of these parts, with one stylesheet.

A page is self-contained: inline CSS, pictures inlined as base64 PNGs, nothing fetched, so it can be attached or
opened offline. Charts are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch), so this
works headless and never touches the caller's matplotlib state. Every piece of model, user or dataset text goes
through `text` (or `html.escape`); the parts below take already-escaped HTML where their argument says `html`.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tunesmith.atomic import write_text_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["CSS", "figure", "img", "page", "png", "table", "text", "write"]

DPI = 100
MAX_TEXT_CHARS = 4000  # keeps a page openable when a model rambles for thousands of tokens

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{margin-bottom:.2rem}.muted{color:#666;font-size:.9rem}
table{border-collapse:collapse;margin:1rem 0}th,td{border:1px solid #ddd;padding:.35rem .7rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.good,.ok{color:#1b7f2a;font-weight:600}.bad,.error{color:#c62828;font-weight:600}.warning{color:#9a6700;font-weight:600}
.flat{color:#777}.tally span{display:inline-block;margin-right:1.2rem;font-size:1.1rem}
img{max-width:100%;border:1px solid #eee;margin:.5rem 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.6rem 1rem;margin:1rem 0}
.card h4{margin:.6rem 0 .2rem}.pair{display:grid;grid-template-columns:1fr 1fr;gap:1rem}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f8fa;padding:.5rem;margin:0;font-size:.85rem;overflow:auto}
tr.winner td{background:#eef8ee}tr.shaded td{background:#fafafa}
"""


def figure(width: float = 6.0, height: float = 3.2) -> Figure:
    """A matplotlib Figure (inches) on the Agg canvas, at the kit's DPI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)  # attach the canvas: savefig/print_png need one, and no pyplot is involved
    return fig


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)  # type: ignore[no-untyped-call]  # matplotlib leaves print_png untyped
    return buf.getvalue()


def message_png(message: str) -> bytes:
    """A picture that only says `message` (a chart with nothing to plot)."""
    fig = figure(6, 2)
    fig.text(0.5, 0.5, message, ha="center", va="center", fontsize=14, color="#555555")
    return png(fig)


def img(data: bytes, alt: str) -> str:
    """An <img> with the PNG inlined."""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def text(value: object, limit: int = MAX_TEXT_CHARS) -> str:
    """Escaped text, cut at `limit` characters with a note of how much was left out."""
    s = "" if value is None else str(value)
    if len(s) > limit:
        s = s[:limit] + f"\n[... {len(s) - limit} more characters]"
    return html.escape(s)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Iterable[int] = (), attrs: str = "") -> str:
    """A table. `headers` are plain text (escaped here); each row's cells are HTML (escape text with `text`); the
    columns whose index is in `numeric` are right-aligned."""
    right = set(numeric)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td class='num'>{c}</td>" if i in right else f"<td>{c}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table{' ' + attrs if attrs else ''}><tr>{head}</tr>{body}</table>"


def page(title: str, body: str, heading: str | None = None, css: str = "") -> str:
    """A whole HTML document: `title` (plain text) in the tab and, unless `heading` says otherwise, as the <h1>;
    `body` is HTML; `css` adds page-specific rules to the kit's stylesheet."""
    h1 = html.escape(title if heading is None else heading)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}{css}</style></head><body>\n<h1>{h1}</h1>\n{body}\n</body></html>\n"
    )


def write(path: str | Path, document: str) -> Path:
    """Write a page atomically (a reader never sees half of it); returns its path."""
    return write_text_atomic(path, document)
