"""`tunesmith merge`."""

from __future__ import annotations

from pathlib import Path

import typer

from tunesmith.cli import app, console, handle_errors


@app.command()
@handle_errors
def merge(
    run_dir: Path = typer.Argument(..., help="Run folder (output_dir of a train run)."),
    out: Path = typer.Option(..., "--out", help="Folder for the merged model."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16 (never 4-bit)."),
    check_prompts: int = typer.Option(3, min=1, help="Held-out prompts whose greedy tokens must agree after merging."),
) -> None:
    """Merge the adapter into its base; the result loads with plain AutoModelForCausalLM.from_pretrained."""
    from tunesmith.export.merge import merge as do_merge
    from tunesmith.run import load_run

    with console.status("merging ..."):
        result = do_merge(load_run(run_dir), out, dtype=dtype, n_check=check_prompts)
    console.print(
        f"[green]merged[/] -> {result['out']}\n"
        f"check: merged and adapter greedy tokens identical on {result['identical']}/{result['prompts']} prompts"
    )
