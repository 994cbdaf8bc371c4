"""Render chat examples through the model's own chat template, with the loss mask.

Labels are built here rather than inside the trainer so that what is trained is explicit
and auditable: prompt tokens are -100, every assistant turn with weight 1 is trained
*including the end-of-turn/EOS token that closes it* (so the tuned model stops), and
pad == EOS cannot mask EOS because masks come from spans, not token ids.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from dataclasses import dataclass
from typing import Any

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


# Tokenize once: the audit (data.checks) and training (data.dataset) both go through tokenize_example, so the
# full, untruncated ids and labels of each conversation are kept per (tokenizer, chat template, conversation)
# and training reuses the audit's rows. max_length/overlong apply afterwards: one entry serves every limit.
# Training clears the memo once its rows are built (clear_memo); MEMO_LIMIT bounds it for very large sets.
MEMO_LIMIT = 500_000
_memo: dict[tuple[str, str], tuple[array[int], array[int]]] = {}


def clear_memo() -> None:
    _memo.clear()


def _memo_key(tokenizer: Any, messages: list[dict[str, Any]]) -> tuple[str, str]:
    from tunesmith.models import chat_template_hash

    who = f"{type(tokenizer).__name__}|{getattr(tokenizer, 'name_or_path', '')}|{len(tokenizer)}|{tokenizer.eos_token_id}"
    conversation = json.dumps(messages, sort_keys=True, ensure_ascii=False, default=str)
    return f"{who}|{chat_template_hash(tokenizer)}", hashlib.sha256(conversation.encode()).hexdigest()


def _full_tokens(tokenizer: Any, messages: list[dict[str, Any]]) -> tuple[list[int], list[int], bool]:
    """ids and labels of the whole rendered conversation (EOS appended when the template omits it), and whether
    they came from the memo."""
    key = _memo_key(tokenizer, messages)
    hit = _memo.get(key)
    if hit is not None:
        return list(hit[0]), list(hit[1]), True
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    labels = [IGNORE] * len(ids)
    for j, (start, _end) in enumerate(enc["offset_mapping"]):
        if any(s <= start < e for s, e in spans):
            labels[j] = ids[j]
    eos = tokenizer.eos_token_id
    if spans and eos is not None and eos not in [t for t, lab in zip(ids, labels) if lab != IGNORE]:
        # The template does not close assistant turns with EOS: append one, trained, so generation stops.
        ids.append(eos)
        labels.append(eos)
    if len(_memo) < MEMO_LIMIT:
        _memo[key] = (array("i", ids), array("i", labels))
    return ids, labels, False


def _render(tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
    clean = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
    text: str = tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=add_generation_prompt)
    return text


def assistant_spans(tokenizer: Any, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
    """Full rendered text and the character spans of each trained assistant turn.

    Each span is what the template adds for that assistant message after the generation
    prompt: the content plus the closing end-of-turn token(s).
    """
    text = _render(tokenizer, messages)
    spans: list[tuple[int, int]] = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant" or msg.get("weight", 1) == 0:
            continue
        prefix = _render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        upto = _render(tokenizer, messages[: i + 1])
        if not text.startswith(upto) or not upto.startswith(prefix):
            # Templates that rewrite earlier turns (e.g. strip reasoning) are not prefix-preserving:
            # fall back to locating the content itself.
            start = text.find(msg.get("content") or "", spans[-1][1] if spans else 0)
            if start < 0:
                continue
            spans.append((start, start + len(msg.get("content") or "")))
            continue
        end = len(upto)
        # Trailing whitespace after the end-of-turn token is template glue, not something to predict.
        while end > len(prefix) and upto[end - 1] in "\n ":
            end -= 1
        spans.append((len(prefix), end))
    return text, spans


def tokenize_example(
    tokenizer: Any, messages: list[dict[str, Any]], max_length: int | None = None, overlong: str = "drop"
) -> Tokenized:
    """Render + tokenize with labels. overlong: drop | truncate | error (error raises ValueError)."""
    ids, labels, reused = _full_tokens(tokenizer, messages)
    n_tokens = len(ids)
    result = Tokenized(ids, labels, n_tokens, sum(lab != IGNORE for lab in labels), reused=reused)
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


def prompt_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation up to (not including) its last assistant turn: what a model is asked at eval/serve time."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return [{k: v for k, v in m.items() if k != "weight"} for m in messages[:last]]


def reference(messages: list[dict[str, Any]]) -> str:
    """The content of the last assistant turn: the expected answer."""
    return next(m.get("content") or "" for m in reversed(messages) if m["role"] == "assistant")


def render_prompt(tokenizer: Any, messages: list[dict[str, Any]]) -> str:
    """Prompt text with the generation prompt appended, exactly as serving renders it."""
    return _render(tokenizer, messages, add_generation_prompt=True)
