"""A loop cycle's report: SERVE_DIR/loop/<time>/cycle.json (the `Cycle` record), cycle.html, and the cycle's drift
report (monitor.json, monitor.html, written by monitor/report.py's helpers). Written and read here only."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from tunesmith.atomic import write_text_atomic
from tunesmith.errors import RunError

CYCLE_NAME, CYCLE_HTML = "cycle.json", "cycle.html"
_COLOUR = {0: "#1a7f37", 3: "#cf222e", 4: "#9a6700", 1: "#cf222e"}


def write_cycle(folder: Path, cycle: Any, monitor: Any = None) -> None:
    """cycle.json and cycle.html (and the drift report when the cycle made one) in the cycle's folder."""
    from tunesmith.monitor.report import HTML_NAME, REPORT_NAME, write_html, write_report

    folder.mkdir(parents=True, exist_ok=True)
    if monitor is not None:
        write_report(folder / REPORT_NAME, monitor)
        write_html(folder / HTML_NAME, monitor)
    write_text_atomic(folder / CYCLE_NAME, cycle.model_dump_json(indent=1) + "\n")
    write_text_atomic(folder / CYCLE_HTML, render(cycle, monitor is not None))


def read_cycle(path: str | Path) -> Any:
    from tunesmith.monitor.loop import CYCLE_VERSION, Cycle
    from tunesmith.records import read_record

    return read_record(Path(path), Cycle, CYCLE_VERSION)


def cycles(serve_dir: str | Path, limit: int = 20) -> list[tuple[str, Any]]:
    """(folder name, Cycle) of the latest cycles of a serve folder, newest first; unreadable ones are left out."""
    from tunesmith.monitor.loop import LOOP_DIR

    out = []
    for path in sorted(Path(serve_dir, LOOP_DIR).glob(f"*/{CYCLE_NAME}"), reverse=True)[:limit]:
        try:
            out.append((path.parent.name, read_cycle(path)))
        except RunError:
            continue
    return out


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
    error = f"<p style='color:#cf222e'><b>error:</b> {html.escape(cycle.error)}</p>" if cycle.error else ""
    drift = "<p><a href='monitor.html'>drift report of this cycle</a></p>" if has_monitor else ""
    colour = _COLOUR.get(cycle.exit_code, "#6e7781")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tunesmith loop cycle</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:3px 8px;border-bottom:1px solid #ddd;font-size:13px;text-align:left}}</style>
</head><body><h1>Loop cycle: {html.escape(cycle.name)}</h1>
<p style='color:{colour}'><b>{html.escape(cycle.outcome.replace("_", " "))}</b> (exit {cycle.exit_code})</p>{error}
<table>{_rows(facts)}</table>
<h2>Feedback that could not become a row</h2><table>{_rows(cycle.skipped) or "<tr><td>none</td></tr>"}</table>
<h2>Rows screened out</h2><table>{_rows(cycle.dropped) or "<tr><td>none</td></tr>"}</table>
{gate_table if cycle.gates else ""}{drift}</body></html>"""
