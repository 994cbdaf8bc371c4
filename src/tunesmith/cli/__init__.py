"""The `tunesmith` command line: thin typer commands that call one library function each.

Heavy imports (torch, transformers) happen inside commands so `tunesmith --help` is instant.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from tunesmith.errors import TunesmithError

console = Console(stderr=False)
err_console = Console(stderr=True)

app = typer.Typer(
    name="tunesmith",
    help="Fine-tune open LLMs with LoRA, prove the tuned model beats its base on your held-out set, merge it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a user's mistake into one red paragraph and an exit code; keep tracebacks for real bugs.

    TunesmithError: its message, hint and exit code. The last line of defence for paths a command did not check
    itself: an OSError naming a file (a folder given for a file, a missing or unreadable path) is exit 74, a file
    that is not UTF-8 text exit 65. Anything else is a bug and keeps its traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _quiet_libraries()
        try:
            return fn(*args, **kwargs)
        except TunesmithError as exc:
            _fail(exc.message, exc.hint, exc.exit_code)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except OSError as exc:
            if exc.filename is None:
                raise  # not about a path: a bug
            names = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
            _fail(f"{names}: {exc.strerror or exc}", "Check the path and its permissions.", 74)  # EX_IOERR
        except UnicodeDecodeError as exc:
            _fail(f"a file given is not UTF-8 text ({exc})", "Give a UTF-8 text file.", 65)  # EX_DATAERR

    return wrapper


def _fail(message: str, hint: str | None, code: int) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True)
    if hint:
        err_console.print(f"[yellow]{escape(hint)}[/]", highlight=False)
    raise typer.Exit(code) from None


def _quiet_libraries() -> None:
    """Keep library chatter (per-tensor progress, advisory warnings) out of the user's terminal."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # bitsandbytes warns on import that an optional CPU kernel is not downloaded; QLoRA works without it.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    for message, category, module in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


# Advisory warnings libraries raise inside their own code on tunesmith's normal paths, silenced one by one (by
# message and module) so that any new warning, above all a deprecation of an API tunesmith calls, still shows.
LIBRARY_WARNINGS: list[tuple[str, type[Warning], str]] = [
    (r"`torch\.jit\.script_method` is deprecated", DeprecationWarning, r"torch\.jit"),
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning, r"transformers\.modeling_utils"),
    # distill.mode: logits uses TRL's GKD trainer, which lives under trl.experimental (chosen knowingly).
    (r"You are importing from 'trl\.experimental'", UserWarning, r""),
    # speed.liger uses TRL's use_liger_kernel (the pip package, no download at run time) over the Hub kernels TRL
    # now points to, which are fetched from the Hub when training starts (chosen knowingly).
    (r"`use_liger_kernel=True` is deprecated", FutureWarning, r""),
]


from tunesmith.cli import (  # noqa: E402  (the command modules import `app` from here)
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
)  # noqa: E402  (registers commands)

__all__ = [
    "app",
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
