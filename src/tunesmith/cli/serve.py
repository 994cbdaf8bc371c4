"""`tunesmith serve`: an OpenAI-compatible server for a run or model, its adapters, retrieval and a request log."""

from __future__ import annotations

from pathlib import Path

import typer

from tunesmith.cli import app, console, err_console, handle_errors


@app.command()
@handle_errors
def serve(
    target: str = typer.Argument(..., help="Run folder (served with its adapter) or model (folder, catalog name, hub id)."),
    adapter: list[str] = typer.Option([], "--adapter", help="More adapters on the same base: name=RUN_DIR (repeatable)."),
    index: str = typer.Option(None, "--index", help='Retrieval index for requests with "rag": true.'),
    host: str = typer.Option("127.0.0.1", help="Interface to bind (loopback by default)."),
    port: int = typer.Option(8000, min=1, max=65535, help="TCP port (1-65535)."),
    dir: Path = typer.Option(Path("serve"), "--dir", help="Serve folder (created, marked): request log, generated key."),
    log_path: str = typer.Option(
        None,
        "--log",
        help="Request log: a file (default <dir>/requests.sqlite), or postgresql://USER@HOST[:PORT]/DB for one log "
        "shared by several replicas (password from ~/.pgpass or $PGPASSWORD; see docs/deploy.md).",
    ),
    replica_id: str = typer.Option(None, "--replica-id", help="This server's name in every log row (default: hostname:port)."),
    no_log: bool = typer.Option(False, "--no-log", help="Keep no request log (feedback is then refused)."),
    no_log_content: bool = typer.Option(False, "--no-log-content", help="Log only metadata, not prompts and outputs."),
    api_key: list[str] = typer.Option([], "--api-key", help="Accepted API key (repeatable; also $TUNESMITH_API_KEY)."),
    admin_key: list[str] = typer.Option([], "--admin-key", help="Key that may add and remove adapters (repeatable)."),
    keys_file: Path = typer.Option(
        None,
        "--keys-file",
        help="File with one entry a line: `KEY` or `admin KEY`; a line whose first non-blank character is `#` is a "
        "comment (a `#` elsewhere is part of a key). See docs/serving.md.",
    ),
    adapters_dir: Path = typer.Option(
        None,
        "--adapters-dir",
        help="Folder runtime-added adapters must live in (default: the served run's parent folder, else <dir>/adapters).",
    ),
    max_queue: int = typer.Option(64, min=1, help="Requests allowed to wait; beyond it: 429 with Retry-After."),
    max_batch: int = typer.Option(8, min=1, help="Most requests generated together in one batch."),
    no_batching: bool = typer.Option(False, "--no-batching", help="Generate one request at a time."),
    timeout: float = typer.Option(300.0, min=1.0, help="Per-request time limit, seconds."),
    check: bool = typer.Option(
        False,
        "--check",
        help="Deploy check: each adapter must answer its run's golden prompts as eval recorded, and render its prompts and "
        "stop as its training did (tunesmith verify's parity), before /health reports ready.",
    ),
    engine: str = typer.Option("transformers", help="transformers (default) or vllm (GPU, optional extra)."),
    dtype: str = typer.Option("auto", help="Weights dtype: auto, float32, bfloat16, float16."),
    name: str = typer.Option(None, "--name", help="Name clients use for the served run (or model); default: its folder name."),
) -> None:
    """Serve an OpenAI-compatible API (chat, completions, models) with per-request adapters, metrics and a request log."""
    import uvicorn

    from tunesmith.serve.server import ServeOptions, prepare

    opts = ServeOptions(
        target,
        adapter,
        index,
        host,
        port,
        dir,
        log_path,
        not no_log,
        not no_log_content,
        api_key,
        admin_key,
        keys_file,
        adapters_dir,
        max_queue,
        max_batch,
        not no_batching,
        timeout,
        check,
        engine,
        dtype,
        name,
        replica_id,
    )
    prepared = prepare(opts)
    if host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(f"[bold yellow]warning:[/] listening on {host}: reachable from other machines")
    if prepared.generated_key:
        console.print(f"API key (saved in {dir / 'api_key'}): [bold]{prepared.generated_key}[/]")
    if prepared.log_path:
        console.print(f"request log: {prepared.log_path}")
    console.print(f"serving {target} at {prepared.url}/v1  (health: {prepared.url}/health, metrics: {prepared.url}/metrics)")
    uvicorn.run(prepared.app, host=host, port=port, log_level="warning")
