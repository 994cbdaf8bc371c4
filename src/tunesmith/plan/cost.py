"""Time and cost of a training run: trained tokens x FLOPs per token / achievable throughput, x hourly price.

FLOPs per token: 6N for a full fine-tune (forward 2N, backward 4N), 4N with a frozen base (LoRA, QLoRA,
prompt tuning: the backward computes input gradients, 2N, but no weight gradients for the base).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hardware:
    """One accelerator: memory (GiB), dense bf16 peak (TFLOPs), the fraction of it training achieves, price per hour."""

    name: str
    memory_gib: float
    peak_tflops: float
    mfu: float
    usd_per_hour: float


# Datasheet peaks (dense bf16, no sparsity); MFU is a typical LoRA figure for small batches; prices are
# indicative on-demand cloud rates per GPU (override with --price).
GPUS = {
    "h100": Hardware("h100", 80, 989.0, 0.35, 2.50),
    "a100": Hardware("a100", 80, 312.0, 0.40, 1.80),
    "l4": Hardware("l4", 24, 121.0, 0.35, 0.80),
    "rtx4090": Hardware("rtx4090", 24, 165.0, 0.30, 0.60),
}


def cpu_hardware(memory_gib: float | None = None, price: float = 0.0, bf16: bool = False) -> Hardware:
    """This machine's CPU: its fp32 matmul throughput measured now (0.2 s probe), its RAM, and what training achieves of it.

    The 0.25 efficiency is training's share of the probe's matmul rate on the benchmark machine
    (docs/planner.md: SmolLM2-135M LoRA at batch 4).
    """
    import os
    import time

    import torch

    dtype = torch.bfloat16 if bf16 else torch.float32  # the dtype training will multiply in (speed.precision)
    a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
    torch.mm(a, b)
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < 0.2:
        torch.mm(a, b)
        n += 1
    tflops = n * 2 * 1024**3 / (time.perf_counter() - started) / 1e12
    if memory_gib is None:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return Hardware("cpu", memory_gib, tflops, 0.25, price)


def flops_per_token(params: int, adapter: str) -> float:
    return (6 if adapter == "full" else 4) * params


def seconds(tokens: float, params: int, adapter: str, hw: Hardware, nproc: int = 1) -> float:
    """Wall seconds to train `tokens` tokens on `nproc` devices (assumed to scale linearly)."""
    return tokens * flops_per_token(params, adapter) / (hw.peak_tflops * 1e12 * hw.mfu * nproc)
