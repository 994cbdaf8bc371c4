"""Tool calls as each family writes them, parsed back into OpenAI-shaped `tool_calls`.

The formats are the ones the family templates render (and the ones common serving stacks parse):
- llama3_json: one JSON object {"name", "parameters"} (optionally after <|python_tag|>), several joined by ";".
- hermes: <tool_call>\\n{"name", "arguments"}\\n</tool_call> blocks after any text (Qwen 2.5/3, ChatML).
- mistral: [TOOL_CALLS] followed by a JSON list of {"name", "arguments", "id"}.
- phi4_mini: <|tool_call|>[{"name", "arguments"}, ...]<|/tool_call|>.
- json: one JSON object {"name", "arguments"} per line, in plain text (Gemma, which has no tool tokens).
An output that starts a call but does not parse comes back as content with `error` set, never as a call.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

STYLES: dict[str, str] = {
    "llama3_json": 'tool list as JSON in the first user turn; a call is {"name": ..., "parameters": {...}}',
    "hermes": "tool list as JSON in <tools></tools> in the system turn; calls in <tool_call></tool_call> blocks",
    "mistral": "tool list in [AVAILABLE_TOOLS] before the last user turn; calls as [TOOL_CALLS] [JSON list]",
    "phi4_mini": "tool list in <|tool|>…<|/tool|> in the system turn; calls as <|tool_call|>[JSON list]<|/tool_call|>",
    "json": 'tool list as JSON in the first user turn; a call is a line {"name": ..., "arguments": {...}}',
}
_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_PHI = re.compile(r"<\|tool_call\|>(.*?)(?:<\|/tool_call\|>|$)", re.DOTALL)


@dataclass
class Parsed:
    """A model output split into its text and its calls (OpenAI shape: arguments as a JSON string)."""

    content: str
    calls: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # the output opened a call that did not parse


def _call(obj: Any, index: int) -> dict[str, Any]:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ValueError(f"call {index} is not an object with a string `name`")
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        args = json.loads(args)
    if not isinstance(args, dict):
        raise ValueError(f"call {index} arguments are not an object")
    call: dict[str, Any] = {"type": "function", "function": {"name": obj["name"], "arguments": json.dumps(args)}}
    if isinstance(obj.get("id"), str):
        call["id"] = obj["id"]
    return call


def _objects(text: str) -> list[Any]:
    """Consecutive JSON values in `text`, separated by whitespace or ';'."""
    decoder, out, pos = json.JSONDecoder(), [], 0
    while pos < len(text):
        while pos < len(text) and text[pos] in " \t\r\n;":
            pos += 1
        if pos == len(text):
            break
        value, pos = decoder.raw_decode(text, pos)
        out.append(value)
    return out


def parse_tool_calls(text: str, style: str | None) -> Parsed:
    """Split `text` (a decoded completion, special tokens kept) into content and calls for a family's `style`."""
    try:
        return _parse(text, style)
    except (ValueError, KeyError) as exc:  # json.JSONDecodeError is a ValueError
        return Parsed(text, [], f"unparsable tool call: {exc}")


def _parse(text: str, style: str | None) -> Parsed:
    if style == "hermes":
        blocks = _HERMES.findall(text)
        if not blocks:
            return Parsed(text)
        return Parsed(text[: text.index("<tool_call>")].strip(), [_call(json.loads(b), i) for i, b in enumerate(blocks)])
    if style == "phi4_mini":
        blocks = _PHI.findall(text)
        if not blocks:
            return Parsed(text)
        objs = [o for b in blocks for o in json.loads(b)]
        return Parsed(text[: text.index("<|tool_call|>")].strip(), [_call(o, i) for i, o in enumerate(objs)])
    if style == "mistral":
        if "[TOOL_CALLS]" not in text:
            return Parsed(text)
        head, _, tail = text.partition("[TOOL_CALLS]")
        objs = [o for v in _objects(tail) for o in (v if isinstance(v, list) else [v])]
        return Parsed(head.strip(), [_call(o, i) for i, o in enumerate(objs)])
    if style == "llama3_json":
        body = text.strip().removeprefix("<|python_tag|>").strip()
        if not body.startswith("{"):
            return Parsed(text)
        return Parsed("", [_call(o, i) for i, o in enumerate(_objects(body))])
    if style == "json":
        content: list[str] = []
        calls: list[dict[str, Any]] = []
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith("{") and '"name"' in stripped and ('"arguments"' in stripped or '"parameters"' in stripped):
                calls.append(_call(json.loads(stripped), len(calls)))
            else:
                content.append(line)
        return Parsed("\n".join(content).strip() if calls else text, calls)
    return Parsed(text)
