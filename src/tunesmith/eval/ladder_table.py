"""The ladder in a terminal: one table row per rung (tunesmith.tables: readable at 80 columns), then why a rung
stopped early, the recommendation and where the report is. `tunesmith ladder` and the demo print it."""

from __future__ import annotations

from pathlib import Path

from rich.console import Group
from rich.text import Text

from tunesmith.eval.ladder_report import LadderReport
from tunesmith.eval.registry import TOOL_METRICS
from tunesmith.tables import Table


def ladder_table(report: LadderReport) -> Table:
    """One row per rung: quality, latency, tokens, cost, and the gates it misses; the recommended rung in bold green."""
    quality = [
        m
        for m in (
            report.primary_metric,
            "exact_match",
            "json_valid",
            "json_field_accuracy",
            "token_f1",
            *TOOL_METRICS[:3],  # call format valid, right function, arguments exact
            "reward",
        )
        if any(m in r.metrics for r in report.measured)
    ]
    quality = list(dict.fromkeys(quality))
    table = Table(title=f"{report.run}: the ladder on {report.n_examples} held-out prompts")
    for col in ["rung", *quality, "p50 batch ms", "p95 batch ms", "prompt tok", "compl. tok", "cost/1k", "misses"]:
        table.add_column(col, justify="left" if col in ("rung", "misses") else "right")
    for r in report.rungs:
        if r.status != "ok":
            table.add_row(f"[dim]{r.label}[/]", *["" for _ in quality], "", "", "", "", "", f"[dim]skipped: {r.reason}[/]")
            continue
        missed = ", ".join(g.name for g in r.gates if g.status == "fail")
        name = f"[bold green]{r.label}[/]" if r.name == report.recommendation.rung else r.label
        checked = any(g.status != "skip" for g in r.gates)
        table.add_row(
            name,
            *[f"{r.metrics.get(m, float('nan')):.3f}" for m in quality],
            f"{r.latency.p50_batch_ms or 0:.0f}",
            f"{r.latency.p95_batch_ms or 0:.0f}",
            f"{r.prompt_tokens:.0f}",
            f"{r.completion_tokens:.0f}",
            f"{r.cost_per_1k:.4g}",
            missed or ("[green]all pass[/]" if checked else "-"),
        )
    table.caption = (
        f"cost basis: {report.cost_basis} at {report.price:g}; latency: wall time of a batch of "
        f"{report.generation.get('batch_size')}; reference: {report.reference or 'n/a'}"
    )
    return table


def ladder_summary(report: LadderReport, folder: Path) -> Group:
    """The table, each early stop's reason, the recommendation (and its warning) and the report's files in `folder`."""
    lines: list[Table | Text] = [ladder_table(report)]
    lines += [Text.from_markup(f"[dim]{r.label}: {r.reason}[/]") for r in report.measured if r.reason]
    rec = report.recommendation
    lines.append(Text.from_markup("[bold]recommendation:[/] ") + Text(rec.sentence))
    if rec.warning:
        lines.append(Text.from_markup("[bold yellow]warning:[/] ") + Text(rec.warning))
    lines.append(Text(f"report: {folder / 'ladder.html'} (+ ladder.json, predictions.jsonl)"))
    return Group(*lines)
