"""The retrieval eval as one self-contained HTML page: recall@k, MRR and hit rate per mode as an inline PNG, and the misses.

Drawn on matplotlib's Agg canvas (no pyplot); every piece of question or source text is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tunesmith.atomic import write_text_atomic
from tunesmith.rag.quality import RetrievalEval

_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1000px;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
)


def scores_png(report: RetrievalEval) -> bytes:
    """PNG bytes: grouped bars of recall@k, MRR and hit@k for each search mode (0..1)."""
    fig = Figure(figsize=(6, 3.2), dpi=100)
    ax = fig.add_subplot()
    modes = list(report.modes)
    metrics = (("recall_at_k", f"recall@{report.k}"), ("mrr", "MRR"), ("hit_rate", f"hit@{report.k}"))
    width = 0.8 / len(metrics)
    for i, (field, label) in enumerate(metrics):
        values = [getattr(report.modes[m], field) for m in modes]
        ax.bar([x + i * width for x in range(len(modes))], values, width, label=label)
    ax.set_xticks([x + width for x in range(len(modes))], modes)
    ax.set_ylim(0, 1)
    ax.set_title(f"retrieval on {report.scored} labelled questions")
    ax.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    FigureCanvasAgg(fig)  # attach the Agg canvas: no pyplot, no global backend
    fig.savefig(buf, format="png")
    return buf.getvalue()


def render(report: RetrievalEval) -> str:
    """The HTML text of a retrieval eval."""
    e = html.escape
    png = base64.b64encode(scores_png(report)).decode()
    rows = "".join(
        f"<tr><td>{e(m)}</td><td>{s.recall_at_k:.3f}</td><td>{s.mrr:.3f}</td><td>{s.hit_rate:.3f}</td></tr>"
        for m, s in report.modes.items()
    )
    misses = "".join(
        f"<tr><td>{e(m['question'])}</td><td>{e(', '.join(m['gold']))}</td><td>{e(', '.join(m['got']))}</td></tr>"
        for m in report.misses
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>retrieval eval</title><style>{_CSS}</style></head><body>"
        f"<h1>Retrieval eval</h1><p>index {e(report.index)} (content {e(report.content_hash[:12])}) · {e(report.file)} · "
        f"{report.scored} scored, {report.skipped} skipped · k={report.k}</p>"
        f"<img alt='recall, MRR and hit rate per mode' src='data:image/png;base64,{png}'>"
        f"<table><tr><th>mode</th><th>recall@{report.k}</th><th>MRR</th><th>hit@{report.k}</th></tr>{rows}</table>"
        f"<h2>Misses ({len(report.misses)} shown)</h2><table><tr><th>question</th><th>gold</th><th>retrieved</th></tr>"
        f"{misses}</table></body></html>"
    )


def write_html(path: str | Path, report: RetrievalEval) -> Path:
    """Write the page atomically; returns its path."""
    return write_text_atomic(path, render(report))
