"""From a recipe's data section to train/eval examples and tokenized rows, with counts for everything dropped.

`split_rows` is the one train/eval split: every method trains on its train side, and the run saves its eval side
(data/eval.jsonl) as the held-out set every later step scores on.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from tunesmith.config import DataSection, Recipe
from tunesmith.data import dedup
from tunesmith.data.formats import (
    PREFERENCE_SHAPES,
    Example,
    Record,
    RowError,
    detect_shape,
    load_normalised,
    to_example,
    to_messages,
    to_preference,
    to_prompt_only,
)
from tunesmith.data.template import Tokenized, expand_turns, tokenize_example
from tunesmith.data.tool_shapes import load_tools_file, with_default_tools
from tunesmith.errors import DataError
from tunesmith.records import TokenCounts

T = TypeVar("T")


def content_key(obj: Any) -> str:
    """The key a source row is split and deduplicated by, whatever a method reads from it: dedup.row_key of its
    conversation (a preference pair: prompt + chosen, with prompt + rejected), as `data audit` and `data split` key
    rows. So sft, dpo, grpo and distill hold out the same rows of one file. RowError when the row has no shape."""
    if isinstance(obj, dict) and detect_shape(obj) in PREFERENCE_SHAPES:
        pair = to_preference(obj)
        return dedup.row_key(pair["prompt"] + pair["chosen"], pair["prompt"] + pair["rejected"])
    try:
        return dedup.row_key(to_messages(obj))
    except RowError:  # prompt-only rows (grpo, distill)
        return dedup.row_key(to_prompt_only(obj))


def held_out_order(keys: list[str], seed: int) -> list[int]:
    """Indices of `keys` in the order rows are held out: by content, then a seeded shuffle, so neither the file's row
    order nor the method changes which rows are held out. `data split` fills its eval side in this order too."""
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    random.Random(seed).shuffle(order)
    return order


def hold_out(
    train: list[T], evaluation: list[T] | None, key: Callable[[T], str], fraction: float, seed: int
) -> tuple[list[T], list[T]]:
    """(train, eval): the given eval rows, or a seeded `fraction` of train held out; eval rows also in train are removed.

    Rows present in both splits would inflate every eval figure.
    """
    if evaluation is None:
        order = held_out_order([key(r) for r in train], seed)
        n_eval = max(1, round(len(order) * fraction))
        evaluation, train = [train[i] for i in order[:n_eval]], [train[i] for i in order[n_eval:]]
    train_keys = {key(r) for r in train}
    return train, [r for r in evaluation if key(r) not in train_keys]


def split_rows(data: DataSection, seed: int, normalise: Callable[[Record], T]) -> tuple[list[T], list[T]]:
    """THE split: train and eval rows of a recipe's data for every method, each row `normalise`d from its Record.

    Without an eval file a seeded, deterministic eval_fraction of train is held out, chosen by `content_key`, so the
    held-out rows do not depend on how a method reads them. Every bad row is listed in one DataError.
    """

    tools = load_tools_file(str(data.tools)) if data.tools else None

    def keyed(rec: Record) -> tuple[str, T]:
        rec = Record(rec.path, rec.line, with_default_tools(rec.obj, tools), rec.error)  # data.tools: the row's own
        return content_key(rec.obj), normalise(rec)

    train = load_normalised(data.train, keyed)
    evaluation = load_normalised(data.eval, keyed) if data.eval else None
    train, evaluation = hold_out(train, evaluation, lambda pair: pair[0], data.eval_fraction, seed)
    if not evaluation:
        raise DataError("the eval split is empty after removing rows that also appear in train")
    return [row for _, row in train], [row for _, row in evaluation]


def split_examples(data: DataSection, seed: int) -> tuple[list[Example], list[Example]]:
    """split_rows of demonstrations (sft): each row's normalised conversation."""
    return split_rows(data, seed, to_example)


def recipe_examples(recipe: Recipe) -> tuple[list[Example], list[Example]]:
    """split_examples for a recipe; with `rag`, every prompt (train and eval alike) carries its retrieved context."""
    from tunesmith.rag.prompt import augment_examples

    train, evaluation = split_examples(recipe.data, recipe.training.seed)
    return augment_examples(train, recipe), augment_examples(evaluation, recipe)


def tokenize_row(
    tokenizer: Any, ex: Example, max_length: int, overlong: str, reasoning: str = "train"
) -> tuple[list[Tokenized], bool]:
    """One example as training tokenizes it (its tools, the reasoning policy): one row, or, when an answer is not
    trainable in one render (a template rewrites earlier turns), the row plus one row ending with each such answer
    (template.expand_turns). Returns (rows, expanded); a part that trains nothing is left out (its turn stays
    counted as not trainable). DataError naming the row for an over-long row under `error` or refused tools."""
    tools = ex.extra.get("tools") if isinstance(ex.extra.get("tools"), list) else None
    try:
        whole = tokenize_example(tokenizer, ex.messages, max_length, overlong, reasoning=reasoning, tools=tools)
        if not whole.untrainable:
            return [whole], False
        parts = expand_turns(ex.messages, whole.untrainable)
        more = [tokenize_example(tokenizer, m, max_length, overlong, reasoning=reasoning, tools=tools) for m in parts]
    except ValueError as exc:
        raise DataError(f"{ex.source}: {exc}", hint="Raise data.max_length or set data.overlong: drop|truncate.") from None
    except DataError as exc:
        raise DataError(f"{ex.source}: {exc.message}", hint=exc.hint) from None
    kept = [t for t in more if t.n_trained or t.dropped == "overlong"]
    # Those answers are learned in their own rows: not counted as untrainable twice.
    whole.counts["turns_not_trainable"] -= len(kept)
    whole.counts["turns_expanded"] = len(kept)
    return ([whole] if whole.n_trained or whole.dropped == "overlong" else []) + kept, True


def tokenize_examples(
    tokenizer: Any, examples: list[Example], max_length: int, overlong: str, reasoning: str = "train"
) -> tuple[list[dict[str, Any]], TokenCounts]:
    """Tokenize with labels (tokenize_row: tools, the reasoning policy, answers expanded into their own rows where a
    render cannot train them); drop/truncate over-long rows per policy and count every one (the manifest's counts:
    rows, tokens, expansion, turns and traces, thinking modes)."""
    rows, stats = [], TokenCounts(examples=len(examples), max_length=max_length, overlong=overlong)
    turns: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    for ex in examples:
        parts, expanded = tokenize_row(tokenizer, ex, max_length, overlong, reasoning)
        if expanded:
            stats.expanded_rows += 1
            stats.rows_from_expansion += len(parts)
        for tok in parts:
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
            turns.update({k: v for k, v in tok.counts.items() if v})
            if tok.thinking is not None:
                modes["on" if tok.thinking else "off"] += 1
            rows.append({"input_ids": tok.input_ids, "labels": tok.labels})
    stats.turns, stats.thinking_rows = dict(sorted(turns.items())), dict(sorted(modes.items()))
    if not rows:
        raise DataError(
            f"no trainable rows: {stats.dropped_overlong} over max_length={max_length}, "
            f"{stats.dropped_no_trained_tokens} with no trained tokens"
        )
    return rows, stats
