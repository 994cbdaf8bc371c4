"""`tunesmith init` and `tunesmith train`."""

from __future__ import annotations

from pathlib import Path

import typer

from tunesmith.cli.base import app, console, handle_errors


@app.command()
@handle_errors
def init(
    directory: Path = typer.Argument(..., help="Folder to create, e.g. my-run (new, empty, or made by an earlier init)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the files an earlier `tunesmith init` wrote there (refused if you edited them)."
    ),
    data: list[Path] = typer.Option(
        None, "--data", help="Your training file(s) (repeatable); without it, the bundled demo task."
    ),
    eval_file: Path = typer.Option(None, "--eval", help="Your held-out file; without it, a share of --data is held out."),
    model: str = typer.Option(
        None, "--model", help="Base model (catalog name, folder, .gguf, hub id); default: the catalog default."
    ),
    method: str = typer.Option("sft", "--method", help="Training method for your --data: sft, dpo or grpo."),
) -> None:
    """Write a commented recipe into DIRECTORY: for your --data (format detected, audited, schedule chosen from
    the data), or with a copy of the bundled demo task."""
    if data:
        from tunesmith.cli.project import print_project
        from tunesmith.errors import RecipeError
        from tunesmith.project import write_user_project
        from tunesmith.train import methods

        can = [m.name for m in methods.registered() if m.init_from_data]
        if method not in can:
            raise RecipeError([("--method", f"must be {', '.join(can)}, not `{method}`")])
        with console.status("reading and auditing your data ..."):
            project = write_user_project(directory, list(data), eval_file, model, method, overwrite=overwrite)
        print_project(project)
        return
    from tunesmith.demo.pipeline import write_project

    recipe = write_project(directory, overwrite=overwrite)
    console.print(f"[green]wrote[/] {recipe}\nnext: tunesmith train {recipe}")


@app.command()
@handle_errors
def train(
    recipe: Path = typer.Argument(..., help="Recipe YAML."),
    set_: list[str] = typer.Option([], "--set", help="Override a field: section.field=value (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint of this run."),
    force: bool = typer.Option(False, "--force", help="Train even when the data check finds blocking errors."),
    nproc: int = typer.Option(
        None,
        "--nproc",
        help="Processes on this machine (one per GPU; CPU processes without GPUs), via accelerate launch. "
        "With --nnodes: per node, default one per visible GPU (1 without GPUs).",
    ),
    nnodes: int = typer.Option(1, "--nnodes", help="Machines training together; run the same command on each."),
    node_rank: int = typer.Option(0, "--node-rank", help="With --nnodes: this machine's index, 0 (the main node) to N-1."),
    main_address: str = typer.Option(
        None, "--main-address", help="With --nnodes: HOST:PORT of node 0, where every node meets (e.g. 10.0.0.1:29500)."
    ),
    accelerate_config: str = typer.Option(
        "ddp",
        "--accelerate-config",
        help="With --nproc/--nnodes: ddp, fsdp, deepspeed_zero2, deepspeed_zero3 (shipped with tunesmith) or a YAML path.",
    ),
) -> None:
    """Fine-tune the base model on the recipe's data with its method (sft, dpo, grpo or distill; LoRA by default).

    Exit codes: 0 done · 1 bad recipe/data · 3 diverged (NaN/inf) · 4 out of memory at micro-batch 1 ·
    69 lost contact with another node or rank · 74 disk full ·
    75 stopped by SIGTERM/SIGINT after a checkpoint (continue with --resume).
    """
    from tunesmith.config import load_recipe
    from tunesmith.train.launch import topology

    topo = topology(nnodes, node_rank, main_address, nproc)  # the launch options, checked before the recipe
    cfg = load_recipe(recipe, set_)  # every recipe problem is reported here, before any model loads
    if topo is not None:
        from tunesmith.train import launch

        child = ["train", str(recipe), *[a for s in set_ for a in ("--set", s)]]
        child += ["--resume"] * resume + ["--force"] * force
        raise typer.Exit(launch.launch(topo, accelerate_config, child, cfg.run_dir))
    from tunesmith.errors import TunesmithError
    from tunesmith.train import dist, launch
    from tunesmith.train.entry import run as train_run
    from tunesmith.train.entry import summary
    from tunesmith.train.start import release_run_dir

    try:
        run = train_run(cfg, resume=resume, force=force)  # the recipe's method, through the one training path
    except TunesmithError as exc:
        launch.record_exit_code(exc.exit_code)  # under a launch: this rank said why it stopped
        raise
    finally:
        release_run_dir(cfg.run_dir)  # the run folder's lock, also when training stopped with an error
    if dist.rank() == 0:
        console.print(f"[green]trained[/] {run.dir}\n{summary(run)}\nnext: tunesmith eval {recipe}")
        est = run.manifest.plan
        if est is not None and est.measured is not None:
            got = est.measured
            console.print(
                f"plan vs measured: peak {est.peak_mb:,.0f} vs {got.peak_mb:,.0f} MiB, "
                f"time {est.seconds:,.0f} vs {got.seconds:,.0f} s"
            )
