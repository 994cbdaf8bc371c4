"""Direct preference optimisation: recipe → tokenizer → model (+adapter) → preference pairs → DPOTrainer → adapter + manifest.

The reference policy is the frozen base under the adapter (TRL disables the adapter to score it), so no
second copy of the model is loaded; a full fine-tune precomputes the reference log-probs once instead.
"""

from __future__ import annotations

import logging
from typing import Any

from tunesmith.config import Recipe
from tunesmith.run import Run
from tunesmith.train import _trl, faults, policy, speed, start
from tunesmith.train.callbacks import standard_callbacks
from tunesmith.train.finish import finish_run
from tunesmith.train.rows import apply_length_policy, preference_row, recipe_rows

log = logging.getLogger(__name__)


def _datasets(recipe: Recipe, tokenizer: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Train/eval preference datasets within data.max_length (data.lengths.fit_pair), with the manifest's counts."""
    from datasets import Dataset

    from tunesmith.data.lengths import fit_pair

    d = recipe.data
    fit = lambda r: fit_pair(tokenizer, r["prompt"], r["chosen"], r["rejected"], d.max_length, d.overlong)
    train, evaluation = recipe_rows(recipe, preference_row)
    train, train_stats = apply_length_policy(train, fit, d, "prompt + the longer of chosen/rejected")
    evaluation, eval_stats = apply_length_policy(evaluation, fit, d, "prompt + the longer of chosen/rejected")
    stats = {"train": train_stats, "eval": eval_stats}

    def drop(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]

    return Dataset.from_list(drop(train)), (Dataset.from_list(drop(evaluation)) if evaluation else None), stats


def run(recipe: Recipe, resume: bool = False, force: bool = False) -> Run:
    """Train a DPO run end to end and return it (read back from its folder)."""
    import torch
    from trl import DPOTrainer

    st = start.begin(recipe, resume, force)  # blocking data errors stop here, before any model loads
    run_dir, checkpoint, base_path, tokenizer = st.run_dir, st.checkpoint, st.base_path, st.tokenizer
    train_ds, eval_ds, row_stats = _datasets(recipe, tokenizer)

    levers = speed.resolve_padded(recipe)  # bf16 autocast and a bf16 base where the hardware has bf16 units
    torch.manual_seed(recipe.training.seed)
    model = policy.load(recipe, base_path, levers.base_dtype)
    trainer = DPOTrainer(
        model=model,
        ref_model=None,  # adapter: the base under it; full: log-probs precomputed (see _trl.build_dpo_config)
        args=_trl.build_dpo_config(recipe, run_dir, has_eval=eval_ds is not None, speed=levers),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=policy.peft_config(recipe, model, base_path),
        callbacks=standard_callbacks(recipe, run_dir),
    )
    speed.apply_to_model(levers, trainer.model)
    result = faults.fit(trainer, recipe, checkpoint)  # trainer.train under the fault policy
    final_eval = trainer.evaluate() if eval_ds is not None else {}  # eval_rewards/margins etc. land in metrics.jsonl
    figures = {k.removeprefix("eval_"): v for k, v in final_eval.items() if k.startswith(("eval_rewards/", "eval_logps/"))}
    reference = "base under the adapter" if recipe.adapter.type != "full" else "precomputed log-probs of the initial model"
    return finish_run(
        recipe,
        trainer,
        tokenizer,
        result,
        row_stats,
        st.started,
        checkpoint,
        base_path=base_path,
        final_eval=final_eval,
        extra={
            "dpo": dict(beta=recipe.dpo.beta, loss_type=recipe.dpo.loss_type, reference=reference, final_eval=figures),
            "speed": levers.as_dict(),
        },
    )
