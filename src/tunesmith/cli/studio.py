"""`tunesmith studio`: the local web app over run folders."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from tunesmith.cli.base import app, console, handle_errors


@app.command()
@handle_errors
def studio(
    runs: list[Path] = typer.Option([Path("runs")], "--runs", help="Folder(s) holding run folders (repeatable)."),
    data: list[Path] = typer.Option([], "--data", help="Extra folder(s) whose data files Launch and Data may read."),
    models: list[Path] = typer.Option(
        [], "--models", help="Folder(s) holding base models that Launch may name (besides catalog names)."
    ),
    serve_dir: Path = typer.Option(None, "--serve-dir", help="A `tunesmith serve` folder: Monitor shows its request log."),
    log: str = typer.Option(
        None,
        "--log",
        help="The request log Monitor reads instead of the serve folder's: a .sqlite file, or postgresql://USER@HOST"
        "[:PORT]/DB shared by several replicas (read-only; password from ~/.pgpass or $PGPASSWORD).",
    ),
    host: str = typer.Option("127.0.0.1", help="Address to bind; anything but loopback needs --token."),
    port: int = typer.Option(7860, min=1, max=65535, help="Port to listen on."),
    allow_host: list[str] = typer.Option(
        [], "--allow-host", help="Another name the studio is reached by (the Host header), e.g. a machine name."
    ),
    token: str = typer.Option(
        None, envvar="TUNESMITH_STUDIO_TOKEN", help="Access token every request must carry (?token= once, then a cookie)."
    ),
) -> None:
    """Browse runs and eval reports, launch and follow training, review answers blind, audit data, chat, monitor."""
    import uvicorn

    from tunesmith.errors import RunError
    from tunesmith.studio.app import StudioConfig, check_bind, create_app

    check_bind(host, token)
    missing = [str(d) for d in [*runs, *data, *models] if not d.is_dir()]
    if missing:
        raise RunError(f"not a folder: {', '.join(missing)}", hint="Pass existing folders to --runs / --data / --models.")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the studio never downloads a model behind the user's back
    config = StudioConfig(
        runs=list(runs),
        data=list(data),
        serve_dir=serve_dir,
        log=log,
        token=token,
        host=host,
        port=port,
        allow_hosts=list(allow_host),
        models=list(models),
    )
    suffix = f"/?token={token}" if token else "/"
    shown = f"[{host}]" if ":" in host else host
    console.print(f"tunesmith studio on http://{shown}:{port}{suffix}  (Ctrl+C stops it)")
    uvicorn.run(create_app(config), host=host, port=port, log_level="warning")
