"""Time and cost of a training run: trained tokens x FLOPs per token / achievable throughput, x hourly price.

FLOPs per token: 6N for a full fine-tune (forward 2N, backward 4N), 4N with a frozen base (LoRA, QLoRA,
prompt tuning: the backward computes input gradients, 2N, but no weight gradients for the base).
"""

from __future__ import annotations

from dataclasses import dataclass

from tunesmith.train import hardware


@dataclass(frozen=True)
class Hardware:
    """One accelerator: memory (GiB), dense peak (TFLOPs) in the precision training multiplies in, the fraction of it
    training achieves, price per hour."""

    name: str
    memory_gib: float
    peak_tflops: float
    mfu: float
    usd_per_hour: float
    precision: str = "bf16"


# Datasheet peaks (dense bf16, no sparsity); MFU is a typical LoRA figure for small batches; prices are
# indicative on-demand cloud rates per GPU (override with --price).
GPUS = {
    "h100": Hardware("h100", 80, 989.0, 0.35, 2.50),
    "a100": Hardware("a100", 80, 312.0, 0.40, 1.80),
    "l4": Hardware("l4", 24, 121.0, 0.35, 0.80),
    "rtx4090": Hardware("rtx4090", 24, 165.0, 0.30, 0.60),
}


# Training's share of the 1024x1024 matmul probe on CPU, by the precision training multiplies in. bf16: SmolLM2-135M
# LoRA at batch 4 on the benchmark CPU (docs/planner.md). fp32: the demo's SFT-LoRA capped to AVX2 (no bf16 units),
# one thread against the one-thread probe, achieved 0.48-0.67 (docs/benchmarks.md), and an uncapped fp32 run 0.45;
# 0.4 errs on the slow side, as the bf16 figure does.
CPU_EFFICIENCY = {"bf16": 0.25, "fp32": 0.4}


def cpu_hardware(memory_gib: float | None = None, price: float = 0.0, bf16: bool = False) -> Hardware:
    """This machine's CPU: its matmul rate measured now (0.2 s probe) in the precision training will multiply in
    (bf16 only where the CPU has bf16 units: train/speed.py decides), its RAM, and what training achieves of it."""
    import os

    precision = "bf16" if bf16 else "fp32"
    tflops = hardware.gemm_gflops("bfloat16" if bf16 else "float32") / 1e3
    if memory_gib is None:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return Hardware("cpu", memory_gib, tflops, CPU_EFFICIENCY[precision], price, precision)


def flops_per_token(params: int, adapter: str) -> float:
    return (6 if adapter == "full" else 4) * params


def trained_rows(n_rows: int, epochs: float, max_steps: int, rows_per_step: int) -> tuple[int, int]:
    """(optimizer steps, rows trained) of a run over `n_rows` rows: `max_steps` when above 0, else enough steps of
    `rows_per_step` rows (every device's batch x grad_accum) to cover `epochs` passes, the last step whole."""
    import math

    steps = max_steps if max_steps > 0 else math.ceil(n_rows * epochs / rows_per_step)
    return steps, steps * rows_per_step


def seconds(tokens: float, params: int, adapter: str, hw: Hardware, nproc: int = 1) -> float:
    """Wall seconds to train `tokens` tokens on `nproc` devices (assumed to scale linearly)."""
    return tokens * flops_per_token(params, adapter) / (hw.peak_tflops * 1e12 * hw.mfu * nproc)
