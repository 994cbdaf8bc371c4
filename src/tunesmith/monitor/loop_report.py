"""A loop cycle's report: SERVE_DIR/loop/<time>/cycle.json (the `Cycle` record), cycle.html, and the cycle's drift
report (monitor.json, monitor.html, written by monitor/report.py's helpers). Written and read here only."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from tunesmith import htmlkit
from tunesmith.atomic import write_text_atomic
from tunesmith.monitor.report import HTML_NAME, REPORT_NAME, write_html, write_report

CYCLE_NAME, CYCLE_HTML = "cycle.json", "cycle.html"
_CLASS = {0: "ok", 3: "bad", 4: "warning", 1: "bad"}  # by exit code


def write_cycle(folder: Path, cycle: Any, monitor: Any = None) -> None:
    """cycle.json and cycle.html (and the drift report when the cycle made one) in the cycle's folder."""
    folder.mkdir(parents=True, exist_ok=True)
    if monitor is not None:
        write_report(folder / REPORT_NAME, monitor)
        write_html(folder / HTML_NAME, monitor)
    write_text_atomic(folder / CYCLE_NAME, cycle.model_dump_json(indent=1) + "\n")
    write_text_atomic(folder / CYCLE_HTML, render(cycle, monitor is not None))


def _rows(items: dict[str, Any]) -> str:
    return "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in items.items())


def render(cycle: Any, has_monitor: bool) -> str:
    """The cycle as one self-contained page."""
    facts = {
        "serve folder": cycle.serve_dir,
        "model": cycle.name,
        "started (UTC)": f"{cycle.started:%Y-%m-%d %H:%M:%S}",
        "served run": cycle.served_run or "",
        "signals drifting": ", ".join(cycle.drifted) or "none",
        "rows exported": cycle.exported,
        "rows added": cycle.added,
        "added file": cycle.added_file or "",
        "new run": cycle.new_run or "",
        "rollout": cycle.rollout or "",
    }
    gates = "".join(
        f"<tr><td>{html.escape(g.name)}</td><td>{'' if g.value is None else f'{g.value:.4g}'}</td><td>{html.escape(g.rule)}</td>"
        f"<td><b>{g.status}</b></td><td>{html.escape(g.detail)}</td></tr>"
        for g in cycle.gates
    )
    gate_table = (
        f"<h2>Gates</h2><table><tr><th>gate</th><th>value</th><th>rule</th><th>status</th><th>detail</th></tr>{gates}</table>"
    )
    error = f"<p class='bad'>error: {html.escape(cycle.error)}</p>" if cycle.error else ""
    drift = "<p><a href='monitor.html'>drift report of this cycle</a></p>" if has_monitor else ""
    outcome = _CLASS.get(cycle.exit_code, "flat")
    return htmlkit.page(
        "tunesmith loop cycle",
        heading=f"Loop cycle: {cycle.name}",
        body=f"""<p class='{outcome}'>{html.escape(cycle.outcome.replace("_", " "))} (exit {cycle.exit_code})</p>{error}
<table>{_rows(facts)}</table>
<h2>Feedback that could not become a row</h2><table>{_rows(cycle.skipped) or "<tr><td>none</td></tr>"}</table>
<h2>Rows screened out</h2><table>{_rows(cycle.dropped) or "<tr><td>none</td></tr>"}</table>
{gate_table if cycle.gates else ""}{drift}""",
    )
