"""The length contract of every method: what is measured against data.max_length, and what drop / truncate /
error do to a row, counted the same way (records.TokenCounts) for the manifest and the audit.

sft (and distill sequence): the rendered conversation; truncation cuts tokens at the end (template.tokenize_example).
dpo: prompt + the longer of chosen / rejected, each rendered as TRL renders it; truncation shortens each answer's
  text so both fit, the turn still closed by its end-of-turn token.
grpo: the rendered prompt + grpo.max_completion_length (the room a sampled completion needs); truncation shortens
  the last user turn from the start (its end, usually the question, is kept).
distill logits: the rendered conversation, as sft; truncation shortens the answer's text.
TRL then never truncates: every row it receives fits (train/_trl.py passes no max_length, or one nothing exceeds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunesmith.data.template import IGNORE, render_prompt, tokenize_example

Messages = list[dict[str, Any]]
Tools = list[dict[str, Any]] | None  # the tools a row offers (rendered into its prompt)
_MAX_CUTS = 8  # re-tokenizing a cut text can shift a token or two; a few passes always converge in practice


@dataclass
class Fit:
    """One row under the policy. Token counts are in tokens of the model's tokenizer."""

    n_tokens: int  # the method's measured length before the policy
    kept_tokens: int = 0  # tokens that reach training (dpo: both sequences; grpo: the prompt)
    trained_tokens: int = 0  # answer tokens trained (0 for grpo: its completions are sampled)
    tokens_lost: int = 0
    dropped: str | None = None  # "overlong" | "no_trained_tokens"
    parts: dict[str, Messages] = field(default_factory=dict)  # the row's message lists after truncation
    eos_trained: bool | None = None  # None where the method trains no fixed answer (grpo)
    over: bool = False  # the row was over max_length (dropped, truncated or refused)


def conversation(tokenizer: Any, messages: Messages, tools: Tools = None) -> tuple[int, int, bool]:
    """(tokens, trained tokens, EOS among the trained labels) of a rendered conversation (with the tools it offers),
    as training masks it."""
    tok = tokenize_example(tokenizer, messages, tools=tools)
    eos = tokenizer.eos_token_id
    return tok.n_tokens, tok.n_trained, eos is not None and eos in [lab for lab in tok.labels if lab != IGNORE]


def prompt_tokens(tokenizer: Any, messages: Messages, tools: Tools = None) -> int:
    """Tokens of a rendered prompt (with the tools it offers) and the generation prompt, as GRPO and eval feed it."""
    return len(tokenizer(render_prompt(tokenizer, messages, tools=tools), add_special_tokens=False)["input_ids"])


def _shrink(
    tokenizer: Any, messages: Messages, index: int, measure: Callable[[Messages], int], limit: int, keep_end: bool
) -> Messages | None:
    """`messages` with message `index`'s text cut until measure() <= limit; None when nothing of it can stay."""
    msgs = [dict(m) for m in messages]
    for _ in range(_MAX_CUTS):
        n = measure(msgs)
        if n <= limit:
            return msgs
        ids = tokenizer(msgs[index].get("content") or "", add_special_tokens=False)["input_ids"]
        keep = len(ids) - (n - limit)
        if keep <= 0:
            return None
        msgs[index]["content"] = tokenizer.decode(ids[-keep:] if keep_end else ids[:keep])
    return None


def _answers(
    tokenizer: Any, prompt: Messages, answers: dict[str, Messages], max_length: int, overlong: str, what: str, tools: Tools = None
) -> Fit:
    """Fit for one or more answers to one prompt (dpo: chosen + rejected; distill logits: the answer)."""
    measured = {k: conversation(tokenizer, prompt + a, tools) for k, a in answers.items()}
    n = max(m[0] for m in measured.values())
    fit = Fit(n, parts={"prompt": prompt, **answers}, over=n > max_length)
    if not fit.over:
        fit.kept_tokens = sum(m[0] for m in measured.values())
        fit.trained_tokens = sum(m[1] for m in measured.values())
        fit.eos_trained = all(m[2] for m in measured.values())
        return fit
    if overlong == "error":
        raise ValueError(f"{what} has {n} tokens, over max_length={max_length}")
    total = sum(m[0] for m in measured.values())
    if overlong == "drop":
        fit.tokens_lost, fit.dropped = total, "overlong"
        return fit
    for key, answer in answers.items():
        if not answer:
            continue
        cut = _shrink(
            tokenizer,
            prompt + answer,
            len(prompt) + len(answer) - 1,
            lambda m: conversation(tokenizer, m, tools)[0],
            max_length,
            keep_end=False,
        )
        if cut is None:  # the prompt alone fills max_length: no answer token would be trained
            fit.tokens_lost, fit.dropped = total, "no_trained_tokens"
            return fit
        fit.parts[key] = cut[len(prompt) :]
    after = [conversation(tokenizer, prompt + fit.parts[k], tools) for k in answers]
    fit.kept_tokens = sum(m[0] for m in after)
    fit.trained_tokens = sum(m[1] for m in after)
    fit.tokens_lost = total - fit.kept_tokens
    fit.eos_trained = all(m[2] for m in after)
    return fit


def fit_pair(
    tokenizer: Any, prompt: Messages, chosen: Messages, rejected: Messages, max_length: int, overlong: str, tools: Tools = None
) -> Fit:
    """dpo: prompt + the longer answer against max_length; truncate shortens each answer that does not fit."""
    return _answers(
        tokenizer,
        prompt,
        {"chosen": chosen, "rejected": rejected},
        max_length,
        overlong,
        "preference pair (prompt + longer answer)",
        tools,
    )


def fit_conversation(tokenizer: Any, prompt: Messages, answer: Messages, max_length: int, overlong: str) -> Fit:
    """distill logits: the rendered conversation against max_length; truncate shortens the answer's text."""
    fit = _answers(tokenizer, prompt, {"answer": answer}, max_length, overlong, "example")
    if fit.dropped is None and fit.trained_tokens == 0:
        fit.dropped, fit.tokens_lost, fit.kept_tokens = "no_trained_tokens", fit.kept_tokens, 0
    return fit


def fit_prompt(
    tokenizer: Any, prompt: Messages, completion_budget: int, max_length: int, overlong: str, tools: Tools = None
) -> Fit:
    """grpo: the rendered prompt (with its tools) + completion_budget against max_length; truncate keeps the end of
    the last user turn."""
    p = prompt_tokens(tokenizer, prompt, tools)
    n = p + completion_budget
    fit = Fit(n, kept_tokens=p, parts={"prompt": prompt}, over=n > max_length)
    if not fit.over:
        return fit
    if overlong == "error":
        raise ValueError(
            f"prompt has {p} tokens + grpo.max_completion_length {completion_budget} = {n}, over max_length={max_length}"
        )
    users = [i for i, m in enumerate(prompt) if m.get("role") == "user"]
    limit = max_length - completion_budget
    cut = None
    if overlong == "truncate" and users and limit > 0:
        cut = _shrink(tokenizer, prompt, users[-1], lambda m: prompt_tokens(tokenizer, m, tools), limit, keep_end=True)
    if cut is None:
        fit.kept_tokens, fit.tokens_lost, fit.dropped = 0, p, "overlong"
        return fit
    fit.parts["prompt"] = cut
    fit.kept_tokens = prompt_tokens(tokenizer, cut, tools)
    fit.tokens_lost = p - fit.kept_tokens
    return fit
