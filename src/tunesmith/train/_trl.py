"""The one translation point from a Recipe to peft/TRL objects.

An upstream API change is fixed here, and tests/unit/test_trl_translation.py checks it field by field.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.train.speed import sft_args, trainer_args

if TYPE_CHECKING:
    from tunesmith.config import AdapterSection, Recipe
    from tunesmith.method_sections import DistillSection, DPOSection, GRPOSection, RewardSection
    from tunesmith.records import Speed
    from tunesmith.train.method import Parts


def build_peft_config(
    adapter: AdapterSection,
    base_path: str | None = None,
    unfreeze_top_layers: int = 0,
    num_layers: int = 0,
    layers_path: str = "model.layers",
) -> Any | None:
    """The peft config for the adapter: LoraConfig (lora, qlora, dora), PromptTuningConfig, or None for full.

    Hybrid (`unfreeze_top_layers: N`): LoRA on layers 0..L-N-1, and the top N decoder layers (found under
    `layers_path`) trained in full through `modules_to_save`, so they are saved and reloaded with the adapter.
    LoRA inside a fully trained layer would be redundant, so those layers carry none.
    """
    if adapter.type == "full":
        return None
    if adapter.type == "prompt_tuning":
        from peft import PromptTuningConfig, PromptTuningInit

        text = adapter.prompt_tuning_init_text
        return PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=adapter.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=text,
            tokenizer_name_or_path=base_path if text else None,
        )
    from peft import LoraConfig

    modules_to_save = list(adapter.modules_to_save)
    layers: dict[str, Any] = {}
    if unfreeze_top_layers:
        if not 0 < unfreeze_top_layers < num_layers:
            raise ValueError(f"unfreeze_top_layers={unfreeze_top_layers} must be below the model's {num_layers} layers")
        first_full = num_layers - unfreeze_top_layers
        layers = {"layers_to_transform": list(range(first_full)), "layers_pattern": layers_path.rsplit(".", 1)[-1]}
        modules_to_save += [f"{layers_path}.{i}" for i in range(first_full, num_layers)]
    return LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=adapter.target_modules,
        modules_to_save=modules_to_save or None,
        use_dora=adapter.type == "dora",
        use_rslora=adapter.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
        **layers,
    )


def common_args(recipe: Recipe, run_dir: Path, has_eval: bool, speed: Speed | None = None) -> dict[str, Any]:
    """TrainingArguments fields shared by every TRL config; `speed` (train/speed.py, the one precision decision)
    adds its levers, None keeps the plain fp32 path."""
    import torch

    t = recipe.training
    args = dict(
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
        # auto is resolved by the levers (train/speed.py); transformers 5 name (gradient_checkpointing is deprecated)
        activation_checkpointing=t.gradient_checkpointing is True,
        bf16=False,  # TRL's configs default to bf16; precision is train/speed.py's decision (trainer_args below)
        # training.report_to trackers are added by train.callbacks.standard_callbacks, pointed at the run folder
        # (transformers' own defaults would write under checkpoints/ and into an sqlite file in the cwd).
        report_to=[],
        # transformers' default replaces a NaN/inf loss by the running mean in the logs: a diverged run would
        # look healthy. train.faults.NonFiniteGuard skips and counts such steps instead, in plain sight.
        logging_nan_inf_filter=False,
        disable_tqdm=True,  # the rich progress bar replaces tqdm
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinned memory only helps a host-to-GPU copy
        remove_unused_columns=False,
    )
    return {**args, **(trainer_args(speed) if speed is not None else {})}


def build_sft_config(recipe: Recipe, run_dir: Path, has_eval: bool, speed: Speed | None = None) -> Any:
    """SFTConfig for pre-tokenized rows (input_ids + labels built by tunesmith.data.template).

    speed: the resolved levers (tunesmith.train.speed.Speed); None keeps the plain defaults of common_args.
    """
    from trl import SFTConfig

    return SFTConfig(
        **{**common_args(recipe, run_dir, has_eval), **(sft_args(speed) if speed is not None else {})},
        # Rows arrive tokenized and already within max_length (over-long ones were dropped or truncated
        # with counts); TRL must not truncate them again silently.
        max_length=None,
        packing=False,
        completion_only_loss=False,
        assistant_only_loss=False,
    )


def build_dpo_config(recipe: Recipe, d: DPOSection, run_dir: Path, has_eval: bool, speed: Speed | None = None) -> Any:
    """DPOConfig. With an adapter the reference is the base under it (adapter disabled), so no second copy;
    a full fine-tune precomputes the reference log-probs once instead of keeping a frozen copy in memory.
    """
    from trl import DPOConfig

    return DPOConfig(
        **common_args(recipe, run_dir, has_eval, speed),
        beta=d.beta,
        loss_type=[d.loss_type],
        label_smoothing=d.label_smoothing,
        # Pairs arrive within data.max_length (train.dpo applied the policy and counted it): TRL must not
        # truncate or filter them again silently.
        max_length=None,
        precompute_ref_log_probs=recipe.adapter.type == "full",
    )


def build_reward_config(recipe: Recipe, r: RewardSection, run_dir: Path, has_eval: bool, speed: Speed | None = None) -> Any:
    """RewardConfig for a reward model trained on pre-tokenized pairs (chosen_ids / rejected_ids)."""
    from trl import RewardConfig

    return RewardConfig(
        **common_args(recipe, run_dir, has_eval, speed),
        center_rewards_coefficient=r.center_rewards_coefficient,
        # Pairs arrive tokenized and within data.max_length (train.reward applied the policy and counted it).
        max_length=None,
        # adapter.dropout decides dropout, as for every other method (TRL's RewardConfig turns it off by default)
        disable_dropout=False,
    )


def build_grpo_config(recipe: Recipe, g: GRPOSection, run_dir: Path, speed: Speed | None = None) -> Any:
    """GRPOConfig. training.batch_size counts completions: num_generations of them per prompt."""
    from trl import GRPOConfig

    return GRPOConfig(
        **common_args(recipe, run_dir, False, speed),
        num_generations=g.num_generations,
        max_completion_length=g.max_completion_length,
        temperature=g.temperature,
        beta=g.beta,
        scale_rewards=g.scale_rewards,
        reward_weights=[r.weight for r in g.rewards],
    )


def build_gkd_config(recipe: Recipe, d: DistillSection, run_dir: Path, has_eval: bool, speed: Speed | None = None) -> Any:
    """GKDConfig for logit distillation: generalised JSD between student and teacher next-token distributions."""
    from trl.experimental.gkd import GKDConfig

    return GKDConfig(
        **common_args(recipe, run_dir, has_eval, speed),
        max_length=recipe.data.max_length,
        beta=d.beta,
        temperature=d.temperature,
        lmbda=d.lmbda,
        max_new_tokens=d.max_new_tokens,
        seq_kd=False,  # sequence-level distillation is distill.mode: sequence, with an audited dataset
        packing=False,
    )


# The trainers: each takes what train/skeleton.py prepared (model, datasets, peft config, callbacks, levers).


def _trainer(trainer: type[Any], args: Any, p: Parts, **extra: Any) -> Any:
    return trainer(
        model=p.model,
        args=args,
        train_dataset=p.data.train,
        processing_class=p.tokenizer,
        peft_config=p.peft_config,
        callbacks=p.callbacks,
        **extra,
    )


def sft_trainer(recipe: Recipe, p: Parts) -> Any:
    from trl import SFTTrainer

    args = build_sft_config(recipe, p.run_dir, has_eval=p.data.eval is not None, speed=p.levers)
    return _trainer(SFTTrainer, args, p, eval_dataset=p.data.eval)


def dpo_trainer(recipe: Recipe, d: DPOSection, p: Parts) -> Any:
    from trl import DPOTrainer

    args = build_dpo_config(recipe, d, p.run_dir, has_eval=p.data.eval is not None, speed=p.levers)
    # ref_model None: with an adapter the reference is the base under it; a full fine-tune precomputes its log-probs
    return _trainer(DPOTrainer, args, p, eval_dataset=p.data.eval, ref_model=None)


def reward_trainer(recipe: Recipe, r: RewardSection, p: Parts) -> Any:
    """TRL's RewardTrainer on the sequence-classification model; the adapter's task becomes SEQ_CLS, so peft trains
    and saves the new score head in full (modules_to_save) next to the LoRA matrices."""
    from trl import RewardTrainer

    if p.peft_config is not None:
        p.peft_config.task_type = "SEQ_CLS"
    args = build_reward_config(recipe, r, p.run_dir, has_eval=p.data.eval is not None, speed=p.levers)
    return _trainer(RewardTrainer, args, p, eval_dataset=p.data.eval)


def grpo_trainer(recipe: Recipe, g: GRPOSection, p: Parts, reward_funcs: list[Any]) -> Any:
    from trl import GRPOTrainer

    return _trainer(GRPOTrainer, build_grpo_config(recipe, g, p.run_dir, speed=p.levers), p, reward_funcs=reward_funcs)


def gkd_trainer(recipe: Recipe, d: DistillSection, p: Parts, teacher: Any) -> Any:
    from trl.experimental.gkd import GKDTrainer

    args = build_gkd_config(recipe, d, p.run_dir, has_eval=p.data.eval is not None, speed=p.levers)
    return _trainer(GKDTrainer, args, p, eval_dataset=p.data.eval, teacher_model=teacher)
