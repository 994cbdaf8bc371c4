"""`tunesmith loop`: monitor -> feedback export -> retrain -> gates -> canary, once (cron, systemd, Kubernetes) or on
a timer."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from tunesmith.cli import app, console, err_console, handle_errors

if TYPE_CHECKING:
    from tunesmith.monitor.loop import Cycle


def print_cycle(cycle: Cycle) -> None:
    colour = {0: "green", 3: "bold red", 4: "yellow"}.get(cycle.exit_code, "bold red")
    console.print(
        f"[{colour}]{cycle.outcome.replace('_', ' ')}[/] (exit {cycle.exit_code}) · {cycle.name} · {cycle.started:%Y-%m-%d %H:%M} UTC"
    )
    if cycle.drifted:
        console.print(f"  drifting: {', '.join(cycle.drifted)}")
    console.print(f"  rows exported {cycle.exported}, added {cycle.added}", highlight=False)
    for why, n in {**cycle.skipped, **cycle.dropped}.items():
        console.print(f"  [dim]left out {n}: {escape(why)}[/]", highlight=False)
    if cycle.new_run:
        failed = [g.name for g in cycle.gates if not g.passed]
        console.print(f"  new run {cycle.new_run}" + (f": failed {', '.join(failed)}" if failed else ": every gate passed"))
    if cycle.rollout:
        console.print(f"  rollout: {escape(cycle.rollout)}")
    if cycle.error:
        err_console.print(f"[bold red]error:[/] {escape(cycle.error)}", highlight=False)
    console.print(f"  report: {Path(cycle.serve_dir) / 'loop' / cycle.started.strftime('%Y%m%dT%H%M%SZ') / 'cycle.html'}")


@app.command("loop")
@handle_errors
def loop(
    serve_dir: Path = typer.Argument(..., help="Serve folder: its request log, its adapters/NAME link, its rollouts."),
    recipe: Path = typer.Option(..., "--recipe", help="The recipe of the served version (what a retrain trains)."),
    name: str = typer.Option(None, "--name", help="The served model name (its adapter link); default the recipe's name."),
    every: str = typer.Option(None, "--every", help="Run a cycle every DURATION (30m, 6h, 24h, 7d) until stopped."),
    once: bool = typer.Option(False, "--once", help="Run one cycle and exit with its code (for cron, systemd, CronJob)."),
    share: float = typer.Option(
        0.1, "--share", min=0.0, max=1.0, help="Canary share of a new run's rollout; 0 promotes at once."
    ),
    shadow: bool = typer.Option(False, "--shadow", help="Roll new runs out in shadow mode (answers logged, never returned)."),
    min_requests: int = typer.Option(100, "--min-requests", min=1, help="Candidate requests before a rollout is decided."),
    gate: list[str] = typer.Option(
        [], "--gate", help="A live rollout gate metric=RULE (repeatable); default: docs/monitoring.md."
    ),
    reward_model: Path = typer.Option(None, "--reward-model", help="A reward run scoring served answers (monitor and rollout)."),
    log: str = typer.Option(None, "--log", help="The request log (default SERVE_DIR's; postgresql://... for replicas)."),
    embedder: str = typer.Option(None, "--embedder", help="Override monitor.embedder: minilm | char-ngrams."),
    force: bool = typer.Option(False, "--force", help="Retrain even when the data check finds blocking errors."),
) -> None:
    """One cycle, or one every --every: check a running rollout, monitor, export feedback, screen it against the
    training and eval rows, retrain, gate, and start a canary.

    Exit codes (--once): 0 nothing to do, or canary started / promoted / rollout waiting · 3 a gate failed (new run,
    or rollout rolled back) · 4 drift with nothing to learn · 1 the cycle failed.
    """
    from tunesmith.config import load_recipe
    from tunesmith.errors import RunError
    from tunesmith.monitor.loop import LoopOptions, parse_every, run_cycle, run_every

    if once == (every is not None):
        raise RunError("pass either --once (one cycle) or --every DURATION (a cycle every DURATION)")
    try:
        seconds = parse_every(every) if every is not None else 0.0
    except ValueError as exc:
        raise RunError(str(exc)) from None
    opts = LoopOptions(
        serve_dir, recipe, name or load_recipe(recipe, check_files=False).name, share, shadow, min_requests, gate,
        str(reward_model) if reward_model else None, log, embedder, force,
    )  # fmt: skip
    if once:
        cycle = run_cycle(opts)
        print_cycle(cycle)
        raise typer.Exit(cycle.exit_code)
    console.print(f"a cycle every {every}; stop with Ctrl-C (or SIGTERM)")
    try:
        run_every(opts, seconds, print_cycle)
    except KeyboardInterrupt:
        console.print("stopped")
