"""Reading logged requests and their feedback (tunesmith.serve.store rows), for the monitor and the rollout's
per-variant figures alike."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunesmith.serve.store import FeedbackRow, RequestRow


def prompt_of(row: RequestRow) -> list[dict[str, str]] | None:
    """The prompt messages of a logged request (a completions prompt becomes one user turn); None when not logged."""
    if row.messages:
        return [{"role": m.role, "content": m.content} for m in row.messages]
    if row.prompt is not None:
        return [{"role": "user", "content": row.prompt}]
    return None


def prompt_text(row: RequestRow) -> str | None:
    """What the user asked: the last user turn (or the completions prompt)."""
    messages = prompt_of(row) or []
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), None)


def latest_feedback(feedback: list[FeedbackRow]) -> dict[str, FeedbackRow]:
    """request_id -> the last verdict given on it (a later rating replaces an earlier one)."""
    return {f.request_id: f for f in feedback}
