"""The audit as one self-contained HTML page: findings by code, length histograms as inline PNGs, sampled rows as
training sees them (special tokens visible, trained spans coloured, a legend), and the statistics.

Charts are drawn on matplotlib's Agg canvas (no pyplot, no global backend switch), the page
uses inline CSS only, every piece of dataset text is HTML-escaped, and the file is written to
a temp file and renamed, like the eval report.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from collections.abc import Iterable
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tunesmith.atomic import write_text_atomic
from tunesmith.data.audit import AuditReport
from tunesmith.data.show import Shown, counts_line

_DPI = 100
_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
    ".error{color:#b00020;font-weight:bold}.warning{color:#9a6700;font-weight:bold}.ok{color:#1a7f37;font-weight:bold}"
    "pre{background:#f6f8fa;padding:1em;overflow:auto;font-size:12px}"
)


def histogram_png(values: list[int], title: str, limit: int | None = None) -> bytes:
    """PNG bytes of a histogram of per-example token counts, with the max_length line when given."""
    fig = Figure(figsize=(6, 3.2), dpi=_DPI)
    ax = fig.add_subplot()
    if values:
        ax.hist(values, bins=min(50, max(5, len(set(values)))), color="#1f77b4")
        if limit is not None:
            ax.axvline(limit, color="#d62728", linestyle="--", label=f"max_length {limit}")
            ax.legend()
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xlabel("tokens per example")
    ax.set_ylabel("examples")
    fig.tight_layout()
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)  # type: ignore[no-untyped-call]  # matplotlib leaves print_png untyped
    return buf.getvalue()


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def render(report: AuditReport) -> str:
    """The HTML text of a report."""
    e = html.escape
    status = (
        f'<span class="error">{len(report.errors)} blocking error(s)</span>'
        if report.errors
        else '<span class="ok">no blocking errors</span>'
    )
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>data check</title><style>{_CSS}</style></head><body>",
        f"<h1>Data check</h1><p>{e(', '.join(report.files))}</p><p>{status} · {len(report.warnings)} warning(s)</p>",
        "<h2>Findings</h2><table><tr><th>code</th><th>severity</th><th>count</th><th>meaning</th><th>first places</th></tr>",
    ]
    for code, g in report.by_code().items():
        first = "<br>".join(e(x) for x in g["first"])
        parts.append(
            f"<tr><td>{e(code)}</td><td class='{g['severity']}'>{g['severity']}</td><td>{g['count']}</td>"
            f"<td>{e(g['description'])}</td><td>{first}</td></tr>"
        )
    parts.append("</table>")
    if report.lengths:
        limit = report.stats.get("tokens", {}).get("max_length")
        parts.append("<h2>Lengths</h2>")
        parts.append(_img(histogram_png(report.lengths["total"], "total tokens per example", limit), "total tokens histogram"))
        assistant_png = histogram_png(report.lengths["assistant"], "trained (assistant) tokens per example")
        parts.append(_img(assistant_png, "assistant tokens histogram"))
    if report.samples:  # the rows as training sees them: what the model will learn
        parts.append(rows_section(report.samples))
    parts.append(f"<h2>Statistics</h2><pre>{e(json.dumps(report.stats, indent=2, default=str))}</pre></body></html>")
    return "\n".join(parts)


# Inline styles, so a row renders the same inside the audit page, the studio or any other page.
_STYLE = {
    "trained": "background:#b7ebc6;color:#0b3d1a",
    "context": "color:#6a737d",
    "special": "font-weight:bold;color:#6f42c1;background:#efe6ff;border-radius:2px",
}
_LEGEND = (
    "<p class='ts-legend'>"
    f"<span style='{_STYLE['trained']}'>trained: the model learns to write this</span> · "
    f"<span style='{_STYLE['context']}'>context: seen, not learned</span> · "
    f"<span style='{_STYLE['special']}'>&lt;special token&gt;</span> · "
    f"<span style='{_STYLE['special']};outline:2px solid #1a7f37'>&lt;special token, trained&gt;</span></p>"
)


def _marked(text: str, specials: list[str], trained: bool = False) -> str:
    """Escaped text with every special token wrapped so it stands out (outlined in green when it is trained, as an
    end-of-turn token is)."""
    if not specials:
        return html.escape(text)
    style = _STYLE["special"] + (";outline:2px solid #1a7f37" if trained else "")
    pieces = re.split("(" + "|".join(map(re.escape, specials)) + ")", text)
    return "".join(
        f"<span class='ts-special' style='{style}'>{html.escape(p)}</span>" if i % 2 else html.escape(p)
        for i, p in enumerate(pieces)
    )


def row_html(shown: Shown, legend: bool = True) -> str:
    """One rendered row as an HTML fragment: trained runs coloured, special tokens visible, counts below."""
    runs = "".join(
        f"<span class='{'ts-trained' if trained else 'ts-context'}' style='{_STYLE['trained' if trained else 'context']}'>"
        f"{_marked(text, shown.specials, trained)}</span>"
        for text, trained in shown.segments
    )
    problems = "".join(f"<p class='error'>{html.escape(p)}</p>" for p in shown.problems)
    state = f"dropped ({shown.dropped})" if shown.dropped else f"{shown.kept_tokens} tokens reach training"
    return (
        f"<div class='ts-row'><p><b>{html.escape(shown.where)}</b></p>{problems}{_LEGEND if legend else ''}"
        "<pre style='white-space:pre-wrap;word-break:break-word;background:#f6f8fa;padding:1em;font-size:12px'>"
        f"{runs}</pre><p>{shown.n_tokens} tokens, {shown.n_trained} trained; end of turn trained: {shown.eos_trained}; "
        f"{html.escape(state)}<br>{html.escape(counts_line(shown))}</p></div>"
    )


def rows_section(rows: Iterable[Shown], title: str = "What the model will learn") -> str:
    """A report section of sampled rows, with the legend once."""
    return f"<h2>{html.escape(title)}</h2>{_LEGEND}" + "".join(row_html(r, legend=False) for r in rows)


def write_html(path: str | Path, report: AuditReport) -> Path:
    """Write the report page atomically; returns its path."""
    return write_text_atomic(path, render(report))
