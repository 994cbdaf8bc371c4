"""The retrieval eval as one self-contained HTML page: recall@k, MRR and hit rate per mode as an inline PNG, and the misses.

A page of the report kit (htmlkit); every piece of question or source text is HTML-escaped.
"""

from __future__ import annotations

import html
from pathlib import Path

from tunesmith import htmlkit
from tunesmith.rag.quality import RetrievalEval


def scores_png(report: RetrievalEval) -> bytes:
    """PNG bytes: grouped bars of recall@k, MRR and hit@k for each search mode (0..1)."""
    fig = htmlkit.figure(6, 3.2)
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
    return htmlkit.png(fig)


def render(report: RetrievalEval) -> str:
    """The HTML text of a retrieval eval."""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(m)}</td><td>{s.recall_at_k:.3f}</td><td>{s.mrr:.3f}</td><td>{s.hit_rate:.3f}</td></tr>"
        for m, s in report.modes.items()
    )
    misses = "".join(
        f"<tr><td>{e(m['question'])}</td><td>{e(', '.join(m['gold']))}</td><td>{e(', '.join(m['got']))}</td></tr>"
        for m in report.misses
    )
    return htmlkit.page(
        "retrieval eval",
        heading="Retrieval eval",
        body=f"<p>index {e(report.index)} (content {e(report.content_hash[:12])}) · {e(report.file)} · "
        f"{report.scored} scored, {report.skipped} skipped · k={report.k}</p>"
        f"{htmlkit.img(scores_png(report), 'recall, MRR and hit rate per mode')}"
        f"<table><tr><th>mode</th><th>recall@{report.k}</th><th>MRR</th><th>hit@{report.k}</th></tr>{rows}</table>"
        f"<h2>Misses ({len(report.misses)} shown)</h2><table><tr><th>question</th><th>gold</th><th>retrieved</th></tr>"
        f"{misses}</table>",
    )


def write_html(path: str | Path, report: RetrievalEval) -> Path:
    """Write the page atomically; returns its path."""
    return htmlkit.write(path, render(report))
