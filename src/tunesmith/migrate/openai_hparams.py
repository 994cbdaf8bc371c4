"""OpenAI hyperparameters -> recipe fields, each with the rule that was applied (written into the recipe's comments).

- n_epochs: a number is kept; `auto` follows OpenAI's documented default: 3 epochs, except that n x 3 < 100
  examples-passes gives min(25, 100 // n) and n x 3 > 25,000 gives max(1, 25,000 // n).
- batch_size: OpenAI's examples per optimizer step. tunesmith keeps that global batch: the largest micro-batch
  <= 4 that divides it, times gradient accumulation (grpo: completions of batch_size prompts per step).
- learning_rate_multiplier: scales the provider's own base rate for its model, which is not published; the
  multiplier's meaning ("x times the usual rate") is kept on the usual LoRA rate: lr = multiplier x 2e-4,
  clamped to [1e-5, 1e-3] (above 1e-3 LoRA training tends to diverge; below 1e-5 an adapter barely moves).
- beta (dpo): kept as dpo.beta (`auto`: tunesmith's 0.1, TRL's default).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tunesmith.config import TrainingSection
from tunesmith.errors import DataError
from tunesmith.method_sections import DPOSection, GRPOSection
from tunesmith.migrate.openai_job import Job
from tunesmith.migrate.report import Mapped, Unmapped
from tunesmith.project import LORA_LR

LR_MIN, LR_MAX = 1e-5, 1e-3
MICRO_BATCH = TrainingSection.model_fields["batch_size"].default  # tunesmith's default micro-batch (4)

# Reinforcement settings with no tunesmith equivalent: (why, what tunesmith does instead).
RFT_ONLY = {
    "reasoning_effort": (
        "an open model has no effort levels",
        "the model reasons as its chat template renders it (Qwen3: thinking on/off in the template); "
        "grpo.max_completion_length bounds each sampled answer",
    ),
    "compute_multiplier": (
        "no equivalent knob",
        f"grpo.num_generations ({GRPOSection.model_fields['num_generations'].default} completions per prompt) "
        "sets the exploration: raise it for more",
    ),
    "eval_interval": (
        "tunesmith does not score generations during GRPO training",
        "`tunesmith eval` scores the held-out set with the graders after training; eval.select_checkpoint "
        "picks among the kept checkpoints",
    ),
    "eval_samples": ("tunesmith does not score generations during GRPO training", "`tunesmith eval` after training"),
}


@dataclass
class HyperMapping:
    training: dict[str, Any] = field(default_factory=dict)
    dpo: dict[str, Any] = field(default_factory=dict)
    mapped: list[Mapped] = field(default_factory=list)
    unmapped: list[Unmapped] = field(default_factory=list)
    auto: dict[str, Any] = field(default_factory=dict)  # settings left at `auto` (the hosted default): nothing to carry


def auto_epochs(n: int) -> int:
    """OpenAI's documented default epochs for n training examples."""
    if n * 3 < 100:
        return min(25, 100 // max(n, 1))
    if n * 3 > 25_000:
        return max(1, 25_000 // n)
    return 3


def split_batch(global_batch: int, cap: int = MICRO_BATCH) -> tuple[int, int]:
    """(micro-batch, gradient accumulation) with product global_batch: the largest micro-batch <= cap dividing it."""
    micro = max(d for d in range(1, min(cap, global_batch) + 1) if global_batch % d == 0)
    return micro, global_batch // micro


def lora_lr(multiplier: float) -> float:
    return min(LR_MAX, max(LR_MIN, multiplier * LORA_LR))


def _number(job: Job, key: str, value: Any, kind: type, low: float) -> Any:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= low
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok:
        what = "a positive whole number" if kind is int else f"a number >= {low}"
        raise DataError(f'{job.source}: {job.hp_path}.{key} must be {what} or "auto", not {value!r}')
    return kind(value)


def _epochs(job: Job, value: Any, n_train: int, out: HyperMapping) -> None:
    path = f"{job.hp_path}.n_epochs"
    if value in (None, "auto"):
        epochs = auto_epochs(n_train)
        rule = f"auto: OpenAI's rule for n={n_train} examples (3; n*3<100: min(25, 100//n); n*3>25000: max(1, 25000//n))"
    else:
        epochs, rule = _number(job, "n_epochs", value, int, 1), "kept"
    out.training["epochs"] = float(epochs)
    out.mapped.append(Mapped(openai=path, value=value or "auto", tunesmith="training.epochs", result=epochs, rule=rule))


def _batch(job: Job, value: Any, out: HyperMapping) -> None:
    path = f"{job.hp_path}.batch_size"
    if value in (None, "auto"):
        micro, accum = MICRO_BATCH, 1
        rule = "auto: OpenAI does not publish its rule; tunesmith's default"
    else:
        n = _number(job, "batch_size", value, int, 1)
        if job.reinforcement:  # TRL counts completions: num_generations of each of n prompts per step
            micro, accum = GRPOSection.model_fields["num_generations"].default, n
            rule = f"{n} prompts per step = batch_size {micro} completions x grad_accum {n}"
        else:
            micro, accum = split_batch(n)
            rule = f"global batch {n} = batch_size {micro} x grad_accum {accum}"
    out.training.update(batch_size=micro, grad_accum=accum)
    result = f"batch_size {micro} x grad_accum {accum}"
    out.mapped.append(
        Mapped(openai=path, value=value or "auto", tunesmith="training.batch_size/grad_accum", result=result, rule=rule)
    )


def _lr(job: Job, value: Any, out: HyperMapping) -> None:
    path = f"{job.hp_path}.learning_rate_multiplier"
    if value in (None, "auto"):
        lr, rule = LORA_LR, f"auto: the usual LoRA rate {LORA_LR:g} (multiplier 1)"
    else:
        m = _number(job, "learning_rate_multiplier", value, float, 0)
        lr = lora_lr(m)
        rule = f"{m:g} x {LORA_LR:g} (the usual LoRA rate), clamped to [{LR_MIN:g}, {LR_MAX:g}]"
    out.training["learning_rate"] = lr
    out.mapped.append(Mapped(openai=path, value=value or "auto", tunesmith="training.learning_rate", result=lr, rule=rule))


def _beta(job: Job, value: Any, out: HyperMapping) -> None:
    path = f"{job.hp_path}.beta"
    default = DPOSection.model_fields["beta"].default
    if value in (None, "auto"):
        beta, rule = default, f"auto: tunesmith's {default} (TRL's default)"
    else:
        beta = _number(job, "beta", value, float, 0)
        if beta == 0:  # tunesmith's DPO needs beta > 0: the KL anchor to the reference is what DPO is
            out.unmapped.append(
                Unmapped(field=path, value=value, why="dpo.beta must be > 0", instead=f"dpo.beta {default} (the default)")
            )
            return
        rule = "kept"
    out.dpo["beta"] = beta
    out.mapped.append(Mapped(openai=path, value=value or "auto", tunesmith="dpo.beta", result=beta, rule=rule))


def project_name(job: Job, fallback: str) -> str:
    """The recipe's name: the job's suffix (made safe as a folder name), else `fallback`."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", job.suffix or "").strip("-.")
    return slug or fallback


def map_hyperparameters(job: Job, n_train: int) -> HyperMapping:
    """Every hyperparameter of the job mapped, or listed as unmapped; `auto` values follow the rules above."""
    out = HyperMapping()
    hp = job.hyperparameters
    _epochs(job, hp.get("n_epochs"), n_train, out)
    _batch(job, hp.get("batch_size"), out)
    _lr(job, hp.get("learning_rate_multiplier"), out)
    if job.preference:
        _beta(job, hp.get("beta"), out)
    for key, value in hp.items():
        if key in ("n_epochs", "batch_size", "learning_rate_multiplier") or (key == "beta" and job.preference):
            continue
        path = f"{job.hp_path}.{key}"
        if key in RFT_ONLY and job.reinforcement:
            if value in (None, "auto", "default"):
                out.auto[path] = value
                continue
            why, instead = RFT_ONLY[key]
            out.unmapped.append(Unmapped(field=path, value=value, why=why, instead=instead))
        else:
            out.unmapped.append(
                Unmapped(field=path, value=value, why=f"not a {job.openai_method} hyperparameter", instead="ignored")
            )
    if job.seed is not None:
        out.training["seed"] = job.seed
        out.mapped.append(Mapped(openai="seed", value=job.seed, tunesmith="training.seed", result=job.seed, rule="kept"))
    return out
