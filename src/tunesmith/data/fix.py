"""`data fix`: write a cleaned copy of a file; the input is never touched.

Safe repairs first (unknown message keys removed, consecutive user turns merged, numeric or
text-part content turned into a string), then every row the audit would still flag is dropped:
format errors, empty answers, exact and near duplicates, rows the length policy drops, rows
without trained tokens, and (with `against`) rows that also appear in a training file.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith import outputs
from tunesmith.data import dedup
from tunesmith.data.audit import Rows, load_rows
from tunesmith.data.checks import ERROR, check_record, check_tokens
from tunesmith.data.convert import write_rows
from tunesmith.data.formats import MESSAGE_KEYS, Record, detect_shape, read_records
from tunesmith.errors import DataError


@dataclass
class FixResult:
    """What `fix_file` did, with counts per action and one line per touched row."""

    rows_in: int = 0
    rows_out: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # code -> rows dropped
    repaired: Counter[str] = field(default_factory=Counter)  # repair -> rows repaired
    actions: list[str] = field(default_factory=list)  # "file:line: dropped [code] ..." / "repaired ..."

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "dropped": dict(self.dropped),
            "repaired": dict(self.repaired),
            "actions": self.actions,
        }


def _text_of(content: Any) -> str | None:
    if isinstance(content, (int, float)) and not isinstance(content, bool):
        return str(content)
    if isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)  # OpenAI content parts [{type: text, text}]
    return None


def _message_lists(obj: dict[str, Any]) -> list[list[Any]]:
    shape = detect_shape(obj)
    if shape == "messages" and isinstance(obj.get("messages"), list):
        return [obj["messages"]]
    if shape == "openai_dpo" and isinstance(obj.get("input"), dict) and isinstance(obj["input"].get("messages"), list):
        return [obj["input"]["messages"]]
    return []


def repair(obj: Any) -> tuple[Any, list[str]]:
    """A repaired deep copy of a row and the names of the repairs made (none when it was fine)."""
    if not isinstance(obj, dict):
        return obj, []
    fixed, done = copy.deepcopy(obj), []
    for messages in _message_lists(fixed):
        merged: list[Any] = []
        for msg in messages:
            if not isinstance(msg, dict):
                merged.append(msg)
                continue
            unknown = set(msg) - MESSAGE_KEYS
            if unknown:
                for key in unknown:
                    del msg[key]
                done.append("removed_unknown_keys")
            if "content" in msg and not isinstance(msg["content"], str) and (text := _text_of(msg["content"])) is not None:
                msg["content"] = text
                done.append("content_to_string")
            prev = merged[-1] if merged else None
            if (
                isinstance(prev, dict)
                and prev.get("role") == msg.get("role") == "user"
                and isinstance(prev.get("content"), str)
                and isinstance(msg.get("content"), str)
            ):
                prev["content"] = f"{prev['content']}\n\n{msg['content']}"
                done.append("merged_user_turns")
                continue
            merged.append(msg)
        messages[:] = merged
    return fixed, sorted(set(done))


def fix_file(
    src: str | Path,
    out: str | Path,
    tokenizer: Any = None,
    max_length: int | None = None,
    overlong: str = "drop",
    against: list[str] | None = None,
    near: bool = True,
    near_threshold: float = dedup.DEFAULT_THRESHOLD,
    overwrite: bool = False,
) -> FixResult:
    """Repair what can be repaired, drop what the audit flags, write `out` (same shape, format by extension).

    `out` must be new (or, with overwrite, an earlier tunesmith output), never an input; no row left: DataError.
    """
    src, out = Path(src), Path(out)
    outputs.claim_file(out, inputs=[src, *(against or [])], overwrite=overwrite)
    result = FixResult()
    kept: list[tuple[Any, Any]] = []  # (repaired object, Row)
    for rec in read_records(src):
        result.rows_in += 1
        obj, repairs = repair(rec.obj) if not rec.error else (None, [])
        row, found = check_record(Record(rec.path, rec.line, obj, rec.error))
        errors = [f for f in found if f.severity == ERROR]
        if errors or row is None:
            first = errors[0] if errors else found[0]
            _drop(result, rec.where, first.code, first.message)
            continue
        for name in repairs:
            result.repaired[name] += 1
            result.actions.append(f"{rec.where}: repaired [{name}]")
        kept.append((obj, row))
    if tokenizer is not None:
        still = []
        for obj, row in kept:
            info, found = check_tokens(row, tokenizer, max_length, overlong)
            if info.dropped:
                _drop(result, row.where, found[0].code, found[0].message)
            else:
                still.append((obj, row))
        kept = still
    usable = Rows(rows=[row for _, row in kept])
    rows, keys, texts = usable.rows, usable.keys(), usable.texts()
    dups = dedup.find_duplicates(keys, texts, near_threshold, near)
    gone = {i: f"exact_duplicate of {rows[j].where}" for i, j in dups.exact}
    gone.update({i: f"near_duplicate (~{s:.2f}) of {rows[j].where}" for i, j, s in dups.near})
    if against:
        train = load_rows(list(against))
        ov = dedup.find_overlap(train.keys(), train.texts(), keys, texts, near_threshold, near)
        gone.update({j: f"eval_overlap with {train.rows[i].where}" for j, i in ov.exact})
        gone.update({j: f"eval_near_overlap (~{s:.2f}) with {train.rows[i].where}" for j, i, s in ov.near})
    for i, why in sorted(gone.items()):
        code, _, detail = why.partition(" ")
        _drop(result, rows[i].where, code, detail)
    final = [obj for i, (obj, _) in enumerate(kept) if i not in gone]
    if not final:
        raise DataError(f"{src}: no usable row left ({result.rows_in} read, {dict(result.dropped)} dropped); nothing written")
    write_rows(out, final)
    outputs.record_file(out)
    result.rows_out = len(final)
    return result


def _drop(result: FixResult, where: str, code: str, message: str) -> None:
    result.dropped[code] += 1
    result.actions.append(f"{where}: dropped [{code}] {message}")
