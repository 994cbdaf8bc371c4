"""`tunesmith demo`: the whole pipeline on the embedded defaults."""

from __future__ import annotations

from pathlib import Path

import typer

from tunesmith.cli.base import app, console, handle_errors


@app.command()
@handle_errors
def demo(
    directory: Path = typer.Option(None, "--dir", help="Folder for the demo project and its run [demo-run, tools: demo-tools]."),
    task: str = typer.Option(
        "extract",
        "--task",
        help="extract: support messages -> JSON tickets with retrieval (the ladder); tools: requests -> calls to four tools, "
        "base vs tuned, then a served two-step tool loop.",
    ),
    steps: int = typer.Option(None, min=1, help="Override the number of training steps."),
    fresh: bool = typer.Option(
        True,
        "--overwrite/--no-overwrite",
        help="Replace an earlier demo's own files in --dir (never files the demo did not write).",
    ),
    budget_s: float = typer.Option(
        None,
        "--budget-s",
        min=60,
        help="Seconds the demo may take (default 900: 15 minutes; tools: 600); its training steps (and the ladder) are "
        "sized to fit this machine, and the plan is printed before it starts.",
    ),
) -> None:
    """Pull SmolLM2, train a LoRA on a bundled demo task, compare base vs tuned, then merge and chat (extract) or serve
    and call tools (tools)."""
    if task == "tools":
        from tunesmith.demo.tools_pipeline import run_tools_demo

        run_tools_demo(directory or Path("demo-tools"), console=console, steps=steps, fresh=fresh, budget_s=budget_s)
        return
    if task != "extract":
        raise typer.BadParameter(f"unknown task {task!r}; use extract or tools", param_hint="--task")
    from tunesmith.demo.pipeline import run_demo

    run_demo(directory or Path("demo-run"), console=console, steps=steps, fresh=fresh, budget_s=budget_s)
