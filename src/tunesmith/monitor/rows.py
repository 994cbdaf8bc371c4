"""Reading logged requests and their feedback (tunesmith.serve.store rows), for the monitor and the rollout's
per-variant figures alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunesmith.serve.store import FeedbackRow, RequestRow


def prompt_of(row: RequestRow) -> list[dict[str, Any]] | None:
    """The prompt messages of a logged request as they were sent (an assistant turn's calls and a tool result's call
    id included; a completions prompt becomes one user turn); None when not logged."""
    if row.messages:
        return [m.as_message() for m in row.messages]
    if row.prompt is not None:
        return [{"role": "user", "content": row.prompt}]
    return None


def served_answer(req: RequestRow) -> dict[str, Any]:
    """The assistant message a request was answered with: its calls when it called (OpenAI's shape), else its text."""
    if req.tool_calls:
        return {"role": "assistant", "content": None, "tool_calls": req.tool_calls}
    return {"role": "assistant", "content": req.output or ""}


def reward_scores(scorer: Any, rows: Sequence[RequestRow]) -> list[float]:
    """The reward model's score (tunesmith.eval.reward_model) of each answered, content-logged row: its prompt with
    the tools the request offered, its answer as `feedback export` writes it (the calls it returned, else its text),
    the rendering a reward model trained on exported feedback learned from."""
    prompts = [prompt_of(r) or [] for r in rows]
    return list(scorer.score(prompts, [[served_answer(r)] for r in rows], tools=[r.tools for r in rows]))


def prompt_text(row: RequestRow) -> str | None:
    """What the user asked: the last user turn (or the completions prompt)."""
    messages = prompt_of(row) or []
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), None)


def latest_feedback(feedback: list[FeedbackRow]) -> dict[str, FeedbackRow]:
    """request_id -> the last verdict given on it (a later rating replaces an earlier one)."""
    return {f.request_id: f for f in feedback}
