"""`tunesmith models`: the embedded catalog."""

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
