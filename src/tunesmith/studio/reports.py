"""What the run and report pages show: loss series, lineage, filtered report rows with word diffs, the ladder.

The report rows come from eval/predictions.jsonl (cached by mtime); only the rows of the page shown
are diffed, so a 5,000-example report pages in milliseconds.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

from tunesmith.errors import RunError
from tunesmith.eval.ladder_report import read_ladder_report
from tunesmith.records import EvalReport
from tunesmith.studio.runs import RunSummary, cached, prediction_lines, prediction_row, predictions

PAGE_SIZE = 50


def loss_series(metrics: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """name -> [[step, value], ...] for the loss curves (train loss, eval loss, learning rate); non-finite values skipped."""
    out: dict[str, list[list[float]]] = {}
    for row in metrics:
        for key in ("loss", "eval_loss"):
            value = row.get(key)
            if isinstance(value, (int, float)) and row.get("step") is not None:
                out.setdefault(key, []).append([float(row["step"]), float(value)])
    return out


def lineage(s: RunSummary) -> list[tuple[str, str]]:
    """Where the run came from: base model, data files with hashes, chat template, resume, git commit."""
    m = s.manifest
    if m is None:
        return [("base model", s.base)]
    rows = [("base model", f"{m.base_model.spec} ({m.base_model.path})")]
    rows += [(f"data {Path(p).name}", f"{p} sha256 {h[:16]}") for p, h in m.data.items()]
    rows.append(("chat template", f"sha256 {m.chat_template_sha256[:16]}"))
    if m.resumed_from:
        rows.append(("resumed from", m.resumed_from))
    if m.rag:
        rows.append(("retrieval index", str(m.rag.get("index"))))
    rows.append(("git", m.git_sha or "(not a git checkout)"))
    rows.append(("versions", ", ".join(f"{k} {v}" for k, v in m.versions.items())))
    return rows


def metric_names(report: EvalReport) -> list[str]:
    return sorted(report.summary.get("tuned", {}))


def _delta(row: dict[str, Any], metric: str) -> float | None:
    b, t = (row.get("base_metrics") or {}).get(metric), (row.get("tuned_metrics") or {}).get(metric)
    return t - b if isinstance(b, (int, float)) and isinstance(t, (int, float)) else None


def report_page(run_dir: Path, page_no: int, losses: bool = False, metric: str = "") -> tuple[list[dict[str, Any]], int]:
    """(rows of page `page_no`, 1-based, with word diffs; total rows after the filters)."""
    start = (page_no - 1) * PAGE_SIZE
    if not losses and not metric:  # unfiltered: parse only the rows shown
        lines = prediction_lines(run_dir)
        shown = lines[start : start + PAGE_SIZE]
        return diffed([prediction_row(line, n) for n, line in enumerate(shown, start + 1)]), len(lines)
    rows = filter_rows(run_dir, losses, metric)
    return diffed(rows[start : start + PAGE_SIZE]), len(rows)


def filter_rows(run_dir: Path, losses: bool = False, metric: str = "") -> list[dict[str, Any]]:
    """Report rows: all, or only those the tuned model lost; with `metric`, only rows where tuned is worse on it, worst first."""
    rows = predictions(run_dir)
    if losses:
        rows = [r for r in rows if r.get("judgement") == "loss"]
    if metric:
        scored = [(d, r) for r in rows if (d := _delta(r, metric)) is not None and d < 0]
        rows = [r for _, r in sorted(scored, key=lambda dr: dr[0])]
    return rows


_WORDS = re.compile(r"\s+|[^\s]+")


def word_diff(old: str, new: str) -> Markup:
    """`new` with words not in `old` wrapped in <ins> and removed ones in <del>; every piece escaped."""
    a, b = _WORDS.findall(old), _WORDS.findall(new)
    out: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(str(escape("".join(b[j1:j2]))))
            continue
        if i2 > i1:
            out.append(f"<del>{escape(''.join(a[i1:i2]))}</del>")
        if j2 > j1:
            out.append(f"<ins>{escape(''.join(b[j1:j2]))}</ins>")
    return Markup("".join(out))


def diffed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "diff": word_diff(str(r.get("base", "")), str(r.get("tuned", "")))} for r in rows]


def ladder(run_dir: Path) -> Any:
    """The run's LadderReport, or None when no ladder was run (or its file is unreadable)."""
    # `tunesmith ladder` writes beside the run folder by default (<run>-ladder/), or into --out.
    for path in (run_dir.parent / f"{run_dir.name}-ladder" / "ladder.json", run_dir / "ladder" / "ladder.json"):
        if path.is_file():
            try:
                return cached(path, "ladder", read_ladder_report)
            except RunError:
                return None
    return None


def ladder_bars(report: Any) -> list[dict[str, Any]]:
    """Rungs with their primary metric as a bar width (0-100) for the chart."""
    values = [r.value(report.primary_metric) or 0.0 for r in report.measured]
    top = max(values, default=0.0) or 1.0
    return [{"rung": r, "value": v, "width": round(100 * v / top, 1)} for r, v in zip(report.measured, values, strict=True)]
