"""Supervised fine-tuning: recipe → tokenizer → model (+adapter) → data → SFTTrainer → adapter + manifest."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from tunesmith.config import Recipe
from tunesmith.data.dataset import recipe_examples, tokenize_examples
from tunesmith.data.template import clear_memo
from tunesmith.run import Run, peak_memory_mb
from tunesmith.train import _trl, faults, policy, speed, start, varlen
from tunesmith.train.callbacks import standard_callbacks
from tunesmith.train.finish import finish_run

log = logging.getLogger(__name__)


def _datasets(recipe: Recipe, tokenizer: Any) -> tuple[Any, Any, dict[str, Any]]:
    from datasets import Dataset

    train_ex, eval_ex = recipe_examples(recipe)  # with rag: retrieved context in every prompt
    d = recipe.data
    train_rows, train_stats = tokenize_examples(tokenizer, train_ex, d.max_length, d.overlong)
    eval_rows, eval_stats = tokenize_examples(tokenizer, eval_ex, d.max_length, d.overlong)
    clear_memo()  # the audit's tokenized rows are now the training rows; the memo has served
    stats = {"train": train_stats.as_dict(), "eval": eval_stats.as_dict()}
    for split, s in (("train", train_stats), ("eval", eval_stats)):
        if s.dropped_overlong or s.dropped_no_trained_tokens or s.truncated:
            log.warning(
                "%s: dropped %d over max_length=%d, %d with no trained tokens; truncated %d (%d tokens lost)",
                split,
                s.dropped_overlong,
                d.max_length,
                s.dropped_no_trained_tokens,
                s.truncated,
                s.tokens_lost,
            )
    return Dataset.from_list(train_rows), Dataset.from_list(eval_rows), stats


class _OneRowPassesAreChosen(logging.Filter):
    """TRL warns that a micro-batch of one row loses padding-free's benefit. speed.micro_batch_tokens chooses one-row
    passes where that measured best (a pass of one row has no padding either way), so the advice does not apply."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "per_device_train_batch_size of 1 with padding-free" not in record.getMessage()


logging.getLogger("trl.trainer.sft_trainer").addFilter(_OneRowPassesAreChosen())


@dataclass
class Built:
    """Everything a run needs between data and trainer.train(): used by run() and by bench/train_throughput.py."""

    start: start.Start
    trainer: Any
    token_stats: dict[str, Any]
    speed: speed.Speed
    plan: Any  # tunesmith.plan.advisor.Plan, or None when the model's config cannot be planned
    model: Any = None  # the transformers model under the adapter
    attention: str | None = None  # its attention implementation before speed.attention=varlen replaced it

    def restore_attention(self) -> None:
        """Back to the model's own attention before anything generates or saves (varlen serves training only)."""
        if self.attention is not None:
            varlen.restore(self.model, self.attention)
            self.attention = None


def build(recipe: Recipe, resume: bool = False, force: bool = False) -> Built:
    """Run folder, data (tokenized once), model with adapter and the SFTTrainer with the resolved speed levers."""
    import torch
    from trl import SFTTrainer

    st = start.begin(recipe, resume, force)  # blocking data errors stop here, before any model loads
    train_ds, eval_ds, token_stats = _datasets(recipe, st.tokenizer)
    lengths = [len(ids) for ids in train_ds["input_ids"]]
    estimate = _plan(recipe, lengths, token_stats)
    # gradient_checkpointing: auto turns on when the estimate does not fit; micro_batch_tokens splits long batches
    levers = speed.resolve(recipe, estimate, lengths)
    speed.score_labelled_positions_only(levers.labelled_logits)

    torch.manual_seed(recipe.training.seed)
    model = policy.load(recipe, st.base_path, levers.base_dtype)  # 4-bit NF4 for qlora
    attention = varlen.use(model) if levers.attention == "varlen" else None  # restored before anything generates
    trainer = SFTTrainer(
        model=model,
        args=_trl.build_sft_config(recipe, st.run_dir, has_eval=True, speed=levers),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=st.tokenizer,
        peft_config=policy.peft_config(recipe, model, st.base_path),
        callbacks=standard_callbacks(recipe, st.run_dir),
    )
    speed.apply_to_model(levers, trainer.model)
    return Built(st, trainer, token_stats, levers, estimate, model, attention)


def _plan(recipe: Recipe, lengths: list[int], token_stats: dict[str, Any]) -> Any:
    """The planner's estimate for this run on this machine, from the rows already tokenized (their lengths)."""
    from tunesmith.plan import advisor

    trained = token_stats["train"]["trained_tokens"] / max(token_stats["train"]["tokens"], 1)
    try:
        return advisor.plan(recipe, gpu=advisor.local_gpu(), lengths=lengths, trained=trained)
    except (KeyError, ValueError, OSError) as exc:  # a config.json the planner cannot read: train anyway
        log.warning("no plan for this model (%s: %s)", type(exc).__name__, exc)
        return None


def run(recipe: Recipe, resume: bool = False, force: bool = False) -> Run:
    """Train an SFT run end to end and return it (read back from its folder)."""
    b = build(recipe, resume, force)
    # trainer.train under the fault policy (OOM, disk full, signals, NaN)
    result = faults.fit(b.trainer, recipe, b.start.checkpoint)
    final_eval = b.trainer.evaluate()  # logged to metrics.jsonl by MetricsLog
    b.restore_attention()
    extra: dict[str, Any] = {"speed": b.speed.as_dict()}
    if b.plan is not None:
        measured = {"peak_mb": round(peak_memory_mb(), 1), "seconds": round(result.metrics.get("train_runtime", 0.0), 1)}
        extra["plan"] = b.plan.model_copy(update={"measured": measured}).model_dump()

    return finish_run(
        recipe,
        b.trainer,
        b.start.tokenizer,
        result,
        b.token_stats,
        b.start.started,
        b.start.checkpoint,
        base_path=b.start.base_path,
        final_eval=final_eval,
        extra=extra,
    )
