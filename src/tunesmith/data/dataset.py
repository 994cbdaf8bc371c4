"""From a recipe's data section to train/eval examples and tokenized rows, with counts for everything dropped."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from typing import Any, TypeVar

from tunesmith.config import DataSection, Recipe
from tunesmith.data.formats import Example, load_examples
from tunesmith.data.template import tokenize_example
from tunesmith.errors import DataError
from tunesmith.records import TokenCounts


def _row_key(example: Example) -> str:
    return hashlib.sha256(json.dumps(example.messages, sort_keys=True).encode()).hexdigest()


T = TypeVar("T")


def hold_out(
    train: list[T], evaluation: list[T] | None, key: Callable[[T], str], fraction: float, seed: int
) -> tuple[list[T], list[T]]:
    """(train, eval): the given eval rows, or a seeded `fraction` of train held out; eval rows also in train are removed.

    The held-out rows depend on the seed and the rows' content, not on file order. Rows present in both splits
    would inflate every eval figure.
    """
    if evaluation is None:
        order = sorted(train, key=key)
        random.Random(seed).shuffle(order)
        n_eval = max(1, round(len(order) * fraction))
        evaluation, train = order[:n_eval], order[n_eval:]
    train_keys = {key(r) for r in train}
    return train, [r for r in evaluation if key(r) not in train_keys]


def split_examples(data: DataSection, seed: int) -> tuple[list[Example], list[Example]]:
    """Train and eval examples. Without an eval file, a seeded, deterministic eval_fraction is held out."""
    train = load_examples(data.train)
    train, evaluation = hold_out(train, load_examples(data.eval) if data.eval else None, _row_key, data.eval_fraction, seed)
    if not evaluation:
        raise DataError("the eval split is empty after removing rows that also appear in train")
    return train, evaluation


def recipe_examples(recipe: Recipe) -> tuple[list[Example], list[Example]]:
    """split_examples for a recipe; with `rag`, every prompt (train and eval alike) carries its retrieved context."""
    from tunesmith.rag.prompt import augment_examples

    train, evaluation = split_examples(recipe.data, recipe.training.seed)
    return augment_examples(train, recipe), augment_examples(evaluation, recipe)


def tokenize_examples(
    tokenizer: Any, examples: list[Example], max_length: int, overlong: str
) -> tuple[list[dict[str, Any]], TokenCounts]:
    """Tokenize with labels; drop/truncate over-long rows per policy and count every one (the manifest's counts)."""
    rows, stats = [], TokenCounts(examples=len(examples), max_length=max_length, overlong=overlong)
    for ex in examples:
        try:
            tok = tokenize_example(tokenizer, ex.messages, max_length, overlong)
        except ValueError as exc:
            raise DataError(f"{ex.source}: {exc}", hint="Raise data.max_length or set data.overlong: drop|truncate.") from None
        stats.reused += tok.reused
        if tok.dropped:
            stats.count_drop(tok.dropped, ex.id)
            continue
        if tok.tokens_lost:
            stats.truncated += 1
            stats.tokens_lost += tok.tokens_lost
        stats.kept += 1
        stats.tokens += len(tok.input_ids)
        stats.trained_tokens += tok.n_trained
        rows.append({"input_ids": tok.input_ids, "labels": tok.labels})
    if not rows:
        raise DataError(
            f"no trainable rows: {stats.dropped_overlong} over max_length={max_length}, "
            f"{stats.dropped_no_trained_tokens} with no trained tokens"
        )
    return rows, stats
