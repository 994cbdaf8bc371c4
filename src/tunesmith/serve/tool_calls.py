"""Tools on /v1/chat/completions: the request's `tools` and `tool_choice`, the completion read back into `tool_calls`.

`tools` are rendered by the served run's chat template (the family's format, as training rendered them). With
`tool_choice` auto (the default when tools are given), required or a named function, the completion is parsed with
families.tools.parse_tool_calls in the family's format (special tokens kept): calls come back as `tool_calls` with
`finish_reason: "tool_calls"`. An output that opens a call that does not parse is returned as content and counted
(tunesmith_tool_calls_unparsable); under `required` (or a named function) an answer without the call asked for is a
422 `tool_call_missing`, never a 500. `none` renders the tools and returns whatever the model writes as content.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from tunesmith.data.formats import RowError
from tunesmith.data.tool_shapes import normalise_tools
from tunesmith.families.tools import parse_tool_calls
from tunesmith.serve.schemas import ApiError

ARGUMENT_CHUNK = 24  # characters of arguments per streamed delta (the OpenAI client concatenates them)


@dataclass
class ToolChoice:
    """What the request allows: mode auto | none | required, and the one function a named choice forces."""

    mode: str = "auto"
    name: str | None = None

    @property
    def parses(self) -> bool:
        return self.mode != "none"

    @property
    def forced(self) -> bool:
        return self.mode == "required" or self.name is not None


def offered_tools(tools: Any) -> list[dict[str, Any]] | None:
    """The request's `tools` in OpenAI's shape (None when none); a 400 naming `tools` when they are not functions."""
    if tools is None:
        return None
    try:
        return normalise_tools(tools)
    except RowError as exc:
        raise ApiError(400, f"tools: {exc.message}", param="tools", code="invalid_value") from None


def tool_choice(value: Any, tools: list[dict[str, Any]] | None) -> ToolChoice:
    """The request's `tool_choice` checked against its tools: a 400 naming `tool_choice` when it cannot apply."""
    if value is None:
        return ToolChoice("auto" if tools else "none")
    names = [t["function"]["name"] for t in tools or []]
    if isinstance(value, str) and value in ("auto", "none", "required"):
        choice = ToolChoice(value)
    elif isinstance(value, dict) and isinstance((value.get("function") or {}).get("name"), str):
        choice = ToolChoice("required", value["function"]["name"])
    else:
        raise ApiError(
            400,
            'tool_choice must be \'auto\', \'none\', \'required\' or {"type": "function", "function": {"name": ...}}',
            param="tool_choice",
            code="invalid_value",
        )
    if choice.mode != "none" and not tools:
        raise ApiError(400, "tool_choice needs `tools` to choose from", param="tool_choice", code="invalid_value")
    if choice.name is not None and choice.name not in names:
        raise ApiError(
            400, f"tool_choice names {choice.name!r}, which `tools` does not offer", param="tool_choice", code="invalid_value"
        )
    return choice


@dataclass
class Reply:
    """A completion read for the client: its text content (None when it only calls) and its calls (OpenAI's shape)."""

    content: str | None
    calls: list[dict[str, Any]] = field(default_factory=list)


def read_reply(answer: str, style: str | None, choice: ToolChoice) -> Reply:
    """`answer` (the completion after any trace, special tokens kept) as content and calls; a 422 when a forced
    choice gets no call (or a call to another function)."""
    if not choice.parses:
        return Reply(answer)
    parsed = parse_tool_calls(answer, style)
    calls = [{"id": f"call_{uuid.uuid4().hex[:24]}", **c} for c in parsed.calls]
    reply = Reply(parsed.content or None, calls) if calls else Reply(answer)
    if choice.forced and not calls:
        why = f"its call did not parse ({parsed.error})" if parsed.error else "it answered without calling a function"
        raise ApiError(422, f"tool_choice requires a call, and {why}", "invalid_response_error", code="tool_call_missing")
    if choice.name is not None and any(c["function"]["name"] != choice.name for c in calls):
        called = ", ".join(c["function"]["name"] for c in calls)
        raise ApiError(
            422,
            f"tool_choice requires a call to {choice.name!r}; the model called {called}",
            "invalid_response_error",
            code="tool_call_missing",
        )
    return reply


def message_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`tool_calls` as a response message carries them."""
    return [{"id": c["id"], "type": "function", "function": dict(c["function"])} for c in calls]


def call_deltas(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The streamed deltas of the calls, as the OpenAI client assembles them: per call its index, id, type and name
    (arguments empty), then its arguments in chunks."""
    out: list[dict[str, Any]] = []
    for index, c in enumerate(calls):
        fn = c["function"]
        out.append(
            {
                "tool_calls": [
                    {"index": index, "id": c["id"], "type": "function", "function": {"name": fn["name"], "arguments": ""}}
                ]
            }
        )
        args = fn["arguments"]
        out += [
            {"tool_calls": [{"index": index, "function": {"arguments": args[k : k + ARGUMENT_CHUNK]}}]}
            for k in range(0, len(args), ARGUMENT_CHUNK)
        ]
    return out


def logged_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The calls as the request log keeps them (arguments as the JSON text returned)."""
    return [{"id": c["id"], "type": "function", "function": dict(c["function"])} for c in calls] or None


def tool_error(answer: str, style: str | None) -> str | None:
    """Why the call `answer` opens does not parse (None when it opens none, or it parses)."""
    return parse_tool_calls(answer, style).error
