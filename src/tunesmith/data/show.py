"""`data show`: one row rendered through the chat template exactly as training sees it, with its loss mask."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.data.checks import check_record
from tunesmith.data.formats import Record, read_records
from tunesmith.data.template import IGNORE, tokenize_example
from tunesmith.errors import DataError


@dataclass
class Shown:
    """A rendered row: text runs with their trained flag, and the token counts."""

    where: str
    segments: list[tuple[str, bool]] = field(default_factory=list)  # (text, trained)
    n_tokens: int = 0
    n_trained: int = 0
    kept_tokens: int = 0
    dropped: str | None = None
    eos_trained: bool = False
    problems: list[str] = field(default_factory=list)


def nth_record(path: str | Path, k: int) -> Record:
    """The k-th row (1-based, blank lines not counted) of a data file."""
    if k < 1:
        raise DataError("--row counts from 1")
    for i, rec in enumerate(read_records(path), start=1):
        if i == k:
            return rec
    raise DataError(f"{path} has fewer than {k} rows")


def show_row(tokenizer: Any, rec: Record, max_length: int | None = None, overlong: str = "drop") -> Shown:
    """Render + tokenize one record with labels; runs of trained / untrained tokens decoded back to text."""
    row, findings = check_record(rec)
    shown = Shown(rec.where, problems=[f"[{f.code}] {f.message}" for f in findings])
    if row is None:
        return shown
    tok = tokenize_example(tokenizer, row.messages, max_length, "truncate" if overlong == "error" else overlong)
    ids, labels = tok.input_ids, tok.labels
    shown.n_tokens, shown.n_trained, shown.dropped = tok.n_tokens, tok.n_trained, tok.dropped
    shown.kept_tokens = 0 if tok.dropped else len(ids)
    shown.eos_trained = tokenizer.eos_token_id in [lab for lab in labels if lab != IGNORE]
    start = 0
    for j in range(1, len(ids) + 1):
        if j == len(ids) or (labels[j] != IGNORE) != (labels[start] != IGNORE):
            shown.segments.append((tokenizer.decode(ids[start:j]), labels[start] != IGNORE))
            start = j
    return shown
