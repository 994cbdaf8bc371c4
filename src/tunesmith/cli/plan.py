"""`tunesmith plan`: peak memory, time and cost of a training run before it starts, and how to make it fit."""

from __future__ import annotations

from pathlib import Path

import typer

from tunesmith import allocator
from tunesmith.cli.base import app, console, handle_errors


@app.command()
@handle_errors
def plan(
    recipe: Path = typer.Argument(None, help="Recipe YAML (or give --model and --data)."),
    gpu: str = typer.Option("cpu", "--gpu", help="h100 | a100 | l4 | rtx4090 | cpu (this machine, measured)."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Devices per node trained on together (data parallel)."),
    nnodes: int = typer.Option(1, "--nnodes", min=1, help="Nodes (machines) of --nproc devices each."),
    price: float = typer.Option(None, "--price", min=0, help="Price per device-hour in USD (default: a typical on-demand rate)."),
    model: str = typer.Option(None, "--model", help="Base model, without a recipe."),
    data: Path = typer.Option(None, "--data", help="Training file, without a recipe."),
    adapter: str = typer.Option("lora", "--adapter", help="lora | qlora | dora | full, without a recipe."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field: section.field=value (repeatable)."),
) -> None:
    """Estimate peak memory (weights, adapter, optimizer, gradients, activations, logits), time and cost; say
    whether it fits and which `--set` overrides make it fit. Parameters come from the model's config.json."""
    from tunesmith import models
    from tunesmith.config import load_recipe, recipe_from_dict
    from tunesmith.errors import RecipeError
    from tunesmith.plan.advisor import plan as make_plan
    from tunesmith.plan.advisor import strategy
    from tunesmith.plan.cost import GPUS
    from tunesmith.tables import Table

    bad = [("--gpu", f"must be one of cpu, {', '.join(GPUS)}; got {gpu}")] if gpu != "cpu" and gpu not in GPUS else []
    bad += [(f"--{name}", f"must be at least 1, got {n}") for name, n in (("nproc", nproc), ("nnodes", nnodes)) if n < 1]
    if bad:
        raise RecipeError(bad)
    if recipe is not None:
        cfg = load_recipe(recipe, set_)
    elif model and data:
        values = {"model": {"base": model}, "data": {"train": [str(data.resolve())]}, "adapter": {"type": adapter}}
        cfg = recipe_from_dict(values, Path.cwd(), source="--model/--data")
    else:
        raise RecipeError([("(arguments)", "give a RECIPE, or --model and --data")])
    tokenizer = models.load_tokenizer(models.resolve_base(cfg.model.base))
    with console.status("reading the data ..."):
        p = make_plan(cfg, tokenizer, gpu, nproc, price, nnodes=nnodes)
    nodes = f"{nnodes} nodes x {nproc}" if nnodes > 1 else f"{p.nproc}"
    table = Table(title=f"plan on {nodes} x {p.hardware}", show_header=True)
    table.add_column("memory (MiB)")
    table.add_column("estimate", justify="right")
    for key, value in p.memory_mb.items():
        table.add_row(key, f"{value:,.0f}")
    table.add_row("capacity (90%)", f"{p.capacity_mb:,.0f}")
    console.print(table)
    console.print(
        f"{p.params / 1e6:,.1f}M parameters, {p.trainable_params / 1e6:,.2f}M trained; {p.steps} steps of "
        f"{cfg.training.batch_size * cfg.training.grad_accum * p.nproc} rows in passes of {p.micro_batch}, "
        f"{p.tokens:,} tokens: ~{p.seconds / 60:,.1f} min ({p.precision} at {p.device_tflops * 1e3:,.0f} GFLOP/s), ~${p.usd:,.2f}"
    )
    console.print(allocator.plan_line(), highlight=False)
    how = strategy(p, cfg.adapter.type)
    if how.name != "single":
        where = f"--nnodes {nnodes} --nproc {nproc}" if nnodes > 1 else f"--nproc {nproc}"
        console.print(f"strategy: {how.name} ({how.reason}): tunesmith train RECIPE {where} --accelerate-config {how.name}")
    if how.fits:
        console.print("[green]fits[/]" + (f" ({how.per_device_mb:,.0f} MiB per device, sharded)" if how.name == "fsdp" else ""))
    else:
        console.print("[red]does not fit[/]; try: " + " ".join(f"--set {s}" for s in p.fix))
