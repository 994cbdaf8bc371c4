"""Group relative policy optimisation: recipe → tokenizer → model (+adapter) → prompts + rewards → GRPOTrainer → adapter + manifest.

Each step samples `grpo.num_generations` completions per prompt, scores them with the recipe's reward
functions (train/rewards.py) and pushes the policy towards the completions that beat their group.
TRL logs `reward`, `reward_std` and `rewards/<name>/mean|std` per step; MetricsLog writes them to metrics.jsonl.
"""

from __future__ import annotations

import logging
from typing import Any

from tunesmith.config import Recipe
from tunesmith.run import Run, read_metrics
from tunesmith.train import _trl, faults, policy, rewards, start
from tunesmith.train.callbacks import standard_callbacks
from tunesmith.train.finish import finish_run
from tunesmith.train.reward_watch import RewardWatch
from tunesmith.train.rows import apply_length_policy, prompt_row, recipe_rows

log = logging.getLogger(__name__)


def _dataset(recipe: Recipe, tokenizer: Any) -> tuple[Any, dict[str, Any]]:
    """The train prompts within data.max_length (prompt + grpo.max_completion_length; data.lengths.fit_prompt),
    with the manifest's counts for both splits."""
    from datasets import Dataset

    from tunesmith.data.lengths import fit_prompt

    d, budget = recipe.data, recipe.grpo.max_completion_length
    fit = lambda r: fit_prompt(tokenizer, r["prompt"], budget, d.max_length, d.overlong)
    measured = f"prompt + grpo.max_completion_length {budget}"
    # GRPO learns from its own samples: held-out rows stay out of training (eval compares base vs tuned on them).
    train, evaluation = recipe_rows(recipe, prompt_row)
    train, train_stats = apply_length_policy(train, fit, d, measured)
    _, eval_stats = apply_length_policy(evaluation, fit, d, measured)
    for row in train:
        row.pop("source", None)
    return Dataset.from_list(train), {"train": train_stats, "eval": eval_stats}


def reward_summary(run_dir: Any) -> dict[str, Any]:
    """Mean reward of the first and last logged steps (from metrics.jsonl)."""
    rows = [r for r in read_metrics(run_dir) if "reward" in r]
    if not rows:
        return {}
    return {"first_step_reward": rows[0]["reward"], "last_step_reward": rows[-1]["reward"], "logged_steps": len(rows)}


def run(recipe: Recipe, resume: bool = False, force: bool = False) -> Run:
    """Train a GRPO run end to end and return it (read back from its folder)."""
    import torch
    from trl import GRPOTrainer

    reward_funcs = rewards.build(recipe.grpo.rewards)  # a broken user reward fails before any model loads
    st = start.begin(recipe, resume, force)  # blocking data errors stop here, before any model loads
    run_dir, checkpoint, base_path, tokenizer = st.run_dir, st.checkpoint, st.base_path, st.tokenizer
    train_ds, row_stats = _dataset(recipe, tokenizer)
    watch = RewardWatch(recipe.grpo.num_generations, run_dir / "metrics.jsonl")  # a reward GRPO cannot learn from

    torch.manual_seed(recipe.training.seed)
    model = policy.load(recipe, base_path)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[watch.wrap(fn) for fn in reward_funcs],
        args=_trl.build_grpo_config(recipe, run_dir),
        train_dataset=train_ds,
        processing_class=tokenizer,
        peft_config=policy.peft_config(recipe, model, base_path),
        callbacks=[*standard_callbacks(recipe, run_dir), watch],
    )
    result = faults.fit(trainer, recipe, checkpoint)  # trainer.train under the fault policy
    specs = [r.model_dump(mode="json", exclude_defaults=True) | {"type": r.type} for r in recipe.grpo.rewards]
    return finish_run(
        recipe,
        trainer,
        tokenizer,
        result,
        row_stats,
        st.started,
        checkpoint,
        base_path=base_path,
        extra={
            "grpo": {
                "rewards": specs,
                "num_generations": recipe.grpo.num_generations,
                **reward_summary(run_dir),
                "warnings": watch.warnings,
            }
        },
    )
