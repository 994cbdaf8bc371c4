"""Dataset statistics for the audit: distributions, balance, and the training cost estimate.

The time estimate is a stated assumption, not a measurement: training FLOPs per token are
taken as 6 x params for a full fine-tune and 4 x params for LoRA (forward + backward through
activations, no gradients for frozen weights), divided by the device's dense peak times an
assumed model-FLOPs utilisation (MFU). Real throughput depends on sequence length, batch size
and kernels; `tunesmith train` records the measured tokens/s in the run manifest.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Any


def distribution(values: list[int | float]) -> dict[str, float]:
    """min / mean / median / p5 / p95 / max of a list (zeros when empty)."""
    if not values:
        return {"n": 0, "min": 0, "mean": 0, "median": 0, "p5": 0, "p95": 0, "max": 0}
    data = sorted(values)
    n = len(data)

    def pct(q: float) -> float:
        # Nearest-rank percentile: an actual value from the data, easy to reason about.
        return data[min(n - 1, max(0, int(round(q * (n - 1)))))]

    return {
        "n": n,
        "min": data[0],
        "mean": round(sum(data) / n, 1),
        "median": pct(0.5),
        "p5": pct(0.05),
        "p95": pct(0.95),
        "max": data[-1],
    }


def openai_epochs(n_examples: int, default: int = 3) -> int:
    """OpenAI's default-epochs rule: 3, raised so small sets see ~100 examples, lowered above 25,000 example-passes."""
    if n_examples <= 0:
        return default
    if n_examples * default < 100:
        return min(25, 100 // n_examples)
    if n_examples * default > 25_000:
        return max(1, 25_000 // n_examples)
    return default


@dataclass(frozen=True)
class Device:
    name: str
    peak_flops: float  # dense bf16 (fp32 for CPU), FLOP/s
    mfu: float  # assumed model-FLOPs utilisation
    price_per_hour: float  # USD, assumed on-demand price


def _cpu_device() -> Device:
    cores = os.cpu_count() or 1
    # ~32 fp32 FLOP/cycle/core (AVX2 FMA) at ~2.5 GHz; small-batch training reaches a fraction of it.
    return Device(f"cpu ({cores} cores)", cores * 80e9, 0.25, 0.0)


DEVICES: dict[str, Device] = {
    "h100": Device("h100", 989e12, 0.35, 2.50),
    "a100": Device("a100", 312e12, 0.40, 1.50),
    "l4": Device("l4", 121e12, 0.35, 0.70),
}


def device(name: str) -> Device:
    if name == "cpu":
        return _cpu_device()
    if name not in DEVICES:
        raise ValueError(f"unknown GPU `{name}`; known: {', '.join([*DEVICES, 'cpu'])}")
    return DEVICES[name]


def cost_estimate(
    tokens_per_epoch: int,
    trained_tokens_per_epoch: int,
    n_examples: int,
    params: int | None,
    gpu: str = "h100",
    price_per_hour: float | None = None,
    epochs: float | None = None,
    lora: bool = True,
) -> dict[str, Any]:
    """Tokens x epochs, and the time/cost on the named GPU and on this CPU under the stated assumption."""
    rule = "recipe" if epochs is not None else "OpenAI default rule (3; raised for <34 examples, lowered above 25,000 passes)"
    epochs = epochs if epochs is not None else openai_epochs(n_examples)
    out: dict[str, Any] = {
        "epochs": epochs,
        "epochs_from": rule,
        "tokens_per_epoch": tokens_per_epoch,
        "trained_tokens_per_epoch": trained_tokens_per_epoch,
        "processed_tokens": round(tokens_per_epoch * epochs),
        "trained_tokens": round(trained_tokens_per_epoch * epochs),
        "params": params,
    }
    if not params:
        return out
    per_token = (4 if lora else 6) * params
    out["assumption"] = (
        f"training FLOPs/token = {4 if lora else 6} x {params / 1e6:.0f}M params ({'LoRA' if lora else 'full'}); "
        "time = FLOPs / (dense peak x assumed MFU); prices are assumed on-demand rates"
    )
    for name in (gpu, "cpu"):
        dev = device(name)
        tps = dev.peak_flops * dev.mfu / per_token
        hours = out["processed_tokens"] / tps / 3600
        price = price_per_hour if (price_per_hour is not None and name == gpu) else dev.price_per_hour
        out["gpu" if name == gpu and name != "cpu" else "cpu"] = {
            "device": dev.name,
            "peak_tflops": round(dev.peak_flops / 1e12, 2),
            "mfu": dev.mfu,
            "tokens_per_s": round(tps),
            "hours": round(hours, 4),
            "price_per_hour": price,
            "cost_usd": round(hours * price, 4),
        }
    return out


def count_params(model_path: str) -> int | None:
    """Parameter count of a model folder without loading weights (meta device); None when unknown."""
    try:
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(model_path)
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]  # untyped upstream
        # Tied embeddings are one tensor: count each parameter once.
        return int(sum(p.numel() for p in model.parameters()))
    except Exception:  # an unreachable hub id or an exotic config: the estimate is simply skipped
        return None


def balance(labels: list[Any], first_tokens: list[str | None], refusals: int, n: int, top: int = 10) -> dict[str, Any]:
    """Distribution of a label field (when given), of the first answer token, and the refusal ratio."""
    out: dict[str, Any] = {"refusals": refusals, "refusal_ratio": round(refusals / n, 4) if n else 0.0}
    if labels:
        counts = Counter(str(v) for v in labels)
        out["label_counts"] = dict(counts.most_common())
        out["label_majority_share"] = round(counts.most_common(1)[0][1] / len(labels), 4)
    tokens = [t for t in first_tokens if t is not None]
    if tokens:
        out["first_answer_token"] = {k: round(v / len(tokens), 4) for k, v in Counter(tokens).most_common(top)}
    return out
