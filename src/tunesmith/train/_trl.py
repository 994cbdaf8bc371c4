"""The one translation point from a Recipe to peft/TRL objects.

An upstream API change is fixed here, and tests/unit/test_trl_translation.py checks it field by field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.config import AdapterSection, Recipe


def build_peft_config(adapter: AdapterSection) -> Any | None:
    """A peft LoraConfig for `adapter.type: lora`; None for full fine-tuning."""
    if adapter.type == "full":
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=adapter.target_modules,
        modules_to_save=adapter.modules_to_save or None,
        bias="none",
        task_type="CAUSAL_LM",
    )


def common_args(recipe: Recipe, run_dir: Path, has_eval: bool) -> dict[str, Any]:
    """TrainingArguments fields shared by every TRL config."""
    import torch

    t = recipe.training
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported() and recipe.model.dtype in ("auto", "bfloat16")
    return dict(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=recipe.eval.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        warmup_steps=t.warmup_ratio,  # transformers 5 reads a float < 1 as a ratio of total steps
        lr_scheduler_type=t.lr_scheduler,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if has_eval and t.eval_steps else "no",
        eval_steps=t.eval_steps or None,
        gradient_checkpointing=t.gradient_checkpointing,
        bf16=bf16,
        report_to=[],
        disable_tqdm=True,  # the rich progress bar replaces tqdm
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


def build_sft_config(recipe: Recipe, run_dir: Path, has_eval: bool) -> Any:
    """SFTConfig for pre-tokenized rows (input_ids + labels built by tunesmith.data.template)."""
    from trl import SFTConfig

    return SFTConfig(
        **common_args(recipe, run_dir, has_eval),
        # Rows arrive tokenized and already within max_length (over-long ones were dropped or truncated
        # with counts); TRL must not truncate them again silently.
        max_length=None,
        packing=False,
        completion_only_loss=False,
        assistant_only_loss=False,
    )
