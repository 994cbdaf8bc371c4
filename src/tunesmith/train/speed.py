"""Speed levers for SFT, resolved once per run from the recipe's `speed` section and the hardware.

Each lever has a parity test in tests/unit/test_speed.py and a row in docs/benchmarks.md; the resolved
values are recorded in the run manifest (Manifest.speed), so a run says how it was trained.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from tunesmith.config import Recipe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Speed:
    """The levers in force for one run (all resolved: no "auto" left)."""

    packing: str  # "padding_free" | "group_by_length" | "off"
    labelled_logits: bool  # only positions with a trained next token reach the LM head
    bf16: bool  # bf16 autocast, fp32 master weights (the adapter's optimizer state stays fp32)
    fused_optimizer: bool  # torch's fused AdamW
    compile: bool  # torch.compile of the model
    eval_batch_size: int  # rows per loss-evaluation batch (not the generation batch)
    device: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 dot products (AVX512-BF16 or AMX), read from /proc/cpuinfo on Linux."""
    from pathlib import Path

    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve(recipe: Recipe) -> Speed:
    """Resolve every "auto" in recipe.speed against this machine."""
    import torch

    s = recipe.speed
    cuda = torch.cuda.is_available()
    if s.precision == "auto":
        # CUDA: bf16 where supported. CPU: plain fp32 by default: bf16 autocast on CPU (even with avx512_bf16)
        # has no measurement yet that it pays (docs/benchmarks.md); `precision: bf16` opts in.
        bf16 = cuda and torch.cuda.is_bf16_supported() and recipe.model.dtype in ("auto", "bfloat16")
    else:
        bf16 = s.precision == "bf16"
    if bf16 and not cuda and not cpu_has_bf16():
        log.warning("speed.precision=bf16 on a CPU without bf16 units: expect it to be slow")
    packing = "padding_free" if s.packing == "auto" else s.packing
    if recipe.adapter.type == "prompt_tuning" and packing == "padding_free":
        packing = "group_by_length"  # virtual tokens are prepended per row: rows cannot be concatenated
    return Speed(
        packing=packing,
        labelled_logits=s.labelled_logits,
        bf16=bf16,
        fused_optimizer=s.fused_optimizer,
        compile=s.compile,
        eval_batch_size=s.eval_batch_size,
        device="cuda" if cuda else "cpu",
    )


def sft_args(speed: Speed) -> dict[str, Any]:
    """SFTConfig fields for these levers."""
    return {
        "padding_free": speed.packing == "padding_free",
        "train_sampling_strategy": "group_by_length" if speed.packing == "group_by_length" else "random",
        "bf16": speed.bf16,
        "use_cpu": speed.device == "cpu",  # transformers refuses bf16 on a machine without CUDA unless told it is a CPU run
        "optim": "adamw_torch_fused" if speed.fused_optimizer else "adamw_torch",
        "torch_compile": speed.compile,
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
