"""Sweep pages: every `tunesmith sweep` folder under the studio's run folders, and one sweep's trials (each trial's
run linked to its own page, the metric-vs-cost chart shown)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from tunesmith.errors import RunError, TunesmithError
from tunesmith.studio.render import page
from tunesmith.studio.runs import SKIP_DIRS, Roots
from tunesmith.sweep import report
from tunesmith.sweep.spec import SPEC

router = APIRouter()


@dataclass
class SweepRow:
    """One sweep folder as the list shows it (problem: why its results cannot be read)."""

    key: str
    dir: Path
    report: Any = None
    problem: str | None = None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def winner(self) -> Any:
        r = self.report
        return next((t for t in r.trials if t.trial == r.winner), None) if r is not None else None


def find_sweeps(roots: Roots, max_depth: int = 4) -> list[Path]:
    """Every folder holding a sweep.json under the run roots (not descending into a sweep or a run)."""
    found: list[Path] = []
    for root in roots.dirs:
        for cur, dirs, files in os.walk(root):
            depth = len(Path(cur).relative_to(root).parts)
            if SPEC in files:
                found.append(Path(cur))
            if SPEC in files or "run.yaml" in files or depth >= max_depth:
                dirs[:] = []
                continue
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
    return found


def _row(folder: Path, roots: Roots) -> SweepRow:
    row = SweepRow(roots.key(folder), folder)
    try:
        row.report = report.read(folder)
    except TunesmithError as exc:
        row.problem = exc.message if (folder / report.RESULTS).exists() else "no trial has finished yet"
        return row
    for t in row.report.trials:
        row.counts[t.status] = row.counts.get(t.status, 0) + 1
    return row


def _run_key(roots: Roots, run_dir: str | None) -> str | None:
    if not run_dir or not (Path(run_dir) / "run.yaml").is_file():
        return None
    try:
        return roots.key(Path(run_dir))
    except RunError:  # a trial folder outside the studio's folders is listed, not linked
        return None


@router.get("/sweeps", response_class=HTMLResponse)
def sweeps_page(request: Request) -> HTMLResponse:
    roots: Roots = request.app.state.roots
    runs = Roots(roots.dirs[: request.app.state.run_roots])
    rows = sorted((_row(d, roots) for d in find_sweeps(runs)), key=lambda r: -r.dir.stat().st_mtime)
    return page(request, "sweeps.html", sweeps=rows, roots=runs.dirs)


@router.get("/sweep", response_class=HTMLResponse)
def sweep_page(request: Request, k: str) -> HTMLResponse:
    roots: Roots = request.app.state.roots
    folder = roots.resolve(k)
    if not (folder / SPEC).is_file():
        raise RunError("not a sweep folder")
    row = _row(folder, roots)
    links = {t.trial: _run_key(roots, t.run_dir) for t in row.report.trials} if row.report else {}
    chart = roots.key(folder / report.CHART_PNG) if (folder / report.CHART_PNG).is_file() else None
    return page(request, "sweep.html", sweep=row, links=links, chart=chart)
