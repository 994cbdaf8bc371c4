"""What an eval report must say besides its scores: degenerate output, a tuned model worse than its base,
and the weights it was evaluated on. Each note is one sentence for EvalReport.warnings and the terminal."""

from __future__ import annotations

from typing import Any

# A model flagged as degenerate: at least this share of its outputs hit the budget or loop.
DEGENERATE_SHARE = 0.1

QLORA_NOTE = (
    "evaluated on the 4-bit NF4 base the adapter was trained on (QLoRA), as training saw it; "
    "`tunesmith merge` dequantizes to a 16/32-bit base"
)


def degenerate_notes(degenerate: dict[str, dict[str, float]], max_new_tokens: int) -> list[str]:
    """One warning per model whose outputs hit the budget or loop in >= DEGENERATE_SHARE of examples."""
    out = []
    for side, d in degenerate.items():
        if d["degenerate"] >= DEGENERATE_SHARE:
            out.append(
                f"{side}: {d['degenerate']:.0%} of outputs are degenerate ({d['hit_budget']:.0%} hit the "
                f"{max_new_tokens}-token budget, {d['loop_rate']:.0%} end in a repetition loop)"
            )
    return out


def judgement_note(judgement: Any) -> str | None:
    """A warning when the tuned model loses more examples to its base than it wins."""
    if judgement.losses > judgement.wins:
        n = judgement.wins + judgement.losses + judgement.ties
        return (
            f"tuned is worse than base on {judgement.losses} of {n} examples (better on {judgement.wins}): "
            "check the schedule (epochs, learning rate) and the degenerate-output figures"
        )
    return None


def eval_warnings(
    degenerate: dict[str, dict[str, float]], max_new_tokens: int, judgement: Any, quantized_base: bool
) -> list[str]:
    """Every note for one report, most important first."""
    notes = [n for n in [judgement_note(judgement)] if n]
    notes += degenerate_notes(degenerate, max_new_tokens)
    if quantized_base:
        notes.append(QLORA_NOTE)
    return notes
