"""Render chat examples through the model's own chat template, with the loss mask.

Labels are built here rather than inside the trainer so that what is trained is explicit and auditable.
An assistant turn is trained exactly as the model produces it at inference: the training text must start
with the prompt `render_prompt` builds for that turn (the one eval, chat, serve and the studio send) and
continue with the turn as the template renders it when it is the turn being generated. The trained span is
the turn's content *and the family's end-of-turn token* (so the tuned model stops), never the BOS, headers,
the generation prompt, the newline after the end-of-turn token, the tool list or tool results. A turn whose
context in the training text differs from its inference prompt (templates that rewrite earlier turns: Qwen 3
strips earlier reasoning, Mistral moves the system prompt to the last user turn) is not trained, and counted
(`turns_not_trainable`); `expand_turns` makes one row per turn when every turn should be learned.
pad == EOS cannot mask EOS because masks come from spans, not token ids.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tunesmith import families
from tunesmith.data import reasoning
from tunesmith.errors import DataError
from tunesmith.families import Family
from tunesmith.models import chat_template_hash

IGNORE = -100


@dataclass
class Tokenized:
    """One rendered example. `dropped` names the reason when it cannot be trained on."""

    input_ids: list[int]
    labels: list[int]
    n_tokens: int  # before any truncation
    n_trained: int  # label tokens kept
    tokens_lost: int = 0  # removed by truncation
    dropped: str | None = None  # "overlong" | "no_trained_tokens"
    reused: bool = False  # the full rendering came from the tokenize-once memo (tokenized earlier in this process)
    counts: dict[str, int] = field(default_factory=dict)  # turns and traces (see Rendered.counts)
    thinking: bool | None = None  # the thinking mode of the last trained turn (families with a switch)
    untrainable: list[int] = field(default_factory=list)  # message indices of answers not trainable in this render


@dataclass
class Rendered:
    """A conversation rendered for training: its text, the trained character spans, and what happened."""

    text: str
    spans: list[tuple[int, int]]  # trained [start, end) character spans, in order
    family: Family
    # assistant_turns, turns_trained, turns_not_trainable, traces, traces_trained, traces_masked, traces_dropped,
    # empty_traces, history_traces_stripped, empty_traces_untrained
    counts: Counter[str] = field(default_factory=Counter)
    thinking: bool | None = None
    split_at: int = 0  # start of the last trained turn: its prompt is tokenized on its own, as at inference
    open_end: bool = False  # the last trained turn has no end-of-turn token in the text: one is appended
    untrainable: list[int] = field(default_factory=list)  # message indices of answers counted turns_not_trainable


# Tokenize once: the audit (data.checks) and training (data.dataset) both go through tokenize_example, so the
# full, untruncated ids and labels of each conversation are kept per (tokenizer, chat template, conversation,
# reasoning policy, tools) and training reuses the audit's rows. max_length/overlong apply afterwards.
# Training clears the memo once its rows are built (clear_memo); MEMO_LIMIT bounds it for very large sets.
MEMO_LIMIT = 500_000
_memo: dict[tuple[str, str], tuple[array[int], array[int], dict[str, int], bool | None, tuple[int, ...]]] = {}


def clear_memo() -> None:
    _memo.clear()


def _memo_key(tokenizer: Any, messages: list[dict[str, Any]], extra: Any) -> tuple[str, str]:
    who = f"{type(tokenizer).__name__}|{getattr(tokenizer, 'name_or_path', '')}|{len(tokenizer)}|{tokenizer.eos_token_id}"
    conversation = json.dumps([messages, extra], sort_keys=True, ensure_ascii=False, default=str)
    return f"{who}|{chat_template_hash(tokenizer)}", hashlib.sha256(conversation.encode()).hexdigest()


def family_of(tokenizer: Any, family: Family | None = None) -> Family:
    """The given family, or the one the tokenizer's chat template belongs to."""
    return family or families.for_tokenizer(tokenizer)


def _native(tokenizer: Any) -> bool:
    """Whether the chat template renders `reasoning_content` itself (Qwen 3 and its kind)."""
    return "reasoning_content" in families.template_of(tokenizer)


def _apply(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    family: Family,
    generation: bool,
    thinking: bool | None,
    tools: list[Any] | None,
) -> str:
    """The chat template applied to messages prepared for it (weights removed, traces placed, system folded)."""
    from jinja2 import TemplateError

    prepared, _ = reasoning.for_render(messages, _native(tokenizer))
    clean = [{k: v for k, v in m.items() if k != "weight"} for m in prepared]
    _check_calls(family, tokenizer, clean)
    kwargs = {"tools": tools, "tokenize": False, "add_generation_prompt": generation, **family.render_kwargs(thinking)}
    try:
        try:
            text: str = tokenizer.apply_chat_template(clean, **kwargs)
        except TemplateError:
            if family.system != "first_user" or not clean or clean[0]["role"] != "system" or len(clean) < 2:
                raise
            # Gemma 2's template refuses a system turn; Gemma 3's folds it into the first user turn: do the same.
            first = dict(clean[1], content=f"{clean[0]['content']}\n\n{clean[1].get('content') or ''}")
            text = tokenizer.apply_chat_template([first, *clean[2:]], **kwargs)
    except (TemplateError, TypeError) as exc:  # a template's own error, or one adding text to a missing content
        raise TemplateRefused(
            f"the chat template of this {family.title} model cannot render the conversation: {type(exc).__name__}: {exc}"
        ) from None
    return text


class TemplateRefused(DataError):
    """The chat template (or its family) cannot render a conversation: a role, tools or calls it refuses."""


def _check_calls(family: Family, tokenizer: Any, messages: list[dict[str, Any]]) -> None:
    """A conversation with tool calls or results on a template that ignores them would train and prompt without them:
    refused instead, naming what to use."""
    template = families.template_of(tokenizer)
    calls = any(m.get("tool_calls") for m in messages)
    results = any(m.get("role") in ("tool", "function") for m in messages)
    if (calls and "tool_calls" not in template) or (results and "tool" not in template):
        what = "tool calls" if calls and "tool_calls" not in template else "tool results"
        raise TemplateRefused(
            f"the chat template of this {family.title} model does not render {what}: they would be dropped",
            hint=_TOOL_TEMPLATE_HINT.format(family=family.name),
        )


_TOOL_TEMPLATE_HINT = (
    "Use a model whose chat template renders tools and tool calls, or give this one tunesmith's `{family}` family "
    "template (src/tunesmith/families/templates/), which does (see docs/tools.md)."
)


def _check_tools(family: Family, tokenizer: Any, tools: list[Any] | None) -> None:
    if tools and "tools" not in families.template_of(tokenizer):
        raise TemplateRefused(
            f"the chat template of this {family.title} model does not render tools",
            hint=_TOOL_TEMPLATE_HINT.format(family=family.name),
        )
    if tools and family.tools is None and family is not families.UNKNOWN:
        raise TemplateRefused(f"{family.title} documents no tool-call format: rows with `tools` cannot be trained for it")


def render_prompt(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    thinking: bool | None = None,
    tools: list[Any] | None = None,
    family: Family | None = None,
) -> str:
    """Prompt text with the generation prompt appended, exactly as training renders the prefix of the answer.

    thinking: for families with a switch (Qwen 3), False puts the empty trace in the prompt; None is the
    template's default. Pass `thinking_for(row)` in eval and the run's mode in serving.
    """
    fam = family_of(tokenizer, family)
    _check_tools(fam, tokenizer, tools)
    return _apply(tokenizer, messages, fam, True, thinking, tools)


def prompt_as_text(tokenizer: Any, messages: list[dict[str, Any]], tools: list[Any] | None = None) -> str:
    """render_prompt's text for a trainer that tokenizes text prompts itself (with the tokenizer's special tokens):
    without a leading BOS the tokenizer adds again."""
    text = render_prompt(tokenizer, messages, tools=tools)
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    return text[len(bos) :] if adds_bos and text.startswith(bos) else text


def thinking_for(messages: list[dict[str, Any]], tokenizer: Any, family: Family | None = None) -> bool | None:
    """The thinking mode training used for a conversation's last assistant turn: on when it carries a trace."""
    if not family_of(tokenizer, family).thinking_switch:
        return None
    last = [m for m in messages if m["role"] == "assistant"]
    return bool(last) and reasoning.has_trace(last[-1])


def _end_marks(family: Family, tokenizer: Any) -> tuple[str, ...]:
    """The strings that close an assistant turn: the family's, else the tokenizer's EOS."""
    return family.end_of_turn or ((tokenizer.eos_token,) if tokenizer.eos_token else ())


def _end_of_turn(family: Family, tokenizer: Any, turn: str) -> int | None:
    """Length of `turn` up to and including its last end-of-turn token; None when the template left it open."""
    ends = [turn.rfind(m) + len(m) for m in _end_marks(family, tokenizer) if m in turn]
    return max(ends) if ends else None


def _trained_start(turn: str, family: Family, masked_trace: bool, counts: Counter[str]) -> int:
    """Offset in `turn` where training starts: after an empty trace (never a target) or a masked one."""
    open_, close = family.think
    body = turn.lstrip()
    if not body.startswith(open_) or close not in body:
        return 0
    head = body[len(open_) : body.index(close)]
    if head.strip() and not masked_trace:
        return 0
    counts["empty_traces_untrained" if not head.strip() else "traces_masked"] += 1
    after = turn.index(close) + len(close)
    return after + (len(turn[after:]) - len(turn[after:].lstrip("\n ")))


def _generated_turn(
    tokenizer: Any, msgs: list[dict[str, Any]], i: int, fam: Family, thinking: bool | None, tools: list[Any] | None
) -> tuple[str, str, bool] | None:
    """(inference prompt, turn as generated up to its end-of-turn token, whether that token is there) for
    assistant turn i; None when the template renders the turn after another prefix than the prompt."""
    prompt = _apply(tokenizer, msgs[:i], fam, True, thinking, tools)
    whole = _apply(tokenizer, msgs[: i + 1], fam, False, thinking, tools)
    if not whole.startswith(prompt):
        return None
    rest = whole[len(prompt) :]
    end = _end_of_turn(fam, tokenizer, rest)
    return (prompt, rest[:end], True) if end is not None else (prompt, rest.rstrip("\n "), False)


def render_turns(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    policy: str = "train",
    tools: list[Any] | None = None,
    family: Family | None = None,
) -> Rendered:
    """Full rendered text and the trained character span of each assistant turn (see the module docstring)."""
    fam = family_of(tokenizer, family)
    _check_tools(fam, tokenizer, tools)
    msgs, counts = reasoning.apply_policy(messages, policy)
    text = _apply(tokenizer, msgs, fam, False, None, tools)
    counts.update(reasoning.for_render(msgs, _native(tokenizer))[1])
    counts["tool_results_untrained"] += sum(m["role"] in ("tool", "function") for m in msgs)  # prompt, never a target
    out = Rendered(text, [], fam, counts)
    for i, msg in enumerate(msgs):
        if msg["role"] != "assistant" or msg.get("weight", 1) == 0:
            continue
        counts["assistant_turns"] += 1
        thinking = reasoning.has_trace(msg) if fam.thinking_switch else None
        turn = _generated_turn(tokenizer, msgs, i, fam, thinking, tools) if i else None
        if turn is None or not text.startswith(turn[0] + turn[1]):
            counts["turns_not_trainable"] += 1
            out.untrainable.append(i)
            continue
        prompt, body, closed = turn
        end = len(prompt) + len(body)
        if not closed:  # a template that closes a turn only when another follows: take that token when it does
            end += next((len(m) for m in _end_marks(fam, tokenizer) if text.startswith(m, end)), 0)
        traced = reasoning.has_trace(msg)
        start = len(prompt) + _trained_start(body, fam, policy == "mask" and traced, counts)
        counts["traces_trained"] += int(policy == "train" and traced)
        if start < end:
            counts["turns_trained"] += 1
            counts["tool_calls_trained"] += len(msg.get("tool_calls") or [])
            out.spans.append((start, end))
            out.thinking, out.split_at = thinking, len(prompt)
            out.open_end = not any(text.startswith(m, end - len(m)) for m in _end_marks(fam, tokenizer))
    if out.open_end and not text[out.spans[-1][1] :].strip():
        out.text = text[: out.spans[-1][1]]  # the end-of-turn token goes right after the answer, not after glue
    else:
        out.open_end = False
    return out


def assistant_spans(tokenizer: Any, messages: list[dict[str, Any]], **kwargs: Any) -> tuple[str, list[tuple[int, int]]]:
    """Full rendered text and the character spans of each trained assistant turn (render_turns, without counts)."""
    rendered = render_turns(tokenizer, messages, **kwargs)
    return rendered.text, rendered.spans


def _tokenize(tokenizer: Any, rendered: Rendered) -> tuple[list[int], list[int]]:
    """ids and labels: the text up to the last trained turn and the rest tokenized apart, so that turn's context
    is token for token what render_prompt gives at inference; a token is trained when it starts in a span."""
    ids: list[int] = []
    labels: list[int] = []
    text, cut = rendered.text, rendered.split_at
    for base, piece in ((0, text[:cut]), (cut, text[cut:])):
        if not piece:
            continue
        enc = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
        for tid, (start, _end) in zip(enc["input_ids"], enc["offset_mapping"]):
            at = base + start
            ids.append(tid)
            labels.append(tid if any(s <= at < e for s, e in rendered.spans) else IGNORE)
    ends = rendered.family.end_of_turn_ids(tokenizer)
    if rendered.open_end and ends:
        # The template does not close the last turn: append the end-of-turn token, trained, so generation stops.
        ids.append(ends[0])
        labels.append(ends[0])
    return ids, labels


def _full_tokens(
    tokenizer: Any, messages: list[dict[str, Any]], policy: str, tools: list[Any] | None, family: Family | None
) -> Tokenized:
    """The whole conversation tokenized (ids, labels, counts, thinking mode, answers not trainable), untruncated;
    `reused` when it came from the memo."""
    fam = family_of(tokenizer, family)
    key = _memo_key(tokenizer, messages, [policy, tools, fam.name])
    entry = hit = _memo.get(key)
    if entry is None:
        rendered = render_turns(tokenizer, messages, policy=policy, tools=tools, family=fam)
        ids_, labels_ = _tokenize(tokenizer, rendered)
        counts = {k: int(v) for k, v in rendered.counts.items() if v}
        entry = (array("i", ids_), array("i", labels_), counts, rendered.thinking, tuple(rendered.untrainable))
        if len(_memo) < MEMO_LIMIT:
            _memo[key] = entry
    ids, labels = list(entry[0]), list(entry[1])
    tok = Tokenized(ids, labels, len(ids), sum(lab != IGNORE for lab in labels), counts=dict(entry[2]), thinking=entry[3])
    tok.untrainable, tok.reused = list(entry[4]), hit is not None
    return tok


def tokenize_example(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    max_length: int | None = None,
    overlong: str = "drop",
    *,
    reasoning: str = "train",
    tools: list[Any] | None = None,
    family: Family | None = None,
) -> Tokenized:
    """Render + tokenize with labels. overlong: drop | truncate | error (error raises ValueError).
    reasoning: the data.reasoning policy (train | mask | drop)."""
    result = _full_tokens(tokenizer, messages, reasoning, tools, family)
    ids, labels, n_tokens = result.input_ids, result.labels, result.n_tokens
    if max_length is not None and n_tokens > max_length:
        if overlong == "error":
            raise ValueError(f"example has {n_tokens} tokens, over max_length={max_length}")
        if overlong == "drop":
            result.dropped = "overlong"
            return result
        kept = labels[:max_length]
        result.input_ids, result.labels = ids[:max_length], kept
        result.tokens_lost = n_tokens - max_length
        result.n_trained = sum(lab != IGNORE for lab in kept)
    if result.n_trained == 0:
        result.dropped = "no_trained_tokens"
    return result


def expand_turns(messages: list[dict[str, Any]], turns: list[int] | None = None) -> list[list[dict[str, Any]]]:
    """One conversation per trained assistant turn (or per message index in `turns`), each ending with that turn:
    every turn is then the last one, rendered and trained as at inference (for templates that rewrite earlier
    turns). The earlier answers of each become context (weight 0), so no answer is learned twice."""
    wanted = turns if turns is not None else [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    return [
        [{**m, "weight": 0} if m["role"] == "assistant" and j < i else m for j, m in enumerate(messages[: i + 1])]
        for i in wanted
        if messages[i].get("weight", 1) != 0
    ]


def prompt_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation up to (not including) its last assistant turn: what a model is asked at eval/serve time."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return [{k: v for k, v in m.items() if k != "weight"} for m in messages[:last]]


def reference(messages: list[dict[str, Any]]) -> str:
    """The content of the last assistant turn: the expected answer (its trace, if any, is not part of it)."""
    return next(m.get("content") or "" for m in reversed(messages) if m["role"] == "assistant")
