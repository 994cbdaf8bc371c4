"""Supervised fine-tuning: the model learns to write each demonstration's answers (SFTTrainer on rows tokenized once,
with the loss on the answer tokens only)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tunesmith import method_sections
from tunesmith.data import dataset
from tunesmith.data.dataset import tokenize_examples
from tunesmith.data.template import clear_memo
from tunesmith.records import TokenCounts, Tokens
from tunesmith.sections import Section
from tunesmith.train import _trl
from tunesmith.train.method import Datasets, Method, Parts

if TYPE_CHECKING:
    from tunesmith.config import Recipe
    from tunesmith.run import Run
    from tunesmith.train.skeleton import Built

log = logging.getLogger(__name__)


class _OneRowPassesAreChosen(logging.Filter):
    """TRL warns that a micro-batch of one row loses padding-free's benefit. speed.micro_batch_tokens chooses one-row
    passes where that measured best (a pass of one row has no padding either way), so the advice does not apply."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "per_device_train_batch_size of 1 with padding-free" not in record.getMessage()


logging.getLogger("trl.trainer.sft_trainer").addFilter(_OneRowPassesAreChosen())


def _counts(stats: TokenCounts, split: str, max_length: int) -> TokenCounts:
    stats.measured_as = METHOD.measured_as
    if stats.dropped_overlong or stats.dropped_no_trained_tokens or stats.truncated:
        log.warning(
            "%s: dropped %d over max_length=%d, %d with no trained tokens; truncated %d (%d tokens lost)",
            split,
            stats.dropped_overlong,
            max_length,
            stats.dropped_no_trained_tokens,
            stats.truncated,
            stats.tokens_lost,
        )
    return stats


class SFT(Method[Section]):
    declared = method_sections.get("sft")
    row_shape = "a conversation with at least one assistant answer (messages, prompt/completion, instruction/output, ...)"
    measured_as = "the rendered conversation"
    reference = "the last assistant turn of each held-out conversation"
    packs_rows = True
    liger = True
    scores_labels = True

    def datasets(self, recipe: Recipe, tokenizer: Any) -> Datasets:
        """The rows tokenized once (the data check's pass is reused), within data.max_length under data.overlong."""
        from datasets import Dataset

        train_ex, eval_ex = dataset.recipe_examples(recipe)  # with rag: retrieved context in every prompt
        d = recipe.data
        train_rows, train_stats = tokenize_examples(tokenizer, train_ex, d.max_length, d.overlong, d.reasoning)
        eval_rows, eval_stats = tokenize_examples(tokenizer, eval_ex, d.max_length, d.overlong, d.reasoning)
        clear_memo()  # the audit's tokenized rows are now the training rows; the memo has served
        counts = Tokens(train=_counts(train_stats, "train", d.max_length), eval=_counts(eval_stats, "eval", d.max_length))
        lengths = [len(r["input_ids"]) for r in train_rows]
        return Datasets(Dataset.from_list(train_rows), Dataset.from_list(eval_rows), counts, lengths)

    def trainer(self, recipe: Recipe, parts: Parts) -> Any:
        return _trl.sft_trainer(recipe, parts)


METHOD = SFT()


def run(recipe: Recipe, resume: bool = False, force: bool = False) -> Run:
    """Train an SFT `recipe` through the one training path (tunesmith.train.entry.run trains any method's)."""
    from tunesmith.train import skeleton

    return skeleton.run(recipe, METHOD, resume, force)


def build(recipe: Recipe, resume: bool = False, force: bool = False) -> Built:
    """Everything up to trainer.train() for an SFT `recipe` (skeleton.build), as bench/train_throughput.py measures it."""
    from tunesmith.train import skeleton

    return skeleton.build(recipe, METHOD, resume, force)
