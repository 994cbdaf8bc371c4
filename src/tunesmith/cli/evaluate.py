"""`tunesmith eval`: base vs tuned on the same held-out prompts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.progress import Progress

from tunesmith.cli.base import app, console, err_console, handle_errors
from tunesmith.errors import RecipeError
from tunesmith.tables import Table

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
    target: Path = typer.Argument(None, help="Recipe YAML or run folder (optional with --data whose rows carry samples)."),
    max_examples: int = typer.Option(None, min=1, help="Evaluate only the first N held-out examples."),
    gate: list[str] = typer.Option(
        [], "--gate", help="Add or replace a release gate: metric=RULE, e.g. exact_match='>=0.9' (repeatable)."
    ),
    grader: Path = typer.Option(
        None, "--grader", help="OpenAI grader JSON (one, a list, or {graders: [...]}): scored as graders.<name>."
    ),
    data: Path = typer.Option(
        None, "--data", help="With --grader: an OpenAI Evals-style JSONL ({item, sample} per line) to score instead."
    ),
    judge: str = typer.Option(
        None, "--judge", help="Model that score_model / label_model graders ask: run folder, model spec or URL."
    ),
    out: Path = typer.Option(None, "--out", help="With --data: write the graders report (JSON) to this new file."),
) -> None:
    """Run the same held-out prompts through the base and the tuned model and compare them."""
    from tunesmith.eval.gates import GATES_FAILED_EXIT, gate_options
    from tunesmith.train.methods import evaluate

    if data is not None and grader is None:
        raise RecipeError([("--data", "give the graders that score it with --grader G.json")])
    if target is None and data is None:
        raise RecipeError([("TARGET", "give a recipe or run folder (or --grader G.json --data evals.jsonl)")])
    run = resolve_run(target) if target is not None else None
    gates = gate_options(gate)
    added = _file_graders(grader, judge, run) if grader is not None else []
    if data is not None:
        if not print_checklist(_score_file(data, added, run, gates, out)):
            raise typer.Exit(GATES_FAILED_EXIT)
        return
    assert run is not None
    if gates:  # in memory only: the run folder's run.yaml is never rewritten
        run.recipe.eval.gates = {**run.recipe.eval.gates, **gates}
    if added:
        run.recipe.eval.graders = _with_graders(run.recipe.eval.graders, added)
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


def _file_graders(path: Path, judge: str | None, run: Any) -> list[dict[str, Any]]:
    """The usable graders of an OpenAI grader file (what could not be used printed, one line each)."""
    from tunesmith.errors import DataError
    from tunesmith.migrate.openai_graders import eval_graders

    section = run.recipe.eval.judge if run is not None else None
    graders, notes = eval_graders(path, judge or (section.model if section is not None else None))
    for note in notes:
        err_console.print(f"[yellow]not carried over:[/] {escape(note)}", highlight=False)
    if not graders:
        raise DataError(f"--grader {path}: none of its graders can be scored here (see above)")
    return graders


def _with_graders(existing: Any, added: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from tunesmith.eval.graders import load_graders

    have = [g.model_dump(mode="json", exclude_none=True) for g in load_graders(existing)] if existing else []
    taken = {g["name"] for g in have} & {g["name"] for g in added}
    if taken:
        raise RecipeError([("--grader", f"grader name(s) {', '.join(sorted(taken))} already in the run's eval.graders")])
    return have + added


def _score_file(data: Path, definitions: list[dict[str, Any]], run: Any, gates: dict[str, str], out: Path | None) -> Any:
    """Score an Evals-style file; print one row per grader; the gates' results on graders.<name> (tuned or samples)."""
    from tunesmith import outputs
    from tunesmith.eval.evals_file import SAMPLES, evaluate_file
    from tunesmith.eval.gates import check_rules
    from tunesmith.eval.graders import load_graders

    if out is not None and out.exists():
        raise outputs.OutputError(f"{out} exists: --out writes a new file", hint="Name a file that does not exist yet.")
    with Progress(console=console, transient=True) as progress:
        report = evaluate_file(data, load_graders(definitions), run, progress)
    table = Table(title=f"graders on {report.n_examples} rows of {data.name}")
    sides = [SAMPLES] if run is None else ["base", "tuned"]
    table.add_column("grader")
    for side in sides:
        table.add_column(f"{side} pass", justify="right")
        table.add_column(f"{side} mean", justify="right")
    table.add_column("not scored", justify="right")
    for name, by_side in report.graders.items():
        cells = [f"{by_side[s].pass_rate:.3f} {by_side[s].mean:.3f}".split() for s in sides]
        table.add_row(f"graders.{name}", *[c for pair in cells for c in pair], str(sum(by_side[s].failed for s in sides)))
    console.print(table)
    for name, by_side in report.graders.items():
        for side, score in by_side.items():
            if score.failed:
                err_console.print(
                    f"[bold yellow]warning:[/] grader {name} could not score {score.failed} {side} output(s), "
                    f"counted as 0: {escape(score.first_error or '')}",
                    highlight=False,
                )
    if out is not None:
        from tunesmith.run import write_json_atomic

        write_json_atomic(out, report.model_dump(mode="json"))
        console.print(f"report: {out}")
    values = {f"graders.{name}": by_side[sides[-1]].pass_rate for name, by_side in report.graders.items()}
    return check_rules(dict(gates), values)
