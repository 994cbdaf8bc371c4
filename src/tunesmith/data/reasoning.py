"""Reasoning traces: every spelling normalised into one field, a training policy, and a model's output split apart.

Rows carry a trace as `reasoning_content` (OpenAI-compatible reasoning servers, Qwen 3's template),
`reasoning`, `thinking`, or inline as `<think>…</think>` at the start of the content. Normalisation moves each
into `reasoning_content` and takes it out of the content, so a trace is never silently lost because a template
reads another key; conflicting or unclosed traces are row errors. `data.reasoning` then decides what training
does with a trace: `train` (learned), `mask` (rendered but not learned), `drop` (removed, counted).
Earlier turns' traces are not rendered (what a family's template does at inference: the client sends back
content, and Qwen 3's template strips them itself), and an empty trace is never a trained target.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

Policy = Literal["train", "mask", "drop"]
POLICIES: tuple[Policy, ...] = ("train", "mask", "drop")
FIELD = "reasoning_content"
KEYS = ("reasoning_content", "reasoning", "thinking")  # every key a trace is read from, FIELD first
OPEN, CLOSE = "<think>", "</think>"


def _row_error(code: str, message: str, index: int) -> Exception:
    from tunesmith.data.formats import RowError  # formats calls normalise_message: imported here, not at the top

    return RowError(code, message, index)


def _inline(content: str, i: int) -> tuple[str | None, str]:
    """(trace, content without it) for a content that opens with <think>…</think>; (None, content) otherwise."""
    if CLOSE not in content:
        if content.lstrip().startswith(OPEN):
            raise _row_error("unclosed_reasoning", f"message {i} opens {OPEN} and never closes it", i)
        return None, content
    if content.count(CLOSE) > 1:
        raise _row_error("multiple_reasoning_blocks", f"message {i} has more than one {CLOSE}", i)
    head, _, answer = content.partition(CLOSE)
    if OPEN in head and head.split(OPEN)[0].strip():
        raise _row_error("text_before_reasoning", f"message {i} has text before {OPEN}, which would be lost", i)
    return head.split(OPEN)[-1].strip("\n"), answer.lstrip("\n")


def normalise_message(msg: dict[str, Any], i: int) -> dict[str, Any]:
    """A message with its trace (from any of KEYS or inline <think>) in `reasoning_content` only.

    Raises RowError: a trace on a non-assistant message, a non-string trace, two different traces, an unclosed
    or repeated <think> block. A key present with an empty value is kept as "" (counted as an empty trace).
    """
    keys = [k for k in KEYS if k in msg]
    if msg.get("role") != "assistant":
        if keys:
            raise _row_error("reasoning_not_assistant", f"message {i} ({msg.get('role')}) carries `{keys[0]}`", i)
        return msg
    found: dict[str, str] = {}
    for key in keys:
        if msg[key] is None:
            continue
        if not isinstance(msg[key], str):
            raise _row_error("reasoning_not_string", f"message {i} `{key}` is not a string", i)
        found[key] = msg[key]
    out = {k: v for k, v in msg.items() if k not in KEYS}
    if isinstance(msg.get("content"), str):
        trace, out["content"] = _inline(msg["content"], i)
        if trace is not None:
            found["<think> in content"] = trace
    distinct = {v.strip() for v in found.values()}
    if len(distinct) > 1:
        raise _row_error("conflicting_reasoning", f"message {i} has different traces in {', '.join(found)}", i)
    if found:
        out[FIELD] = next(iter(found.values()))
    return out


def sources(raw_messages: Any) -> Counter[str]:
    """Where the traces of a raw (not yet normalised) row come from: one count per key or `inline`, and
    `empty` for traces with nothing in them. For the audit's counts."""
    counts: Counter[str] = Counter()
    for msg in raw_messages if isinstance(raw_messages, list) else []:
        if not isinstance(msg, dict) or msg.get("role") != "assistant":
            continue
        for key in KEYS:
            if isinstance(msg.get(key), str):
                counts[key] += 1
                counts["empty"] += not msg[key].strip()
        content = msg.get("content")
        if isinstance(content, str) and CLOSE in content:
            counts["inline"] += 1
    return counts


def trace(msg: dict[str, Any]) -> str:
    """The message's normalised trace ('' when none)."""
    value = msg.get(FIELD)
    return value if isinstance(value, str) else ""


def has_trace(msg: dict[str, Any]) -> bool:
    """Whether the message carries a non-empty trace (an empty one is no trace: never trained)."""
    return bool(trace(msg).strip())


def apply_policy(messages: list[dict[str, Any]], policy: str) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Messages as training renders them under `data.reasoning`, and counts: `traces` (non-empty), `empty_traces`,
    `traces_dropped` (policy drop). train and mask keep the trace (mask decides the loss in data.template)."""
    if policy not in POLICIES:
        raise ValueError(f"data.reasoning must be one of {', '.join(POLICIES)}, not {policy!r}")
    counts: Counter[str] = Counter()
    out = []
    for msg in messages:
        if FIELD in msg:
            counts["traces" if has_trace(msg) else "empty_traces"] += 1
            if policy == "drop" or not has_trace(msg):
                counts["traces_dropped"] += policy == "drop" and has_trace(msg)
                msg = {k: v for k, v in msg.items() if k != FIELD}
        out.append(msg)
    return out, counts


def last_query(messages: list[dict[str, Any]]) -> int:
    """Index of the last user message (-1 when none): turns before it are history."""
    return max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)


def for_render(messages: list[dict[str, Any]], native: bool) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Messages for a chat template. History traces (before the last user message) are removed, as serving sees
    them; the others stay in `reasoning_content` for a template that reads it (`native`), or go inline as
    <think>\\n…\\n</think>\\n\\n before the content. Counts `history_traces_stripped`."""
    counts: Counter[str] = Counter()
    query = last_query(messages)
    out = []
    for i, msg in enumerate(messages):
        if FIELD not in msg:
            out.append(msg)
            continue
        msg = dict(msg)
        text = msg.pop(FIELD)
        if i < query and text.strip():
            counts["history_traces_stripped"] += 1
        elif text.strip() and native:
            msg[FIELD] = text
        elif text.strip():
            msg["content"] = f"{OPEN}\n{text.strip(chr(10))}\n{CLOSE}\n\n{(msg.get('content') or '').lstrip(chr(10))}"
        out.append(msg)
    return out, counts


@dataclass
class Split:
    """A completion split into its trace and its final answer."""

    reasoning: str | None  # None: the output has no trace; "" an empty one
    answer: str
    closed: bool = True  # False: the trace was opened and never closed (the answer is then empty)


def split_output(text: str, opened_in_prompt: bool = False, think: tuple[str, str] = (OPEN, CLOSE)) -> Split:
    """Split a decoded completion into (reasoning, answer). A completion has a trace when it opens with the open
    marker, or when `opened_in_prompt` (the prompt already ended with it: templates that start the trace for the
    model). The trace is stripped of surrounding whitespace, the answer of leading newlines. TraceStream splits a
    stream of deltas the same way."""
    stream = TraceStream(opened_in_prompt, think)
    pieces = stream.feed(text) + stream.finish()
    if not stream.traced:
        return Split(None, text)
    return Split(
        "".join(p for kind, p in pieces if kind == "reasoning"),
        "".join(p for kind, p in pieces if kind == "content"),
        closed=stream.closed,
    )


class TraceStream:
    """split_output for a completion arriving in pieces: feed() each delta, then finish(); each returns
    ("reasoning" | "content", text) pieces, holding back only what could still be a marker or the whitespace a
    trace is stripped of. The pieces of each kind joined are split_output's trace and answer."""

    def __init__(self, opened_in_prompt: bool = False, think: tuple[str, str] = (OPEN, CLOSE)) -> None:
        self.open, self.close = think
        self.state = "start"  # not yet known whether a trace opens (or, opened in the prompt, whether it repeats <think>)
        self.opened = self.traced = opened_in_prompt
        self.lead = True  # the whitespace that opens the current part is still to be dropped
        self.buf = ""

    @property
    def closed(self) -> bool:
        """False while (or when, after finish) a trace was opened and never closed."""
        return self.state != "reasoning" and not (self.state == "start" and self.opened)

    def feed(self, text: str) -> list[tuple[str, str]]:
        self.buf += text
        out: list[tuple[str, str]] = []
        while self._step(out):
            pass
        return out

    def finish(self) -> list[tuple[str, str]]:
        """The held-back rest: an unclosed trace's text, or content."""
        rest, self.buf = self.buf, ""
        if self.state == "reasoning" or (self.state == "start" and self.opened):
            rest = rest.strip()
            return [("reasoning", rest)] if rest else []
        if self.state == "content" and self.lead and self.traced:
            rest = rest.lstrip("\n")
        return [("content", rest)] if rest else []

    def _step(self, out: list[tuple[str, str]]) -> bool:
        """Move what can be decided from the buffer to `out`; True when the state changed (step again)."""
        if self.state == "start":
            body = self.buf.lstrip()
            if not body or (self.open.startswith(body) and body != self.open):
                return False  # whitespace, or the beginning of the open marker: wait for more
            if body.startswith(self.open):
                self.state, self.traced, self.buf = "reasoning", True, body[len(self.open) :]
            elif self.opened:
                self.state = "reasoning"  # the prompt opened the trace: the completion starts inside it
            else:
                self.state, self.lead = "content", False  # no trace: the text is the answer, as it is
            return True
        if self.state == "reasoning":
            if self.lead:
                self.buf = self.buf.lstrip()
                self.lead = not self.buf
            at = self.buf.find(self.close)
            if at >= 0:
                piece = self.buf[:at].rstrip()  # its start was stripped (lead) or follows text already sent
                if piece:
                    out.append(("reasoning", piece))
                self.state, self.buf, self.lead = "content", self.buf[at + len(self.close) :], True
                return True
            hold = max((k for k in range(1, len(self.close)) if self.buf.endswith(self.close[:k])), default=0)
            safe = self.buf[: len(self.buf) - hold].rstrip()
            if safe:
                out.append(("reasoning", safe))
                self.buf = self.buf[len(safe) :]
            return False
        if self.lead and self.traced:
            self.buf = self.buf.lstrip("\n")
        self.lead = self.lead and not self.buf
        if self.buf:
            out.append(("content", self.buf))
            self.buf = ""
        return False


def thinking_mode(modes: Iterable[bool | None]) -> bool | None:
    """A run's serving default from its rows' modes: None (the family has no switch), True when any row
    trained with a trace, else False."""
    seen = [m for m in modes if m is not None]
    return None if not seen else any(seen)
