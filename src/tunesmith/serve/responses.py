"""How a completion is shaped for the client: OpenAI's chat.completion / text_completion objects and SSE chunks.

`call` is a handlers.Call: the request, what it became and what came back.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tunesmith.serve.tool_calls import message_calls

if TYPE_CHECKING:
    from tunesmith.serve.handlers import Call


def sources(call: Call) -> list[dict[str, Any]]:
    """The retrieved passages as the response's extra `sources` field."""
    return [{"source": p.source, "line": p.line, "chunk_id": p.chunk_id, "score": p.score, "text": p.text} for p in call.passages]


def usage(call: Call) -> dict[str, int]:
    return {
        "prompt_tokens": call.prompt_tokens,
        "completion_tokens": call.completion_tokens,
        "total_tokens": call.prompt_tokens + call.completion_tokens,
    }


def finish_reason(reason: str | None) -> str:
    return reason if reason in ("length", "tool_calls") else "stop"


def envelope(call: Call, chunk: bool) -> dict[str, Any]:
    obj = {"chat": "chat.completion", "completions": "text_completion"}[call.kind]
    return {
        "id": call.request_id,
        "object": obj + (".chunk" if chunk and call.kind == "chat" else ""),
        "created": int(call.arrived.timestamp()),
        "model": call.model,
    }


def body(call: Call) -> dict[str, Any]:
    """The whole (non-streamed) response object."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason(call.finish_reason), "logprobs": None}
    if call.kind == "chat":
        # As OpenAI-compatible reasoning servers do: the trace apart from the answer.
        choice["message"] = {"role": "assistant", "content": call.answer}
        if call.tool_calls:  # as OpenAI answers a call: content null when the model wrote no text beside it
            choice["message"] = {
                "role": "assistant",
                "content": call.answer or None,
                "tool_calls": message_calls(call.tool_calls),
            }
        if call.reasoning is not None:
            choice["message"]["reasoning_content"] = call.reasoning
    else:
        choice["text"] = call.output
    out = {**envelope(call, False), "choices": [choice], "usage": usage(call)}
    if call.passages:
        out["sources"] = sources(call)
    return out


def chunk(call: Call, text: str | None, finish: str | None = None, first: bool = False, kind: str = "content") -> str:
    """One SSE event: the first (role, sources), a text delta (`kind` content, or reasoning: a
    `reasoning_content` delta), or the last (finish_reason)."""
    if call.kind == "chat":
        key = "reasoning_content" if kind == "reasoning" else "content"
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else ({key: text} if text else {})
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
    out = {**envelope(call, True), "choices": [choice]}
    if first and call.passages:
        out["sources"] = sources(call)
    return f"data: {json.dumps(out)}\n\n"


def delta_chunk(call: Call, delta: dict[str, Any]) -> str:
    """One SSE event carrying a chat delta as it is (a tool call's start, or a chunk of its arguments)."""
    choice = {"index": 0, "delta": delta, "finish_reason": None, "logprobs": None}
    return f"data: {json.dumps({**envelope(call, True), 'choices': [choice]})}\n\n"


def usage_chunk(call: Call) -> str:
    """The SSE event with token counts (sent when the client asked for stream_options.include_usage)."""
    return f"data: {json.dumps({**envelope(call, True), 'choices': [], 'usage': usage(call)})}\n\n"


def error_event(message: str) -> str:
    """An SSE event for a failure after the stream began (its HTTP status was already sent)."""
    return f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n"
