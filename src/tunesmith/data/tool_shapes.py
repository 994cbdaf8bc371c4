"""Tool definitions and function-call rows in OpenAI's shape.

A row offers tools as `tools`: a list of `{"type": "function", "function": {"name", "description", "parameters"}}`
(a bare `{"name", "parameters"}` object, or the list as JSON text as ShareGPT files store it, is read as the same).
An assistant turn calls them in `tool_calls` (`[{"id", "type": "function", "function": {"name", "arguments"}}]`,
arguments as a JSON string), and each result comes back as a `tool` message naming its `tool_call_id`.

Two common function-calling shapes are read into that one:
- ShareGPT with `function_call` / `observation` turns (LLaMA-Factory's): a `function_call` value is a call
  `{"name", "arguments"}` (or a list of them), the `observation` turns after it are the results, in order;
- glaive (`system` + `chat` text): the functions are the JSON objects in the system text, `<functioncall> {...}`
  is a call and `FUNCTION RESPONSE:` its result.
Call ids these shapes do not carry are made up (`call_<turn>_<k>`) so every result names the call it answers.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from tunesmith.errors import DataError, RowError

FILE_TOOLS_KEY = "tools"


def _error(code: str, message: str, index: int | None = None) -> Exception:
    return RowError(code, message, index)


def normalise_tools(value: Any) -> list[dict[str, Any]] | None:
    """A row's `tools` in OpenAI's shape, or None when it has none. RowError `invalid_tools` when it is not a list of
    functions with a string `name` (and an object `parameters`, when given)."""
    if value is None or value == [] or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise _error("invalid_tools", f"`tools` is text that is not JSON: {exc.msg}") from None
    if not isinstance(value, list):
        raise _error("invalid_tools", "`tools` must be a list of functions")
    out = []
    for k, tool in enumerate(value):
        fn = tool.get("function") if isinstance(tool, dict) and "function" in tool else tool
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _error("invalid_tools", f"tool {k} is not a function with a string `name`")
        if "parameters" in fn and not isinstance(fn["parameters"], dict):
            raise _error("invalid_tools", f"tool {k} ({fn['name']}): `parameters` must be a JSON schema object")
        out.append({"type": "function", "function": fn})
    return out


def tool_names(tools: list[dict[str, Any]] | None) -> list[str]:
    """The function names a tool list offers, in order."""
    return [t["function"]["name"] for t in tools or []]


def row_tools(obj: Any, default: list[dict[str, Any]] | None = None) -> list[dict[str, Any]] | None:
    """The tools a row offers (OpenAI's shape): its own `tools`, the functions of a glaive row's system text, else
    `default` (the file's, data.tools). RowError `invalid_tools` for a `tools` that is not a list of functions."""
    if not isinstance(obj, dict):
        return default
    own = normalise_tools(obj.get("tools"))
    if own is None and is_glaive(obj):
        own = normalise_tools(glaive_tools(str(obj.get("system") or ""))) if "system" in obj else None
    return own if own is not None else default


def load_tools_file(path: str) -> list[dict[str, Any]]:
    """The tool list of a JSON file (data.tools: the tools every row of the data offers when it names none)."""
    try:
        text = open(path, encoding="utf-8").read()  # noqa: SIM115  # one small file, read whole
    except OSError as exc:
        raise DataError(f"data.tools: cannot read {path}: {exc}") from None
    try:
        tools = normalise_tools(json.loads(text))
    except json.JSONDecodeError as exc:
        raise DataError(f"data.tools: {path} is not JSON: {exc.msg} (line {exc.lineno})") from None
    except ValueError as exc:  # RowError
        raise DataError(f"data.tools: {path}: {exc}", hint="Give a JSON list of OpenAI tools.") from None
    if not tools:
        raise DataError(f"data.tools: {path} holds no tools")
    return tools


def with_default_tools(obj: Any, default: list[dict[str, Any]] | None) -> Any:
    """The row with the file's tools as its own `tools` when it names none (so every later step reads them there)."""
    if default is None or not isinstance(obj, dict) or obj.get("tools") or is_glaive(obj):
        return obj
    return {**obj, "tools": default}


# -- ShareGPT function-call turns ----------------------------------------------------------------------------------


def _call(value: Any, turn: int, k: int) -> dict[str, Any]:
    """One OpenAI tool call from a `{"name", "arguments"|"parameters"}` object."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise _error("invalid_tool_call", f"turn {turn}: a call must be an object with a string `name`", turn)
    args = value.get("arguments", value.get("parameters", {}))
    text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return {"id": f"call_{turn}_{k}", "type": "function", "function": {"name": value["name"], "arguments": text}}


def sharegpt_call_turn(value: Any, turn: int) -> dict[str, Any]:
    """A ShareGPT `function_call` turn as an assistant message with tool_calls."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise _error("invalid_tool_call", f"turn {turn}: function_call is not JSON: {exc.msg}", turn) from None
    calls = [_call(v, turn, k) for k, v in enumerate(value if isinstance(value, list) else [value])]
    return {"role": "assistant", "content": None, "tool_calls": calls}


def answer_results(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`tool` messages without a `tool_call_id` get the id of the call they answer: the pending calls of the last
    assistant turn, in order (how ShareGPT and glaive pair calls and results)."""
    pending: list[str] = []
    out = []
    for msg in messages:
        if msg["role"] == "assistant":
            pending = [c["id"] for c in msg.get("tool_calls") or [] if isinstance(c, dict) and c.get("id")]
        elif msg["role"] == "tool" and "tool_call_id" not in msg and pending:
            msg = {**msg, "tool_call_id": pending.pop(0)}
        out.append(msg)
    return out


# -- glaive -------------------------------------------------------------------------------------------------------

_GLAIVE_TURN = re.compile(r"(USER|ASSISTANT|FUNCTION RESPONSE):\s*")
_GLAIVE_CALL = re.compile(r"<functioncall>\s*(.*)", re.DOTALL)


def is_glaive(obj: dict[str, Any]) -> bool:
    """glaive-function-calling rows: a `chat` transcript (USER: / ASSISTANT: / FUNCTION RESPONSE:)."""
    return isinstance(obj.get("chat"), str) and "messages" not in obj and "conversations" not in obj


def _json_values(text: str) -> list[Any]:
    """Every JSON object in `text`, in order (glaive's system text lists one function per object)."""
    decoder, out, pos = json.JSONDecoder(), [], 0
    while (start := text.find("{", pos)) != -1:
        try:
            value, pos = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            pos = start + 1
            continue
        out.append(value)
    return out


def glaive_tools(system: str) -> list[dict[str, Any]]:
    """The functions a glaive system text declares (the JSON objects with a `name`)."""
    return [v for v in _json_values(system) if isinstance(v, dict) and isinstance(v.get("name"), str)]


def _glaive_call(body: str, turn: int) -> dict[str, Any]:
    """`{"name": ..., "arguments": '{...}'}`: glaive quotes the arguments object in single quotes (Python's syntax)."""
    text = body.replace("<|endoftext|>", "").strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise _error("invalid_tool_call", f"turn {turn}: <functioncall> is not a JSON object", turn) from None
    if isinstance(value, dict) and isinstance(value.get("arguments"), str):
        try:
            value = {**value, "arguments": json.loads(value["arguments"])}
        except json.JSONDecodeError:
            pass  # kept as text: the audit reports arguments that are not JSON
    return _call(value, turn, 0)


def glaive_messages(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """A glaive row as messages: the system text (its preamble and functions) becomes the tool list (row_tools), the
    transcript user / assistant / tool turns."""
    parts = _GLAIVE_TURN.split(str(obj["chat"]))
    messages: list[dict[str, Any]] = []
    for turn, (role, text) in enumerate(zip(parts[1::2], parts[2::2])):
        body = text.replace("<|endoftext|>", "").strip()
        if role == "USER":
            messages.append({"role": "user", "content": body})
        elif role == "FUNCTION RESPONSE":
            messages.append({"role": "tool", "content": body})
        elif (m := _GLAIVE_CALL.search(body)) is not None:
            call = _glaive_call(m.group(1), turn)
            content = body[: m.start()].strip()
            messages.append({"role": "assistant", "content": content or None, "tool_calls": [call]})
        else:
            messages.append({"role": "assistant", "content": body})
    if not messages:
        raise _error("missing_messages_list", "`chat` holds no USER: / ASSISTANT: turns")
    return answer_results(messages)


_TOOL_KEYS = ("tool_calls", "tool_call_id", "name")  # what a message keeps besides role and content: its calls


def as_conversation(prompt: Any) -> list[dict[str, Any]]:
    """A prompt as messages, each with its role, its text ("" for none) and its tool calls or call id when it has
    them (training's preference and prompt rows keep the same); a string becomes one user turn (TRL passes text
    prompts for non-chat data)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m.get("content") or "", **{k: m[k] for k in _TOOL_KEYS if m.get(k)}} for m in prompt]
