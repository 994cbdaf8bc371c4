"""The planner across devices and nodes: every device of every node counts, and the strategy rule (DDP when a whole
copy fits one device, else FSDP on GPUs) picks what docs/distributed.md says it picks."""

import math

import pytest

from tunesmith.config import load_recipe
from tunesmith.plan import advisor

LENGTHS, TRAINED = [128] * 64, 0.2


def _plan(tiny_recipe, **kw):
    recipe = load_recipe(tiny_recipe(training={"max_steps": -1, "epochs": 3, "batch_size": 2, "grad_accum": 2}))
    return advisor.plan(recipe, gpu="h100", lengths=LENGTHS, trained=TRAINED, **kw)


def test_the_plan_counts_every_device_of_every_node(tiny_recipe):
    two_nodes = _plan(tiny_recipe, nproc=4, nnodes=2)
    eight = _plan(tiny_recipe, nproc=8)
    one = _plan(tiny_recipe)
    assert two_nodes.nproc == 8 and two_nodes.steps == math.ceil(64 * 3 / (2 * 2 * 8)) == eight.steps
    assert two_nodes.seconds == pytest.approx(eight.seconds) == pytest.approx(one.seconds / 8 * one.tokens / eight.tokens)
    assert two_nodes.usd == eight.usd and two_nodes.memory_mb == one.memory_mb  # per device: a whole copy each


def _sized(p, whole_mb, state_mb, capacity_mb, devices, hardware="h100"):
    """`p` with a whole copy of `whole_mb`, of which `state_mb` is weights+adapter+optimizer+gradients (shardable)."""
    memory = {"weights": state_mb / 2, "adapter": 0.0, "optimizer": state_mb / 4, "gradients": state_mb / 4}
    memory |= {"activations": whole_mb - state_mb, "logits": 0.0, "runtime": 0.0, "total": whole_mb}
    fits = whole_mb <= capacity_mb
    return p.model_copy(
        update={"memory_mb": memory, "capacity_mb": capacity_mb, "nproc": devices, "fits": fits, "hardware": hardware}
    )


def test_strategy_is_ddp_while_a_whole_copy_fits_then_fsdp(tiny_recipe):
    p = _plan(tiny_recipe)
    assert advisor.strategy(_sized(p, 50_000, 40_000, 72_000, 1), "full").name == "single"
    ddp = advisor.strategy(_sized(p, 50_000, 40_000, 72_000, 8), "full")
    assert (ddp.name, ddp.fits, ddp.per_device_mb) == ("ddp", True, 50_000)  # fits: no sharding, whatever its size
    # 8B full fine-tune scale: 130 GB whole, 120 GB of it state; over 8 GPUs: 10 GB + 120/8 = 25 GB each.
    fsdp = advisor.strategy(_sized(p, 130_000, 120_000, 72_000, 8), "full")
    assert (fsdp.name, fsdp.fits, fsdp.per_device_mb) == ("fsdp", True, 25_000)
    assert "sharded over 8 devices it needs 25,000 MiB each and fits" in fsdp.reason
    two = advisor.strategy(_sized(p, 130_000, 120_000, 60_000, 2), "full")
    assert (two.name, two.fits, two.per_device_mb) == ("fsdp", False, 70_000)  # 10 + 120/2 GB: too few devices
    cpu = advisor.strategy(_sized(p, 130_000, 120_000, 72_000, 8, hardware="cpu"), "full")
    assert (cpu.name, cpu.fits) == ("ddp", False) and "GPUs only" in cpu.reason
    qlora = advisor.strategy(_sized(p, 130_000, 120_000, 72_000, 8), "qlora")
    assert (qlora.name, qlora.fits) == ("ddp", False) and "QLoRA" in qlora.reason


def test_plan_command_takes_nodes_and_names_the_strategy(tiny_recipe):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    runner = CliRunner(env={"COLUMNS": "200"})
    res = runner.invoke(app, ["plan", str(tiny_recipe()), "--gpu", "h100", "--nproc", "4", "--nnodes", "2"])
    assert res.exit_code == 0, res.output
    assert "plan on 2 nodes x 4 x h100" in res.output
    assert "strategy: ddp" in res.output and "tunesmith train RECIPE --nnodes 2 --nproc 4 --accelerate-config ddp" in res.output
    bad = runner.invoke(app, ["plan", str(tiny_recipe()), "--nnodes", "0"])
    assert bad.exit_code == 2 and "--nnodes" in bad.output  # refused by the option itself, like --nproc
