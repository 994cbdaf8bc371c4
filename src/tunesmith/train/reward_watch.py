"""GRPO's silent failure: a reward that never varies within a group of completions.

GRPO's advantage is a reward minus its group's mean; a reward that gives every completion of a prompt the
same score (all 0: the task is out of reach; all 1: it is already solved; a constant) teaches nothing, and
the run still finishes with exit 0. RewardWatch wraps each reward function to see its values, and at the
first logged steps warns for each reward that has not varied in any group: in the log, as an event row in
metrics.jsonl, and in the manifest (details.warnings).
"""

from __future__ import annotations

import functools
import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

log = logging.getLogger(__name__)

EVENT = "reward_never_varies"
_EPS = 1e-9


class RewardWatch(TrainerCallback):
    """Counts, per reward, the groups (num_generations consecutive completions of one prompt) whose values
    differ; at the first log from optimizer step `min_steps` on (or at the end of a shorter run), warns once
    for each reward that has stayed flat.

    TRL repeats each prompt num_generations times in a row, so a reward call's values split into groups
    in order (per process, which is how each rank scores its slice)."""

    def __init__(self, num_generations: int, metrics_path: Path, min_steps: int = 2):
        self.num_generations = num_generations
        self.metrics_path = metrics_path
        self.min_steps = min_steps
        self.groups: dict[str, list[int]] = {}  # reward name -> [groups seen, groups whose values differ]
        self.values: dict[str, Counter[float]] = {}
        self.warnings: list[str] = []
        self._checked = False

    def wrap(self, fn: Callable[..., list[float]]) -> Callable[..., Any]:
        """The reward function, unchanged in what it returns (and in its __name__, which TRL logs it by)."""
        name = getattr(fn, "__name__", "reward")
        self.groups.setdefault(name, [0, 0])
        self.values.setdefault(name, Counter())

        @functools.wraps(fn)
        def watched(*args: Any, **kwargs: Any) -> list[float]:
            out = fn(*args, **kwargs)
            self.observe(name, out)
            return out

        return watched

    def observe(self, name: str, values: Sequence[float | None]) -> None:
        seen = [float(v) for v in values if v is not None]
        self.values[name].update(round(v, 4) for v in seen)
        g = self.num_generations
        for i in range(0, len(seen) - g + 1, g):
            group = seen[i : i + g]
            self.groups[name][0] += 1
            self.groups[name][1] += max(group) - min(group) > _EPS

    def flat(self) -> dict[str, str]:
        """reward name -> warning, for each reward seen in at least one group and never varying within one."""
        out = {}
        for name, (seen, varied) in self.groups.items():
            if seen and not varied:
                vals = ", ".join(f"{v:g} x{n}" for v, n in self.values[name].most_common(5))
                out[name] = (
                    f"reward `{name}` never varied within a group of {self.num_generations} completions "
                    f"in {seen} groups (values: {vals}): GRPO cannot learn from it; check the reward and "
                    "the data (is the task out of reach, or already solved, for this model?)"
                )
        return out

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if state.global_step >= self.min_steps:
            self._check(state)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._check(state)

    def _check(self, state: Any) -> None:
        if self._checked:
            return
        self._checked = True
        for name, message in self.flat().items():
            self.warnings.append(message)
            log.warning(message)
            if state.is_world_process_zero:
                row = {
                    "step": state.global_step,
                    "event": EVENT,
                    "reward_name": name,
                    "values": {str(k): v for k, v in self.values[name].most_common(5)},
                    "message": message,
                }
                with open(self.metrics_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row) + "\n")
