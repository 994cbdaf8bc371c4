"""Render a base-vs-tuned evaluation as pictures and one self-contained HTML page (the report kit: htmlkit).

Every piece of model or dataset text is HTML-escaped.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunesmith import htmlkit
from tunesmith.atomic import write_bytes_atomic
from tunesmith.eval import registry
from tunesmith.eval.metrics import primary_metrics
from tunesmith.eval.registry import TOOL_METRICS

__all__ = ["loss_curve_png", "metrics_chart_png", "write_html"]
_MAX_REGRESSIONS = 10
_MAX_IMPROVEMENTS = 5


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = sorted(
        (float(row["step"]), float(row[key])) for row in history if row.get("step") is not None and row.get(key) is not None
    )
    return [s for s, _ in points], [v for _, v in points]


def loss_curve_png(history: Sequence[dict[str, Any]], path: Path | None = None) -> bytes:
    """PNG bytes of training `loss` and (when present) `eval_loss` against `step`.

    history rows look like {"step": 10, "loss": 1.2} or {"step": 10, "eval_loss": 1.1};
    rows without a step or either loss are ignored. With nothing to plot the picture
    says "no training history". Also written to `path` when given.
    """
    train_x, train_y = _series(history, "loss")
    eval_x, eval_y = _series(history, "eval_loss")
    if not train_x and not eval_x:
        data = htmlkit.message_png("no training history")
    else:
        fig = htmlkit.figure(7, 4)
        ax = fig.add_subplot()
        if train_x:
            ax.plot(train_x, train_y, label="train loss", color="#1f77b4", linewidth=1.5)
        if eval_x:
            ax.plot(eval_x, eval_y, label="eval loss", color="#d62728", marker="o", linewidth=1.5)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title("Training loss")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        data = htmlkit.png(fig)
    if path is not None:
        write_bytes_atomic(path, data)
    return data


def _charted(name: str) -> registry.Metric | None:
    """The registry metric when it is a higher-is-better score on a 0-1 or 0-100 range (drawn as a bar), else None."""
    try:
        m = registry.metric(name)
    except ValueError:
        return None
    return m if m.higher_is_better and m.low == 0.0 and m.high in (1.0, 100.0) else None


def metrics_chart_png(summary: dict[str, dict[str, float]]) -> bytes:
    """PNG bytes of a grouped bar chart, base vs tuned, one group per metric.

    summary is {"base": {metric: value}, "tuned": {...}, ...}. Only higher-is-better scores with a bounded range
    (the registry's) are drawn: loss, perplexity and unbounded figures are skipped; a 0-100 score (BLEU) is drawn
    divided by 100 so every bar is on 0-1.
    """
    base = summary.get("base", {}) or {}
    tuned = summary.get("tuned", {}) or {}
    names = [m for m in dict.fromkeys([*base, *tuned]) if _charted(m) and (base.get(m) is not None or tuned.get(m) is not None)]
    if not names:
        return htmlkit.message_png("no metrics")

    def high(m: str) -> float:
        declared = _charted(m)
        return (declared.high or 1.0) if declared else 1.0

    def scaled(d: dict[str, float], m: str) -> float:
        v = d.get(m)
        return 0.0 if v is None else float(v) / high(m)

    labels = [f"{m} /{high(m):g}" if high(m) != 1.0 else m for m in names]
    xs = list(range(len(names)))
    width = 0.38
    fig = htmlkit.figure(max(6.0, 1.3 * len(names) + 2), 4)
    ax = fig.add_subplot()
    ax.bar([x - width / 2 for x in xs], [scaled(base, m) for m in names], width, label="base", color="#9e9e9e")
    ax.bar([x + width / 2 for x in xs], [scaled(tuned, m) for m in names], width, label="tuned", color="#2e7d32")
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (0-1)")
    ax.set_title("Base vs tuned")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return htmlkit.png(fig)


def _fmt(v: Any) -> str:
    if v is None:
        return "&mdash;"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return html.escape(str(v))
    return f"{f:.2f}" if abs(f) >= 10 else f"{f:.4f}"


def _delta_cell(metric: str, delta: float | None) -> str:
    if delta is None:
        return '<td class="num">&mdash;</td>'
    try:
        better = delta if registry.higher_is_better(metric) else -delta
    except ValueError:  # a metric this version does not declare (an earlier report): shown, not coloured
        better = 0.0
    cls = "good" if better > 1e-9 else "bad" if better < -1e-9 else "flat"
    sign = "+" if delta > 0 else ""
    return f'<td class="num {cls}">{sign}{_fmt(delta)}</td>'


def _metrics_table(summary: dict[str, dict[str, float]]) -> str:
    base = summary.get("base", {}) or {}
    tuned = summary.get("tuned", {}) or {}
    deltas = summary.get("delta", {}) or {}
    rows = []
    for m in dict.fromkeys([*base, *tuned]):
        b, t = base.get(m), tuned.get(m)
        d = deltas.get(m)
        if d is None and b is not None and t is not None:
            d = float(t) - float(b)
        rows.append(
            f'<tr><td>{html.escape(str(m))}</td><td class="num">{_fmt(b)}</td>'
            f'<td class="num">{_fmt(t)}</td>{_delta_cell(m, d)}</tr>'
        )
    return (
        "<table><thead><tr><th>metric</th><th>base</th><th>tuned</th><th>delta</th></tr>"
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _per_tool_table(per_tool: dict[str, dict[str, dict[str, float]]]) -> str:
    """Tool rows: per function the reference calls, each tool metric base -> tuned ('' without tool rows)."""
    base, tuned = per_tool.get("base") or {}, per_tool.get("tuned") or {}
    if not base and not tuned:
        return ""
    names = [m for m in TOOL_METRICS if any(m in f for f in [*base.values(), *tuned.values()])]
    head = "".join(f"<th>{html.escape(m)}</th>" for m in names)
    rows = []
    for tool in dict.fromkeys([*base, *tuned]):
        b, t = base.get(tool, {}), tuned.get(tool, {})
        cells = "".join(f'<td class="num">{_fmt(b.get(m))} &rarr; {_fmt(t.get(m))}</td>' for m in names)
        rows.append(f'<tr><td>{html.escape(tool)}</td><td class="num">{int(t.get("n", b.get("n", 0)))}</td>{cells}</tr>')
    return (
        "<h2>Per tool</h2><p class='muted'>Rows grouped by the function the reference calls; base &rarr; tuned.</p>"
        f"<table><thead><tr><th>function</th><th>rows</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _margin(pred: dict[str, Any], order: tuple[str, ...]) -> tuple[float, ...]:
    # tuned - base on each primary metric in priority order: sorts examples the same way judge() decides them.
    b = pred.get("base_metrics") or {}
    t = pred.get("tuned_metrics") or {}
    return tuple(float(t[m]) - float(b[m]) if b.get(m) is not None and t.get(m) is not None else 0.0 for m in order)


def _example_cards(preds: list[dict[str, Any]], order: tuple[str, ...]) -> str:
    if not preds:
        return '<p class="muted">None.</p>'
    cards = []
    for p in preds:
        bm = p.get("base_metrics") or {}
        tm = p.get("tuned_metrics") or {}
        scores = ", ".join(f"{html.escape(m)} {_fmt(bm.get(m))} &rarr; {_fmt(tm.get(m))}" for m in order)
        cards.append(
            f'<div class="card"><div class="muted">id {htmlkit.text(p.get("id"))} &middot; {scores}</div>'
            f"<h4>Prompt</h4><pre>{htmlkit.text(p.get('prompt'))}</pre>"
            f"<h4>Reference</h4><pre>{htmlkit.text(p.get('reference'))}</pre>"
            f'<div class="pair"><div><h4>Base</h4><pre>{htmlkit.text(p.get("base"))}</pre></div>'
            f"<div><h4>Tuned</h4><pre>{htmlkit.text(p.get('tuned'))}</pre></div></div></div>"
        )
    return "".join(cards)


def _notes(report: dict[str, Any]) -> str:
    """The report's warnings (degenerate output, a tuned model worse than base, QLoRA base, changed inputs), the
    generation budget, and per model the share of outputs that hit it or loop."""
    items = "".join(f'<li class="bad">{html.escape(str(w))}</li>' for w in report.get("warnings") or [])
    g = report.get("generation") or {}
    rows = "".join(
        f"<tr><td>{html.escape(side)}</td><td class='num'>{100 * d.get('hit_budget', 0):.0f}%</td>"
        f"<td class='num'>{100 * d.get('loop_rate', 0):.0f}%</td></tr>"
        for side, d in (report.get("degenerate") or {}).items()
    )
    budget = html.escape(f"{g.get('max_new_tokens')} tokens ({g.get('max_new_tokens_from', 'eval.max_new_tokens')})")
    table = f"<table><tr><th>model</th><th>hit the budget</th><th>repetition loop</th></tr>{rows}</table>" if rows else ""
    return (f"<h2>Warnings</h2><ul>{items}</ul>" if items else "") + f"<p class='muted'>generation budget: {budget}</p>{table}"


def _render(report: dict[str, Any], predictions: list[dict[str, Any]], history: list[dict[str, Any]]) -> str:
    base_model = html.escape(str(report.get("base_model", "")))
    summary = report.get("summary") or {}
    j = report.get("judgement") or {}
    order = primary_metrics(bool(report.get("json_mode", False)), bool(report.get("tool_mode", False)))
    mode = "tool-call" if report.get("tool_mode") else "JSON" if report.get("json_mode") else "text"

    losses = sorted((p for p in predictions if p.get("judgement") == "loss"), key=lambda p: _margin(p, order))
    wins = sorted((p for p in predictions if p.get("judgement") == "win"), key=lambda p: _margin(p, order), reverse=True)
    title = str(report.get("run", ""))
    return htmlkit.page(
        f"tunesmith eval: {title}",
        heading=f"Evaluation: {title}",
        body=f"""
<p class="muted">base model {base_model} &middot; {html.escape(str(report.get("n_examples", len(predictions))))} held-out examples
&middot; {mode} mode &middot; examples judged on {html.escape(", ".join(order))} in that order</p>
<p class="muted">reference answers: {html.escape(str(report.get("reference") or "n/a"))}</p>
{_notes(report)}
<h2>Metrics</h2>
{_metrics_table(summary)}
{_per_tool_table(report.get("per_tool") or {})}
<h2>Tuned vs base, per example</h2>
<p class="tally"><span class="good">wins {int(j.get("wins", 0))}</span><span class="bad">losses {int(j.get("losses", 0))}</span>
<span class="flat">ties {int(j.get("ties", 0))}</span><span>win rate {100 * float(j.get("win_rate", 0.0)):.1f}%</span></p>
<h2>Training loss</h2>
{htmlkit.img(loss_curve_png(history), "training loss curve")}
<h2>Metrics chart</h2>
{htmlkit.img(metrics_chart_png(summary), "base vs tuned metrics chart")}
<h2>Worst regressions</h2>
<p class="muted">Examples the tuned model lost to base, largest drop first (up to {_MAX_REGRESSIONS}).</p>
{_example_cards(losses[:_MAX_REGRESSIONS], order)}
<h2>Best improvements</h2>
<p class="muted">Examples the tuned model won, largest gain first (up to {_MAX_IMPROVEMENTS}).</p>
{_example_cards(wins[:_MAX_IMPROVEMENTS], order)}
""",
    )


def write_html(
    path: Path,
    report: dict[str, Any],
    predictions: list[dict[str, Any]],
    history: list[dict[str, Any]],
) -> Path:
    """Write the self-contained HTML report to `path` atomically and return the path.

    The page is rendered fully in memory, written to a temp file beside `path`, then
    moved into place with os.replace, so a reader never sees a half-written report
    and a failure leaves no temp file behind.
    """
    return htmlkit.write(path, _render(report, predictions, history))
