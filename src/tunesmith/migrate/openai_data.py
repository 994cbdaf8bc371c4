"""OpenAI's fine-tuning file rules, checked on top of tunesmith's audit, and the copy written into the project.

tunesmith's own audit (data.audit: JSON per line, message keys, roles, weight 0/1, tool calls, a missing
assistant message, at least 10 examples, lengths) runs on the copy afterwards; this module adds what is
OpenAI's alone and converts what tunesmith reads differently. The copy keeps the source's line numbers: a
converted row is rewritten on its own line, a row that cannot be used is left out as a blank line (blank lines
are not rows) and listed with its line number.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.atomic import write_text_atomic
from tunesmith.data.formats import detect_shape, read_records
from tunesmith.errors import DataError

ERROR, WARNING, CONVERTED = "error", "warning", "converted"

# code -> (severity, OpenAI's rule, what tunesmith does). error = the row is left out of the copy.
RULES: dict[str, tuple[str, str, str]] = {
    "openai_developer_role": (
        CONVERTED,
        "a `developer` message (OpenAI's name for system instructions to reasoning models)",
        "written as role system",
    ),
    "openai_content_parts": (CONVERTED, "content given as a list of text parts", "the parts joined into one string"),
    "openai_image_content": (ERROR, "content with image or audio parts", "left out: tunesmith trains on text"),
    "openai_not_chat_format": (
        WARNING,
        "chat fine-tuning takes `messages` rows only",
        "read as tunesmith's matching shape (data.md) and trained",
    ),
    "openai_weight_not_assistant": (
        WARNING,
        "`weight` is allowed on assistant messages only",
        "no effect: only assistant turns are ever trained",
    ),
    "openai_tool_arguments_not_string": (
        WARNING,
        "tool_calls[].function.arguments must be a JSON-encoded string",
        "passed to the chat template as given",
    ),
    "openai_tool_result_unmatched": (
        WARNING,
        "a tool message's tool_call_id must answer an earlier tool call",
        "trained as given (the result is never a trained turn)",
    ),
    "openai_dpo_shape": (
        WARNING,
        "preference rows are input / preferred_output / non_preferred_output",
        "read as tunesmith's preference shape",
    ),
    "openai_dpo_not_one_turn": (
        WARNING,
        "preferred_output and non_preferred_output each hold one assistant message",
        "every given turn is trained",
    ),
    "openai_dpo_tools": (
        WARNING,
        "input.tools: the tools the prompt offers",
        "not rendered: DPO rows keep role and content only",
    ),
    "openai_rft_last_not_user": (
        WARNING,
        "the last message of a reinforcement row is a user message",
        "the prompt ends at the last user message; later turns are dropped",
    ),
    "openai_rft_no_user": (ERROR, "a reinforcement row needs a user message", "left out: nothing to answer"),
    "openai_rft_missing_field": (
        ERROR,
        "the grader reads item.<field> from every row",
        "left out: the grader cannot score it",
    ),
    "openai_over_example_limit": (
        WARNING,
        "each example fits the hosted model's per-example limit",
        "counted with the new model's tokenizer; data.max_length decides what is trained",
    ),
}

# Per-example token limits OpenAI documented for fine-tuning these hosted models.
EXAMPLE_LIMITS = {
    "gpt-3.5-turbo-0613": 4_096,
    "gpt-3.5-turbo-1106": 16_385,
    "gpt-3.5-turbo-0125": 16_385,
    "gpt-4o-mini-2024-07-18": 65_536,
    "gpt-4o-2024-08-06": 65_536,
}

_SHAPE_KEYS = {"messages", "conversations", "prompt", "completion", "chosen", "rejected", "instruction", "output", "system"}
_SHAPE_KEYS |= {"input", "preferred_output", "non_preferred_output"}


@dataclass
class Staged:
    """One file as copied into the project, with the rows each OpenAI rule concerns (source line numbers)."""

    split: str
    source: Path
    path: Path
    file_id: str | None = None
    rows: int = 0
    hits: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    fields: set[str] | None = None  # the fields (beyond the row's shape) every kept row has: what graders can read

    @property
    def left_out(self) -> list[int]:
        return sorted({n for code, lines in self.hits.items() if RULES[code][0] == ERROR for n in lines})


def join_text_parts(content: list[Any]) -> str | None:
    """Content given as parts ({type: text | input_text | output_text, text}) as one string; None when any part
    is not text (an image, audio)."""
    texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") in ("text", "input_text", "output_text")]
    if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
        return None
    return "".join(str(t) for t in texts)


class _LeftOut(Exception):
    """The row cannot be used; args[0] is the rule code."""


def _message_rules(msg: Any, hit: set[str]) -> Any:
    """One message with developer -> system and text parts joined; records the rules it meets."""
    if not isinstance(msg, dict):
        return msg
    out = dict(msg)
    if out.get("role") == "developer":
        out["role"] = "system"
        hit.add("openai_developer_role")
    content = out.get("content")
    if isinstance(content, list):
        text = join_text_parts(content)
        if text is None:
            raise _LeftOut("openai_image_content")
        out["content"] = text
        hit.add("openai_content_parts")
    if "weight" in out and out.get("role") != "assistant":
        hit.add("openai_weight_not_assistant")
    return out


def _messages(value: Any, hit: set[str]) -> Any:
    return [_message_rules(m, hit) for m in value] if isinstance(value, list) else value


def _tool_rules(messages: Any, hit: set[str]) -> None:
    if not isinstance(messages, list):
        return
    ids: set[str] = set()
    for m in messages:
        if not isinstance(m, dict):
            continue
        for call in m.get("tool_calls") or []:
            if isinstance(call, dict):
                ids.add(str(call.get("id")))
                fn = call.get("function")
                if isinstance(fn, dict) and "arguments" in fn and not isinstance(fn["arguments"], str):
                    hit.add("openai_tool_arguments_not_string")
        if m.get("role") == "tool" and str(m.get("tool_call_id")) not in ids:
            hit.add("openai_tool_result_unmatched")


def _sft(obj: dict[str, Any], hit: set[str]) -> dict[str, Any]:
    shape = detect_shape(obj)
    if shape != "messages":
        if shape != "unknown":  # a row of no shape is not trained: the audit names it (unknown_shape)
            hit.add("openai_not_chat_format")
        return obj
    out = {**obj, "messages": _messages(obj["messages"], hit)}
    _tool_rules(out["messages"], hit)
    return out


def _dpo(obj: dict[str, Any], hit: set[str]) -> dict[str, Any]:
    if detect_shape(obj) != "openai_dpo":
        hit.add("openai_dpo_shape")
        return obj
    out = dict(obj)
    inp = obj.get("input")
    if isinstance(inp, dict):
        out["input"] = {**inp, "messages": _messages(inp.get("messages"), hit)}
        if inp.get("tools"):
            hit.add("openai_dpo_tools")
    for side in ("preferred_output", "non_preferred_output"):
        value = _messages(obj.get(side), hit)
        out[side] = value
        one = isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) and value[0].get("role") == "assistant"
        if side in obj and not one:
            hit.add("openai_dpo_not_one_turn")
    return out


def _rft(obj: dict[str, Any], hit: set[str], fields: list[str]) -> dict[str, Any]:
    """A reinforcement row: the prompt up to its last user message, every other field kept as it is (the grader
    reads them as item.<field>, in eval and as the reward)."""
    messages = _messages(obj.get("messages"), hit)
    if not isinstance(messages, list):
        return obj  # not a chat row: tunesmith's audit names the problem
    users = [i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise _LeftOut("openai_rft_no_user")
    if users[-1] != len(messages) - 1:
        hit.add("openai_rft_last_not_user")
    if any(f not in obj for f in fields):
        raise _LeftOut("openai_rft_missing_field")
    return {"prompt": messages[: users[-1] + 1], **{k: v for k, v in obj.items() if k not in _SHAPE_KEYS}}


def _raw_lines(path: Path) -> list[str]:
    # The same line breaks as the reader (universal newlines): line N here is line N of every finding.
    text = path.read_text(encoding="utf-8-sig")
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def stage(split: str, source: Path, dest: Path, kind: str, fields: list[str], file_id: str | None = None) -> Staged:
    """Copy `source` (JSONL, whatever its name) to `dest`, converted for `method`; DataError when it is not JSONL."""
    raw = dest.with_name(f".source-{dest.name}")
    shutil.copyfile(source, raw)
    staged = Staged(split, source, dest, file_id)
    try:
        records = list(read_records(raw))
    except DataError as exc:
        raise DataError(
            f"{source}: not a JSONL text file ({exc.message.replace(str(raw), 'the file')})",
            hint="OpenAI fine-tuning files are JSONL: one JSON object per line, UTF-8.",
        ) from None
    objects = [r for r in records if isinstance(r.obj, dict)]
    if not objects:
        first = next((f"line {r.line}: {r.error or 'not an object'}" for r in records), "the file is empty")
        raise DataError(
            f"{source}: not a JSONL file of examples: no line holds a JSON object ({first})",
            hint="OpenAI fine-tuning files are JSONL: one JSON object per line.",
        )
    changed: dict[int, str] = {}
    for rec in objects:
        hit: set[str] = set()
        try:
            if kind == "supervised":
                row = _sft(rec.obj, hit)
            elif kind == "reinforcement":
                row = _rft(rec.obj, hit, fields)
            else:  # OpenAI's preference jobs
                row = _dpo(rec.obj, hit)
        except _LeftOut as out:
            hit.add(out.args[0])
            changed[rec.line] = ""
        else:
            staged.rows += 1
            own = {k for k in row if k not in _SHAPE_KEYS}
            staged.fields = own if staged.fields is None else staged.fields & own
            if row != rec.obj:
                changed[rec.line] = json.dumps(row, ensure_ascii=False)
        for code in hit:
            staged.hits[code].append(rec.line)
    if changed:
        lines = _raw_lines(raw)
        write_text_atomic(dest, "\n".join(changed.get(i + 1, line) for i, line in enumerate(lines)))
        raw.unlink()
    else:
        raw.replace(dest)
    return staged
