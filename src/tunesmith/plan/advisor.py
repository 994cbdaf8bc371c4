"""The plan of a recipe on some hardware: peak memory, time, cost, whether it fits, and the overrides that make it fit."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunesmith import models
from tunesmith.data import dataset
from tunesmith.data.dataset import tokenize_examples
from tunesmith.errors import RecipeError
from tunesmith.plan import cost
from tunesmith.plan.memory import Memory, Shape, estimate
from tunesmith.records import Plan  # a record: kept in the run manifest
from tunesmith.train.compact import common_prefix, pass_tokens
from tunesmith.train.speed import (
    batching,
    micro_batch,
    releases_memory,
    shares_prefix,
    stores_frozen_bf16,
    uses_bf16,
    weights_dtype,
)

if TYPE_CHECKING:
    from tunesmith.config import Recipe


def data_shape(recipe: Recipe, tokenizer: Any) -> tuple[list[int], float, int]:
    """Token length of every training row as trained, the share of tokens that are trained (labels), and the
    leading tokens every row has (the system prompt and tool list, typically: speed.shared_prefix runs them once)."""
    train, _ = dataset.recipe_examples(recipe)
    rows, stats = tokenize_examples(tokenizer, train, recipe.data.max_length, "truncate", recipe.data.reasoning)
    ids = [r["input_ids"] for r in rows]
    return [len(r) for r in ids], stats.trained_tokens / max(stats.tokens, 1), common_prefix(ids)


def pass_shape(recipe: Recipe, lengths: list[int], cuda: bool, shared: int = 0) -> tuple[int, float]:
    """(rows, tokens per row) of the largest forward/backward pass: rows from speed.micro_batch_tokens; padded, every
    row as long as the longest; padding-free, the longest rows side by side, their `shared` leading tokens run once
    when speed.shared_prefix is on (shared: the leading tokens every training row has)."""
    sharing = shares_prefix(recipe, cuda, recipe.training.gradient_checkpointing is True)
    shared = shared if sharing else 0
    rows = micro_batch(recipe, lengths, cuda, shared)
    longest = sorted(lengths)[-rows:]
    if batching(recipe) != "padding_free":
        return rows, max(lengths)
    return rows, pass_tokens(longest, shared, rows) / rows


def _run_share(recipe: Recipe, lengths: list[int], rows: int, cuda: bool, shared: int) -> float:
    """The share of the training tokens the forward passes run: 1, less the shared leading tokens a pass of several
    rows runs once (speed.shared_prefix)."""
    if (
        rows < 2
        or batching(recipe) != "padding_free"
        or not shares_prefix(recipe, cuda, recipe.training.gradient_checkpointing is True)
    ):
        return 1.0
    mean = sum(lengths) / len(lengths)
    return pass_tokens(lengths, shared, rows) / (rows * mean)


def _memory(recipe: Recipe, shape: Shape, lengths: list[int], trained: float, cuda: bool, shared: int = 0) -> Memory:
    a = recipe.adapter
    rows, seq = pass_shape(recipe, lengths, cuda, shared)

    bf16 = uses_bf16(recipe, cuda)
    dtype = weights_dtype(recipe, bf16)
    if dtype == "auto":
        dtype = "bfloat16" if cuda else "float32"
    return estimate(
        shape,
        adapter=a.type,
        r=a.r,
        targets=a.target_modules,
        dtype=dtype,
        batch=rows,
        seq_len=int(seq),
        checkpointing=recipe.training.gradient_checkpointing is True,  # auto: estimated without, turned on when that does not fit
        autocast=bf16,
        labelled_logits=recipe.speed.labelled_logits,
        trained_fraction=trained,
        cuda=cuda,
        trimmed=releases_memory(recipe),
        frozen_bf16=stores_frozen_bf16(recipe, bf16, cuda),
    )


def _fix(recipe: Recipe, shape: Shape, lengths: list[int], trained: float, hw: cost.Hardware, shared: int = 0) -> list[str]:
    """The first combination of memory-saving overrides, least intrusive first, whose estimate fits."""
    capacity = hw.memory_gib * 2**30 * 0.9
    sets: list[str] = []
    r = recipe
    candidates: list[tuple[str, Any]] = [("training.gradient_checkpointing", True)]
    b, acc = r.training.batch_size, r.training.grad_accum
    while b > 1:
        b, acc = b // 2, acc * 2
        candidates.append(("training.batch_size", b))
        candidates.append(("training.grad_accum", acc))
    if hw.name != "cpu" and r.adapter.type in ("lora", "dora"):
        candidates.append(("adapter.type", "qlora"))
    m = r.data.max_length
    while m > 256:
        m //= 2
        candidates.append(("data.max_length", m))
    for key, value in candidates:
        section, field = key.split(".")
        r = r.model_copy(update={section: getattr(r, section).model_copy(update={field: value})})
        text = str(value).lower() if isinstance(value, bool) else str(value)
        sets = [s for s in sets if not s.startswith(key + "=")] + [f"{key}={text}"]
        clipped = [min(n, r.data.max_length) for n in lengths]
        if field != "batch_size" and _memory(r, shape, clipped, trained, hw.name != "cpu", shared).total <= capacity:
            return sets
    return sets


def local_gpu() -> str:
    """The GPUS key of this machine's first CUDA device, or "cpu"."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name().lower().replace(" ", "")
    return next((key for key in cost.GPUS if key in name), "h100")


def plan(
    recipe: Recipe,
    tokenizer: Any = None,
    gpu: str = "cpu",
    nproc: int = 1,
    price: float | None = None,
    lengths: list[int] | None = None,
    trained: float | None = None,
    shared: int = 0,
    nnodes: int = 1,
) -> Plan:
    """Estimate the recipe's training run on `gpu` (h100, a100, l4, rtx4090, or cpu: this machine) x nproc per node
    x nnodes; the Plan's nproc is every device together.

    lengths/trained: the training rows' token lengths and trained-token share when already tokenized;
    otherwise the recipe's data is tokenized with `tokenizer`. shared: the leading tokens every row has
    (speed.shared_prefix runs them once per pass).
    """
    nproc *= nnodes

    if nproc < 1:
        raise RecipeError([("--nproc", f"devices trained on together: 1 or more, not {nproc}")])
    if price is not None and price < 0:
        raise RecipeError([("--price", f"a price per device-hour is 0 or more, not {price}")])
    hw = cost.GPUS[gpu] if gpu != "cpu" else cost.cpu_hardware(bf16=uses_bf16(recipe, cuda=False))
    if price is not None:
        hw = dataclasses.replace(hw, usd_per_hour=price)
    shape = Shape.from_config(models.resolve_base(recipe.model.base))
    if lengths is None or trained is None:
        lengths, trained, shared = data_shape(recipe, tokenizer)
    mem = _memory(recipe, shape, lengths, trained, gpu != "cpu", shared)
    t = recipe.training
    steps, rows_trained = cost.trained_rows(len(lengths), t.epochs, t.max_steps, t.batch_size * t.grad_accum * nproc)
    tokens = int(rows_trained * sum(lengths) / len(lengths))
    rows, _ = pass_shape(recipe, lengths, gpu != "cpu", shared)
    secs = cost.seconds(
        tokens * _run_share(recipe, lengths, rows, gpu != "cpu", shared), shape.params, recipe.adapter.type, hw, nproc
    )
    capacity = hw.memory_gib * 2**30 * 0.9
    fits = mem.total <= capacity
    a = recipe.adapter
    trainable = shape.params if a.type == "full" else shape.lora_params(a.r, a.target_modules)
    return Plan(
        hardware=hw.name,
        nproc=nproc,
        params=shape.params,
        trainable_params=trainable,
        memory_mb=mem.as_mb(),
        capacity_mb=round(capacity / 2**20, 1),
        fits=fits,
        steps=steps,
        micro_batch=rows,
        tokens=tokens,
        seconds=secs,
        precision=hw.precision,
        device_tflops=round(hw.peak_tflops, 4),
        usd=round(secs / 3600 * hw.usd_per_hour * nproc, 2),
        fix=[] if fits else _fix(recipe, shape, lengths, trained, hw, shared),
    )


# What FSDP (full sharding) and DeepSpeed ZeRO-3 divide between the devices; activations, logits and the process
# itself stay whole on each device.
SHARDED_STATE = ("weights", "adapter", "optimizer", "gradients")


@dataclass(frozen=True)
class Strategy:
    """How the devices of a planned run share the model: what `tunesmith train --accelerate-config` is given."""

    name: str  # "single" (one device, no launch), "ddp" (a whole copy per device) or "fsdp" (sharded)
    per_device_mb: float  # the memory estimate of one device under this strategy
    fits: bool
    reason: str


def strategy(p: Plan, adapter: str) -> Strategy:
    """The planner's rule: data parallel (DDP) whenever a whole copy fits one device; otherwise, on GPUs, FSDP over
    every device of every node, which divides weights, adapter, optimizer state and gradients by the device count.

    DDP first because it sends only gradients between devices once per step, where FSDP gathers every layer's
    weights in each forward and backward pass (over the network, between nodes). Sharding is GPU only (accelerate
    runs FSDP/DeepSpeed on CUDA process groups) and not offered for QLoRA (train/policy.py refuses it under FSDP).
    """
    whole, capacity, devices = p.memory_mb["total"], p.capacity_mb, p.nproc
    if devices == 1:
        return Strategy("single", whole, p.fits, "one device holds the whole model")
    if p.fits:
        return Strategy("ddp", whole, True, f"a whole copy fits each of the {devices} devices: plain data parallel")
    if p.hardware == "cpu" or adapter == "qlora":
        why = "FSDP runs on GPUs only" if p.hardware == "cpu" else "QLoRA is not sharded (FSDP refuses a 4-bit base)"
        return Strategy("ddp", whole, False, f"a whole copy does not fit one device and {why}: apply the fixes")
    sharded = whole - sum(p.memory_mb[k] for k in SHARDED_STATE) * (devices - 1) / devices
    fits = sharded <= capacity
    verdict = "fits" if fits else "does not fit either: add devices or apply the fixes"
    return Strategy(
        "fsdp",
        round(sharded, 1),
        fits,
        f"a whole copy ({whole:,.0f} MiB) does not fit one device ({capacity:,.0f} MiB); sharded over {devices} "
        f"devices it needs {sharded:,.0f} MiB each and {verdict}",
    )
