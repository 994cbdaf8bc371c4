"""`tunesmith init` and `tunesmith train`."""

from __future__ import annotations

from pathlib import Path

import typer

from tunesmith.cli import app, console, handle_errors


@app.command()
@handle_errors
def init(
    directory: Path = typer.Argument(..., help="Folder to create, e.g. my-run."),
    force: bool = typer.Option(False, help="Overwrite an existing recipe.yaml."),
) -> None:
    """Write a commented recipe and a copy of the bundled demo data into DIRECTORY."""
    from tunesmith.demo.pipeline import write_project

    recipe = write_project(directory, force=force)
    console.print(f"[green]wrote[/] {recipe}\nnext: tunesmith train {recipe}")


@app.command()
@handle_errors
def train(
    recipe: Path = typer.Argument(..., help="Recipe YAML."),
    set_: list[str] = typer.Option([], "--set", help="Override a field: section.field=value (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint of this run."),
) -> None:
    """Fine-tune the base model on the recipe's data (SFT with a LoRA adapter by default)."""
    from tunesmith.config import load_recipe

    cfg = load_recipe(recipe, set_)  # every recipe problem is reported here, before any model loads
    from tunesmith.train import sft

    run = sft.run(cfg, resume=resume)
    f = run.manifest["figures"]
    tok = run.manifest["tokens"]["train"]
    console.print(
        f"[green]trained[/] {run.dir}: {f['global_step']} steps, train loss {f['train_loss']:.4f}, "
        f"eval loss {f['eval_loss']:.4f}, {f['wall_time_s']:.0f}s, {f['tokens_per_s']:.0f} tokens/s, "
        f"peak {f['peak_memory_mb']:.0f} MB\n"
        f"data: {tok['kept']} of {tok['examples']} train rows used "
        f"({tok['dropped_overlong']} over max_length, {tok['dropped_no_trained_tokens']} without trained tokens dropped)\n"
        f"next: tunesmith eval {recipe}"
    )
