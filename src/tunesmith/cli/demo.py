"""`tunesmith demo`: the whole pipeline on the embedded defaults."""

from __future__ import annotations

from pathlib import Path

import typer

from tunesmith.cli.base import app, console, handle_errors


@app.command()
@handle_errors
def demo(
    directory: Path = typer.Option(Path("demo-run"), "--dir", help="Folder for the demo project and its run."),
    steps: int = typer.Option(None, min=1, help="Override the number of training steps."),
    fresh: bool = typer.Option(
        True,
        "--overwrite/--no-overwrite",
        help="Replace an earlier demo's own files in --dir (never files the demo did not write).",
    ),
) -> None:
    """Pull SmolLM2, train a LoRA on the bundled demo task, compare base vs tuned, merge, chat."""
    from tunesmith.demo.pipeline import run_demo

    run_demo(directory, console=console, steps=steps, fresh=fresh)
