"""Row-level checks of the data audit: each problem is a `Finding` with a stable code.

Format checks reuse the normaliser training uses (`formats.to_messages`), so the audit and
training can never disagree on what a valid row is; its internal codes are mapped to the
OpenAI cookbook's names where they correspond. Token checks use the real tokenizer and chat
template through `template.tokenize_example`, the same function that builds training labels.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jinja2 import TemplateError

from tunesmith.data.formats import (
    Record,
    RowError,
    detect_shape,
    to_messages,
    to_preference,
    to_prompt_only,
)
from tunesmith.data.template import IGNORE, family_of, render_prompt, tokenize_example
from tunesmith.data.tool_checks import tool_problems
from tunesmith.data.tool_shapes import row_tools as row_tools_of
from tunesmith.data.tool_shapes import with_default_tools
from tunesmith.errors import DataError

if TYPE_CHECKING:
    from tunesmith.data.lengths import Fit
    from tunesmith.train.method import Method

ERROR, WARNING = "error", "warning"

# code -> (severity, what it means). The table in docs/data.md mirrors this one; a test keeps them in step.
CODES: dict[str, tuple[str, str]] = {
    "file_unreadable": (ERROR, "the file cannot be read at all (missing, unsupported type, broken gzip/Parquet, bad encoding)"),
    "invalid_json": (ERROR, "a line (or the whole JSON file) is not valid JSON; the rest of the file is still read"),
    "data_type": (ERROR, "the row is not a JSON object"),
    "unknown_shape": (ERROR, "the row matches none of the supported shapes"),
    "missing_messages_list": (ERROR, "`messages` (or `conversations`) is absent, empty or not a list"),
    "message_not_object": (ERROR, "a message is not a JSON object"),
    "message_missing_key": (ERROR, "a message has no `role` or no `content`"),
    "message_unrecognized_key": (
        ERROR,
        "a message has a key outside role, content, name, weight, function_call, tool_calls, tool_call_id",
    ),
    "unrecognized_role": (ERROR, "a role outside system, user, assistant, tool, function"),
    "missing_content": (ERROR, "a message's content is not a string"),
    "invalid_weight": (ERROR, "a message's weight is not 0 or 1"),
    "invalid_name": (ERROR, "a message's name is not a string"),
    "invalid_tool_call": (ERROR, "tool_calls is not a list of {function: {name, arguments}}"),
    "invalid_tools": (ERROR, "`tools` is not a list of functions with a string name (and an object `parameters` schema)"),
    "tool_not_declared": (ERROR, "a call to a function the row's `tools` does not offer"),
    "tool_arguments_not_json": (ERROR, "a call's arguments are not a JSON object"),
    "tool_arguments_schema": (ERROR, "a call's arguments break the function's JSON schema (`parameters`)"),
    "tool_result_unmatched": (
        ERROR,
        "a `tool` message whose tool_call_id names no call of the turn before it (or no call is pending)",
    ),
    "tool_call_unanswered": (ERROR, "a call with no `tool` result before the next assistant turn"),
    "tool_content_and_calls": (WARNING, "an assistant turn with both text and calls: kept, both trained (counted)"),
    "example_missing_assistant_message": (ERROR, "no assistant message to learn from"),
    "missing_prompt": (ERROR, "a preference or prompt-only row has no usable prompt"),
    "missing_chosen": (ERROR, "a preference row has no usable chosen answer"),
    "missing_rejected": (ERROR, "a preference row has no usable rejected answer"),
    "system_not_first": (ERROR, "a system message after the first position"),
    "consecutive_user_turns": (ERROR, "two user turns in a row"),
    "ends_with_user_turn": (ERROR, "the last turn is the user's: nothing answers it (grpo takes prompt-only rows)"),
    "empty_assistant_content": (ERROR, "an assistant message that is empty or whitespace only (and calls no tool)"),
    "identical_chosen_rejected": (WARNING, "a preference row whose chosen and rejected answers are the same"),
    "over_max_length": (WARNING, "longer than max_length: dropped or truncated per policy (an error with policy `error`)"),
    "truncated_no_trained_tokens": (WARNING, "truncation removes every trained token: the row is dropped"),
    "all_labels_masked": (WARNING, "no token is trained (every assistant turn has weight 0): the row is dropped"),
    "no_answer": (WARNING, "a prompt with no answer, under a method that trains on answers (sft, dpo): the row is dropped"),
    "eos_not_trained": (
        WARNING,
        "the end-of-turn token (the chat family's: <|im_end|>, <|eot_id|>, <end_of_turn>, <|end|>, ...; the EOS for an "
        "unknown template) is not trained: the model may not learn to stop",
    ),
    "empty_trace_trained": (WARNING, "an empty reasoning block (<think></think>) is among the trained tokens"),
    "tool_result_trained": (WARNING, "a tool result's text is among the trained tokens: the model learns to invent it"),
    "whitespace_only_trained": (WARNING, "the row's only trained tokens (end of turn aside) are whitespace"),
    "template_refuses_row": (ERROR, "the chat template (or its family) cannot render the row: a role or `tools` it refuses"),
    "packed_rows_attend": (
        WARNING,
        "speed.packing concatenates rows that can attend to each other (no per-row position-id mask or varlen attention)",
    ),
    "no_eos_token": (ERROR, "the tokenizer has no EOS token: a tuned model cannot learn to stop"),
    "no_trainable_rows": (ERROR, "after the length policy and label checks, no row is left to train on"),
    "too_few_examples": (ERROR, "fewer than 10 training examples"),
    "few_examples": (WARNING, "fewer than 50 training examples (gains are usually seen from 50-100)"),
    "exact_duplicate": (WARNING, "the same row (after whitespace normalisation) appears earlier"),
    "near_duplicate": (WARNING, "a row nearly identical (MinHash Jaccard >= threshold) to an earlier one"),
    "eval_overlap": (WARNING, "an eval row that also appears in train (inflates every eval figure)"),
    "eval_near_overlap": (WARNING, "an eval row nearly identical to a train row"),
    "label_imbalance": (WARNING, "one value of the label field covers >= 80% of the rows"),
    "refusal_ratio": (WARNING, ">= 5% of answers look like refusals"),
}

# formats.py codes -> the audit's (OpenAI cookbook) names; the others pass through unchanged.
FORMAT_CODES = {"missing_assistant_message": "example_missing_assistant_message", "content_not_string": "missing_content"}

_REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i apologi[sz]e|i cannot|i can'?t|i can not|i'?m unable|i am unable|i'?m not able|"
    r"i am not able|i won'?t be able|as an ai\b|i must decline|i'?m afraid i)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Finding:
    """One problem: where it is (file, 1-based line, message index) and what it is (stable code)."""

    code: str
    severity: str
    file: str | None
    line: int | None
    message_index: int | None
    message: str

    @property
    def where(self) -> str:
        at = f"{self.file}:{self.line}" if self.line is not None else (self.file or "(dataset)")
        return at + (f" message {self.message_index}" if self.message_index is not None else "")

    def as_dict(self) -> dict[str, Any]:
        return dict(
            code=self.code,
            severity=self.severity,
            file=self.file,
            line=self.line,
            message_index=self.message_index,
            message=self.message,
        )


def finding(
    code: str, file: str | None, line: int | None, message: str, index: int | None = None, severity: str | None = None
) -> Finding:
    return Finding(code, severity or CODES[code][0], file, line, index, message)


@dataclass
class Row:
    """A row that passed the format checks, normalised for the rest of the audit."""

    file: str
    line: int
    shape: str
    obj: dict[str, Any]
    messages: list[dict[str, Any]]  # what SFT trains on; for prompt-only rows, the prompt
    trained: bool = True  # False for prompt-only rows: no labels expected
    rejected: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None  # the tools it offers (its own, else the file's: data.tools)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def _content(msg: dict[str, Any]) -> str:
    content = msg.get("content")
    return content if isinstance(content, str) else ""


def turn_problems(messages: list[dict[str, Any]]) -> list[tuple[str, int, str]]:
    """(code, message index, text) for bad turn order and empty answers."""
    out = []
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if role == "system" and i > 0:
            out.append(("system_not_first", i, f"system message at position {i}; it must come first"))
        if role == "user" and i > 0 and messages[i - 1].get("role") == "user":
            out.append(("consecutive_user_turns", i, f"user turn {i} follows another user turn"))
        calling = msg.get("tool_calls") is not None or msg.get("function_call") is not None
        if role == "assistant" and not calling and not _content(msg).strip():
            out.append(("empty_assistant_content", i, f"assistant message {i} is empty or whitespace only"))
    return out


def _normalise(rec: Record) -> tuple[str, list[dict[str, Any]], bool, list[dict[str, Any]] | None]:
    """(shape, messages, trained, rejected) for a parsed row; raises RowError."""
    obj = rec.obj
    shape = detect_shape(obj) if isinstance(obj, dict) else "unknown"
    if shape in ("preference", "openai_dpo"):
        pair = to_preference(obj)
        return shape, pair["prompt"] + pair["chosen"], True, pair["prompt"] + pair["rejected"]
    if shape == "prompt_only":
        return shape, to_prompt_only(obj), False, None
    return shape, to_messages(obj), True, None


def check_record(rec: Record, tools: list[dict[str, Any]] | None = None) -> tuple[Row | None, list[Finding]]:
    """Format, turn-order, empty-answer and tool-call checks of one record (`tools`: the file's, for a row that names
    none). The Row is None when it cannot be used."""
    if rec.error:
        return None, [finding("invalid_json", rec.path, rec.line, rec.error)]
    try:
        rec = Record(rec.path, rec.line, with_default_tools(rec.obj, tools))  # the file's tools become the row's own
        shape, messages, trained, rejected = _normalise(rec)
        offered = row_tools_of(rec.obj)
    except RowError as exc:
        code = FORMAT_CODES.get(exc.code, exc.code)
        if code not in CODES:
            code = "unknown_shape"
        return None, [finding(code, rec.path, rec.line, exc.message, exc.index)]
    problems = turn_problems(messages) + (turn_problems(rejected) if rejected else [])
    problems += tool_problems(messages, offered)
    if rejected:  # the rejected answer's calls are checked too (its prompt's, already above, are not repeated)
        problems += [p for p in tool_problems(rejected, offered) if p not in problems]
    if trained and messages and messages[-1].get("role") == "user":  # the trailing question would train nothing
        problems.append(("ends_with_user_turn", len(messages) - 1, f"the last message ({len(messages) - 1}) is a user turn"))
    findings = [finding(code, rec.path, rec.line, text, index) for code, index, text in problems]
    if rejected is not None and rejected == messages:
        findings.append(finding("identical_chosen_rejected", rec.path, rec.line, "chosen and rejected are identical"))
    if any(f.severity == ERROR for f in findings):
        return None, findings
    return Row(rec.path, rec.line, shape, rec.obj, messages, trained, rejected, offered), findings


@dataclass
class TokenInfo:
    """Token counts of one row as training sees it."""

    total: int  # rendered tokens before any truncation
    assistant: int  # trained (loss) tokens before any truncation
    kept_total: int = 0  # tokens that reach training (0 when dropped)
    kept_trained: int = 0
    lost: int = 0  # tokens removed by drop or truncation
    dropped: str | None = None
    first_answer_token: str | None = None
    eos_trained: bool | None = None  # EOS among the kept trained labels; None where nothing fixed is trained (grpo)
    counts: dict[str, int] = field(default_factory=dict)  # turns and traces as rendered (data.template)


def _fit_tokens(row: Row, fit: Fit, max_length: int | None, overlong: str, what: str) -> tuple[TokenInfo, list[Finding]]:
    """A row measured by its method's length policy (data.lengths: the functions training uses)."""
    info = TokenInfo(
        fit.n_tokens,
        fit.trained_tokens,
        fit.kept_tokens,
        fit.trained_tokens,
        fit.tokens_lost,
        fit.dropped,
        eos_trained=fit.eos_trained,
    )
    if not fit.over:
        return info, []
    over = f"{what} = {fit.n_tokens} tokens > max_length {max_length}"
    if fit.dropped == "no_trained_tokens":
        return info, [finding("truncated_no_trained_tokens", row.file, row.line, f"{over}: no room left for an answer, dropped")]
    if fit.dropped:
        what_happens = "refused (policy error)" if overlong == "error" else "dropped"
        return info, [
            finding(
                "over_max_length", row.file, row.line, f"{over}: {what_happens}", severity=ERROR if overlong == "error" else None
            )
        ]
    return info, [finding("over_max_length", row.file, row.line, f"{over}: truncated, {fit.tokens_lost} tokens lost")]


def unanswered(row: Row, method: Method[Any] | None) -> tuple[TokenInfo, list[Finding]] | None:
    """A prompt-only training row under a method that trains on answers: training drops it, so the check drops it too
    and says so (None: the row is not one)."""
    if method is None or not method.needs_answers or row.trained:
        return None
    text = f"a prompt with no answer: {method.name} trains on {method.row_shape}; dropped"
    return TokenInfo(0, 0, dropped="no_trained_tokens"), [finding("no_answer", row.file, row.line, text)]


def check_tokens(
    row: Row,
    tokenizer: Any,
    max_length: int | None,
    overlong: str,
    method: Method[Any] | None = None,
    room: int = 0,
    reasoning: str = "train",
) -> tuple[TokenInfo, list[Finding]]:
    """Render and tokenize like the method's training does (the row's tools, data.reasoning); apply the over-length
    policy; check what is trained: the end-of-turn token, empty traces, tool results, whitespace.

    method: whose length policy applies (Method.fit_row: dpo measures prompt + the longer answer, grpo the prompt +
    `room` tokens for a sampled completion); None, or a method without one: the conversation with its loss mask.
    """
    if method is not None:
        limit = max_length if max_length is not None else 1 << 62
        policy = "drop" if overlong == "error" else overlong  # refused rows become findings here, not exceptions
        fit = method.fit_row(tokenizer, row.obj, limit, policy, room)
        if fit is not None:
            return _fit_tokens(row, fit, max_length, overlong, method.measured_as + (f" {room}" if room else ""))
    if not row.trained:
        n = len(tokenizer(render_prompt(tokenizer, row.messages, tools=row.tools), add_special_tokens=False)["input_ids"])
        info = TokenInfo(n, 0, n, 0)
        if max_length is not None and n > max_length:
            info.kept_total, info.lost, info.dropped = 0, n, "overlong"
            return info, [
                finding(
                    "over_max_length",
                    row.file,
                    row.line,
                    f"prompt has {n} tokens > max_length {max_length}",
                    severity=ERROR if overlong == "error" else None,
                )
            ]
        return info, []
    try:
        tok = tokenize_example(tokenizer, row.messages, reasoning=reasoning, tools=row_tools(row))
    except (DataError, TemplateError) as exc:
        return TokenInfo(0, 0, dropped="no_trained_tokens"), [
            finding("template_refuses_row", row.file, row.line, getattr(exc, "message", None) or str(exc))
        ]
    first = next((t for t, lab in zip(tok.input_ids, tok.labels) if lab != IGNORE), None)
    info = TokenInfo(
        tok.n_tokens,
        tok.n_trained,
        tok.n_tokens,
        tok.n_trained,
        first_answer_token=tokenizer.decode([first]).strip() if first is not None else None,
        counts=dict(tok.counts),
    )
    out: list[Finding] = []
    if tok.n_trained == 0:
        info.kept_total, info.kept_trained, info.dropped = 0, 0, "no_trained_tokens"
        return info, [finding("all_labels_masked", row.file, row.line, "no trained tokens (every assistant turn has weight 0)")]
    labels = tok.labels
    if max_length is not None and tok.n_tokens > max_length:
        over = f"{tok.n_tokens} tokens > max_length {max_length}"
        if overlong in ("drop", "error"):
            info.kept_total, info.kept_trained, info.lost, info.dropped = 0, 0, tok.n_tokens, "overlong"
            what = "refused (policy error)" if overlong == "error" else f"dropped, {tok.n_tokens} tokens lost"
            return info, [
                finding("over_max_length", row.file, row.line, f"{over}: {what}", severity=ERROR if overlong == "error" else None)
            ]
        labels = labels[:max_length]
        info.kept_total, info.lost = max_length, tok.n_tokens - max_length
        info.kept_trained = sum(lab != IGNORE for lab in labels)
        if info.kept_trained == 0:
            info.kept_total, info.dropped = 0, "no_trained_tokens"
            lost = f"{over}: truncation keeps no trained token, dropped"
            return info, [finding("truncated_no_trained_tokens", row.file, row.line, lost)]
        out.append(finding("over_max_length", row.file, row.line, f"{over}: truncated, {info.lost} tokens lost"))
    ends = family_of(tokenizer).end_of_turn_ids(tokenizer)
    trained = [lab for lab in labels if lab != IGNORE]
    info.eos_trained = bool(ends) and bool(set(ends) & set(trained))
    if ends and not info.eos_trained:
        named = ", ".join(tokenizer.convert_ids_to_tokens(ends))
        out.append(
            finding("eos_not_trained", row.file, row.line, f"{named} is not a trained token: the model may not learn to stop")
        )
    return info, out + trained_problems(row, tokenizer, trained, ends)


def row_tools(row: Row) -> list[Any] | None:
    """The row's tool list (OpenAI `tools`), as training renders it."""
    return row.tools


def trained_problems(row: Row, tokenizer: Any, trained: list[int], ends: list[int]) -> list[Finding]:
    """What the trained tokens must never be: an empty reasoning block, a tool result's text, whitespace alone."""
    out: list[Finding] = []
    text = tokenizer.decode(trained)
    open_, close = family_of(tokenizer).think
    if re.search(re.escape(open_) + r"\s*" + re.escape(close), text):
        out.append(finding("empty_trace_trained", row.file, row.line, f"an empty {open_}{close} block is trained"))
    answers = " ".join(_content(m) + json.dumps(m.get("tool_calls") or "") for m in row.messages if m.get("role") == "assistant")
    for i, msg in enumerate(row.messages):
        result = _content(msg).strip()
        # A result that also appears in an answer (the answer quotes it) is the answer's text, not the result's.
        if msg.get("role") in ("tool", "function") and len(result) >= 3 and result in text and result not in answers:
            out.append(finding("tool_result_trained", row.file, row.line, f"tool message {i}'s text is trained", i))
    body = tokenizer.decode([t for t in trained if t not in ends], skip_special_tokens=True)
    if trained and not body.strip():
        out.append(finding("whitespace_only_trained", row.file, row.line, f"only whitespace is trained: {body!r}"))
    return out


def last_answer(row: Row) -> str:
    return next((_content(m) for m in reversed(row.messages) if m.get("role") == "assistant"), "")


def looks_like_refusal(text: str) -> bool:
    """True when an answer opens like a refusal ("I'm sorry, I can't ...")."""
    return bool(_REFUSAL.search(text[:200]))
