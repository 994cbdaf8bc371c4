"""`tunesmith import openai`: bring a hosted fine-tuning job into a tunesmith project."""

from __future__ import annotations

from pathlib import Path

import typer

from tunesmith.cli import app, console, handle_errors

import_app = typer.Typer(help="Bring fine-tuning jobs from hosted services into a tunesmith project.", no_args_is_help=True)
app.add_typer(import_app, name="import")


@import_app.command("openai")
@handle_errors
def openai_job(
    job: Path = typer.Argument(None, help="The job JSON (GET /v1/fine_tuning/jobs/{id}, or the body that created it)."),
    model: str = typer.Option(..., "--model", help="Base model: a catalog name, a model folder or a hub id."),
    out: Path = typer.Option(..., "--out", help="Project folder to write (new, or made by an earlier import)."),
    files: Path = typer.Option(
        None, "--files", help="Folder holding the job's files downloaded from OpenAI, named by file id (.jsonl optional)."
    ),
    training_file: Path = typer.Option(None, "--training-file", help="Without a job file: the training JSONL."),
    validation_file: Path = typer.Option(None, "--validation-file", help="Without a job file: the validation JSONL."),
    method: str = typer.Option(
        None, "--method", help="Without a job file: supervised | dpo | reinforcement (default: from the rows' shape)."
    ),
    grader: Path = typer.Option(
        None, "--grader", help="Graders JSON (one, a list, or {graders: [...]}): eval graders; the reward with reinforcement."
    ),
    judge: str = typer.Option(
        None, "--judge", help="Model that score_model graders ask: a run folder, model spec or OpenAI-compatible URL."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the files an earlier import wrote into --out (refused if you edited them)."
    ),
) -> None:
    """Write a tunesmith project from an OpenAI fine-tuning job: the files audited with OpenAI's format rules and
    copied (converted where needed), the hyperparameters mapped (stated in recipe.yaml), graders translated, and
    one report of everything that could not be carried over (docs/migrate-openai.md)."""
    from tunesmith.migrate.openai import import_openai

    with console.status("reading, auditing and mapping the job ..."):
        result = import_openai(out, model, job, training_file, validation_file, method, grader, files, judge, overwrite=overwrite)
    for line in result.summary:
        console.print(line, highlight=False, markup=False, soft_wrap=True)
