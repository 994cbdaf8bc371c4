"""`tunesmith rollout`: a candidate adapter on a share of live traffic (canary) or a copy of it (shadow), promoted
when it holds its gates and rolled back when it breaks one."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from tunesmith.cli.base import app, console, handle_errors
from tunesmith.tables import Table

if TYPE_CHECKING:
    from tunesmith.monitor.rollout import Decision

_FIGURES = ("requests", "errors", "error_rate", "latency_p95_s", "rated", "down_rate", "output_words", "refusal_rate",
            "reward_model", "output_drift_p", "tool_requests", "tool_call_valid", "tool_arguments_valid",
            "tool_calls_unparsable")  # fmt: skip


def figures_table(decision: Decision) -> Table:
    table = Table("figure", *decision.figures, title="since the rollout started", title_justify="left")
    for name in _FIGURES:
        if any(name in f for f in decision.figures.values()):
            table.add_row(name, *(f"{f[name]:.4g}" if name in f else "" for f in decision.figures.values()))
    return table


@app.command("rollout")
@handle_errors
def rollout(
    serve_dir: Path = typer.Argument(..., help="Serve folder: its adapters/NAME link is what the candidate competes with."),
    name: str = typer.Argument(..., help="The served model name (the adapter link's name)."),
    candidate: Path = typer.Option(None, "--candidate", help="Start: the candidate run folder (an adapter on the same base)."),
    share: float = typer.Option(
        0.1, "--share", min=0.0001, max=1.0, help="Share of NAME's requests routed (canary) or copied (shadow)."
    ),
    shadow: bool = typer.Option(False, "--shadow", help="Copy requests to the candidate and log its answers, never return them."),
    min_requests: int = typer.Option(100, "--min-requests", min=1, help="Candidate requests before a check decides."),
    gate: list[str] = typer.Option(
        [], "--gate", help="A live gate metric=RULE (repeatable), e.g. live_error_rate_increase='<=0.01'."
    ),
    reward_model: Path = typer.Option(
        None, "--reward-model", help="A reward run that scores both sides' answers (live_reward_delta)."
    ),
    check: bool = typer.Option(False, "--check", help="Judge the running rollout: promote, roll back, or wait."),
    watch: float = typer.Option(0, "--watch", min=0, help="With --check: check every this many seconds until decided."),
    abort: bool = typer.Option(False, "--abort", help="Roll the running rollout back now."),
    log: str = typer.Option(
        None, "--log", help="The request log to judge from (default SERVE_DIR's; a postgresql:// URL for replicas)."
    ),
) -> None:
    """Start a rollout (--candidate), decide it (--check) or stop it (--abort); with none of them, show it.

    Exit codes: 0 started, waiting, promoted or shown · 3 a gate broke: rolled back · 1 the command failed.
    """
    from tunesmith.errors import RunError
    from tunesmith.monitor import rollout as ro
    from tunesmith.serve.rollout import read_rollout, rollout_path

    if sum(map(bool, (candidate, check, abort))) > 1:
        raise RunError("--candidate, --check and --abort each do one thing: pass one of them")
    if candidate is not None:
        r = ro.start(serve_dir, name, candidate, share, "shadow" if shadow else "canary", min_requests, gate,
                     str(reward_model) if reward_model else None)  # fmt: skip
        gates = ", ".join(f"{k} {v}" for k, v in r.gates.items())
        console.print(f"[green]started[/]: {r.mode} of {r.candidate} on {r.share:.0%} of {name!r} (primary {r.primary})")
        console.print(f"decides after {r.min_requests} candidate requests on: {escape(gates)}")
        console.print(
            f"the server picks it up from {rollout_path(serve_dir, name)}; then: tunesmith rollout {serve_dir} {name} --check"
        )
        return
    none = RunError(f"no rollout of {name!r} in {serve_dir}", hint="Start one with --candidate RUN.")
    if not rollout_path(serve_dir, name).exists():  # --check, --abort or show: each needs one
        raise none
    if abort:
        r = ro.abort(serve_dir, name)
        console.print(f"[yellow]rolled back[/]: {r.candidate}; {name!r} stays on {r.primary}")
        return
    if not check:
        r = ro.settle(Path(serve_dir), name)
        if r is None:
            raise none
        console.print(f"{name}: {r.status} · {r.mode} {r.share:.0%} · candidate {r.candidate} · primary {r.primary} {r.reason}")
        return
    while True:
        decision = ro.check(serve_dir, name, log)
        if decision.action != "waiting" or not watch:
            break
        console.print(ro.describe(decision))
        time.sleep(watch)
    if decision.figures:
        console.print(figures_table(decision))
    from tunesmith.cli.evaluate import print_checklist

    print_checklist(decision.results, title="live gates")
    console.print(escape(ro.describe(decision)))
    if decision.action == "rolled_back" or (
        decision.action == "finished" and read_rollout(rollout_path(serve_dir, name)).status == "rolled_back"
    ):
        raise typer.Exit(ro.ROLLED_BACK_EXIT)
