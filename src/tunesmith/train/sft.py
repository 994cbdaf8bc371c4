"""Supervised fine-tuning: recipe → tokenizer → model (+adapter) → data → SFTTrainer → adapter + manifest."""

from __future__ import annotations

import logging
from typing import Any

from tunesmith.config import Recipe
from tunesmith.data.dataset import recipe_examples, tokenize_examples
from tunesmith.run import Run
from tunesmith.train import _trl, faults, policy, start
from tunesmith.train.callbacks import standard_callbacks
from tunesmith.train.finish import finish_run

log = logging.getLogger(__name__)


def _datasets(recipe: Recipe, tokenizer: Any) -> tuple[Any, Any, dict[str, Any]]:
    from datasets import Dataset

    train_ex, eval_ex = recipe_examples(recipe)  # with rag: retrieved context in every prompt
    d = recipe.data
    train_rows, train_stats = tokenize_examples(tokenizer, train_ex, d.max_length, d.overlong)
    eval_rows, eval_stats = tokenize_examples(tokenizer, eval_ex, d.max_length, d.overlong)
    stats = {"train": train_stats.as_dict(), "eval": eval_stats.as_dict()}
    for split, s in (("train", train_stats), ("eval", eval_stats)):
        if s.dropped_overlong or s.dropped_no_trained_tokens or s.truncated:
            log.warning(
                "%s: dropped %d over max_length=%d, %d with no trained tokens; truncated %d (%d tokens lost)",
                split, s.dropped_overlong, d.max_length, s.dropped_no_trained_tokens, s.truncated, s.tokens_lost,
            )
    return Dataset.from_list(train_rows), Dataset.from_list(eval_rows), stats


def run(recipe: Recipe, resume: bool = False, force: bool = False) -> Run:
    """Train an SFT run end to end and return it (read back from its folder)."""
    import torch
    from trl import SFTTrainer

    st = start.begin(recipe, resume, force)  # blocking data errors stop here, before any model loads
    run_dir, checkpoint, base_path, tokenizer = st.run_dir, st.checkpoint, st.base_path, st.tokenizer
    train_ds, eval_ds, token_stats = _datasets(recipe, tokenizer)

    torch.manual_seed(recipe.training.seed)
    model = policy.load(recipe, base_path)  # 4-bit NF4 for qlora
    trainer = SFTTrainer(
        model=model,
        args=_trl.build_sft_config(recipe, run_dir, has_eval=True),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=policy.peft_config(recipe, model, base_path),
        callbacks=standard_callbacks(recipe, run_dir),
    )
    result = faults.fit(trainer, recipe, checkpoint)  # trainer.train under the fault policy (OOM, disk full, signals, NaN)
    final_eval = trainer.evaluate()  # logged to metrics.jsonl by MetricsLog

    return finish_run(
        recipe, trainer, tokenizer, result, token_stats, st.started, checkpoint, base_path=base_path, final_eval=final_eval
    )

