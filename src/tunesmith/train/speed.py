"""Speed levers, resolved once per run from the recipe's `speed` section, the method and the hardware (for_method).

Precision is decided once, for every method: `uses_bf16` (bf16 autocast where the hardware multiplies in bf16) and
`weights_dtype` (a frozen base stored in bf16 under it). The row levers (packing, varlen attention, labelled logits,
micro-batches, planned checkpointing) apply to the methods that train packed demonstrations (SFT); the others train
padded batches (resolve_padded). Each lever has a parity test in tests/unit/test_speed.py and a row in
docs/benchmarks.md; the resolved values are recorded in the run manifest (Manifest.speed).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tunesmith import allocator
from tunesmith.errors import RecipeError
from tunesmith.records import Speed
from tunesmith.train import compact, hardware

if TYPE_CHECKING:
    from tunesmith.config import Recipe
    from tunesmith.train.method import Method

__all__ = ["Speed", "for_method", "resolve", "resolve_padded", "uses_bf16", "weights_dtype"]

log = logging.getLogger(__name__)

# oneDNN's kernel cache is bounded where the matmul rate is probed, on import: train/hardware.py (ONEDNN_KERNEL_CACHE).


def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 dot products (AVX512-BF16 or AMX) that oneDNN may use (train/hardware.py: its
    ISA cap ONEDNN_MAX_CPU_ISA, when set below them, makes this machine a CPU without bf16 units)."""
    return hardware.bf16_units()


@functools.cache
def _malloc_trim() -> Any:
    """glibc's malloc_trim, or None where the C library is not glibc (musl, macOS)."""
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> bool:
    """Return the heap pages freed since the last call to the OS (malloc_trim(0)); False where that is not available.

    glibc keeps freed blocks for reuse, but tensors of a new shape rarely fit the holes the last step left, so the
    heap grows and RSS with it. On the benchmark a trim took 97-126 ms after a 3 s step (docs/benchmarks.md).
    """
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


def releases_memory(recipe: Recipe) -> bool:
    """speed.release_memory resolved (every method's trainer reads it): auto = on for CPU runs on glibc's malloc
    (tcmalloc and jemalloc reuse freed blocks by size, and glibc's trim cannot reach their heap)."""
    import torch

    value = recipe.speed.release_memory
    if value == "auto":
        return not torch.cuda.is_available() and _malloc_trim() is not None and allocator.active() == "system"
    return bool(value)


def uses_bf16(recipe: Recipe, cuda: bool) -> bool:
    """speed.precision resolved: auto = bf16 where the hardware multiplies in bf16 (CUDA with bf16 support, CPUs
    with AVX512-BF16/AMX: a bf16 matmul ran 5.6x the fp32 rate on the benchmark CPU, docs/benchmarks.md)."""
    import torch

    if recipe.speed.precision != "auto":
        return recipe.speed.precision == "bf16"
    units = torch.cuda.is_bf16_supported() if cuda else cpu_has_bf16()
    return bool(units) and recipe.model.dtype in ("auto", "bfloat16")


def stores_frozen_bf16(recipe: Recipe, bf16: bool, cuda: bool) -> bool:
    """speed.frozen_bf16 resolved: fp32 training (no bf16 autocast) of a frozen base on CPU, LoRA or prompt tuning
    with no layer trained in full (a fully trained layer needs its fp32 weights and their gradient)."""
    a, value = recipe.adapter, recipe.speed.frozen_bf16
    can = (
        not bf16
        and a.type in ("lora", "prompt_tuning")
        and not a.modules_to_save
        and not recipe.training.unfreeze_top_layers
        and recipe.model.dtype in ("auto", "float32")
    )
    return can and (not cuda if value == "auto" else bool(value))


def weights_dtype(recipe: Recipe, bf16: bool, frozen: bool | None = None) -> str:
    """The dtype the base loads in. A frozen base under bf16 autocast is multiplied in bf16 anyway: it is stored so
    (half the memory, no cast per step). A full fine-tune keeps fp32 master weights; an explicit model.dtype is kept.

    frozen: whether these weights stay frozen; None = decided by the adapter type (a distillation teacher: True).
    """
    if frozen is None:
        frozen = recipe.adapter.type in ("lora", "dora", "prompt_tuning")
    return "bfloat16" if bf16 and frozen and recipe.model.dtype == "auto" else recipe.model.dtype


# speed.micro_batch_tokens auto on CPU. Measured on the benchmark (demo rows of ~240 tokens, batch 4). bf16 units:
# one row per pass 454 tokens/s at 1,833 MB, two rows 506 at 2,082 MB, the whole batch (944 tokens) 424 at 2,488 MB.
CPU_MICRO_BATCH_TOKENS = 256
# fp32 training (a CPU without bf16 units, speed.frozen_bf16 on): a ~240-token pass multiplies each freshly cast
# weight by too few rows to keep the cores fed. Capped at AVX2, demo rows (~165 own tokens after the shared prefix):
# one row a pass ran 4.3 s a step in some processes and 6.0-6.2 s in others; two rows 3.5-4.6 s (most 4.2-4.5) in
# every one, at +310 MB (1,474 -> 1,783 MB peak). The mixed-length rows (~280 own tokens) take two a pass at 640:
# 6.1 s a step against 7.0 s one at a time, at 2,511 MB against 2,035 (docs/benchmarks.md).
CPU_FP32_MICRO_BATCH_TOKENS = 640


def batching(recipe: Recipe) -> str:
    """speed.packing resolved: auto = padding_free, except for prompt tuning (its virtual tokens are prepended per
    row, so rows cannot be concatenated), which is batched group_by_length whatever packing asks."""
    packing = "padding_free" if recipe.speed.packing == "auto" else recipe.speed.packing
    return "group_by_length" if recipe.adapter.type == "prompt_tuning" and packing == "padding_free" else packing


def micro_batch(recipe: Recipe, lengths: list[int] | None, cuda: bool, shared: int = 0) -> int:
    """Rows per forward/backward pass (speed.micro_batch_tokens resolved): the largest divisor of training.batch_size
    whose expected tokens fit the budget (auto on CPU: 256 tokens in bf16, 640 in fp32), at least 1; the whole batch
    when there is no budget (auto on CUDA, off), no
    lengths, or group_by_length batching (its sampler groups by micro-batch, so a split would change which rows share
    a step). Expected tokens: rows x the mean of `lengths`; under speed.shared_prefix (pass `shared` > 0) the
    leading tokens every row has run once a pass whatever its rows, so only each row's own tokens count: a batch of
    tool-calling rows whose long tool list is the same in every row shares it in one pass instead of running it once
    per row."""
    b, budget = recipe.training.batch_size, recipe.speed.micro_batch_tokens
    if budget == "auto":
        budget = "off" if cuda else CPU_MICRO_BATCH_TOKENS if uses_bf16(recipe, cuda) else CPU_FP32_MICRO_BATCH_TOKENS
    if budget == "off" or not lengths or batching(recipe) == "group_by_length":
        return b
    own = sum(lengths) / len(lengths) - min(shared, min(lengths))
    return max([d for d in range(1, b + 1) if b % d == 0 and d * own <= budget], default=1)


def shares_prefix(recipe: Recipe, cuda: bool, checkpointing: bool) -> bool:
    """speed.shared_prefix resolved: auto = on for CPU runs; never with gradient checkpointing, whose recomputation in
    the backward runs the layers outside the compacted forward (train/compact.py)."""
    value = recipe.speed.shared_prefix
    on = not cuda if value == "auto" else bool(value)
    if on and checkpointing and value is True:
        log.warning("speed.shared_prefix is off: gradient checkpointing recomputes layers outside the compacted forward")
    return on and not checkpointing


def uses_liger(recipe: Recipe, cuda: bool, allowed: bool = True) -> bool:
    """speed.liger resolved: auto = on where CUDA and the liger-kernel package are both there; true without either
    is a recipe error (Liger's kernels are Triton programs for the GPU). allowed: the method takes Liger's kernels
    (Method.liger; TRL's other trainers swap in Liger's own losses)."""
    import importlib.util

    installed = importlib.util.find_spec("liger_kernel") is not None
    if recipe.speed.liger == "auto":
        return cuda and installed and allowed
    if recipe.speed.liger and not (cuda and installed):
        missing = "no CUDA device" if not cuda else "the package liger-kernel is not installed"
        raise RecipeError(
            [
                (
                    "speed.liger",
                    f"true needs a CUDA GPU and liger-kernel: {missing}. Install it with pip install "
                    "'tunesmith[liger]' on a GPU machine, or set speed.liger: auto",
                )
            ]
        )
    return bool(recipe.speed.liger) and allowed


def for_method(recipe: Recipe, method: Method[Any], plan: Any = None, lengths: list[int] | None = None, shared: int = 0) -> Speed:
    """The levers `method` trains this recipe with (what train/skeleton.py uses and the manifest records).
    shared: the leading tokens every training row has (compact.common_prefix), for the pass size."""
    if method.packs_rows:
        return resolve(recipe, plan, lengths, liger=method.liger, shared=shared)
    return resolve_padded(recipe, generates=method.generates(recipe), labelled=method.scores_labels)


def packed_attention(recipe: Recipe) -> str:
    """speed.attention resolved for padding-free rows: varlen or mask (auto = varlen on CPU, mask on CUDA); "-" when
    the rows are not packed."""
    import torch

    if batching(recipe) != "padding_free":
        return "-"
    chosen = recipe.speed.attention
    return chosen if chosen != "auto" else ("mask" if torch.cuda.is_available() else "varlen")


def resolve(recipe: Recipe, plan: Any = None, lengths: list[int] | None = None, liger: bool = True, shared: int = 0) -> Speed:
    """Resolve every "auto" in recipe.speed (and training.gradient_checkpointing) against this machine, for packed
    demonstrations (SFT).

    plan: the planner's estimate for this run (tunesmith.plan.advisor.Plan) made without checkpointing;
    `gradient_checkpointing: auto` turns checkpointing on only when that estimate does not fit.
    lengths: the training rows' token lengths, for speed.micro_batch_tokens (None: batches are not split).
    liger: whether the method takes Liger's kernels.
    shared: the leading tokens every training row has: a pass of several rows runs them once (speed.shared_prefix).
    """
    import torch

    s, a = recipe.speed, recipe.adapter
    cuda = torch.cuda.is_available()
    bf16 = uses_bf16(recipe, cuda)
    if bf16 and not cuda and not cpu_has_bf16():
        log.warning("speed.precision=bf16 on a CPU without bf16 units: expect it to be slow")
    packing = batching(recipe)
    attention = packed_attention(recipe)
    checkpointing = recipe.training.gradient_checkpointing
    if checkpointing == "auto":
        checkpointing = plan is not None and not plan.fits
    t = recipe.training
    sharing = shares_prefix(recipe, cuda, bool(checkpointing))
    rows = micro_batch(recipe, lengths, cuda, shared if sharing else 0)
    return Speed(
        liger=uses_liger(recipe, cuda, liger),
        packing=packing,
        attention=attention,
        labelled_logits=s.labelled_logits,
        bf16=bf16,
        base_dtype=weights_dtype(recipe, bf16),
        # Under autocast peft's cast of a bf16 input to the fp32 adapter dtype is undone by the matmul's own
        # cast back to bf16, but both copies are kept for backward, per adapted module (q, k and v each).
        adapter_input_cast=not (bf16 and a.type in ("lora", "dora")),
        gradient_checkpointing=bool(checkpointing),
        fused_optimizer=s.fused_optimizer,
        compile=s.compile,
        release_memory=releases_memory(recipe),
        eval_batch_size=s.eval_batch_size,
        device="cuda" if cuda else "cpu",
        micro_batch=rows,
        passes=t.grad_accum * t.batch_size // rows,
        shared_prefix=sharing,
        frozen_bf16=stores_frozen_bf16(recipe, bf16, cuda),
        allocator=allocator.active(),
    )


def resolve_padded(recipe: Recipe, generates: bool = False, labelled: bool = False) -> Speed:
    """The levers for trainers that score padded batches (DPO, GRPO, logit distillation): precision, the bf16 base,
    the adapter input cast, fused AdamW, compile and the heap release as for SFT; speed.shared_prefix (the padded
    rows run compacted: a pair's or a group's prompt once, no padding); labelled logits where the trainer scores its
    labels through TRL's fused LM head (DPO, GRPO; distillation compares full next-token distributions). Packing and
    varlen attention as a setting are SFT's, and checkpointing is on only when the recipe says true. Batches are not
    split (speed.micro_batch_tokens is SFT's).

    generates: the trainer samples while training (GRPO, on-policy distillation). Sampling runs outside autocast, so
    the adapter's input is cast to its fp32 weights there (peft casts the result back to the base's bf16).
    labelled: the trainer scores labels through TRL's fused LM head (Method.scores_labels).
    """
    levers = resolve(recipe, liger=False)  # no plan: gradient_checkpointing auto stays off; no lengths: not split
    update: dict[str, Any] = {"packing": "off", "attention": "-", "labelled_logits": labelled and levers.labelled_logits}
    if generates:
        update["adapter_input_cast"] = True
    return levers.model_copy(update=update)


def trainer_args(speed: Speed) -> dict[str, Any]:
    """TrainingArguments fields every method takes from these levers."""
    return {
        "bf16": speed.bf16,
        "use_cpu": speed.device == "cpu",  # transformers refuses bf16 on a machine without CUDA unless told it is a CPU run
        "optim": "adamw_torch_fused" if speed.fused_optimizer else "adamw_torch",
        "torch_compile": speed.compile,
        "activation_checkpointing": speed.gradient_checkpointing,
    }


def sft_args(speed: Speed) -> dict[str, Any]:
    """SFTConfig fields for these levers."""
    return {
        **trainer_args(speed),
        # speed.micro_batch_tokens: the batch runs as `passes` passes of `micro_batch` rows, gradients accumulated
        # (transformers normalises the loss by the trained tokens of the whole batch, so the gradient is the same).
        "per_device_train_batch_size": speed.micro_batch,
        "gradient_accumulation_steps": speed.passes,
        # Liger's RMSNorm, SwiGLU and RoPE kernels (transformers applies them when training starts); TRL keeps its
        # own chunked LM head as the loss, so Liger's fused linear cross-entropy stays off.
        "use_liger_kernel": speed.liger,
        "padding_free": speed.packing == "padding_free",
        "train_sampling_strategy": "group_by_length" if speed.packing == "group_by_length" else "random",
        "per_device_eval_batch_size": speed.eval_batch_size,
        # Evaluation needs the loss only; keeping per-token outputs for metrics would hold them for the whole set.
        "prediction_loss_only": True,
    }


def score_labelled_positions_only(enabled: bool) -> None:
    """Make TRL's fused LM head project only labelled positions on every device, or restore its default.

    TRL (trl.trainer.utils) scores only positions whose next-token label is trained on Triton devices, but
    every position elsewhere, to keep tile shapes fixed for compilers that recompile on shape change
    (Neuron). Eager CPU has no such cost, so there the prompt positions are pure waste: at ~75% prompt
    tokens they are most of the vocabulary-sized matmul. The private name is read here only, and
    tests/unit/test_speed.py fails loudly if an upgrade moves it.
    """
    import trl.trainer.utils as trl_utils
    from trl.kernels.chunked_logprob import _use_triton

    if enabled:
        trl_utils._use_triton = lambda device: device.type == "cpu" or _use_triton(device)
    else:
        trl_utils._use_triton = _use_triton


def apply_to_model(speed: Speed, model: Any) -> Callable[[], None] | None:
    """Levers that act on the built (peft) model: the adapter input cast (the flag peft.helpers.disable_input_dtype_casting
    sets) and speed.shared_prefix (train/compact.py wraps the backbone). Returns what undoes the wrapper, or None."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = speed.adapter_input_cast  # type: ignore[attr-defined]  # set on instances by peft
    if not speed.shared_prefix:
        return None
    return compact.install(model.get_base_model() if hasattr(model, "get_base_model") else model)
