"""Read data files and normalise every row shape into OpenAI-style chat messages.

Files: JSONL, JSON (a list of rows), Parquet and CSV; UTF-8 with or without BOM, LF or
CRLF, optionally gzip-compressed (`.gz`). Shapes: OpenAI chat `messages` (with per-message
`weight` 0/1, `name`, tool calls), ShareGPT `conversations`, alpaca `instruction`/`input`/`output`,
`prompt`/`completion`, preference pairs (`prompt`/`chosen`/`rejected`, or OpenAI's DPO
`input`/`preferred_output`/`non_preferred_output`) and prompt-only rows (`prompt` alone, for GRPO).
A bad row never aborts the read: it comes back as a `Record` with an error, and the caller
decides (training refuses with the list; the audit reports and goes on).
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tunesmith.data import reasoning, tool_shapes
from tunesmith.errors import DataError
from tunesmith.errors import RowError as RowError  # re-exported: readers of rows catch it from here

T = TypeVar("T")

ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = {"role", "content", "name", "weight", "function_call", "tool_calls", "tool_call_id", *reasoning.KEYS}
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "observation": "tool",  # a function's result (LLaMA-Factory's function-call ShareGPT)
    "tool": "tool",
}
SHAREGPT_CALL = "function_call"  # an assistant turn that calls functions (its value: a call object or a list)


@dataclass
class Record:
    """One row as read from a file: `obj` is the parsed value, or None with `error` set."""

    path: str
    line: int  # 1-based line (JSONL/CSV) or row index + 1 (JSON list, Parquet)
    obj: Any = None
    error: str | None = None

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass
class Example:
    """A normalised training example."""

    id: str
    messages: list[dict[str, Any]]
    source: str  # file:line
    extra: dict[str, Any] = field(default_factory=dict)


def _open_text(path: Path) -> io.TextIOBase:
    # The caller owns (and closes) the returned stream, so no context manager here.
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115
    # utf-8-sig drops a BOM when present; newline=None turns CRLF into LF.
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline=None)


def file_kind(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    ext = suffixes[-1] if suffixes else ""
    kinds = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
    if ext not in kinds:
        raise DataError(
            f"{path}: unsupported file type `{ext or '(none)'}`", hint="Use .jsonl, .json, .parquet or .csv (optionally .gz)."
        )
    return kinds[ext]


def read_records(path: str | Path) -> Iterator[Record]:
    """Yield every row of a data file. Unreadable files raise DataError; bad rows come back as Records with `error`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    kind = file_kind(path)
    try:
        if kind == "jsonl":
            yield from _read_jsonl(path)
        elif kind == "json":
            yield from _read_json(path)
        elif kind == "csv":
            yield from _read_csv(path)
        else:
            yield from _read_parquet(path)
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(f"{path}: cannot read the file: {exc}") from None


MAX_DEPTH = 64
"""Deepest nesting of lists and objects a row may have: a chat row needs 4; deeper is refused as a bad row, so no
later step (checks, templates, dedup, json.dumps) can run out of recursion on it."""
TOO_DEEP = f"JSON nested deeper than {MAX_DEPTH} levels"


def parse_json(text: str) -> Any:
    """json.loads for a row from a user's file: ValueError (with a message) when it is not JSON or nested too deep."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"column {exc.colno}" if exc.lineno == 1 else f"line {exc.lineno}, column {exc.colno}"
        raise ValueError(f"invalid JSON: {exc.msg} ({where})") from None
    except RecursionError:  # the parser itself gave up (thousands of levels)
        raise ValueError(TOO_DEEP) from None
    if too_deep(value):
        raise ValueError(TOO_DEEP)
    return value


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether lists/objects nest deeper than `limit` (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def _read_jsonl(path: Path) -> Iterator[Record]:
    with _open_text(path) as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue  # blank lines carry nothing; they are not rows
            try:
                yield Record(str(path), number, parse_json(line))
            except ValueError as exc:
                yield Record(str(path), number, None, str(exc))


def _read_json(path: Path) -> Iterator[Record]:
    with _open_text(path) as fh:
        text = fh.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        yield Record(str(path), exc.lineno, None, f"invalid JSON: {exc.msg} (column {exc.colno})")
        return
    except RecursionError:
        yield Record(str(path), 1, None, TOO_DEEP)
        return
    rows = data if isinstance(data, list) else [data]
    for index, obj in enumerate(rows, start=1):
        yield Record(str(path), index, None, TOO_DEEP) if too_deep(obj) else Record(str(path), index, obj)


def _read_csv(path: Path) -> Iterator[Record]:
    import csv

    with _open_text(path) as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            obj = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
            # A `messages` column holding JSON text is the chat shape stored in a CSV cell.
            if isinstance(obj.get("messages"), str):
                try:
                    obj["messages"] = parse_json(obj["messages"])
                except ValueError as exc:
                    yield Record(str(path), reader.line_num, None, f"column `messages`: {exc}")
                    continue
            for key in _JSON_CSV_COLUMNS & obj.keys():
                obj[key] = _json_cell(obj[key])
            yield Record(str(path), reader.line_num, obj)


# Columns that may hold messages as JSON text in a CSV cell (other shapes than `messages`).
_JSON_CSV_COLUMNS = {
    "conversations",
    "prompt",
    "completion",
    "chosen",
    "rejected",
    "input",
    "preferred_output",
    "non_preferred_output",
}


def _json_cell(text: str) -> Any:
    """A cell's JSON value when it is a message list or object; otherwise the text itself (plain prompts stay text)."""
    if not text.lstrip().startswith(("[", "{")):
        return text
    try:
        value = parse_json(text)
    except ValueError:
        return text
    if isinstance(value, dict) or (isinstance(value, list) and value and all(isinstance(v, dict) for v in value)):
        return value
    return text


def _read_parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for truncated or foreign files
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from None
    for index, obj in enumerate(table.to_pylist(), start=1):
        row = {k: v for k, v in obj.items() if v is not None}
        yield Record(str(path), index, None, TOO_DEEP) if too_deep(row) else Record(str(path), index, row)


SHAPES = ("messages", "sharegpt", "glaive", "alpaca", "prompt_completion", "preference", "openai_dpo", "prompt_only")


def detect_shape(obj: dict[str, Any]) -> str:
    """Name the row shape: one of SHAPES, or unknown."""
    if "messages" in obj:
        return "messages"
    if "conversations" in obj:
        return "sharegpt"
    if tool_shapes.is_glaive(obj):
        return "glaive"
    if "instruction" in obj and "output" in obj:
        return "alpaca"
    if "prompt" in obj and "completion" in obj:
        return "prompt_completion"
    if "chosen" in obj or "rejected" in obj:
        return "preference"
    if "preferred_output" in obj or "non_preferred_output" in obj:
        return "openai_dpo"
    if "prompt" in obj:
        return "prompt_only"
    return "unknown"


def _check_tool_calls(msg: dict[str, Any], i: int) -> None:
    calls = msg.get("tool_calls")
    if calls is None:
        return
    if not isinstance(calls, list) or not all(
        isinstance(c, dict) and isinstance(c.get("function"), dict) and isinstance(c["function"].get("name"), str) for c in calls
    ):
        raise RowError("invalid_tool_call", f"message {i} tool_calls must be a list of {{function: {{name, arguments}}}}", i)


def _check_messages(messages: Any, need_assistant: bool = True) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise RowError("missing_messages_list", "`messages` must be a non-empty list")
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise RowError("message_not_object", f"message {i} is not an object", i)
        if "role" not in msg or ("content" not in msg and "tool_calls" not in msg and "function_call" not in msg):
            raise RowError("message_missing_key", f"message {i} needs `role` and `content`", i)
        unknown = set(msg) - MESSAGE_KEYS
        if unknown:
            raise RowError("message_unrecognized_key", f"message {i} has unknown key(s) {sorted(unknown)}", i)
        if msg["role"] not in ROLES + ("tool", "function"):
            raise RowError("unrecognized_role", f"message {i} has unknown role `{msg['role']}`", i)
        calling = msg.get("tool_calls") is not None or msg.get("function_call") is not None
        # A message that calls a tool may carry `content: null` (OpenAI's shape); any other non-string is an error.
        if "content" in msg and not isinstance(msg["content"], str) and not (calling and msg["content"] is None):
            raise RowError("content_not_string", f"message {i} content is not a string", i)
        if "weight" in msg and msg["weight"] not in (0, 1):
            raise RowError("invalid_weight", f"message {i} weight must be 0 or 1", i)
        if "name" in msg and not isinstance(msg["name"], str):
            raise RowError("invalid_name", f"message {i} name must be a string", i)
        _check_tool_calls(msg, i)
        out.append(reasoning.normalise_message(dict(msg), i))  # one trace field, whatever the row called it
    if need_assistant and not any(m["role"] == "assistant" for m in out):
        raise RowError("missing_assistant_message", "no assistant message to learn from")
    return out


def to_messages(obj: Any) -> list[dict[str, Any]]:
    """Normalise one row into chat messages. Raises RowError with a stable code."""
    if not isinstance(obj, dict):
        raise RowError("data_type", f"row is a {type(obj).__name__}, not an object")
    shape = detect_shape(obj)
    if shape == "messages":
        return _check_messages(obj["messages"])
    if shape == "sharegpt":
        turns = obj["conversations"]
        if not isinstance(turns, list) or not turns:
            raise RowError("missing_messages_list", "`conversations` must be a non-empty list")
        return _check_messages(_sharegpt(turns))
    if shape == "glaive":
        return _check_messages(tool_shapes.glaive_messages(obj))
    if shape == "alpaca":
        prompt = str(obj["instruction"])
        if obj.get("input"):
            prompt = f"{prompt}\n\n{obj['input']}"
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": obj["output"]}]
        if obj.get("system"):
            messages.insert(0, {"role": "system", "content": obj["system"]})
        return _check_messages(messages)
    if shape == "prompt_completion":
        prompt, completion = obj["prompt"], obj["completion"]
        if isinstance(prompt, list):  # conversational prompt/completion (TRL's shape)
            return _check_messages(list(prompt) + list(completion if isinstance(completion, list) else [completion]))
        return _check_messages([{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}])
    if shape in ("preference", "openai_dpo"):
        pair = to_preference(obj)  # SFT on a preference row learns the chosen answer
        return _check_messages(pair["prompt"] + pair["chosen"])
    if shape == "prompt_only":
        raise RowError("missing_assistant_message", "a prompt-only row has no answer to learn from (it is for GRPO)")
    raise RowError(
        "unknown_shape",
        f"row has keys {sorted(obj)[:8]}; expected `messages`, `conversations`, `instruction`+`output`, "
        "`prompt`+`completion`, `prompt`+`chosen`+`rejected`, `input`+`preferred_output`+`non_preferred_output` or `prompt`",
    )


def _sharegpt(turns: list[Any]) -> list[dict[str, Any]]:
    """ShareGPT turns as messages; `function_call` turns become tool calls and `observation` turns their results."""
    messages: list[dict[str, Any]] = []
    for i, turn in enumerate(turns):
        who = turn.get("from") if isinstance(turn, dict) else None
        if (who not in SHAREGPT_ROLES and who != SHAREGPT_CALL) or "value" not in turn:
            raise RowError("message_missing_key", f"turn {i} needs `from` (human/gpt/system/function_call/...) and `value`", i)
        if turn["from"] == SHAREGPT_CALL:
            messages.append(tool_shapes.sharegpt_call_turn(turn["value"], i))
        else:
            messages.append({"role": SHAREGPT_ROLES[turn["from"]], "content": turn["value"]})
    return tool_shapes.answer_results(messages)


def _as_turns(value: Any, role: str, code: str, what: str) -> list[dict[str, Any]]:
    """A string becomes one `role` message; a list must already be messages."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, dict) and "role" in value:
        return [value]
    if isinstance(value, list) and value:
        return list(value)
    raise RowError(code, f"`{what}` must be a string or a non-empty list of messages")


def to_preference(obj: Any) -> dict[str, list[dict[str, Any]]]:
    """Normalise a preference row into {prompt, chosen, rejected}, each a list of messages.

    Accepts `prompt`/`chosen`/`rejected` (strings or message lists), the implicit-prompt form
    (`chosen`/`rejected` full conversations sharing a prefix) and OpenAI's DPO shape
    (`input.messages`/`preferred_output`/`non_preferred_output`). Raises RowError with a code.
    """
    if not isinstance(obj, dict):
        raise RowError("data_type", f"row is a {type(obj).__name__}, not an object")
    shape = detect_shape(obj)
    if shape == "openai_dpo":
        inp = obj.get("input")
        messages = inp.get("messages") if isinstance(inp, dict) else None
        prompt = _check_messages(messages, need_assistant=False) if messages is not None else None
        if prompt is None:
            raise RowError("missing_prompt", "`input.messages` must hold the prompt messages")
        chosen = _as_turns(obj.get("preferred_output"), "assistant", "missing_chosen", "preferred_output")
        rejected = _as_turns(obj.get("non_preferred_output"), "assistant", "missing_rejected", "non_preferred_output")
    elif shape == "preference":
        chosen = _as_turns(obj.get("chosen"), "assistant", "missing_chosen", "chosen")
        rejected = _as_turns(obj.get("rejected"), "assistant", "missing_rejected", "rejected")
        if "prompt" in obj:
            prompt = _as_turns(obj["prompt"], "user", "missing_prompt", "prompt")
        else:  # implicit prompt: the longest shared prefix of both conversations
            n = 0
            while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
                n += 1
            if n == 0:
                raise RowError("missing_prompt", "no `prompt` and `chosen`/`rejected` share no leading messages")
            prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    else:
        raise RowError("not_preference", f"row shape `{shape}` is not a preference pair")
    prompt = _check_messages(prompt, need_assistant=False)
    for name, side in (("chosen", chosen), ("rejected", rejected)):
        checked = _check_messages(side, need_assistant=False)
        if not any(m["role"] == "assistant" for m in checked):
            raise RowError(f"missing_{name}", f"`{name}` has no assistant message")
    return {"prompt": prompt, "chosen": _check_messages(chosen), "rejected": _check_messages(rejected)}


def to_prompt_only(obj: Any) -> list[dict[str, Any]]:
    """The prompt messages of a row for prompt-only training (GRPO). Raises RowError with a code.

    Accepts a `prompt` (string or messages), and any conversational shape, whose messages up to
    the last assistant turn (or all of them when there is none) are the prompt.
    """
    if not isinstance(obj, dict):
        raise RowError("data_type", f"row is a {type(obj).__name__}, not an object")
    shape = detect_shape(obj)
    if shape in ("prompt_only", "prompt_completion"):
        return _check_messages(_as_turns(obj["prompt"], "user", "missing_prompt", "prompt"), need_assistant=False)
    if shape in ("preference", "openai_dpo"):
        return to_preference(obj)["prompt"]
    if shape == "messages":
        messages = _check_messages(obj["messages"], need_assistant=False)
    else:
        messages = to_messages(obj)
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    if last == 0:
        raise RowError("missing_prompt", "the conversation starts with the assistant: no prompt")
    return messages[:last]


def load_normalised(paths: list[str] | str, normalise: Callable[[Record], T], max_errors: int = 20) -> list[T]:
    """`normalise` every row of the files; any bad row (invalid JSON or a RowError) raises one DataError listing them."""
    if isinstance(paths, str):
        paths = [paths]
    out: list[T] = []
    problems: list[str] = []
    n_bad = 0
    for path in paths:
        for rec in read_records(path):
            try:
                if rec.error:
                    raise RowError("invalid_json", rec.error)
                out.append(normalise(rec))
            except RowError as exc:
                n_bad += 1
                if len(problems) < max_errors:
                    at = f" (message {exc.index})" if exc.index is not None else ""
                    problems.append(f"  - {rec.where}{at}: [{exc.code}] {exc.message}")
    if n_bad:
        more = f"\n  ... and {n_bad - len(problems)} more" if n_bad > len(problems) else ""
        raise DataError(
            f"{n_bad} bad row(s):\n" + "\n".join(problems) + more,
            hint="Fix or remove these rows (`tunesmith data check` lists every problem).",
        )
    if not out:
        raise DataError(f"no rows in {', '.join(map(str, paths))}")
    return out


PREFERENCE_SHAPES = ("preference", "openai_dpo")


def row_id(obj: Any, where: str) -> str:
    """A row's id: its own `id` column, else `<file stem>-<line>` from its `file:line`."""
    own = obj.get("id") if isinstance(obj, dict) else None
    if own not in (None, ""):
        return str(own)
    path, _, line = where.rpartition(":")
    return f"{Path(path).stem}-{line}"


def to_example(rec: Record) -> Example:
    """One record as a demonstration: its normalised messages, id, file:line and other columns. Raises RowError."""
    messages = to_messages(rec.obj)
    extra = {k: v for k, v in rec.obj.items() if k not in ("messages", "id", "tools")}  # to_messages accepted an object
    if (tools := tool_shapes.row_tools(rec.obj)) is not None:
        extra["tools"] = tools  # in OpenAI's shape, whatever the row's shape called them
    return Example(row_id(rec.obj, rec.where), messages, rec.where, extra)


def load_examples(paths: list[str] | str, max_errors: int = 20) -> list[Example]:
    """Load and normalise every row of the files; any bad row raises one DataError listing them (file:line)."""
    return load_normalised(paths, to_example, max_errors)
