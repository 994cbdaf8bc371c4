"""Release gates: the one "good enough" engine. A gate is `metric: rule` (`exact_match: ">=0.85"`, `forgetting: "<=0.02"`);
`tunesmith eval` checks them on its report and blocks the release, the ladder checks them on every rung and recommends
the cheapest rung that passes. Metric names and directions come from the registry (tunesmith.eval.registry).

The built-in checks of `eval.checks` join whenever gates or graders are set: inputs unchanged since training,
validation loss converged (from metrics.jsonl), tuned better than the unmodified base on the mode's primary metric.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tunesmith.errors import RecipeError
from tunesmith.eval import metrics, registry
from tunesmith.records import GateResult

if TYPE_CHECKING:
    from tunesmith.config import EvalSection
    from tunesmith.records import EvalReport

__all__ = ["GATES_FAILED_EXIT", "GateResult", "check_report", "check_rules", "gate_values", "parse_rule"]

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
# Convergence: the loss fell less than this share over the last quarter of its points, and ends within
# this factor of its minimum (more is divergence).
CONVERGED_DROP, DIVERGED_FACTOR, MIN_LOSS_POINTS = 0.05, 1.5, 4


def parse_rule(name: str, rule: str | float) -> tuple[str, float]:
    """(operator, threshold) of a gate on a registry metric; a bare number is >= (<= where lower is better).
    ValueError naming the gate when the metric is unknown or the rule unreadable."""
    try:
        higher = registry.higher_is_better(name)
    except ValueError as exc:
        raise ValueError(f"gate {name}: {exc}") from None
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        return (">=" if higher else "<="), float(rule)
    m = _RULE.match(str(rule))
    if not m:
        raise ValueError(f"gate {name}: rule {rule!r} is not '<op><number>' with op one of >=, <=, >, <, ==")
    return m.group(1), float(m.group(2))


def gate_options(options: list[str]) -> dict[str, str]:
    """Gates from `--gate metric=RULE` options; a RecipeError naming the first unreadable one."""
    parsed: dict[str, str] = {}
    for option in options:
        name, eq, rule = option.partition("=")
        try:
            if not eq:
                raise ValueError(f"--gate {option!r} is not metric=RULE")
            parse_rule(name.strip(), rule.strip())
        except ValueError as exc:
            raise RecipeError([("--gate", f"{exc} (e.g. --gate exact_match='>=0.9')")]) from None
        parsed[registry.canonical(name.strip())] = rule.strip()
    return parsed


def gate_values(report: EvalReport) -> dict[str, float]:
    """Every number a gate can name, from one EvalReport (tuned side; see docs/gates.md for the list)."""
    values = dict(report.summary.get("tuned", {}))
    extra = report.extra
    values["win_rate_vs_base"] = extra.judge.win_rate if extra.judge else report.judgement.win_rate
    if extra.judge:
        values["judge_agreement"] = extra.judge.agreement
    if (latency := extra.latency.get("tuned")) is not None:
        values.update(latency.values())
    if (forgot := extra.forgetting) is not None:
        values["forgetting"] = forgot.score
        values["text_loss_increase"] = forgot.text_loss.increase
        values.update({f"forgetting_{cat}": c.drop for cat, c in forgot.categories.items()})
    if extra.hallucination is not None and extra.hallucination.rate is not None:
        values["hallucination_rate"] = extra.hallucination.rate
    values.update({f"graders.{name}": sides["tuned"].pass_rate for name, sides in extra.graders.items() if "tuned" in sides})
    for tool, figures in report.per_tool.get("tuned", {}).items():  # tool_arguments_match.<function>: per tool
        values.update({f"{m}.{tool}": v for m, v in figures.items() if m != "n"})
    return values


def check_rules(gates: dict[str, str | float], values: dict[str, float], where: str = registry.EVAL) -> list[GateResult]:
    """One result per gate: the value against its rule. A metric that `where` (eval or ladder) never measures is
    skipped, naming the command that does; one it measures but that is absent (not asked for, not finite) fails,
    because a release criterion nobody checked is not met."""
    results = []
    for name, rule in gates.items():
        op, threshold = parse_rule(name, rule)
        m = registry.metric(name)
        shown = f"{op} {threshold:g}"
        if where not in m.by:
            other = " / ".join(f"tunesmith {w}" for w in sorted(m.by))
            results.append(GateResult(name=m.name, rule=shown, threshold=threshold, status="skip", detail=f"measured by {other}"))
            continue
        value = values.get(m.name)
        if value is None or not math.isfinite(value):
            results.append(GateResult(name=m.name, rule=shown, threshold=threshold, status="fail", detail="not measured"))
            continue
        ok = _OPS[op](value, threshold)
        results.append(GateResult(name=m.name, rule=shown, threshold=threshold, value=value, status="pass" if ok else "fail"))
    return results


def shortfall(results: list[GateResult]) -> float:
    """How far from passing: the sum of relative misses of the failed gates (1 for one with no value); 0 when all pass."""
    total = 0.0
    for r in results:
        if r.status == "fail":
            t = r.threshold
            total += 1.0 if r.value is None or t is None else abs(r.value - t) / max(abs(t), 1e-9)
    return total


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
    """Tuned better than the unmodified base on the mode's first primary metric that both have; without reference
    answers (prompt-only rows judged by graders), on the first grader's pass rate."""
    summary = report.summary
    graders = [m for m in summary.get("tuned", {}) if m.startswith("graders.")]
    primary = metrics.primary_metrics(report.json_mode, report.tool_mode)
    metric = next((m for m in [*primary, *graders] if m in summary.get("tuned", {})), None)
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
    changed = report.extra.changed_inputs
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
