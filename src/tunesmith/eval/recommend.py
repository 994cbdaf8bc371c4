"""Which rung to ship: the cheapest one that passes every gate, simplest first on a cost tie.

The rule behind the ladder: prompt first, then retrieval (knowledge), then fine-tuning (behaviour), then
distillation (cost). A tuned rung chosen while base + RAG alone passed every quality gate gets a warning:
the fine-tune is then paying for latency or cost, not for quality. The gates are `eval.gates`, checked on each
rung by the release-gate engine (tunesmith.eval.gates), so "good enough" means the same for eval and ladder.
"""

from __future__ import annotations

from tunesmith.config import RUNGS
from tunesmith.eval import registry
from tunesmith.eval.gates import shortfall
from tunesmith.eval.ladder_report import Recommendation, RungResult
from tunesmith.records import GateResult

FINE_TUNED = frozenset({"tuned", "tuned_rag", "student"})
RAG_ONLY = "base_rag"
_COST_LIKE = frozenset({"prompt_tokens", "completion_tokens", "cost_per_1k"})


def _order(rung: RungResult) -> int:
    return RUNGS.index(rung.name) if rung.name in RUNGS else len(RUNGS)


def _checked(rung: RungResult) -> list[GateResult]:
    return [g for g in rung.gates if g.status != "skip"]


def _misses(gates: list[GateResult]) -> str:
    parts = []
    for g in gates:
        if g.status == "fail":
            m = registry.metric(g.name)
            parts.append(f"{g.name} {m.fmt(g.value)} (needs {g.rule})")
    return ", ".join(parts)


def _quality(g: GateResult) -> bool:
    """A gate on what the answers say, not on what they cost (latency, tokens, cost)."""
    return g.name not in _COST_LIKE and registry.metric(g.name).unit != "ms"


def recommend(rungs: list[RungResult]) -> Recommendation:
    """The cheapest measured rung passing every gate checked on it (cost ties go to the simpler rung), in one sentence."""
    measured = sorted((r for r in rungs if r.status == "ok"), key=_order)
    if not measured:
        return Recommendation(sentence="No rung was measured, so there is nothing to recommend.")
    if not any(_checked(r) for r in measured):
        best = min(measured, key=lambda r: (r.cost_per_1k, _order(r)))
        return Recommendation(
            sentence=f"No gates the ladder measures in the recipe: set eval.gates (e.g. exact_match: 0.9) to get a "
            f"recommendation; the cheapest rung is {best.label} at {best.cost_per_1k:.4g} per 1,000 requests."
        )
    wanted = ", ".join(f"{g.name} {g.rule}" for g in _checked(measured[0]))
    passing = [r for r in measured if r.passed]
    if not passing:
        closest = min(measured, key=lambda r: (shortfall(r.gates), r.cost_per_1k, _order(r)))
        return Recommendation(
            closest=closest.name,
            sentence=f"No rung passes the gates ({wanted}); the closest is {closest.label}, which misses "
            f"{_misses(closest.gates)}.",
        )
    best = min(passing, key=lambda r: (r.cost_per_1k, _order(r)))
    cheaper = [r.label for r in measured if r not in passing and r.cost_per_1k <= best.cost_per_1k]
    # Labels carry commas ("base, few-shot"): the list is joined with semicolons so each rung reads as one.
    reason = f"every rung costing as little or less ({'; '.join(cheaper)}) misses a gate" if cheaper else "no rung costs less"
    sentence = f"Use {best.label}: it passes every gate ({wanted}) at {best.cost_per_1k:.4g} per 1,000 requests, and {reason}."
    return Recommendation(rung=best.name, sentence=sentence, warning=_rag_warning(best, measured))


def _rag_warning(best: RungResult, measured: list[RungResult]) -> str | None:
    """A warning when a fine-tuned rung wins although base + RAG already passed every quality gate."""
    rag = next((r for r in measured if r.name == RAG_ONLY), None)
    if best.name not in FINE_TUNED or rag is None:
        return None
    quality = [g for g in _checked(rag) if _quality(g)]
    if not quality or not all(g.passed for g in quality):
        return None
    missed = _misses(rag.gates)
    because = f"; it missed {missed}" if missed else f"; it costs {rag.cost_per_1k:.4g} against {best.cost_per_1k:.4g}"
    return (
        f"Fine-tuning chosen although {rag.label} alone passed the quality gates{because}: "
        "knowledge that changes belongs in the index, so re-check the RAG rung before paying for training."
    )
