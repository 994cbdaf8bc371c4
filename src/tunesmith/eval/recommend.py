"""Which rung to ship: the cheapest one that meets every target, simplest first on a cost tie.

The rule behind the ladder: prompt first, then retrieval (knowledge), then fine-tuning (behaviour), then
distillation (cost). A tuned rung chosen while base + RAG alone met every quality target gets a warning:
the fine-tune is then paying for latency or cost, not for quality.
"""

from __future__ import annotations

from tunesmith.config import LOWER_IS_BETTER_TARGETS, RUNGS
from tunesmith.eval.ladder_report import Recommendation, RungResult

FINE_TUNED = frozenset({"tuned", "tuned_rag", "student"})
RAG_ONLY = "base_rag"


def met(metric: str, value: float | None, target: float) -> bool:
    """Whether `value` meets `target` (at most for latency/cost, at least for quality); a missing value never does."""
    if value is None:
        return False
    return value <= target if metric in LOWER_IS_BETTER_TARGETS else value >= target


def target_checks(rung: RungResult, targets: dict[str, float]) -> dict[str, bool]:
    """Target name -> met, for one rung."""
    return {name: met(name, rung.value(name), t) for name, t in targets.items()}


def shortfall(rung: RungResult, targets: dict[str, float]) -> float:
    """How far a rung is from its targets: the sum of relative misses (0 when it meets them all)."""
    total = 0.0
    for name, t in targets.items():
        v = rung.value(name)
        if v is None:
            total += 1.0
        elif not met(name, v, t):
            total += abs(v - t) / max(abs(t), 1e-9)
    return total


def _order(rung: RungResult) -> int:
    return RUNGS.index(rung.name) if rung.name in RUNGS else len(RUNGS)


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if metric.endswith("_ms"):
        return f"{value:.0f} ms"
    if metric == "cost_per_1k":
        return f"{value:.4g}"
    return f"{value:.2f}"


def _misses(rung: RungResult, targets: dict[str, float]) -> str:
    parts = []
    for name, t in targets.items():
        v = rung.value(name)
        if not met(name, v, t):
            sign = ">" if name in LOWER_IS_BETTER_TARGETS else "<"
            parts.append(f"{name} {_fmt(name, v)} {sign} {_fmt(name, t)}")
    return ", ".join(parts)


def recommend(rungs: list[RungResult], targets: dict[str, float]) -> Recommendation:
    """The cheapest measured rung meeting every target (cost ties go to the simpler rung), in one sentence with its reason."""
    measured = sorted((r for r in rungs if r.status == "ok"), key=_order)
    if not measured:
        return Recommendation(sentence="No rung was measured, so there is nothing to recommend.")
    if not targets:
        best = min(measured, key=lambda r: (r.cost_per_1k, _order(r)))
        return Recommendation(
            sentence=f"No targets in the recipe: set `targets` (e.g. exact_match: 0.9) to get a recommendation; "
            f"the cheapest rung is {best.label} at {best.cost_per_1k:.4g} per 1,000 requests."
        )
    passing = [r for r in measured if all(target_checks(r, targets).values())]
    wanted = ", ".join(f"{k} {'<=' if k in LOWER_IS_BETTER_TARGETS else '>='} {_fmt(k, v)}" for k, v in targets.items())
    if not passing:
        closest = min(measured, key=lambda r: (shortfall(r, targets), r.cost_per_1k, _order(r)))
        return Recommendation(
            closest=closest.name,
            sentence=f"No rung meets the targets ({wanted}); the closest is {closest.label}, which misses "
            f"{_misses(closest, targets)}.",
        )
    best = min(passing, key=lambda r: (r.cost_per_1k, _order(r)))
    cheaper = [r.label for r in measured if r not in passing and r.cost_per_1k <= best.cost_per_1k]
    # Labels carry commas ("base, few-shot"): the list is joined with semicolons so each rung reads as one.
    reason = f"every rung costing as little or less ({'; '.join(cheaper)}) misses a target" if cheaper else "no rung costs less"
    sentence = f"Use {best.label}: it meets every target ({wanted}) at {best.cost_per_1k:.4g} per 1,000 requests, and {reason}."
    return Recommendation(rung=best.name, sentence=sentence, warning=_rag_warning(best, measured, targets))


def _rag_warning(best: RungResult, measured: list[RungResult], targets: dict[str, float]) -> str | None:
    """A warning when a fine-tuned rung wins although base + RAG already met every quality target."""
    rag = next((r for r in measured if r.name == RAG_ONLY), None)
    quality = {k: v for k, v in targets.items() if k not in LOWER_IS_BETTER_TARGETS}
    if best.name not in FINE_TUNED or rag is None or not quality or not all(target_checks(rag, quality).values()):
        return None
    missed = _misses(rag, targets)
    because = f"; it missed {missed}" if missed else f"; it costs {rag.cost_per_1k:.4g} against {best.cost_per_1k:.4g}"
    return (
        f"Fine-tuning chosen although {rag.label} alone met the quality targets{because}: "
        "knowledge that changes belongs in the index, so re-check the RAG rung before paying for training."
    )
