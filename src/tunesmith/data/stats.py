"""Dataset statistics for the audit: distributions, balance, and the training cost estimate.

The time and price are the planner's (plan/cost.py: FLOPs per token, each device's peak, the share of it training
achieves, its hourly rate), a stated assumption rather than a measurement; `tunesmith train` records the measured
tokens/s in the run manifest.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from tunesmith.errors import TunesmithError
from tunesmith.plan import cost
from tunesmith.plan.memory import Shape


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


def cost_estimate(
    tokens_per_epoch: int,
    trained_tokens_per_epoch: int,
    n_examples: int,
    params: int | None,
    gpu: str = "h100",
    price_per_hour: float | None = None,
    epochs: float | None = None,
    adapter: str = "lora",
    bf16: bool = False,
    rows_per_step: int = 1,
    max_steps: int = 0,
) -> dict[str, Any]:
    """Tokens x epochs, and the time/cost on the named GPU and on this CPU: the planner's model (plan/cost.py), so
    `tunesmith data check` and `tunesmith plan` give one figure for the same rows.

    epochs: the recipe's (or --epochs; None: OpenAI's default rule); max_steps > 0 overrides it as training does;
    rows_per_step: batch_size x grad_accum; bf16: whether this CPU trains in bf16 (train.speed.uses_bf16)."""
    if max_steps > 0:
        rule = "recipe's max_steps x batch_size x grad_accum"
    elif epochs is not None:
        rule = "recipe"
    else:
        rule = "OpenAI default rule (3; raised for <34 examples, lowered above 25,000 passes)"
        epochs = openai_epochs(n_examples)
    steps, rows = cost.trained_rows(n_examples, epochs or 0.0, max_steps, rows_per_step)
    share = rows / n_examples if n_examples else 0.0
    out: dict[str, Any] = {
        "epochs": round(share, 4),
        "epochs_from": rule,
        "steps": steps,
        "tokens_per_epoch": tokens_per_epoch,
        "trained_tokens_per_epoch": trained_tokens_per_epoch,
        "processed_tokens": int(share * tokens_per_epoch),
        "trained_tokens": int(share * trained_tokens_per_epoch),
        "params": params,
    }
    if not params:
        return out
    factor = cost.flops_per_token(1, adapter)
    out["assumption"] = (
        f"training FLOPs/token = {factor:.0f} x {params / 1e6:.0f}M params ({adapter}); "
        "time = FLOPs / (dense peak x achievable share); prices are assumed on-demand rates (plan/cost.py)"
    )
    for key, hw in (("gpu", cost.GPUS.get(gpu)), ("cpu", cost.cpu_hardware(bf16=bf16))):
        if hw is None:  # --gpu cpu: the CPU row alone
            continue
        price = price_per_hour if (price_per_hour is not None and key == "gpu") else hw.usd_per_hour
        secs = cost.seconds(out["processed_tokens"], params, adapter, hw)
        out[key] = {
            "device": hw.name if key == "gpu" else f"cpu ({hw.precision})",
            "peak_tflops": round(hw.peak_tflops, 4),
            "mfu": hw.mfu,
            "tokens_per_s": round(hw.peak_tflops * 1e12 * hw.mfu / cost.flops_per_token(params, adapter)),
            "seconds": secs,
            "hours": round(secs / 3600, 4),
            "price_per_hour": price,
            "cost_usd": round(secs / 3600 * price, 4),
        }
    return out


def count_params(model_path: str) -> int | None:
    """Parameter count of a model folder, as the planner counts it from config.json (plan/memory.Shape); None when
    the planner cannot read the config (the estimate is then skipped)."""
    try:
        return Shape.from_config(model_path).params
    except TunesmithError:
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
