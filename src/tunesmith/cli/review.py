"""`tunesmith review`: blind-review results and exports from the command line (the studio runs the rounds)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from tunesmith.cli.base import app, console, handle_errors
from tunesmith.tables import Table

if TYPE_CHECKING:
    from tunesmith.studio.review import ReviewRound, ReviewStore

review_app = typer.Typer(help="Blind A/B review results: stats and export to SFT/DPO data.", no_args_is_help=True)
app.add_typer(review_app, name="review")


def _round(store: ReviewStore, round_id: int | None) -> ReviewRound:
    from tunesmith.errors import RunError

    rounds = store.rounds()
    if not rounds:
        raise RunError("no review round in this run yet", hint="Start one in `tunesmith studio`.")
    return store.round(round_id) if round_id is not None else rounds[-1]


@review_app.command("stats")
@handle_errors
def stats(
    run: Path = typer.Argument(..., help="Run folder."),
    round_id: int = typer.Option(None, "--round", help="Round id (default: the newest)."),
    min_agree: int = typer.Option(1, min=1, help="An item counts only when at least this many reviewers agree."),
) -> None:
    """Win rate with its Wilson 95% interval, reviewer agreement (Cohen's / Fleiss' kappa), disagreements."""
    from tunesmith.studio.review import ReviewStore, compute_stats

    store = ReviewStore.open(run, create=False)
    try:
        rnd = _round(store, round_id)
        s = compute_stats(store.items(rnd.id), store.verdicts(rnd.id), max(1, min_agree))
    finally:
        store.close()
    title = f"review round {rnd.id}: {rnd.name}" + ("" if rnd.closed else " (open)")
    table = Table("figure", "value", title=title, title_justify="left")
    win = "n/a" if s.win_rate is None else f"{s.win_rate:.1%} (95% CI {s.ci_low:.1%}-{s.ci_high:.1%})"
    table.add_row(f"{rnd.label_y} win rate vs {rnd.label_x}", win)
    table.add_row("items counted", f"{s.counted} of {s.n_items} (min agree {s.min_agree})")
    table.add_row("outcomes", ", ".join(f"{k} {v}" for k, v in s.outcomes.items()))
    table.add_row("reviewers", ", ".join(s.reviewers) or "none")
    table.add_row("agreement", "n/a" if s.kappa is None else f"{s.kappa_kind} kappa {s.kappa:.3f}")
    table.add_row("disagreements", str(len(s.disagreements)))
    console.print(table)


@review_app.command("export")
@handle_errors
def export(
    run: Path = typer.Argument(..., help="Run folder."),
    to: str = typer.Option(..., "--to", help="sft (reviewers' corrections) or dpo (counted preferences)."),
    out: Path = typer.Option(..., "--out", help="New file to write (never overwritten)."),
    round_id: int = typer.Option(None, "--round", help="Round id (default: the newest)."),
    min_agree: int = typer.Option(1, min=1, help="A preference counts only when at least this many reviewers agree."),
) -> None:
    """Write corrections as SFT rows or preferences as DPO rows (OpenAI shape), then audit the file."""
    from tunesmith.studio.review import ReviewStore, export_rows, write_export

    store = ReviewStore.open(run, create=False)
    try:
        rnd = _round(store, round_id)
        rows = export_rows(store.items(rnd.id), store.verdicts(rnd.id), to, max(1, min_agree))
    finally:
        store.close()
    summary = write_export(rows, out)
    console.print(f"[green]wrote[/] {out}: {summary.rows} rows · audit: {summary.errors} errors, {summary.warnings} warnings")
    for code, n in summary.by_code.items():
        console.print(f"  {code} x {n}")
