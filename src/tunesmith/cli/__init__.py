"""The `tunesmith` command line: thin typer commands that call one library function each.

Heavy imports (torch, transformers) happen inside commands so `tunesmith --help` is instant.
"""

from __future__ import annotations

from tunesmith.cli import (  # registers the commands on `app`
    chat,
    data,
    demo,
    evaluate,
    export,
    index,
    ladder,
    loop,
    migrate,
    model_cmds,
    monitor,
    plan,
    review,
    rollout,
    serve,
    studio,
    sweep,
    train,
    verify,
)
from tunesmith.cli.base import app, console, err_console, handle_errors

__all__ = [
    "app",
    "console",
    "err_console",
    "handle_errors",
    "chat",
    "data",
    "demo",
    "evaluate",
    "export",
    "ladder",
    "migrate",
    "model_cmds",
    "train",
    "review",
    "studio",
    "serve",
    "index",
    "plan",
    "monitor",
    "rollout",
    "loop",
    "sweep",
    "verify",
]
