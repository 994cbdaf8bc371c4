"""`tunesmith monitor`, `tunesmith retrain` and `tunesmith feedback export`: from served traffic back to training."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from tunesmith.cli.base import app, console, handle_errors
from tunesmith.tables import Table

if TYPE_CHECKING:
    from tunesmith.monitor.report import MonitorReport

feedback_app = typer.Typer(help="Turn served feedback (ratings, corrections) into training data.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")

LOG_HELP = (
    "Read this request log instead of SERVE_DIR's: a .sqlite file, or postgresql://USER@HOST[:PORT]/DB, the log "
    "several replicas share (password from ~/.pgpass or $PGPASSWORD)."
)
_STATUS = {"ok": "[green]ok[/]", "drift": "[bold red]DRIFT[/]", "skip": "[dim]skip[/]"}


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def signal_table(report: MonitorReport) -> Table:
    table = Table(
        "signal",
        "vs",
        "recent",
        "reference",
        "statistic",
        "drift when",
        "status",
        "detail",
        title=f"recent {report.recent.requests} requests vs earlier {report.earlier.requests}"
        + (" and the training data" if report.baseline else ""),
        title_justify="left",
    )
    for s in report.signals:
        table.add_row(
            s.name,
            s.reference,
            _num(s.recent),
            _num(s.baseline),
            _num(s.statistic),
            escape(s.rule),
            _STATUS[s.status],
            escape(s.detail),
        )
    return table


def replica_table(report: MonitorReport) -> Table:
    table = Table(
        "replica", "requests", "answered", "errors", "p95 latency s", title="recent window by replica", title_justify="left"
    )
    for r in report.replicas:
        table.add_row(escape(r.replica or "(unnamed)"), str(r.requests), str(r.answered), str(r.errors), _num(r.latency_p95_s))
    return table


def log_source(serve_dir: Path | None, log: str | None) -> str | Path:
    """The request log to read: --log when given, else the serve folder (or .sqlite file) argument."""
    from tunesmith.errors import RunError

    if log is None and serve_dir is None:
        raise RunError("no request log to read", hint="Pass a serve folder (e.g. serve) or --log FILE|postgresql://...")
    return log if log is not None else serve_dir  # type: ignore[return-value]


def _report_place(serve_dir: Path | None, log: str | None) -> Path:
    """Default report folder: SERVE_DIR/monitor, else beside a --log file; a --log URL alone needs --out."""
    from tunesmith.errors import RunError
    from tunesmith.serve.store import is_url

    where = serve_dir if serve_dir is not None else (None if log is None or is_url(log) else Path(log))
    if where is None:
        raise RunError("a --log URL has no folder to put the report in", hint="Pass --out DIR (or a serve folder).")
    return (where if where.is_dir() else where.parent) / "monitor"


def variant_table(report: MonitorReport) -> Table:
    from tunesmith.monitor.report import VARIANT_FIGURES

    table = Table("model", "variant", *VARIANT_FIGURES, title="recent window by rollout variant", title_justify="left")
    for v in report.variants:
        table.add_row(escape(v.model), v.variant, *(_num(v.figures.get(f)) for f in VARIANT_FIGURES))
    return table


def _section(
    baseline: Any, recipe: Path | None, window_hours: float | None, embedder: str | None, reward_model: Path | None = None
) -> Any:
    """Thresholds: --recipe's monitor section, else the baseline run's, else the defaults; then the flags."""
    from tunesmith.config import MonitorSection, load_recipe

    cfg = (
        load_recipe(recipe, check_files=False).monitor
        if recipe
        else baseline.recipe.monitor
        if baseline is not None
        else MonitorSection()
    )
    flags = (
        ("window_hours", window_hours),
        ("embedder", embedder),
        ("reward_model", str(reward_model) if reward_model else None),
    )
    updates = {k: v for k, v in flags if v is not None}
    return MonitorSection.model_validate({**cfg.model_dump(), **updates}) if updates else cfg


@app.command("monitor")
@handle_errors
def monitor(
    serve_dir: Path = typer.Argument(
        None, help="Serve folder holding requests.sqlite (or the .sqlite file); with --log, where the report goes."
    ),
    log: str = typer.Option(None, "--log", help=LOG_HELP),
    baseline: Path = typer.Option(None, "--baseline", help="Run folder whose training data is the reference distribution."),
    recipe: Path = typer.Option(
        None,
        "--recipe",
        help="Recipe whose `monitor` section sets the thresholds (default: the baseline run's, else the defaults).",
    ),
    out: Path = typer.Option(
        None,
        "--out",
        help="Folder for monitor.json and monitor.html (default: SERVE_DIR/monitor, needed with a --log URL and no "
        "SERVE_DIR; a later monitor run replaces only its own files there).",
    ),
    until: datetime = typer.Option(None, "--until", help="End of the recent window (UTC, ISO); default: now."),
    window_hours: float = typer.Option(None, "--window-hours", min=0.001, help="Override monitor.window_hours."),
    embedder: str = typer.Option(None, "--embedder", help="Override monitor.embedder: minilm | char-ngrams."),
    reward_model: Path = typer.Option(
        None, "--reward-model", help="A reward run (method: reward) scoring served answers: override monitor.reward_model."
    ),
    export_retrain: Path = typer.Option(
        None,
        "--export-retrain",
        help="Also write the corrected and drifted traffic as the next training set (messages JSONL, a new file).",
    ),
) -> None:
    """Compare recent traffic with the training data and the earlier window: input, output and latency/error drift.

    Exit codes: 0 no drift · 3 a signal crossed its threshold (for cron/CI alerts) · 1 the command failed.
    """
    from tunesmith import outputs
    from tunesmith.monitor import traffic
    from tunesmith.monitor.report import DRIFT_EXIT, HTML_NAME, REPORT_NAME, write_html, write_report
    from tunesmith.run import load_run

    source = log_source(serve_dir, log)
    place = out or _report_place(serve_dir, log)
    base = load_run(baseline) if baseline is not None else None
    cfg = _section(base, recipe, window_hours, embedder, reward_model)
    with console.status("embedding prompts and testing for drift ..."):
        report = traffic.check(source, base, cfg, until)
    folder = outputs.claim_dir(place, "monitor", overwrite=True, what="monitor folder")
    with outputs.replacing(folder) as stage:  # the earlier report stays until the new one is complete
        write_report(stage / REPORT_NAME, report)
        write_html(stage / HTML_NAME, report)
    console.print(signal_table(report))
    if report.replicas:
        console.print(replica_table(report))
    if report.variants:
        console.print(variant_table(report))
    console.print(f"report: {folder / HTML_NAME} (+ {REPORT_NAME})")
    if export_retrain is not None:
        from tunesmith.monitor.feedback import export_retrain as write_retrain

        done = write_retrain(source, base, cfg, export_retrain, until)
        console.print(
            f"[green]wrote[/] {done.rows} rows to {done.path} · review them, then: tunesmith retrain RECIPE --add {done.path}"
        )
    if report.drifted:
        console.print(f"[bold red]{len(report.drifted)} signal(s) drifted:[/] {', '.join(s.name for s in report.drifted)}")
        raise typer.Exit(DRIFT_EXIT)
    console.print("[green]no drift[/]")


@feedback_app.command("export")
@handle_errors
def feedback_export(
    serve_dir: Path = typer.Argument(None, help="Serve folder holding requests.sqlite (or the .sqlite file)."),
    log: str = typer.Option(None, "--log", help=LOG_HELP.replace("SERVE_DIR's", "SERVE_DIR's (feedback given to any replica)")),
    to: str = typer.Option(..., "--to", help="sft (corrections) | dpo (corrections and up/down pairs, OpenAI DPO shape)."),
    out: Path = typer.Option(..., "--out", help="New JSONL file (an existing file is never replaced)."),
    model: str = typer.Option(None, "--model", help="Tokenizer for the audit's token checks (default: no token checks)."),
) -> None:
    """Write served feedback as training rows, then run the data audit on the written file."""
    from tunesmith.cli.data import render_report
    from tunesmith.data.audit import audit
    from tunesmith.errors import DataError
    from tunesmith.monitor.feedback import export

    if to not in ("sft", "dpo"):
        raise DataError(f"--to must be sft or dpo, not `{to}`")
    done = export(log_source(serve_dir, log), to, out)  # type: ignore[arg-type]
    console.print(f"[green]wrote[/] {done.rows} {to} rows to {done.path}")
    for why, n in done.skipped.items():
        console.print(f"  [dim]skipped {n}: {why}[/]")
    tokenizer = None
    if model:
        from tunesmith import models

        tokenizer = models.load_tokenizer(models.resolve_base(model))
    from tunesmith.train import methods

    render_report(audit([str(done.path)], tokenizer=tokenizer, method=methods.get(to)))
    if tokenizer is None:
        console.print("[dim]token checks skipped (pass --model to run them)[/]")


@app.command("retrain")
@handle_errors
def retrain(
    recipe: Path = typer.Argument(..., help="The recipe of the served version (its output_dir is the served run)."),
    add: Path = typer.Option(..., "--add", help="New training rows (e.g. from feedback export or monitor --export-retrain)."),
    serve_dir: Path = typer.Option(Path("serve"), "--serve-dir", help="Serve folder whose adapters/<name> link is promoted."),
    name: str = typer.Option(None, "--name", help="Adapter name served (default: the recipe's name)."),
    force: bool = typer.Option(False, "--force", help="Train even when the data check finds blocking errors."),
) -> None:
    """Train the next version on old + new data (a new run folder), gate it against the served version, and point
    SERVE_DIR/adapters/NAME at it only when every gate passes. Exit 3 when a gate fails (nothing promoted)."""
    from rich.progress import Progress

    from tunesmith.cli.evaluate import print_checklist
    from tunesmith.config import load_recipe
    from tunesmith.eval.gates import GATES_FAILED_EXIT
    from tunesmith.monitor.retrain import retrain as run_retrain

    name = name or load_recipe(recipe, check_files=False).name
    with Progress(console=console, transient=True) as progress:
        done = run_retrain(recipe, add, serve_dir, name, progress=progress, force=force)
    console.print(f"new run: {done.new_run} · served: {done.served_run}")
    print_checklist(done.gates, title="release gates (new vs served)")
    if not done.promoted:
        console.print(f"[bold red]not promoted[/]: {serve_dir / 'adapters' / name} still serves {done.served_run}")
        raise typer.Exit(GATES_FAILED_EXIT)
    console.print(
        f"[green]promoted[/]: {done.link} -> {done.new_run}\n"
        f"serve it: tunesmith serve BASE --adapter {name}={done.link} (restart picks up the new target)"
    )
