"""The audit's tool-call checks: every call against the row's `tools`, every result against a call.

Codes (data.checks.CODES holds their severity and text): `tool_not_declared` (a call to a function the row does not
offer), `tool_arguments_not_json` (arguments that are not a JSON object), `tool_arguments_schema` (arguments the
function's JSON schema refuses, checked with jsonschema), `tool_result_unmatched` (a `tool` message answering no
call: an unknown `tool_call_id`, or no call pending), `tool_call_unanswered` (a call with no result before the
next assistant turn), and `tool_content_and_calls` (a turn with both text and calls: kept, trained as written,
counted). `tool_counts` sums what the rows hold (calls per function, results, mixed turns) for the report.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from typing import Any

from tunesmith.data.tool_shapes import tool_names

Problem = tuple[str, int, str]  # (code, message index, text)


@functools.lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    import jsonschema

    schema = json.loads(schema_json)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_errors(schema: dict[str, Any] | None, args: Any) -> str | None:
    """Why `args` breaks `schema` (the first error, with its path), or None when it validates (or there is no schema).
    An invalid schema is reported as such."""
    if not schema:
        return None
    import jsonschema

    try:
        validator = _validator(json.dumps(schema, sort_keys=True))
    except jsonschema.SchemaError as exc:
        return f"the function's schema is not a valid JSON schema: {exc.message}"
    error = jsonschema.exceptions.best_match(validator.iter_errors(args))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{where + ': ' if where else ''}{error.message}"


def call_arguments(call: dict[str, Any]) -> tuple[Any, str | None]:
    """(arguments as a JSON object, None) or (None, why they are not one): OpenAI sends them as a JSON string."""
    args = (call.get("function") or {}).get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            return None, f"not JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(args, dict):
        return None, f"a JSON {type(args).__name__}, not an object"
    return args, None


def _call_problems(i: int, call: dict[str, Any], offered: dict[str, dict[str, Any]]) -> list[Problem]:
    name = call["function"]["name"]
    if name not in offered:
        known = ", ".join(offered) or "none: the row has no `tools`"
        return [("tool_not_declared", i, f"message {i} calls `{name}`, which `tools` does not offer ({known})")]
    args, why = call_arguments(call)
    if why is not None:
        return [("tool_arguments_not_json", i, f"message {i}: the arguments of `{name}` are {why}")]
    broken = schema_errors(offered[name].get("parameters"), args)
    return [("tool_arguments_schema", i, f"message {i}: `{name}` arguments break its schema: {broken}")] if broken else []


def tool_problems(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[Problem]:
    """Problems of one conversation's calls and results (see the module docstring), in message order."""
    offered = {t["function"]["name"]: t["function"] for t in tools or []}
    out: list[Problem] = []
    pending: list[tuple[str | None, int]] = []  # (call id, message index) of calls not answered yet
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if role == "assistant":
            out += [
                ("tool_call_unanswered", j, f"message {j}: a call has no result before the assistant turn {i}")
                for _, j in pending
            ]
            calls = msg.get("tool_calls") or []
            pending = [(c.get("id"), i) for c in calls]
            for call in calls:
                out += _call_problems(i, call, offered)
            if calls and isinstance(msg.get("content"), str) and msg["content"].strip():
                out.append(("tool_content_and_calls", i, f"message {i} has text and {len(calls)} call(s): both are trained"))
        elif role in ("tool", "function"):
            wanted = msg.get("tool_call_id")
            ids = [c for c, _ in pending]
            if wanted is not None and wanted in ids:
                pending.pop(ids.index(wanted))
            elif wanted is None and pending:
                pending.pop(0)
            else:
                named = f"`tool_call_id` {wanted!r}" if wanted is not None else "no `tool_call_id`"
                out.append(("tool_result_unmatched", i, f"tool message {i} ({named}) answers no call of the turn before it"))
    return out


def tool_counts(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> Counter[str]:
    """What a conversation holds: `rows_with_tools`, `calls`, `calls.<name>`, `results`, `content_and_calls`."""
    counts: Counter[str] = Counter()
    counts["rows_with_tools"] += bool(tools)
    counts["tools_offered"] += len(tool_names(tools))
    for msg in messages:
        calls = msg.get("tool_calls") or [] if msg.get("role") == "assistant" else []
        counts["calls"] += len(calls)
        counts.update(f"calls.{c['function']['name']}" for c in calls)
        counts["results"] += msg.get("role") in ("tool", "function")
        counts["content_and_calls"] += bool(calls) and isinstance(msg.get("content"), str) and bool(msg["content"].strip())
    return counts


def tool_stats(counts: Counter[str]) -> dict[str, Any] | None:
    """The report's `tools` section from the summed counts; None when no row offers or calls a tool."""
    if not counts.get("rows_with_tools") and not counts.get("calls"):
        return None
    per_tool = {k.removeprefix("calls."): v for k, v in sorted(counts.items()) if k.startswith("calls.")}
    keys = ("rows_with_tools", "calls", "results", "content_and_calls")
    return {**{k: int(counts.get(k, 0)) for k in keys}, "calls_per_tool": per_tool}
