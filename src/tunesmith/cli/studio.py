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
    if log is not None:
        _check_log(log)
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


def _check_log(log: str) -> None:
    """Refuse a --log that cannot be a request log before the studio starts: another database's URL, or a file or
    folder that exists and holds none (read-only: nothing is created). A log not there yet, or a PostgreSQL server
    that is down, the Monitor page reports."""
    from tunesmith.errors import RunError
    from tunesmith.serve.store import RequestLog, is_url

    if is_url(log):
        return
    if "://" in log:
        raise RunError(
            f"--log {log}: not a request log location", hint="Give a .sqlite file, a serve folder or a postgresql:// URL."
        )
    if Path(log).expanduser().exists():
        with RequestLog.open(Path(log).expanduser()):  # a RunError naming the file and what to give instead
            pass
