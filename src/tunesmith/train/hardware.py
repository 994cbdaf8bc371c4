"""What this machine's CPU can multiply fast: the flags that matter for training, read once, and the one override.

The precision decision (train/speed.py `uses_bf16`), the planner's time model (plan/cost.py) and the demo's sizing
(demo/sizing.py) all ask `bf16_units()`; the benchmarks print `describe()` next to every figure.

The override is oneDNN's own ISA cap, `ONEDNN_MAX_CPU_ISA` (the older name `DNNL_MAX_CPU_ISA` too). oneDNN runs
torch's bf16 matmuls on CPU; capped below AVX512_CORE_BF16 it has no bf16 dot-product kernel and falls back to a
reference loop (0.4 GFLOP/s for a 1024x1024 bf16 matmul on the benchmark CPU capped at AVX2, docs/benchmarks.md),
so a cap that rules out bf16 is read as "no bf16 units", whatever /proc/cpuinfo says. With it (plus
`MKL_ENABLE_INSTRUCTIONS=AVX2` for MKL's fp32 GEMMs and `ATEN_CPU_CAPABILITY=avx2` for torch's own kernels) a
machine with AVX512-BF16 behaves, kernels and decisions alike, as an AVX2 CPU without bf16 units.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

# oneDNN (torch's CPU bf16 matmuls) caches a compiled kernel per matmul shape, 1,024 of them by default. Padding-free
# batches change the token count every step, so that cache fills with kernels for shapes that never recur: resident
# memory crept up ~10 MB per step on the benchmark with whole batches; 64 kept the step time. With one-row passes a
# plain torch loop still held ~830 MB of heap at 64 and 524-545 MB at 32 in the same time (3x slower at 0), so the
# bound is 32 (docs/benchmarks.md). oneDNN reads this when it creates its first kernel, so it is set when this module is
# imported: before the first probe of the matmul rate (the planner's, the demo's sizing, the benchmark's) and before any
# model loads. Set later, after a probe had created oneDNN's cache, training held 270 MB more (bf16 CPU, demo rows,
# tcmalloc: 1,364 against 1,095 MB allocated at the peak). A value the user exported is kept.
ONEDNN_KERNEL_CACHE = "32"
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_KERNEL_CACHE)

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA values) under which it has no native bf16 dot product.
NO_BF16_CAPS = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"})
# /proc/cpuinfo flags the benchmarks report: vector width, and the units that multiply bf16.
FLAGS_THAT_MATTER = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
SIMULATED_AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first CPU in /proc/cpuinfo; ("unknown", {}) where there is none (macOS, Windows)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return "unknown", frozenset()
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    return (model.group(1).strip() if model else "unknown"), frozenset(flags.group(1).split() if flags else ())


def isa_cap() -> str | None:
    """oneDNN's ISA cap from the environment (upper case), or None when uncapped."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return value.strip().upper() if value and value.strip().upper() not in ("", "ALL", "DEFAULT") else None


def bf16_units() -> bool:
    """True where bf16 matmuls run on native units: the CPU reports AVX512-BF16 or AMX-BF16 and oneDNN is not capped
    below them (ONEDNN_MAX_CPU_ISA)."""
    _, flags = _cpuinfo()
    if not ({"avx512_bf16", "amx_bf16"} & flags):
        return False
    cap = isa_cap()
    return cap is None or cap not in NO_BF16_CAPS


def simulated() -> bool:
    """Whether the environment caps this CPU below what it has (the simulated AVX2 class of docs/benchmarks.md)."""
    cap = isa_cap()
    return cap is not None and cap in NO_BF16_CAPS and bool({"avx512_bf16", "amx_bf16"} & _cpuinfo()[1])


def onednn_version() -> str:
    """oneDNN's version as torch was built with it ("" when torch does not say)."""
    import torch

    found = re.search(r"MKL-DNN v([\d.]+)", torch.__config__.show())
    return found.group(1) if found else ""


def describe() -> dict[str, Any]:
    """The hardware line of a benchmark: CPU model, the flags that matter, the caps in force, threads, versions."""
    import torch

    model, flags = _cpuinfo()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "flags": [f for f in FLAGS_THAT_MATTER if f in flags],
        "bf16_units": bf16_units(),
        "caps": {k: os.environ[k] for k in SIMULATED_AVX2 if os.environ.get(k)},
        "simulated_no_bf16": simulated(),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onednn": onednn_version(),
    }


def hardware_line(info: dict[str, Any]) -> str:
    """describe() in one line, e.g. `AMD EPYC, 2 cores, flags avx2 fma avx512f avx512_bf16, bf16 units: yes, ...`."""
    caps = " ".join(f"{k}={v}" for k, v in info["caps"].items())
    label = " (SIMULATED: capped below its bf16 units)" if info["simulated_no_bf16"] else ""
    return (
        f"{info['cpu']}, {info['cores']} cores, flags {' '.join(info['flags']) or '-'}, "
        f"bf16 units: {'yes' if info['bf16_units'] else 'no'}{label}; caps {caps or 'none'}; "
        f"ATen {info['aten_capability']}; torch {info['torch']} ({info['torch_threads']} threads), oneDNN {info['onednn']}"
    )


def gemm_gflops(dtype: str = "float32", n: int = 1024, seconds: float = 0.2) -> float:
    """Measured n x n x n matmul rate in GFLOP/s, in `dtype` ("float32" or "bfloat16"), over `seconds` of repeats."""
    import time

    import torch

    dt = getattr(torch, dtype)
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    torch.mm(a, b)  # first call: kernel selection, page faults
    count, started = 0, time.perf_counter()
    while count == 0 or time.perf_counter() - started < seconds:
        torch.mm(a, b)
        count += 1
    return count * 2 * n**3 / (time.perf_counter() - started) / 1e9
