"""`data show`: one row rendered through the chat template exactly as training sees it, with its loss mask.

The same `Shown` feeds three views: the coloured terminal one (cli/data.py), plain text with trained runs in
`[[…]]` for logs and tests (`plain`), and HTML for the audit report and the studio (data.html.row_html).
Special tokens stay visible in all three.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.data.checks import check_record
from tunesmith.data.formats import Record, read_records
from tunesmith.data.template import IGNORE, family_of, tokenize_example
from tunesmith.errors import DataError
from tunesmith.families import Family

TRAINED_OPEN, TRAINED_CLOSE = "[[", "]]"


@dataclass
class Shown:
    """A rendered row: text runs with their trained flag, and the token counts."""

    where: str
    segments: list[tuple[str, bool]] = field(default_factory=list)  # (text, trained)
    n_tokens: int = 0
    n_trained: int = 0
    kept_tokens: int = 0
    dropped: str | None = None
    eos_trained: bool = False  # an end-of-turn token of the family (or the EOS) is a label
    problems: list[str] = field(default_factory=list)
    family: str = ""
    counts: dict[str, int] = field(default_factory=dict)  # turns and traces, from data.template
    specials: list[str] = field(default_factory=list)  # the tokenizer's special and added tokens, longest first


def nth_record(path: str | Path, k: int) -> Record:
    """The k-th row (1-based, blank lines not counted) of a data file."""
    if k < 1:
        raise DataError("--row counts from 1")
    for i, rec in enumerate(read_records(path), start=1):
        if i == k:
            return rec
    raise DataError(f"{path} has fewer than {k} rows")


def show_row(
    tokenizer: Any,
    rec: Record,
    max_length: int | None = None,
    overlong: str = "drop",
    *,
    reasoning: str = "train",
    family: Family | None = None,
    tools: list[Any] | None = None,
) -> Shown:
    """Render + tokenize one record with labels; runs of trained / untrained tokens decoded back to text.
    tools: the file's (data.tools), for a row that offers none of its own."""
    row, findings = check_record(rec, tools)
    problems = [f"[{f.code}] {f.message}" for f in findings]
    if row is None:
        return Shown(rec.where, problems=problems)
    shown = show_messages(tokenizer, rec.where, row.messages, max_length, overlong, reasoning, row.tools, family)
    shown.problems = problems + shown.problems
    return shown


def show_messages(
    tokenizer: Any,
    where: str,
    messages: list[dict[str, Any]],
    max_length: int | None = None,
    overlong: str = "drop",
    reasoning: str = "train",
    tools: list[Any] | None = None,
    family: Family | None = None,
) -> Shown:
    """A normalised conversation as training tokenizes it (its tools, data.reasoning, the length policy)."""
    fam = family_of(tokenizer, family)
    policy = "truncate" if overlong == "error" else overlong
    tok = tokenize_example(tokenizer, messages, max_length, policy, reasoning=reasoning, tools=tools, family=fam)
    ids, labels = tok.input_ids, tok.labels
    shown = Shown(where, n_tokens=tok.n_tokens, n_trained=tok.n_trained, dropped=tok.dropped)
    shown.kept_tokens = 0 if tok.dropped else len(ids)
    shown.eos_trained = bool(set(fam.end_of_turn_ids(tokenizer)) & {lab for lab in labels if lab != IGNORE})
    shown.family, shown.counts = fam.name, dict(tok.counts)
    shown.specials = sorted(set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab()), key=len, reverse=True)
    start = 0
    for j in range(1, len(ids) + 1):
        if j == len(ids) or (labels[j] != IGNORE) != (labels[start] != IGNORE):
            shown.segments.append((tokenizer.decode(ids[start:j]), labels[start] != IGNORE))
            start = j
    return shown


def plain(shown: Shown) -> str:
    """The rendered row as plain text, trained runs between [[ and ]] (special tokens as they are)."""
    return "".join(f"{TRAINED_OPEN}{text}{TRAINED_CLOSE}" if trained else text for text, trained in shown.segments)


def trained_runs(shown: Shown) -> list[str]:
    """The text of each trained run, in order (what the model learns to write)."""
    return [text for text, trained in shown.segments if trained]


def counts_line(shown: Shown) -> str:
    """`family qwen3 · 2 assistant turns, 1 trained, 1 not trainable · traces: …` for the views' footers."""
    c = shown.counts
    parts = [
        f"family {shown.family or '?'}",
        f"{c.get('assistant_turns', 0)} assistant turn(s), {c.get('turns_trained', 0)} trained",
    ]
    if c.get("turns_not_trainable"):
        parts[-1] += f", {c['turns_not_trainable']} not trainable (context differs from inference)"
    if c.get("tool_calls_trained") or c.get("tool_results_untrained"):
        parts.append(
            f"tools: {c.get('tool_calls_trained', 0)} call(s) trained, {c.get('tool_results_untrained', 0)} result(s) not trained"
        )
    traces = {k: v for k, v in c.items() if "trace" in k and v}
    if traces:
        parts.append("traces: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in traces.items()))
    return " · ".join(parts)
