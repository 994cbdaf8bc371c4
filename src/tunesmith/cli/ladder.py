"""`tunesmith ladder`: prompt, few-shot, RAG, tuned, tuned + RAG and student on the same prompts, and which to ship."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import Progress

from tunesmith.cli.base import app, console, handle_errors


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
    from tunesmith.eval.ladder_table import ladder_summary

    parsed = load_recipe(recipe, set_)
    with Progress(console=console, transient=True) as progress:
        report, folder = ladder(
            parsed, out, overwrite=overwrite, max_examples=max_examples, progress=progress, stop_early=not full
        )
    console.print(ladder_summary(report, folder))
    chosen = report.chosen
    if chosen is not None and chosen.gates:
        from tunesmith.cli.evaluate import print_checklist
        from tunesmith.eval.gates import GATES_FAILED_EXIT

        if not print_checklist(chosen.gates, f"release gates on the chosen rung ({chosen.name})"):
            raise typer.Exit(GATES_FAILED_EXIT)
