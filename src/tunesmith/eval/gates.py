"""Release gates: the pre-deployment checklist as pass/fail lines, so CI can block a release.

A gate is `metric: rule` from `eval.gates` (`exact_match: ">=0.85"`, `forgetting: "<=0.02"`); the value comes from
the EvalReport (tuned summary, latency, forgetting, hallucination, judge, graders). The built-in checks of
`eval.checks` join whenever gates or graders are set: inputs unchanged since training, validation loss converged
(from metrics.jsonl), tuned better than the unmodified base on the mode's primary metric.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from tunesmith.eval import metrics
from tunesmith.records import Record

if TYPE_CHECKING:
    from tunesmith.config import EvalSection
    from tunesmith.eval.ladder_report import LadderReport
    from tunesmith.records import EvalReport

GATES_FAILED_EXIT = 3
"""Exit code of `tunesmith eval` / `tunesmith ladder` when a gate fails (1 stays 'the command itself failed')."""

_RULE = re.compile(r"^\s*(>=|<=|==|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": lambda v, t: math.isclose(v, t, abs_tol=1e-9),
}
# A bare number means "at most" for these (and every forgetting_* / *_latency_ms), "at least" for the rest.
LOWER_IS_BETTER = frozenset({"forgetting", "hallucination_rate", "text_loss_increase", "eval_loss", "perplexity", "cost_per_1k"})

# Convergence: the loss fell less than this share over the last quarter of its points, and ends within
# this factor of its minimum (more is divergence).
CONVERGED_DROP, DIVERGED_FACTOR, MIN_LOSS_POINTS = 0.05, 1.5, 4


class GateResult(Record):
    """One checklist line. status "skip": the gate does not apply where it was checked (e.g. the ladder has no forgetting)."""

    name: str
    rule: str = Field(..., description="'>= 0.85', or what a built-in check demands.")
    value: float | None = None
    status: Literal["pass", "fail", "skip"]
    detail: str = ""
    passed: bool = Field(True, description="status != fail (skipped gates do not block); set from status.")

    @model_validator(mode="after")
    def _passed_from_status(self) -> GateResult:
        self.passed = self.status != "fail"
        return self


def lower_is_better(name: str) -> bool:
    return name in LOWER_IS_BETTER or name.startswith("forgetting_") or name.endswith("_latency_ms")


def parse_rule(name: str, rule: str | float) -> tuple[str, float]:
    """(operator, threshold) of a gate rule; a bare number is >= (<= when lower is better). ValueError when unreadable."""
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        return ("<=" if lower_is_better(name) else ">="), float(rule)
    m = _RULE.match(str(rule))
    if not m:
        raise ValueError(f"gate {name}: rule {rule!r} is not '<op><number>' with op one of >=, <=, >, <, ==")
    return m.group(1), float(m.group(2))


def gate_options(options: list[str]) -> dict[str, str]:
    """Gates from `--gate metric=RULE` options; a RecipeError naming the first unreadable one."""
    from tunesmith.errors import RecipeError

    parsed: dict[str, str] = {}
    for option in options:
        name, eq, rule = option.partition("=")
        try:
            if not eq:
                raise ValueError(f"--gate {option!r} is not metric=RULE")
            parse_rule(name.strip(), rule.strip())
        except ValueError as exc:
            raise RecipeError([("--gate", f"{exc} (e.g. --gate exact_match='>=0.9')")]) from None
        parsed[name.strip()] = rule.strip()
    return parsed


def gate_values(report: EvalReport) -> dict[str, float]:
    """Every number a gate can name, from one EvalReport (tuned side; see docs/gates.md for the list)."""
    values = dict(report.summary.get("tuned", {}))
    extra = report.extra
    judge = extra.get("judge") or {}
    values["win_rate_vs_base"] = judge.get("win_rate", report.judgement.win_rate)
    if "agreement" in judge:
        values["judge_agreement"] = judge["agreement"]
    for key in ("p50_ms", "p95_ms"):
        if key in (latency := extra.get("latency", {}).get("tuned", {})):
            values[f"{key[:3]}_latency_ms"] = latency[key]
    if forgetting := extra.get("forgetting"):
        values["forgetting"] = forgetting["score"]
        values["text_loss_increase"] = forgetting["text_loss"]["increase"]
        values.update({f"forgetting_{cat}": c["drop"] for cat, c in forgetting["categories"].items()})
    if (hallucination := extra.get("hallucination")) and hallucination.get("rate") is not None:
        values["hallucination_rate"] = hallucination["rate"]
    for name, graded in (extra.get("graders") or {}).items():
        values[f"graders.{name}"] = graded["tuned"]["pass_rate"]
    return values


def check_rules(
    gates: dict[str, str | float],
    values: dict[str, float],
    missing: Literal["fail", "skip"] = "fail",
    why_missing: str = "not measured",
) -> list[GateResult]:
    """One result per gate: the value against its rule; a value that is absent fails (or is skipped)."""
    results = []
    for name, rule in gates.items():
        op, threshold = parse_rule(name, rule)
        shown = f"{op} {threshold:g}"
        value = values.get(name)
        if value is None or not math.isfinite(value):
            results.append(GateResult(name=name, rule=shown, status=missing, detail=why_missing))
            continue
        ok = _OPS[op](value, threshold)
        results.append(GateResult(name=name, rule=shown, value=value, status="pass" if ok else "fail"))
    return results


def loss_converged(history: Sequence[dict[str, Any]]) -> GateResult:
    """Validation loss (training loss when eval_loss was logged fewer than 4 times) neither still falling steeply
    (more than 5% over its last quarter) nor diverging (final above 1.5x its minimum, or not finite)."""
    rule = f"last-quarter drop <= {CONVERGED_DROP:.0%}, final <= {DIVERGED_FACTOR}x min"
    evals = [float(r["eval_loss"]) for r in history if r.get("eval_loss") is not None]
    series, which = (
        (evals, "eval_loss")
        if len(evals) >= MIN_LOSS_POINTS
        else ([float(r["loss"]) for r in history if r.get("loss") is not None], "training loss")
    )
    if len(series) < MIN_LOSS_POINTS:
        return GateResult(
            name="loss_converged",
            rule=rule,
            status="fail",
            detail=f"only {len(series)} loss points in metrics.jsonl: too few to judge",
        )
    if not all(math.isfinite(x) for x in series):
        return GateResult(name="loss_converged", rule=rule, status="fail", detail=f"{which} is not finite: diverged")
    q = max(1, len(series) // 4)
    before, last = sum(series[-2 * q : -q]) / q, sum(series[-q:]) / q  # window means: training loss is noisy
    drop = (before - last) / max(abs(before), 1e-9)
    if series[-1] > DIVERGED_FACTOR * min(series):
        detail = f"{which} ends at {series[-1]:.4g}, above {DIVERGED_FACTOR}x its minimum {min(series):.4g}: diverging"
        return GateResult(name="loss_converged", rule=rule, value=drop, status="fail", detail=detail)
    if drop > CONVERGED_DROP:
        return GateResult(
            name="loss_converged",
            rule=rule,
            value=drop,
            status="fail",
            detail=f"{which} still falling {drop:.1%} over its last quarter: train longer",
        )
    return GateResult(name="loss_converged", rule=rule, value=drop, status="pass", detail=f"{which}, {len(series)} points")


def beats_base(report: EvalReport) -> GateResult:
    """Tuned better than the unmodified base on the mode's first primary metric that both have."""
    summary = report.summary
    metric = next((m for m in metrics.primary_metrics(report.json_mode) if m in summary.get("tuned", {})), None)
    if metric is None:
        return GateResult(name="beats_base", rule="tuned > base", status="fail", detail="no primary metric in the report")
    delta = summary["tuned"][metric] - summary["base"][metric]
    return GateResult(
        name="beats_base",
        rule=f"tuned {metric} > base",
        value=delta,
        status="pass" if delta > 1e-9 else "fail",
        detail=f"{metric} delta {delta:+.4f}",
    )


def inputs_unchanged(report: EvalReport) -> GateResult:
    """No input (held-out rows, data files, retrieval index) differs from what the manifest recorded."""
    changed = list(report.extra.get("changed_inputs", []))
    return GateResult(
        name="inputs_unchanged",
        rule="hashes match the manifest",
        value=float(len(changed)),
        status="fail" if changed else "pass",
        detail="; ".join(changed),
    )


def check_report(report: EvalReport, section: EvalSection, history: Sequence[dict[str, Any]]) -> list[GateResult]:
    """The checklist for one eval: built-in checks (when gates or graders are set), then every gate. Empty when neither."""
    if not section.gates and not section.graders:
        return []
    builtin = {
        "inputs_unchanged": lambda: inputs_unchanged(report),
        "loss_converged": lambda: loss_converged(history),
        "beats_base": lambda: beats_base(report),
    }
    results = [builtin[name]() for name in section.checks]
    return results + check_rules(section.gates, gate_values(report))


def check_rung(ladder: LadderReport, gates: dict[str, str | float]) -> tuple[str | None, list[GateResult]]:
    """Gates on the ladder's chosen rung (the recommendation, else the closest); metrics the ladder does not
    measure (forgetting, judge, graders) are skipped, not failed: `tunesmith eval` checks those."""
    rec = ladder.recommendation
    rung = ladder.rung(rec.rung or rec.closest or "")
    if rung is None:
        return None, [GateResult(name=n, rule=str(r), status="fail", detail="no rung measured") for n, r in gates.items()]
    values = {name: v for name in gates if (v := rung.value(name)) is not None}
    return rung.name, check_rules(gates, values, missing="skip", why_missing="not measured by the ladder (see tunesmith eval)")


def results_of(report: EvalReport) -> list[GateResult]:
    """The gate results stored in a report, typed."""
    return [GateResult.model_validate(g) for g in report.gates]
