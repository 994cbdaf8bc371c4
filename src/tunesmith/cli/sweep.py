"""`tunesmith sweep`: try a grid of recipe values within a budget and keep the one the task metric picks."""

from __future__ import annotations

from pathlib import Path

import typer

from tunesmith.cli import app, console, handle_errors


@app.command()
@handle_errors
def sweep(
    recipe: Path = typer.Argument(..., help="Recipe YAML to sweep."),
    set_grid: list[str] = typer.Option(
        [], "--set-grid", help="A field and the values to try: training.learning_rate=1e-4,2e-4 (repeatable: all combinations)."
    ),
    set_: list[str] = typer.Option([], "--set", help="Override a field in every trial: section.field=value (repeatable)."),
    budget: str = typer.Option(
        None, "--budget", help="Wall time the whole sweep may take (2h, 90m, 300s); trials planned to fit."
    ),
    trials: int = typer.Option(None, "--trials", min=1, help="Run at most this many grid points (in a seeded shuffled order)."),
    metric: str = typer.Option(
        None, "--metric", help="Registry metric to rank trials by (default: eval.select_checkpoint, else the task's primary one)."
    ),
    out: Path = typer.Option(..., "--out", help="Sweep folder (new, or an earlier run of this sweep to continue)."),
    prune: bool = typer.Option(True, "--prune/--no-prune", help="Stop clearly losing trials at checkpoints (median pruner)."),
) -> None:
    """Train one run per grid point, score each with `tunesmith eval`'s metrics and gates on the held-out set, and
    write the table (results.txt), the metric-vs-cost chart (chart.html) and the winning recipe (best-recipe.yaml).
    Run the same command again to continue a sweep that was stopped."""
    from tunesmith.sweep import report
    from tunesmith.sweep.run import new_spec, run_sweep
    from tunesmith.sweep.spec import parse_duration, parse_grid

    wanted = new_spec(recipe, parse_grid(set_grid), set_, metric, parse_duration(budget) if budget else None, trials, prune)
    done = run_sweep(out, wanted, on_trial=lambda line: console.print(f"[bold]{line}[/]", highlight=False))
    console.print(report.table_text(done), highlight=False, markup=False, soft_wrap=True)
    folder = out.expanduser().resolve()
    console.print(f"results: {folder / report.TABLE}, {folder / report.CHART_HTML}", highlight=False)
    if done.winner is not None:
        console.print(f"winning recipe: {folder / report.BEST}", highlight=False)
