"""ladder.html: the rung table, the recommendation and a quality-vs-cost chart (matplotlib PNG inline), one file."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from tunesmith import htmlkit
from tunesmith.eval.ladder_report import LadderReport

_EXAMPLES = 3
_MAX_TEXT_CHARS = 600


def quality_cost_png(report: LadderReport) -> bytes:
    """Scatter of each measured rung: cost per 1,000 requests (x) against the report's primary metric (y)."""
    fig = htmlkit.figure(7, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    metric = report.primary_metric
    for rung in report.measured:
        x, y = rung.cost_per_1k, rung.value(metric) or 0.0
        chosen = rung.name == report.recommendation.rung
        ax.scatter([x], [y], s=120 if chosen else 60, color="#2a9d8f" if chosen else "#457b9d", zorder=3)
        ax.annotate(rung.label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
    gate = {g.name: g.threshold for r in report.measured for g in r.gates if g.threshold is not None}
    if metric in gate:
        ax.axhline(gate[metric], color="#e76f51", linestyle="--", linewidth=1, label=f"gate {metric}")
        ax.legend(loc="lower right", fontsize=8)
    if "cost_per_1k" in gate:
        ax.axvline(gate["cost_per_1k"], color="#e76f51", linestyle=":", linewidth=1)
    ax.set_xlabel(f"cost per 1,000 requests ({report.cost_basis} basis)")
    ax.set_ylabel(metric)
    ax.set_title("quality vs cost per rung")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return htmlkit.png(fig)


def _rung_table(report: LadderReport) -> str:
    quality = sorted({k for r in report.measured for k in r.metrics})
    head = ["rung", *quality, "p50 batch ms", "p95 batch ms", "prompt tok", "completion tok", "cost / 1k", "gates"]
    lines = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in report.rungs:
        if r.status != "ok":
            lines.append(
                f"<tr><td>{html.escape(r.label)}</td><td colspan='{len(head) - 1}'>skipped: "
                f"{html.escape(r.reason or '')}</td></tr>"
            )
            continue
        checked = [g for g in r.gates if g.status != "skip"]
        met = ", ".join(g.name for g in checked if not g.passed) or ("all pass" if checked else "-")
        cells = [html.escape(r.label)] + [f"{r.metrics.get(k, float('nan')):.3f}" for k in quality]
        cells += [
            f"{r.latency.p50_batch_ms or 0:.0f}",
            f"{r.latency.p95_batch_ms or 0:.0f}",
            f"{r.prompt_tokens:.0f}",
            f"{r.completion_tokens:.0f}",
            f"{r.cost_per_1k:.4g}",
            html.escape(met),
        ]
        style = " class='winner'" if r.name == report.recommendation.rung else ""
        lines.append(f"<tr{style}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "\n".join(lines + ["</table>"])


def _examples(report: LadderReport, rows: list[dict[str, Any]]) -> str:
    cards = []
    for row in rows[:_EXAMPLES]:
        outs = "".join(
            f"<tr><td>{html.escape(r.label)}</td><td><pre>{html.escape(str(row['outputs'].get(r.name, ''))[:_MAX_TEXT_CHARS])}</pre></td></tr>"
            for r in report.measured
        )
        cards.append(
            f"<h3>{html.escape(str(row['id']))}</h3><pre>{html.escape(row['prompt'][:_MAX_TEXT_CHARS])}</pre>"
            f"<p>reference:</p><pre>{html.escape(row['reference'])}</pre><table>{outs}</table>"
        )
    return "\n".join(cards)


def render(report: LadderReport, rows: list[dict[str, Any]]) -> str:
    rec = report.recommendation
    warning = f"<p><b>warning:</b> {html.escape(rec.warning)}</p>" if rec.warning else ""
    gates = ", ".join(f"{k}: {v}" for k, v in report.gates.items()) or "none set"
    return htmlkit.page(
        f"tunesmith ladder: {report.run}",
        heading=f"Ladder: {report.run}",
        body=f"""
<p>{report.n_examples} held-out prompts per rung · base model {html.escape(report.base_model)} · device {html.escape(report.device)}
· cost basis {report.cost_basis} at {report.price:g} · gates: {html.escape(gates)}</p>
<p>Reference answers: {html.escape(report.reference or "n/a")}</p>
<h2>Recommendation</h2><p>{html.escape(rec.sentence)}</p>{warning}
<h2>Rungs</h2>{_rung_table(report)}
<p>Latency is the wall time of one generation batch (batch size {report.generation.get("batch_size")}).</p>
{htmlkit.img(quality_cost_png(report), "quality vs cost")}
<h2>First prompts, every rung</h2>{_examples(report, rows)}
""",
    )


def write_ladder_html(path: Path, report: LadderReport, rows: list[dict[str, Any]]) -> Path:
    return htmlkit.write(path, render(report, rows))
