"""A sweep's definition: the recipe, the grid of `--set-grid` values, the metric, the budget (sweep.json).

Each grid point is one trial: the recipe with the point's values (and the sweep's `--set`s) as overrides, trained
into DIR/trials/trial-NN, NN the point's place in the grid (so a trial re-run after a kill resumes its own folder).
The points run in a seeded shuffled order, so `--trials N` of a larger grid covers it evenly.
"""

from __future__ import annotations

import itertools
import random
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from tunesmith.config import load_recipe
from tunesmith.errors import RecipeError
from tunesmith.records import Record

SPEC, TRIALS = "sweep.json", "trials"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h)?\s*$")


class SweepSpec(Record):
    """What a sweep folder holds: the same command continues it; a different one is refused."""

    schema_version: int = 1
    recipe: str = Field(description="The recipe YAML swept (absolute path).")
    recipe_sha256: str
    grid: dict[str, list[Any]] = Field(description="Dotted recipe field -> the values tried, in the order given.")
    sets: list[str] = Field(default_factory=list, description="`--set` overrides every trial shares.")
    metric: str = Field(description="The registry metric trials are ranked by (tuned side of the eval report).")
    higher_is_better: bool
    budget_s: float | None = Field(None, description="Wall seconds the whole sweep may take; None = no limit.")
    max_trials: int | None = Field(None, description="At most this many trials run; None = the whole grid.")
    prune: bool = Field(True, description="Stop clearly losing trials at checkpoints (Optuna's median pruner).")
    seed: int = 0


def parse_grid(options: list[str]) -> dict[str, list[Any]]:
    """`--set-grid field=v1,v2,...` options -> {field: [values]} (each value read as YAML, like `--set`)."""
    grid: dict[str, list[Any]] = {}
    for option in options:
        key, eq, raw = option.partition("=")
        key = key.strip()
        values = [_value(v) for v in raw.split(",") if v.strip()] if eq else []
        if not key or "." not in key or not values:
            raise RecipeError([("--set-grid", f"{option!r} is not section.field=v1,v2 (e.g. training.learning_rate=1e-4,2e-4)")])
        if key in grid:
            raise RecipeError([("--set-grid", f"{key} is given twice: put all its values in one --set-grid")])
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
            raise RecipeError([("--set-grid", f"{key}: each value is one number, word or true/false, not {raw!r}")])
        if len(set(map(repr, values))) != len(values):
            raise RecipeError([("--set-grid", f"{key} repeats a value: {raw}")])
        grid[key] = values
    if not grid:
        raise RecipeError([("--set-grid", "give at least one: --set-grid section.field=v1,v2")])
    return grid


def _value(text: str) -> Any:
    """One grid value read as YAML, with 1e-4 read as the number it is (YAML 1.1 needs a dot: 1.0e-4)."""
    value = yaml.safe_load(text)
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value.strip()):
        return float(value)
    return value


def parse_duration(text: str) -> float:
    """'2h', '90m', '45min', '300s' or '300' -> seconds."""
    m = _DURATION.match(text)
    if m is None:
        raise RecipeError([("--budget", f"{text!r} is not a duration: e.g. 2h, 90m, 300s")])
    return float(m.group(1)) * {"s": 1, None: 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]


def points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in grid order (a point's index names its trial folder)."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def order(n: int, seed: int) -> list[int]:
    """The order the points are tried in: shuffled with the sweep's seed, the same on every resume."""
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    return idx


def point_overrides(point: dict[str, Any]) -> list[str]:
    """A grid point's values as `--set` overrides."""
    return [f"{k}={_yaml_scalar(v)}" for k, v in point.items()]


def _yaml_scalar(value: Any) -> str:
    # safe_dump ends a bare scalar with an explicit document end ("...")
    return yaml.safe_dump(value, default_flow_style=True).replace("\n...\n", "").strip()


def overrides(spec: SweepSpec, point: dict[str, Any]) -> list[str]:
    """The `--set` overrides of one trial: the sweep's own, then the point's values."""
    return [*spec.sets, *point_overrides(point)]


def trial_dir(out: Path, index: int) -> Path:
    return out / TRIALS / f"trial-{index:02d}"


def trial_recipe(spec: SweepSpec, out: Path, index: int, point: dict[str, Any]) -> Any:
    """The validated recipe of one trial: its own name and output_dir under the sweep folder."""
    base = load_recipe(spec.recipe, spec.sets, check_files=False)
    sets = [*overrides(spec, point), f"name={base.name}-trial-{index:02d}", f"output_dir={trial_dir(out, index)}"]
    return load_recipe(spec.recipe, sets)


def best_recipe_text(spec: SweepSpec, point: dict[str, Any], header: str) -> str:
    """The recipe with the winning point's values (and the sweep's --set) applied, resolved (absolute paths, every
    default written out) so it trains from wherever it is saved; its name and output_dir are the recipe's own."""
    try:  # preflight also makes custom rewards and teachers absolute
        recipe = load_recipe(spec.recipe, overrides(spec, point))
    except RecipeError:  # its data moved since the trials trained: the report is still written, paths as given
        recipe = load_recipe(spec.recipe, overrides(spec, point), check_files=False)
    return header + yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
