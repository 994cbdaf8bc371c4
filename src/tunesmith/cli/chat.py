"""`tunesmith chat`: one-shot or interactive generation with the right chat template."""

from __future__ import annotations

import typer

from tunesmith.cli.base import app, console, err_console, handle_errors


@app.command()
@handle_errors
def chat(
    target: str = typer.Argument(..., help="Run folder, model folder, .gguf file or catalog name."),
    prompt: str = typer.Option(None, "--prompt", "-p", help="Answer this one prompt and exit."),
    system: str = typer.Option(None, "--system", help="System message (a run's default: the first one in its eval data)."),
    max_new_tokens: int = typer.Option(256, min=1, help="Generation budget per answer."),
) -> None:
    """Talk to a tuned run or any model, with its own chat template (greedy)."""
    from tunesmith.chat import ChatSession

    session = ChatSession.open(target, system=system)
    if session.warning:
        err_console.print(f"[bold yellow]warning:[/] {session.warning}")
    if prompt is not None:
        console.print(session.ask(prompt, max_new_tokens), highlight=False, markup=False)
        return
    console.print(f"[dim]chatting with {target}; empty line or Ctrl-D to quit[/]")
    while True:
        try:
            text = console.input("[bold cyan]you> [/]")
        except EOFError:
            break
        if not text.strip():
            break
        console.print(session.ask(text, max_new_tokens), highlight=False, markup=False)
