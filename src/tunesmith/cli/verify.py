"""`tunesmith verify`: the held-out prompts through every way the tuned model runs, compared with training."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from tunesmith.cli.base import app, console, handle_errors
from tunesmith.tables import Table

_STATUS = {"ok": "green", "diverged": "bold red", "reported": "yellow", "skipped": "dim"}


@app.command()
@handle_errors
def verify(
    run_dir: Path = typer.Argument(..., help="Run folder (output_dir of a train run)."),
    merged: Path = typer.Option(None, "--merged", help="A merged folder to check (default: the run merged into a temp folder)."),
    gguf: Path = typer.Option(None, "--gguf", help="An exported .gguf to check (default: the merged model converted to f16)."),
    prompts: int = typer.Option(3, min=1, help="Held-out prompts sent through every path."),
    max_new_tokens: int = typer.Option(16, min=1, help="Greedy tokens compared per prompt."),
    no_serve: bool = typer.Option(False, "--no-serve", help="Skip the served endpoint (the real server, started here)."),
    no_gguf: bool = typer.Option(False, "--no-gguf", help="Skip the GGUF export."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check that training, the adapter, the merged model, the served endpoint and the GGUF export render the same
    prompt bytes, stop on the same tokens and answer with the same greedy tokens. Exit 0 parity, 3 a divergence
    (the first differing token is named), 1 an error."""
    from tunesmith.run import load_run
    from tunesmith.verify.compare import Divergent
    from tunesmith.verify.parity import verify as run_verify

    run = load_run(run_dir)
    with console.status("verifying (adapter, merged, served, gguf) ..."):
        report = run_verify(
            run,
            merged=merged,
            gguf_file=gguf,
            serve=not no_serve,
            gguf=not no_gguf,
            prompts=prompts,
            max_new_tokens=max_new_tokens,
        )
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=1))
    else:
        mode = {None: "no thinking switch", True: "thinking on", False: "thinking off"}[report.thinking]
        console.print(f"family {report.family} · {mode} · {report.prompts} prompts · {report.max_new_tokens} tokens each")
        table = Table("path", "status", "detail")
        for c in report.checks:
            table.add_row(c.path, f"[{_STATUS[c.status]}]{c.status}[/]", escape(c.detail))
        console.print(table)
        for d in report.divergences:
            console.print(("[red]✗[/] " if d.blocking else "[yellow]·[/] ") + escape(d.message()), highlight=False)
    if not report.passed:
        raise Divergent(report)
    if not as_json:
        console.print("[bold green]✓ parity[/]: every path renders, stops and answers as training did")
