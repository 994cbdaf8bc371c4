"""Tool-call scoring, one definition: eval, the ladder, checkpoint selection and GRPO's rewards all score a turn here.

A held-out row that offers tools (or whose answer calls one) is scored on its answer turn as a whole. Its reference is
`reference_turn(messages, tools)`; a model's completion becomes `output_turn(text, style)` (parsed with
families.tools.parse_tool_calls in the model's family format, special tokens kept). Both are canonical JSON strings,
so every metric keeps the registry's `fn(output, reference)` shape:

- tool_call_valid: the output's calls parse, with JSON-object arguments (rows where a call is expected or made);
- tool_name_match: the right function(s), as a multiset (rows where a call is expected);
- tool_arguments_match: the right function(s) with arguments equal as JSON (key order and call order aside);
- tool_arguments_valid: every call names an offered function and its arguments pass its JSON schema (rows with calls);
- tool_decision: called when the reference calls, answered in text when it does not (every tool row);
- tool_trajectory_match: the whole turn exact: the same calls and the same text.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tunesmith.data.reasoning import split_output
from tunesmith.data.template import reference
from tunesmith.data.tool_checks import schema_errors
from tunesmith.eval.metrics import normalize, same_value
from tunesmith.families.tools import parse_tool_calls

KEY = "tool_turn"  # marks a canonical turn: "reference" or "output"
NO_CALL = "(answered in text)"  # the per-tool group of rows whose reference calls nothing


@dataclass
class Turn:
    """A canonical turn: its text, its calls as (name, arguments: a JSON object, or None when they did not parse),
    the tools the row offered (a reference) and the parse error (an output that claimed a call)."""

    content: str
    calls: list[tuple[str, dict[str, Any] | None]] = field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    error: str | None = None
    text: str | None = None  # an output's whole answer text, as the model wrote it (what other rewards read)

    @property
    def called(self) -> bool:
        """Whether the turn calls (or tried to call: a call that did not parse counts as an attempt)."""
        return bool(self.calls) or self.error is not None


def _arguments(raw: Any) -> dict[str, Any] | None:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            return None
    return raw if isinstance(raw, dict) else None


def _dump(kind: str, turn: Turn) -> str:
    body: dict[str, Any] = {KEY: kind, "content": turn.content, "calls": [{"name": n, "arguments": a} for n, a in turn.calls]}
    if turn.tools is not None:
        body["tools"] = turn.tools
    if turn.error is not None:
        body["error"] = turn.error
    if turn.text is not None:
        body["text"] = turn.text
    return json.dumps(body, ensure_ascii=False, sort_keys=True)


def reference_turn(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
    """The reference of a tool row: its last assistant turn (text and calls) and the tools the row offers."""
    last = next(m for m in reversed(messages) if m["role"] == "assistant")
    calls = [(c["function"]["name"], _arguments(c["function"].get("arguments", {}))) for c in last.get("tool_calls") or []]
    content = last.get("content") if isinstance(last.get("content"), str) else ""
    return _dump("reference", Turn(content.strip(), calls, tools or []))


def offered_turn(tools: list[dict[str, Any]]) -> str:
    """A reference that names only the tools a request offered, no expected turn: what live traffic is scored
    against. Only the metrics that need no expected call apply to it (tool_call_valid and tool_arguments_valid, on
    outputs that call)."""
    return _dump("reference", Turn("", [], tools))


def output_turn(text: str, style: str | None) -> str:
    """An answer (decoded with its special tokens) as a canonical turn, parsed in the family's tool format."""
    parsed = parse_tool_calls(text, style)
    calls = [(c["function"]["name"], _arguments(c["function"]["arguments"])) for c in parsed.calls]
    return _dump("output", Turn(parsed.content.strip(), calls, None, parsed.error, text.strip()))


def completion_turn(raw: str, style: str | None, opened: bool = False, think: tuple[str, str] = ("<think>", "</think>")) -> str:
    """A whole completion (special tokens kept, the stop token aside) as a canonical turn: its answer after any
    reasoning trace, parsed in the family's format. Eval, the ladder and GRPO's tool rewards all call this."""
    return output_turn(split_output(raw, opened, think).answer, style)


def parse_turn(text: str) -> Turn | None:
    """A canonical turn back (None for any other text: a row that is not a tool row)."""
    if not text.startswith("{") or f'"{KEY}"' not in text:
        return None
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(body, dict) or KEY not in body:
        return None
    calls = [(c["name"], c["arguments"]) for c in body.get("calls", [])]
    return Turn(body.get("content", ""), calls, body.get("tools"), body.get("error"), body.get("text"))


def is_tool_reference(ref: str) -> bool:
    return (t := parse_turn(ref)) is not None and t.tools is not None


def _pair(output: str, reference: str) -> tuple[Turn, Turn] | None:
    ref = parse_turn(reference)
    if ref is None or ref.tools is None:
        return None
    out = parse_turn(output)
    return (out if out is not None else Turn(output.strip())), ref


def _same_calls(out: Turn, ref: Turn) -> bool:
    """The same calls, names and arguments (as JSON), whatever their order."""
    if len(out.calls) != len(ref.calls) or any(a is None for _, a in out.calls):
        return False
    left = list(ref.calls)
    for name, args in out.calls:
        hit = next((k for k, (n, a) in enumerate(left) if n == name and same_value(args, a)), None)
        if hit is None:
            return False
        left.pop(hit)
    return True


def tool_call_valid(output: str, reference: str) -> float | None:
    """1.0 when the output's calls parse with JSON-object arguments; rows where a call is expected or made."""
    pair = _pair(output, reference)
    if pair is None or not (pair[0].called or pair[1].calls):
        return None
    out = pair[0]
    return float(bool(out.calls) and out.error is None and all(a is not None for _, a in out.calls))


def tool_name_match(output: str, reference: str) -> float | None:
    """1.0 when the output calls exactly the expected function(s); rows whose reference calls."""
    pair = _pair(output, reference)
    if pair is None or not pair[1].calls:
        return None
    out, ref = pair
    return float(Counter(n for n, _ in out.calls) == Counter(n for n, _ in ref.calls))


def tool_arguments_match(output: str, reference: str) -> float | None:
    """1.0 when the expected calls are made with equal arguments (JSON values, key and call order aside)."""
    pair = _pair(output, reference)
    if pair is None or not pair[1].calls:
        return None
    return float(_same_calls(*pair))


def tool_arguments_valid(output: str, reference: str) -> float | None:
    """1.0 when every call names an offered function and its arguments pass that function's JSON schema; rows where
    the output calls."""
    pair = _pair(output, reference)
    if pair is None or not pair[0].called:
        return None
    out, ref = pair
    offered = {t["function"]["name"]: t["function"] for t in ref.tools or []}
    ok = bool(out.calls) and out.error is None
    for name, args in out.calls:
        ok = ok and name in offered and args is not None and schema_errors(offered[name].get("parameters"), args) is None
    return float(ok)


def tool_decision(output: str, reference: str) -> float | None:
    """1.0 when the output calls where the reference calls and answers in text where it does not; every tool row."""
    pair = _pair(output, reference)
    if pair is None:
        return None
    return float(pair[0].called == bool(pair[1].calls))


def tool_trajectory_match(output: str, reference: str) -> float | None:
    """1.0 when the whole turn is the reference's: the same calls (tool_arguments_match) and the same text."""
    pair = _pair(output, reference)
    if pair is None:
        return None
    out, ref = pair
    return float(out.error is None and _same_calls(out, ref) and normalize(out.content) == normalize(ref.content))


def expected_tools(reference: str) -> list[str]:
    """The functions a reference calls (each once), or [NO_CALL]; [] for a row that is not a tool row."""
    ref = parse_turn(reference)
    if ref is None or ref.tools is None:
        return []
    return list(dict.fromkeys(n for n, _ in ref.calls)) or [NO_CALL]


def per_tool(rows: Sequence[dict[str, float | None]], refs: Sequence[str]) -> dict[str, dict[str, float]]:
    """Each tool metric's mean (the rows' `tool_*` scores) over the rows whose reference calls that function (NO_CALL:
    rows answered in text), with `n`, the number of such rows."""
    groups: dict[str, list[dict[str, float | None]]] = defaultdict(list)
    for row, ref in zip(rows, refs):
        for name in expected_tools(ref):
            groups[name].append(row)
    out: dict[str, dict[str, float]] = {}
    for name, members in sorted(groups.items()):
        figures: dict[str, float] = {"n": float(len(members))}
        for metric in dict.fromkeys(k for r in members for k in r if k.startswith("tool_")):
            values = [float(v) for r in members if (v := r.get(metric)) is not None]
            if values:
                figures[metric] = sum(values) / len(values)
        out[name] = figures
    return out


def references(examples: Sequence[Any]) -> list[str]:
    """The reference of each example: its tool turn when it offers tools or its answer calls one, else its answer."""
    out = []
    for e in examples:
        tools = e.extra.get("tools") if isinstance(e.extra.get("tools"), list) else None
        last = next((m for m in reversed(e.messages) if m["role"] == "assistant"), None)
        calls = last is not None and bool(last.get("tool_calls"))
        out.append(reference_turn(e.messages, tools) if tools or calls else reference(e.messages))
    return out


def tools_of(examples: Sequence[Any]) -> list[list[dict[str, Any]] | None]:
    """The tools each example's prompt offers (rendered into it), or None."""
    return [e.extra.get("tools") if isinstance(e.extra.get("tools"), list) else None for e in examples]


def tool_mode(refs: Sequence[str]) -> bool:
    """Whether a set of references is scored as tool calls (any of them is a tool row)."""
    return any(is_tool_reference(r) for r in refs)


def turn_message(reference: str) -> dict[str, Any] | None:
    """The assistant message a canonical reference describes (OpenAI's shape, arguments as JSON text), or None."""
    ref = parse_turn(reference)
    if ref is None:
        return None
    message: dict[str, Any] = {"role": "assistant", "content": ref.content or None}
    if ref.calls:
        message["tool_calls"] = [
            {"id": f"call_{k}", "type": "function", "function": {"name": n, "arguments": json.dumps(a if a is not None else {})}}
            for k, (n, a) in enumerate(ref.calls)
        ]
    else:
        message["content"] = ref.content
    return message


def answer_text(reference: str) -> str:
    """The text a reference's answer takes when written out (its calls as JSON in <tool_call> blocks, then its text),
    for measuring a generation budget; any other reference as it is."""
    ref = parse_turn(reference)
    if ref is None:
        return reference
    calls = [f"<tool_call>\n{json.dumps({'name': n, 'arguments': a}, ensure_ascii=False)}\n</tool_call>" for n, a in ref.calls]
    return "\n".join([ref.content, *calls]).strip()
