"""`tunesmith ladder`: prompt, few-shot, RAG, tuned, tuned + RAG and student on the same prompts, and which to ship."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import Progress

from tunesmith.cli.base import app, console, handle_errors
from tunesmith.tables import Table

if TYPE_CHECKING:
    from tunesmith.eval.ladder_report import LadderReport


def ladder_table(report: LadderReport) -> Table:
    """One row per rung: quality, latency, tokens, cost, and the gates it misses; the recommended rung in bold green."""
    from tunesmith.eval.registry import TOOL_METRICS

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


def print_ladder(report: LadderReport, folder: Path) -> None:
    console.print(ladder_table(report))
    for r in report.measured:
        if r.reason:  # a rung stopped early: its figures are those of the prompts it answered
            console.print(f"[dim]{r.label}: {r.reason}[/]", highlight=False)
    rec = report.recommendation
    console.print(f"[bold]recommendation:[/] {rec.sentence}", highlight=False)
    if rec.warning:
        console.print(f"[bold yellow]warning:[/] {rec.warning}", highlight=False)
    console.print(f"report: {folder / 'ladder.html'} (+ ladder.json, predictions.jsonl)")


@app.command("ladder")
@handle_errors
def ladder_cmd(
    recipe: Path = typer.Argument(..., help="Recipe YAML (its run, rag and ladder sections decide the rungs)."),
    out: Path = typer.Option(None, "--out", help="Output folder (default: beside the run folder, <output_dir>-ladder)."),
    max_examples: int = typer.Option(None, help="Held-out prompts per rung (default: ladder.max_examples)."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field: section.field=value (repeatable)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the output of an earlier `tunesmith ladder` in that folder."
    ),
    full: bool = typer.Option(
        False,
        "--full",
        help="Answer every prompt on every rung (by default a rung that can no longer pass the gates, once another "
        "rung passes them, stops after its first prompts: it cannot change the recommendation).",
    ),
) -> None:
    """Measure every rung of the ladder on the same held-out prompts and recommend the cheapest that passes the gates."""
    from tunesmith.config import load_recipe
    from tunesmith.eval.ladder import ladder

    parsed = load_recipe(recipe, set_)
    with Progress(console=console, transient=True) as progress:
        report, folder = ladder(
            parsed, out, overwrite=overwrite, max_examples=max_examples, progress=progress, stop_early=not full
        )
    print_ladder(report, folder)
    chosen = report.chosen
    if chosen is not None and chosen.gates:
        from tunesmith.cli.evaluate import print_checklist
        from tunesmith.eval.gates import GATES_FAILED_EXIT

        if not print_checklist(chosen.gates, f"release gates on the chosen rung ({chosen.name})"):
            raise typer.Exit(GATES_FAILED_EXIT)
