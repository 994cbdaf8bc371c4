"""`tunesmith merge`."""

from __future__ import annotations

from pathlib import Path

import typer

from tunesmith.cli import app, console, handle_errors


@app.command()
@handle_errors
def merge(
    run_dir: Path = typer.Argument(..., help="Run folder (output_dir of a train run)."),
    out: Path = typer.Option(..., "--out", help="Folder for the merged model."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16 (never 4-bit)."),
    check_prompts: int = typer.Option(3, min=1, help="Held-out prompts whose greedy tokens must agree after merging."),
) -> None:
    """Merge the adapter into its base; the result loads with plain AutoModelForCausalLM.from_pretrained."""
    from tunesmith.export.merge import merge as do_merge
    from tunesmith.run import load_run

    with console.status("merging ..."):
        result = do_merge(load_run(run_dir), out, dtype=dtype, n_check=check_prompts)
    console.print(
        f"[green]merged[/] -> {result['out']}\n"
        f"check: merged and adapter greedy tokens identical on {result['identical']}/{result['prompts']} prompts\n"
        f"base: {result['base_note']}"
    )


export_app = typer.Typer(
    help="Export a tuned model for other runtimes (GGUF for llama.cpp, Ollama, LM Studio).", no_args_is_help=True
)
app.add_typer(export_app, name="export")


@export_app.command("gguf")
@handle_errors
def gguf(
    source: Path = typer.Argument(..., help="Run folder (merged first, in a temp folder) or a merged model folder."),
    out: Path = typer.Option(..., "--out", help="The .gguf file to write (must not exist)."),
    type_: str = typer.Option("f16", "--type", help="f16 | bf16 | q8_0."),
    adapter_only: bool = typer.Option(False, "--adapter-only", help="Write the LoRA alone as a llama.cpp GGUF adapter (--lora)."),
    check_prompts: int = typer.Option(3, min=1, help="Held-out prompts whose greedy tokens are compared after reloading."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an earlier export tunesmith wrote there (unchanged since)."
    ),
) -> None:
    """Convert with llama.cpp's converter, reload and compare greedy tokens, then publish FILE.gguf + FILE.gguf.lineage.json."""
    from tunesmith.export import gguf as export_gguf
    from tunesmith.export import gguf_lora

    with console.status("exporting to GGUF ..."):
        if adapter_only:
            lineage = gguf_lora.export_adapter_gguf(source, out, overwrite=overwrite)
        else:
            lineage = export_gguf.export_gguf(source, out, type_, n_check=check_prompts, overwrite=overwrite)
    c = lineage.check or {}
    if adapter_only:
        console.print(
            f"[green]wrote[/] {out} (GGUF LoRA, {c.get('adapted_weights')} weights, alpha {c.get('alpha')}, r {c.get('r')})"
        )
    else:
        console.print(
            f"[green]wrote[/] {out} ({lineage.type})\ncheck: greedy tokens identical on {c.get('identical')}/"
            f"{c.get('prompts')} prompts, first {export_gguf.EXACT_PREFIX} identical on {c.get('prefix_identical')}"
        )
    console.print(f"lineage: {out}.lineage.json (also in the file under {export_gguf.LINEAGE_KEY})")
