"""Preflight: what a validated recipe needs from the world before it runs, checked at once.

The recipe schema (config.py, method_sections.py) only reads the values it is given; preflight then checks that
every data path exists, that the packages its choices need are installed (qlora: bitsandbytes; report_to: the
trackers), reads a graders file once (run.yaml carries the definitions), and runs each method's own checks (pairs
for dpo and reward, reward runs, schema files and custom modules for grpo, a teacher folder for distill). Every
problem comes back in one RecipeError naming its field. `load_recipe` runs it; reading a finished run back
(`load_run`, whose data may have moved) does not.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from pydantic import BaseModel

from tunesmith import method_sections
from tunesmith.errors import RecipeError
from tunesmith.eval.graders import load_graders
from tunesmith.method_sections import Problem
from tunesmith.sections import absolute, marked

if TYPE_CHECKING:
    from tunesmith.config import Recipe

TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
"""training.report_to name -> the module it needs."""


def preflight(recipe: Recipe, base: Path, source: str | None = None) -> Recipe:
    """The recipe, completed (graders file read, reward schemas inlined, local paths made absolute), when the
    world has what it needs; otherwise a RecipeError listing every problem with its field path. `base` is the
    recipe's folder. The recipe given is not changed."""
    recipe = recipe.model_copy(deep=True)
    problems = environment(type(recipe), recipe.model_dump(), base)
    problems += _graders(recipe)
    for declaration in method_sections.declared():
        if declaration.preflight is not None:
            problems += declaration.preflight(recipe, base)
    if problems:
        raise RecipeError(problems, source=source)
    return recipe


def environment(model: type[BaseModel], values: Any, base: Path) -> list[Problem]:
    """The files and packages a recipe's values need: missing ones as problems. It reads the values as given, so
    a recipe the schema refused gets these problems listed with its own (config.recipe_from_dict)."""
    problems: list[Problem] = [(where, f"file not found: {path}") for where, path in missing_files(model, values, base)]
    # QLoRA here always means a 4-bit NF4 base with double quantization; it cannot run without bitsandbytes.
    if _get(values, "adapter", "type") == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        problems.append(("adapter", "type qlora needs bitsandbytes (pip install 'tunesmith[qlora]'); or use type: lora"))
    wanted = _get(values, "training", "report_to")
    wanted = [name for name in wanted if name in TRACKERS] if isinstance(wanted, list) else []
    trackers = [name for name in dict.fromkeys(wanted) if importlib.util.find_spec(TRACKERS[name]) is None]
    if trackers:
        problems.append(("training.report_to", f"{', '.join(trackers)} not installed: pip install 'tunesmith[tracking]'"))
    return problems


def missing_files(model: type[BaseModel], values: Any, base: Path, at: str = "") -> Iterator[tuple[str, str]]:
    """(field path, absolute path) of every DataPath field in the recipe `values` (read against `base`) whose file
    or folder does not exist."""
    if not isinstance(values, dict):
        return
    for name, info in model.model_fields.items():
        value, where = values.get(name), f"{at}{name}"
        section = _section(info.annotation)
        if section is not None:
            yield from missing_files(section, value, base, where + ".")
        elif marked(info.annotation, info.metadata):
            paths = [(where, value)] if isinstance(value, str) else []
            if isinstance(value, list):
                paths = [(f"{where}.{i}", v) for i, v in enumerate(value) if isinstance(v, str)]
            for w, path in paths:
                if not Path(full := absolute(path, base)).exists():
                    yield w, full


def _section(annotation: Any) -> type[BaseModel] | None:
    """The section a field holds (`RagSection | None` holds RagSection), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)), None)


def _get(values: Any, section: str, name: str) -> Any:
    part = values.get(section) if isinstance(values, dict) else None
    return part.get(name) if isinstance(part, dict) else None


def _graders(recipe: Recipe) -> list[Problem]:
    """A graders file is read once here, so run.yaml carries the definitions and the run works after the file moved."""
    value = recipe.eval.graders
    if not isinstance(value, str) or not Path(value).exists():  # a missing one is listed with the missing files
        return []
    try:
        recipe.eval.graders = [g.model_dump(mode="json", exclude_none=True) for g in load_graders(value)]
    except ValueError as exc:
        return [("eval.graders", str(exc))]
    return []
