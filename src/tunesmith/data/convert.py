"""Convert rows between shapes, and write rows to JSONL / JSON / Parquet / CSV (optionally .gz), atomically.

Every conversion goes through the normalisers training uses (`to_messages`, `to_preference`,
`to_prompt_only`), so a converted file trains exactly like its source. Fields outside the shape
(an `id`, a label column) are carried over unchanged.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith import outputs
from tunesmith.atomic import atomic_path
from tunesmith.data.formats import (
    RowError,
    detect_shape,
    file_kind,
    read_records,
    to_messages,
    to_preference,
    to_prompt_only,
)
from tunesmith.data.tool_checks import tool_counts
from tunesmith.data.tool_shapes import row_tools
from tunesmith.errors import DataError

TARGETS = ("messages", "sharegpt", "alpaca", "prompt_completion", "preference", "openai_dpo", "prompt_only")
SHAPE_KEYS = {
    "messages": {"messages"},
    "sharegpt": {"conversations"},
    "glaive": {"system", "chat"},
    "alpaca": {"instruction", "input", "output", "system"},
    "prompt_completion": {"prompt", "completion"},
    "preference": {"prompt", "chosen", "rejected"},
    "openai_dpo": {"input", "preferred_output", "non_preferred_output"},
    "prompt_only": {"prompt"},
    "unknown": set(),
}
_TO_SHAREGPT = {"user": "human", "assistant": "gpt", "system": "system", "tool": "observation", "function": "observation"}


def _plain(messages: list[dict[str, Any]]) -> bool:
    return all(isinstance(m.get("content"), str) and set(m) <= {"role", "content"} for m in messages)


def convert_row(obj: Any, to: str) -> dict[str, Any]:
    """One row in shape `to`. Raises RowError (format codes, or `not_convertible`)."""
    if to not in TARGETS:
        raise ValueError(f"unknown target shape `{to}`; choose one of {', '.join(TARGETS)}")
    extra = {k: v for k, v in obj.items() if k not in SHAPE_KEYS[detect_shape(obj)]} if isinstance(obj, dict) else {}
    if (tools := row_tools(obj)) is not None:  # in OpenAI's shape, wherever the source kept them
        extra["tools"] = tools
    if to in ("preference", "openai_dpo"):
        pair = to_preference(obj)
        if to == "preference":
            return {**extra, **pair}
        return {
            **extra,
            "input": {"messages": pair["prompt"]},
            "preferred_output": pair["chosen"],
            "non_preferred_output": pair["rejected"],
        }
    if to == "prompt_only":
        return {**extra, "prompt": to_prompt_only(obj)}
    messages = to_messages(obj)
    if messages and messages[-1]["role"] == "user" and to != "messages":
        raise RowError("not_convertible", "the conversation ends with a user turn: nothing answers it")
    if to == "messages":
        return {**extra, "messages": messages}
    if to == "sharegpt":
        if not _plain(messages) or any(m["role"] not in _TO_SHAREGPT for m in messages):
            raise RowError("not_convertible", "ShareGPT holds plain text turns only (no tool calls, names or weights)")
        return {**extra, "conversations": [{"from": _TO_SHAREGPT[m["role"]], "value": m["content"]} for m in messages]}
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt, answer = messages[:last], messages[last:]
    if to == "alpaca":
        system = prompt[0]["content"] if prompt and prompt[0]["role"] == "system" else None
        rest = prompt[1:] if system is not None else prompt
        if len(rest) != 1 or rest[0]["role"] != "user" or len(answer) != 1 or not _plain(messages):
            raise RowError("not_convertible", "alpaca holds one instruction and one answer (single-turn, plain text)")
        return {
            **extra,
            "instruction": rest[0]["content"],
            "input": "",
            "output": answer[0]["content"],
            **({"system": system} if system else {}),
        }
    # prompt_completion: plain strings for a single user turn, TRL's conversational lists otherwise.
    if len(prompt) == 1 and prompt[0]["role"] == "user" and len(answer) == 1 and _plain(messages):
        return {**extra, "prompt": prompt[0]["content"], "completion": answer[0]["content"]}
    return {**extra, "prompt": prompt, "completion": answer}


def _csv_cell(value: Any) -> Any:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else value


def write_rows(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows in the format named by the extension (.jsonl .json .parquet .csv, + .gz); temp file then rename."""
    path = Path(path)
    kind = file_kind(path)
    with atomic_path(path) as tmp:
        if kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), tmp)
        else:
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(tmp, "wt", encoding="utf-8", newline="") as fh:
                if kind == "jsonl":
                    fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
                elif kind == "json":
                    json.dump(rows, fh, ensure_ascii=False, indent=1)
                else:
                    import csv

                    columns = list(dict.fromkeys(k for r in rows for k in r))
                    writer = csv.DictWriter(fh, fieldnames=columns)
                    writer.writeheader()
                    writer.writerows({k: _csv_cell(v) for k, v in r.items()} for r in rows)
    return path


@dataclass
class ConvertResult:
    converted: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # code -> count
    skipped_rows: list[str] = field(default_factory=list)  # "file:line [code] message", first 50
    tools: Counter[str] = field(default_factory=Counter)  # converted rows: rows_with_tools, calls, results (tool_counts)


def _tool_counts(obj: Any) -> Counter[str]:
    """What a converted row holds in calls and results (its function-call turns became tool_calls / tool messages)."""
    try:
        messages = to_messages(obj)  # a preference pair: its prompt and chosen answer
    except RowError:  # a prompt-only row: its prompt
        messages = to_prompt_only(obj)
    counts = tool_counts(messages, row_tools(obj))
    return Counter({k: v for k, v in counts.items() if k in ("rows_with_tools", "calls", "results") and v})


def convert_file(src: str | Path, out: str | Path, to: str, overwrite: bool = False) -> ConvertResult:
    """Convert every convertible row of `src` into shape `to` and write `out`; skipped rows are counted by code.

    `out` must be new (or, with overwrite, an earlier tunesmith output) and never `src`; no row converted: DataError.
    """
    outputs.claim_file(out, inputs=[src], overwrite=overwrite)
    result, rows = ConvertResult(), []
    for rec in read_records(src):
        try:
            if rec.error:
                raise RowError("invalid_json", rec.error)
            rows.append(convert_row(rec.obj, to))
            result.tools.update(_tool_counts(rec.obj))
        except RowError as exc:
            result.skipped[exc.code] += 1
            if len(result.skipped_rows) < 50:
                result.skipped_rows.append(f"{rec.where} [{exc.code}] {exc.message}")
    if not rows:
        why = dict(result.skipped) or "the file has no rows"
        raise DataError(f"{src}: no row could be converted to {to} ({why}); nothing written")
    write_rows(out, rows)
    outputs.record_file(out)
    result.converted = len(rows)
    return result
