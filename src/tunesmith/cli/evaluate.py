"""`tunesmith eval`: base vs tuned on the same held-out prompts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from tunesmith.cli import app, console, err_console, handle_errors

if TYPE_CHECKING:
    from tunesmith.records import EvalReport, GateResult


def resolve_run(target: Path) -> Any:
    """A run folder, or a recipe YAML whose output_dir is one."""
    from tunesmith.config import load_recipe
    from tunesmith.run import is_run_dir, load_run

    if target.is_dir() and is_run_dir(target):
        return load_run(target)
    if target.suffix in (".yaml", ".yml"):
        return load_run(load_recipe(target, check_files=False).run_dir)  # the run is self-contained: data may have moved
    return load_run(target)


def comparison_table(report: EvalReport) -> Table:
    from tunesmith.eval.registry import metric as declared

    summary = report.summary
    table = Table(title=f"{report.run}: base vs tuned on {report.n_examples} held-out examples")
    for col in ("metric", "base", "tuned", "delta"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    for metric, base in summary["base"].items():
        tuned, delta = summary["tuned"][metric], summary["delta"][metric]
        good = declared(metric).better(delta, 0.0)
        colour = "green" if good and abs(delta) > 1e-9 else ("red" if abs(delta) > 1e-9 else "white")
        table.add_row(metric, f"{base:.4f}", f"{tuned:.4f}", f"[{colour}]{delta:+.4f}[/]")
    j = report.judgement
    table.caption = f"tuned wins {j.wins} · loses {j.losses} · ties {j.ties}; reference: {report.reference or 'n/a'}"
    return table


def calibration_table(run_dir: Path) -> Table:
    """A reward run's reliability table (eval/calibration.json): per confidence bucket, pairs and accuracy per side."""
    from tunesmith.eval.reward_eval import read_calibration

    cal = read_calibration(run_dir)
    table = Table("confidence", "|margin| from", *(f"{side} pairs · accuracy" for side in cal.tables), title="calibration")
    for i, bucket in enumerate(next(iter(cal.tables.values()))):
        cells = []
        for side in cal.tables.values():
            b = side[i]
            cells.append(f"{b.pairs} · {b.accuracy:.3f}" if b.accuracy is not None else f"{b.pairs} · -")
        table.add_row(f"{bucket.low:.1f}-{bucket.high:.1f}", f"{bucket.min_margin:.2f}", *cells)
    table.caption = "calibration_error (ECE): " + ", ".join(f"{k} {v:.3f}" for k, v in cal.calibration_error.items())
    return table


def degenerate_lines(report: EvalReport) -> list[str]:
    """The generation budget and, per model, the share of outputs that hit it or loop (flagged when high)."""
    from tunesmith.eval.notes import DEGENERATE_SHARE

    g = report.generation
    lines = [f"generation budget: {g.get('max_new_tokens')} tokens ({g.get('max_new_tokens_from', 'eval.max_new_tokens')})"]
    for side, d in report.degenerate.items():
        flag = "[bold red]degenerate[/]" if d["degenerate"] >= DEGENERATE_SHARE else "[green]ok[/]"
        lines.append(f"  {side}: {d['hit_budget']:.0%} hit the budget · {d['loop_rate']:.0%} repetition loops · {flag}")
    return lines


def print_checklist(results: list[GateResult], title: str = "release gates") -> bool:
    """One PASS/FAIL/SKIP line per gate; whether every gate passed (skipped ones do not block)."""
    if not results:
        return True
    console.print(f"[bold]{title}[/]")
    marks = {"pass": "[green]PASS[/]", "fail": "[bold red]FAIL[/]", "skip": "[dim]SKIP[/]"}
    for r in results:
        value = "" if r.value is None else f"{r.value:.4g} "
        detail = f" · {escape(r.detail)}" if r.detail else ""
        console.print(f"  {marks[r.status]} {r.name}: {value}({r.rule}){detail}", highlight=False)
    ok = all(r.passed for r in results)
    console.print("[green]all gates pass[/]" if ok else "[bold red]a release gate failed[/]")
    return ok


@app.command("eval")
@handle_errors
def eval_cmd(
    target: Path = typer.Argument(..., help="Recipe YAML or run folder."),
    max_examples: int = typer.Option(None, min=1, help="Evaluate only the first N held-out examples."),
    gate: list[str] = typer.Option(
        [], "--gate", help="Add or replace a release gate: metric=RULE, e.g. exact_match='>=0.9' (repeatable)."
    ),
) -> None:
    """Run the same held-out prompts through the base and the tuned model and compare them."""
    from tunesmith.eval.compare import evaluate
    from tunesmith.eval.gates import GATES_FAILED_EXIT, gate_options

    run = resolve_run(target)
    if gate:  # in memory only: the run folder's run.yaml is never rewritten
        run.recipe.eval.gates = {**run.recipe.eval.gates, **gate_options(gate)}
    with Progress(console=console, transient=True) as progress:
        report = evaluate(run, max_examples=max_examples, progress=progress)
    if report.template_warning:
        err_console.print(f"[bold yellow]warning:[/] {report.template_warning}")
    console.print(comparison_table(report))
    if (run.dir / "eval" / "calibration.json").is_file() and "pairwise_accuracy" in report.summary.get("tuned", {}):
        console.print(calibration_table(run.dir))  # a reward model: its confidence against how often it is right
    for line in degenerate_lines(report) if report.degenerate else []:  # no generation: nothing to say
        console.print(line, highlight=False)
    for warning in report.warnings:
        err_console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False)
    console.print(f"report: {run.dir / 'eval' / 'report.html'} (+ report.json, predictions.jsonl)")
    if not print_checklist(report.gates):
        raise typer.Exit(GATES_FAILED_EXIT)  # CI blocks the release
