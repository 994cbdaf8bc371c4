"""How long a trial will take, before it runs, and whether the budget lets it run.

The planner (tunesmith.plan.advisor) estimates each trial's training on this hardware from its recipe and data. A
trial takes more than training (loading, checkpoints, evaluation), and the planner's throughput is a model, so the
trials already measured calibrate it: expected = a x planned + b, with a = measured training seconds / planned
seconds of the finished trials and b their mean seconds outside training. Before the first trial has finished the
planner's figure is taken as it is. A trial whose expected time exceeds what is left of the budget, or whose plan
does not fit in memory, is skipped with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from tunesmith import models
from tunesmith.plan import advisor

log = logging.getLogger(__name__)


def plan_trial(recipe: Any) -> Any:
    """The planner's estimate (records.Plan) of one trial on this machine; None when the model's config is unreadable."""
    try:
        tokenizer = models.load_tokenizer(models.resolve_base(recipe.model.base))
        return advisor.plan(recipe, tokenizer, gpu=advisor.local_gpu())
    except (KeyError, ValueError, OSError) as exc:
        log.warning("no plan for %s (%s: %s): its time is not estimated", recipe.name, type(exc).__name__, exc)
        return None


@dataclass
class Calibration:
    """The finished trials' planned and measured seconds."""

    planned_s: float = 0.0
    train_s: float = 0.0
    other_s: list[float] = field(default_factory=list)

    def add(self, planned_s: float | None, train_s: float, total_s: float) -> None:
        if planned_s:
            self.planned_s += planned_s
            self.train_s += train_s
        self.other_s.append(max(0.0, total_s - train_s))

    def expect(self, planned_s: float) -> float:
        """Expected wall seconds of a trial the planner gives `planned_s` training seconds."""
        scale = self.train_s / self.planned_s if self.planned_s > 0 and self.train_s > 0 else 1.0
        other = sum(self.other_s) / len(self.other_s) if self.other_s else 0.0
        return scale * planned_s + other


def duration(seconds: float) -> str:
    """Seconds as people read a budget: 45 s, 12.5 min, 2.1 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def skip_reason(plan: Any, expected_s: float, used_s: float, budget_s: float | None) -> str | None:
    """Why this trial cannot run now (memory, or the budget left), or None when it can."""
    if plan is not None and not plan.fits:
        fix = f"; --set {' --set '.join(plan.fix)} would fit" if plan.fix else ""
        return f"does not fit in memory: ~{plan.peak_mb:,.0f} MiB of {plan.capacity_mb:,.0f}{fix}"
    if budget_s is not None and used_s + expected_s > budget_s:
        left = max(0.0, budget_s - used_s)
        return f"needs ~{duration(expected_s)}; {duration(left)} of the {duration(budget_s)} budget left"
    return None
