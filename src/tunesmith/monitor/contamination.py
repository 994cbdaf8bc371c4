"""What the loop may learn from: new rows deduplicated against the training data, and refused when they hold an eval
prompt, so served traffic that later became (or already is) an eval row can never enter training.

One near-duplicate machinery for all of it: data/dedup.py (SHA-256 of the normalised conversation for exact copies,
MinHash LSH over word 3-grams, Jaccard >= 0.8 by default, for near ones).
- Duplicates are whole rows (prompt and answer): a new answer to a known prompt is new information and stays.
- Eval contamination is judged on the prompt alone (system turns left out): a held-out question answered in training,
  with whatever answer, inflates every later eval of it.
Every dropped row is counted by reason; nothing is dropped silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tunesmith.data import dedup
from tunesmith.data.convert import write_rows
from tunesmith.data.dataset import content_key
from tunesmith.data.formats import (
    PREFERENCE_SHAPES,
    RowError,
    detect_shape,
    read_records,
    to_messages,
    to_preference,
    to_prompt_only,
)
from tunesmith.monitor.retrain import Pinned
from tunesmith.train.methods import held_out_examples

Row = dict[str, Any]


@dataclass
class Screened:
    """The rows kept and, per reason, how many were dropped."""

    kept: list[Row]
    dropped: Counter[str] = field(default_factory=Counter)


def _conversation(row: Row) -> list[dict[str, Any]]:
    """A row's whole conversation (a pair: prompt + chosen + rejected; a prompt-only row: its prompt)."""
    shape = detect_shape(row) if isinstance(row, dict) else "unknown"
    if shape in PREFERENCE_SHAPES:
        pair = to_preference(row)
        return pair["prompt"] + pair["chosen"] + pair["rejected"]
    return to_prompt_only(row) if shape == "prompt_only" else to_messages(row)


def _prompt(row: Row) -> list[dict[str, Any]]:
    """A row's prompt without its system turns (they are shared by every row of an application)."""
    return [m for m in to_prompt_only(row) if m.get("role") != "system"]


def _keys(rows: list[Row], of: Any) -> tuple[list[str], list[str]]:
    convs = [of(r) for r in rows]
    return [dedup.row_key(c) for c in convs], [dedup.row_text(c) for c in convs]


def _readable(rows: list[Row], of: Any) -> list[Row]:
    """The reference rows `of` can read (a row that cannot be read cannot have been trained or scored on either)."""
    out = []
    for r in rows:
        try:
            of(r)
        except RowError:
            continue
        out.append(r)
    return out


def screen(new: list[Row], training: list[Row], evaluation: list[Row], threshold: float = dedup.DEFAULT_THRESHOLD) -> Screened:
    """Keep the new rows that are neither (nearly) in the training data nor hold an eval prompt, once each."""
    out = Screened(list(new))
    if not out.kept:
        return out
    keys, texts = _keys(out.kept, _conversation)
    inner = dedup.find_duplicates(keys, texts, threshold)
    drop = {i for i, _ in inner.exact} | {i for i, _, _ in inner.near}
    out.dropped["duplicate within the new rows (exact)"] += len(inner.exact)
    out.dropped["duplicate within the new rows (near)"] += len(inner.near)
    out.kept = [r for i, r in enumerate(out.kept) if i not in drop]
    for what, rows, of in (
        ("matches an eval row", evaluation, _prompt),
        ("already in the training data", training, _conversation),
    ):
        if not rows or not out.kept:
            continue
        keys, texts = _keys(out.kept, of)
        ref_keys, ref_texts = _keys(_readable(rows, of), of)
        hits = dedup.find_overlap(ref_keys, ref_texts, keys, texts, threshold)
        out.dropped[f"{what} (exact)"] += len(hits.exact)
        out.dropped[f"{what} (near)"] += len(hits.near)
        drop = {j for j, _ in hits.exact} | {j for j, _, _ in hits.near}
        out.kept = [r for j, r in enumerate(out.kept) if j not in drop]
    out.dropped = Counter({k: v for k, v in out.dropped.items() if v})
    return out


def row_keys(rows: list[Row]) -> list[str]:
    """The exact keys of rows (the loop remembers which rows an earlier cycle already tried)."""
    return _keys(rows, _conversation)[0]


def served_data(run: Any) -> tuple[list[Row], list[Row]]:
    """(training rows, eval rows) of the served run: its training files that are still there and the held-out rows it
    is scored on (its data/eval.jsonl, plus the recipe's eval file)."""
    from pathlib import Path

    def rows(paths: list[str]) -> list[Row]:
        return [r.obj for p in paths if Path(p).is_file() for r in read_records(p) if isinstance(r.obj, dict) and not r.error]

    training = rows(list(run.recipe.data.train))
    evaluation = [{"messages": e.messages} for e in held_out_examples(run)]
    if run.recipe.data.eval:
        evaluation += rows([run.recipe.data.eval])
    return training, evaluation


def pin_held_out(run: Any, recipe_train: list[str], out: Any) -> Any:
    """For a retrain of `run` on demonstrations: the recipe's and the run's training files without any of the run's
    held-out rows (matched by content, as the split matches them), written to `out`, and the run's held-out file
    as the next run's eval set (monitor.retrain.Pinned): every cycle is scored on the same rows and none of them
    trains. None where rows cannot be pinned this way (preference pairs, retrieval-augmented prompts, a run without
    saved held-out rows): the recipe's own split applies then."""
    from pathlib import Path

    if run.recipe.rag is not None or run.manifest.held_out is None:
        return None
    # The held-out rows, then every row taken once: the recipe's files and an earlier cycle's filtered copy of them
    # hold the same rows.
    skip = {dedup.row_key(e.messages) for e in held_out_examples(run)}
    rows: list[Row] = []
    for path in dict.fromkeys([*recipe_train, *run.recipe.data.train]):
        for rec in read_records(path) if Path(path).is_file() else []:
            if not isinstance(rec.obj, dict) or rec.error:
                continue
            if detect_shape(rec.obj) in PREFERENCE_SHAPES:
                return None
            if (key := content_key(rec.obj)) not in skip:
                skip.add(key)
                rows.append(rec.obj)
    return Pinned(write_rows(out, rows), run.dir / run.manifest.held_out.path)
