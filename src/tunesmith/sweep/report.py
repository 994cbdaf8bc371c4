"""What a sweep found: results.json (typed), results.txt (the table, 80 columns), chart.html + chart.png (metric vs
cost per trial) and best-recipe.yaml (the winner's recipe).

The winner is the complete trial that passes its gates (every gate and built-in check of its eval report) with the
best metric in the registry's direction; when none passes them all, the best by the metric alone, said so. Ties go to
the cheaper trial. Pruned, failed and skipped trials never win.
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from tunesmith import htmlkit
from tunesmith.atomic import write_text_atomic
from tunesmith.records import Record, read_record
from tunesmith.sweep.budget import duration
from tunesmith.sweep.spec import SweepSpec, best_recipe_text
from tunesmith.tables import Table

RESULTS, TABLE, CHART_HTML, CHART_PNG, BEST = "results.json", "results.txt", "chart.html", "chart.png", "best-recipe.yaml"
WIDTH = 80
Status = Literal["complete", "pruned", "failed", "interrupted", "running", "skipped", "pending"]


class TrialResult(Record):
    trial: int = Field(description="The grid point's index (its folder trials/trial-NN).")
    params: dict[str, Any]
    status: Status
    value: float | None = Field(None, description="The metric on the held-out set (pruned: at the checkpoint it stopped).")
    pruned_at: int | None = Field(None, description="The step a pruned trial stopped at.")
    gates_checked: int = Field(0, description="Gates and built-in checks its eval report holds.")
    gates_failed: list[str] = Field(default_factory=list)
    seconds: float | None = Field(None, description="Wall seconds: training, checkpoints and evaluation.")
    planned_s: float | None = Field(None, description="The planner's training seconds for this hardware.")
    usd: float | None = Field(None, description="The planner's cost at its price per hour (0 on this machine's CPU).")
    run_dir: str | None = None
    reason: str | None = Field(None, description="Why it was skipped, or the error that failed it.")


class SweepReport(Record):
    schema_version: int = 1
    spec: SweepSpec
    trials: list[TrialResult]
    winner: int | None = None
    winner_passes_gates: bool = False
    used_s: float = Field(0.0, description="Wall seconds the finished trials took (what the budget is charged).")
    hardware: str = ""


def trial_result(index: int, params: dict[str, Any], t: Any, status: str) -> TrialResult:
    """One trial's row from its Optuna trial (None: it has not run) and status."""
    if t is None:
        return TrialResult(trial=index, params=params, status=status)
    a = t.user_attrs
    value = a.get("pruned_value") if status == "pruned" else t.value
    return TrialResult(
        trial=index,
        params=params,
        status=status,
        value=value,
        pruned_at=t.last_step if status == "pruned" else None,
        gates_checked=a.get("gates_checked", 0),
        gates_failed=a.get("gates_failed", []),
        seconds=a.get("seconds"),
        planned_s=a.get("planned_s"),
        usd=a.get("usd"),
        run_dir=a.get("run_dir"),
        reason=a.get("error") or ("interrupted: runs again on the next `tunesmith sweep`" if status == "interrupted" else None),
    )


def choose(trials: list[TrialResult], higher_is_better: bool) -> tuple[int | None, bool]:
    """(the winning trial, whether it passes its gates)."""
    done = [t for t in trials if t.status == "complete" and t.value is not None]
    if not done:
        return None, False
    sign = 1.0 if higher_is_better else -1.0
    best = max(done, key=lambda t: (not t.gates_failed, sign * (t.value or 0.0), -(t.seconds or 0.0)))
    return best.trial, not best.gates_failed


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def table_text(report: SweepReport) -> str:
    """The trials as a table 80 columns wide, with the skip reasons and errors under it."""
    from rich.console import Console

    spec = report.spec
    table = Table(title=f"sweep of {Path(spec.recipe).name} by {spec.metric}", title_justify="left", box=None, pad_edge=False)
    table.add_column("trial", justify="right")
    for key in spec.grid:
        table.add_column(_short(key), justify="right")
    for col in ("status", spec.metric[:20], "gates", "time"):
        table.add_column(col, justify="right" if col != "status" else "left")
    for t in sorted(report.trials, key=lambda t: t.trial):
        mark = "*" if t.trial == report.winner else ""
        value = "" if t.value is None else f"{t.value:.4f}" + (f" @{t.pruned_at}" if t.pruned_at else "")
        gates = (
            ""
            if t.status != "complete" or not t.gates_checked
            else ("pass" if not t.gates_failed else f"{len(t.gates_failed)} fail")
        )
        time = duration(t.seconds) if t.seconds is not None else ""
        table.add_row(f"{mark}{t.trial}", *[_value(t.params[k]) for k in spec.grid], t.status, value, gates, time)
    console = Console(width=WIDTH, record=True, file=io.StringIO(), color_system=None)
    console.print(table)
    lines = console.export_text().rstrip().splitlines()
    for t in sorted(report.trials, key=lambda t: t.trial):
        if t.reason:
            lines.append(f"trial {t.trial} {t.status}: {t.reason}"[:WIDTH])
    lines.append(_verdict(report)[:WIDTH])
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _verdict(report: SweepReport) -> str:
    used = f"{duration(report.used_s)} used" + (f" of {duration(report.spec.budget_s)}" if report.spec.budget_s else "")
    if report.winner is None:
        return f"no trial completed ({used})"
    gates = "passes its gates" if report.winner_passes_gates else "best by the metric; no trial passes every gate"
    return f"winner: trial {report.winner} ({gates}); {used} on {report.hardware}"


def chart(report: SweepReport, png: Path) -> str:
    """The metric against wall time per trial: saved as PNG, returned as inline SVG."""
    fig = htmlkit.figure(7, 4)
    ax = fig.add_subplot()
    for status, marker in (("complete", "o"), ("pruned", "x")):
        pts = [t for t in report.trials if t.status == status and t.value is not None and t.seconds is not None]
        if not pts:
            continue
        ax.scatter([(t.seconds or 0.0) / 60 for t in pts], [t.value or 0.0 for t in pts], marker=marker, label=status)
        for t in pts:
            ax.annotate(str(t.trial), ((t.seconds or 0) / 60, t.value or 0.0), textcoords="offset points", xytext=(4, 4))
    win = next((t for t in report.trials if t.trial == report.winner), None)
    if win is not None:
        ax.scatter([(win.seconds or 0) / 60], [win.value or 0.0], marker="*", s=250, label="winner", color="#2e7d32")
    ax.set_xlabel("wall time per trial (min)")
    ax.set_ylabel(report.spec.metric)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    svg = io.StringIO()
    fig.savefig(svg, format="svg")
    return svg.getvalue()


def chart_html(report: SweepReport, svg: str) -> str:
    table = html.escape(table_text(report))
    return htmlkit.page(
        f"sweep: {report.spec.metric} vs cost",
        heading=f"{Path(report.spec.recipe).name}: {report.spec.metric} vs cost per trial",
        body=f"{svg[svg.find('<svg') :]}<pre>{table}</pre>",
    )


def write(out: Path, report: SweepReport, points: list[dict[str, Any]]) -> None:
    """results.json, results.txt, the chart, and best-recipe.yaml once there is a winner (each replaced whole)."""
    write_text_atomic(out / RESULTS, report.model_dump_json(indent=1) + "\n")
    write_text_atomic(out / TABLE, table_text(report))
    if any(t.value is not None and t.seconds is not None for t in report.trials):
        write_text_atomic(out / CHART_HTML, chart_html(report, chart(report, out / CHART_PNG)))
    if report.winner is not None:
        win = next(t for t in report.trials if t.trial == report.winner)
        header = (
            f"# tunesmith sweep: the winning trial {win.trial} ({report.spec.metric} {win.value:.4f} on the held-out set"
            f"{'' if report.winner_passes_gates else ', though no trial passed every gate'}); run: {win.run_dir}\n"
            f"# its values: {', '.join(f'{k}={_value(v)}' for k, v in win.params.items())}\n"
        )
        write_text_atomic(out / BEST, best_recipe_text(report.spec, points[win.trial], header))


def read(out: Path) -> SweepReport:
    """results.json of a sweep folder (RunError when unreadable)."""
    return read_record(out / RESULTS, SweepReport, 1)
