"""Rows for the methods that do not train on tokenized demonstrations: preference pairs (DPO), prompts (GRPO, distill).

Each row keeps the chat messages TRL expects (its trainers apply the chat template themselves) plus
the file:line it came from; a bad row never trains silently: all of them are listed in one DataError.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tunesmith.data.dataset import split_rows as split
from tunesmith.data.formats import (
    Example,
    detect_shape,
    load_normalised,
    row_id,
    to_messages,
    to_preference,
    to_prompt_only,
)
from tunesmith.data.lengths import Fit
from tunesmith.data.template import reference
from tunesmith.data.tool_shapes import as_conversation, row_tools
from tunesmith.errors import DataError
from tunesmith.eval.tool_metrics import reference_turn, turn_message
from tunesmith.records import TokenCounts

if TYPE_CHECKING:
    from tunesmith.config import DataSection, Recipe

log = logging.getLogger(__name__)

# Columns of a source row that describe its shape, not extra data a reward may read.
SHAPE_KEYS = {
    "messages",
    "conversations",
    "prompt",
    "completion",
    "chosen",
    "rejected",
    "input",
    "preferred_output",
    "non_preferred_output",
    "instruction",
    "output",
    "system",
}


def _clean(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return as_conversation(messages)  # the reward model scores the messages training keeps


def preference_row(obj: Any) -> dict[str, Any]:
    """{prompt, chosen, rejected} as message lists (TRL's conversational preference shape), and `tools` (JSON text:
    TRL's DPO renders each row's own) when the row offers tools: a preferred and a rejected call compare."""
    pair = to_preference(obj)
    row = {"prompt": _clean(pair["prompt"]), "chosen": _clean(pair["chosen"]), "rejected": _clean(pair["rejected"])}
    return {**row, "tools": json.dumps(tools)} if (tools := row_tools(obj)) else row


def pair_tools(row: dict[str, Any]) -> list[Any] | None:
    """The tools of a preference_row (kept as JSON text; "null" or absent: none), rendered into its prompt."""
    return json.loads(row["tools"]) if "tools" in row else None


def prompt_row(obj: Any) -> dict[str, Any]:
    """{prompt, reference, ...the row's own fields}: the prompt messages, the row's answer when it has one, and every
    other field of the row as it is (scalars, lists, objects: what OpenAI's graders read as item.<field>).

    `reference` is the last assistant turn, the `completion`, or the chosen answer; "" for prompt-only rows
    (a row's own `reference` column wins). Rewards receive the columns of `dataset_row`.
    """
    prompt = _clean(to_prompt_only(obj))
    shape = detect_shape(obj)
    tools = row_tools(obj)
    ref = ""
    if shape in ("preference", "openai_dpo"):
        ref = preference_row(obj)["chosen"][-1]["content"]
    elif shape == "prompt_completion":
        ref = obj["completion"] if isinstance(obj["completion"], str) else reference(list(obj["completion"]))
    elif shape != "prompt_only":
        messages = to_messages(obj)
        if not any(m["role"] == "assistant" for m in messages):
            ref = ""
        elif tools or messages[-1].get("tool_calls"):  # a tool row: its answer turn, which the tool rewards compare
            ref = reference_turn(messages, tools)
        else:
            ref = reference(messages)
    extra = {k: v for k, v in obj.items() if k not in SHAPE_KEYS and k not in _OWN}
    return {"prompt": prompt, "reference": ref, **extra, **({"tools": tools} if tools else {})}


ROW_FIELDS = "row_fields"
"""The dataset column holding every field of a prompt row as one JSON object (nested values, and values whose type
varies between rows, cannot be Arrow columns of their own)."""
PROMPT_MESSAGES = "prompt_messages"
"""The dataset column holding a prompt's messages as JSON, for rows whose prompt TRL receives as rendered text (rows
that offer tools): what a reward model scores the completion after."""
_OWN = {"prompt", "source", ROW_FIELDS}  # the keys a prompt row adds itself


def row_fields(row: dict[str, Any]) -> dict[str, Any]:
    """A prompt row's own fields (its `reference` aside: that is the row's answer, graders read it as item.reference)."""
    return {k: v for k, v in row.items() if k not in _OWN and k != "reference"}


def dataset_row(row: dict[str, Any]) -> dict[str, Any]:
    """A prompt row as GRPO's dataset holds it, so rewards receive: prompt, reference, each scalar field as a column
    of its own, and `row_fields`, the JSON of every field of the row (lists and objects included)."""
    fields = row_fields(row)
    scalars = {k: v for k, v in fields.items() if isinstance(v, (str, int, float, bool))}
    return {"prompt": row["prompt"], "reference": row["reference"], **scalars, ROW_FIELDS: fields_json(fields)}


def fields_json(fields: dict[str, Any]) -> str:
    return json.dumps(fields, ensure_ascii=False, default=str)


def load_rows(paths: list[str] | str, normalise: Callable[[Any], dict[str, Any]], max_errors: int = 20) -> list[dict[str, Any]]:
    """Normalise every row of the files, each tagged with its file:line; any bad row raises one DataError listing them."""
    return load_normalised(paths, lambda rec: {**normalise(rec.obj), "source": rec.where}, max_errors)


def apply_length_policy(
    rows: list[dict[str, Any]], fit: Callable[[dict[str, Any]], Fit], data: DataSection, measured_as: str
) -> tuple[list[dict[str, Any]], TokenCounts]:
    """The rows that fit data.max_length under data.overlong (data.lengths), truncated ones rewritten, with the
    manifest's counts. Policy `error` raises one DataError at the first row over."""
    counts = TokenCounts(examples=len(rows), max_length=data.max_length, overlong=data.overlong, measured_as=measured_as)
    kept = []
    for row in rows:
        try:
            f = fit(row)
        except ValueError as exc:
            raise DataError(
                f"{row.get('source', '?')}: {exc}", hint="Raise data.max_length or set data.overlong: drop|truncate."
            ) from None
        if f.dropped:
            counts.count_drop(f.dropped, str(row.get("source", "?")))
            continue
        if f.tokens_lost:
            counts.truncated += 1
            counts.tokens_lost += f.tokens_lost
        counts.kept += 1
        counts.tokens += f.kept_tokens
        counts.trained_tokens += f.trained_tokens
        kept.append({**row, **f.parts})
    if rows and not kept:
        raise DataError(
            f"no trainable rows: {counts.dropped_overlong} over max_length={data.max_length} ({measured_as}), "
            f"{counts.dropped_no_trained_tokens} with no room left for an answer",
            hint="Raise data.max_length, or set data.overlong: truncate.",
        )
    if counts.dropped_overlong or counts.dropped_no_trained_tokens or counts.truncated:
        log.warning(
            "dropped %d over max_length=%d (%s), %d with no room for an answer; truncated %d (%d tokens lost)",
            counts.dropped_overlong,
            data.max_length,
            measured_as,
            counts.dropped_no_trained_tokens,
            counts.truncated,
            counts.tokens_lost,
        )
    return kept, counts


def split_rows(
    data: DataSection, seed: int, normalise: Callable[[Any], dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train and eval rows (data.dataset.split_rows, the one split), each tagged with its file:line."""
    return split(data, seed, lambda rec: {**normalise(rec.obj), "source": rec.where})


def recipe_rows(recipe: Recipe, normalise: Callable[[Any], dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """split_rows for a recipe; with `rag`, every row's prompt (train and eval alike) carries its retrieved context."""
    from tunesmith.rag.prompt import augment_rows

    train, evaluation = split_rows(recipe.data, recipe.training.seed, normalise)
    return augment_rows(train, recipe), augment_rows(evaluation, recipe)


def prompt_split(recipe: Recipe, with_context: bool = True) -> tuple[list[Example], list[Example]]:
    """(train, held-out) examples of the methods that train on prompt rows (dpo, grpo, distill): each row's prompt
    with its reference as the answer (dpo: the chosen answer; grpo: the `reference` column or the row's answer, ""
    for prompt-only rows; distill: the teacher's answer once it wrote one), split as training splits them.
    with_context: with `rag`, retrieved context in every prompt (as training saw them)."""
    from tunesmith.rag.prompt import augment_examples

    train, evaluation = (
        [
            Example(
                row_id(r, r["source"]),
                r["prompt"] + [turn_message(str(r["reference"])) or {"role": "assistant", "content": str(r["reference"])}],
                r["source"],
                row_fields(r),  # what graders read as item.<field>, saved with the held-out rows
            )
            for r in rows
        ]
        for rows in split_rows(recipe.data, recipe.training.seed, prompt_row)
    )
    if not with_context:
        return train, evaluation
    return augment_examples(train, recipe), augment_examples(evaluation, recipe)
