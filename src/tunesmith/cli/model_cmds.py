"""`tunesmith models`: the embedded catalog, and what tunesmith knows about a model."""

from __future__ import annotations

import typer
from rich.table import Table

from tunesmith.cli import app, console, handle_errors

models_app = typer.Typer(help="Base models: list the catalog, import one into the local cache.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
@handle_errors
def list_models() -> None:
    """List catalog models and whether each is already imported."""
    from tunesmith.models import CATALOG, tunesmith_home

    table = Table("name", "imported", "description")
    for name, entry in CATALOG.items():
        here = (tunesmith_home() / "models" / name / "config.json").exists()
        table.add_row(name, "yes" if here else "no", entry.description)
    console.print(table)


@models_app.command("pull")
@handle_errors
def pull(name: str = typer.Argument(..., help="Catalog name, e.g. smollm2-135m-instruct.")) -> None:
    """Import a catalog model into the cache (~/.cache/tunesmith/models, or $TUNESMITH_HOME)."""
    from tunesmith.models import pull as do_pull

    with console.status(f"importing {name} ..."):
        path = do_pull(name)
    console.print(f"[green]ready:[/] {name} -> {path}")


@models_app.command("info")
@handle_errors
def info(model: str = typer.Argument(..., help="Run folder, catalog name, model folder, .gguf file or hub id.")) -> None:
    """Show a model's chat family: end-of-turn and stop tokens, generation prompt, system, reasoning and tools
    (for a run: as its manifest recorded them, with the thinking mode it serves with)."""
    from rich.markup import escape

    from tunesmith.models import model_info

    with console.status(f"reading {model} ..."):
        data = model_info(model)
    table = Table("field", "value")
    for key, value in data.items():
        table.add_row(key, escape(repr(value) if key == "generation_prompt" else str(value)))
    console.print(table)
