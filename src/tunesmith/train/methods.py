"""The method registry: every training method tunesmith knows, by name.

A method is one module (train/<name>.py) that defines a `Method` (train/method.py) and adds it to BUILT_IN below,
with its recipe section, rules and preflight checks declared in method_sections.py; docs/methods.md says what it
declares. Only the command layer (the CLI, the studio, sweeps, retrain, and the by-name helpers below) reads this
registry: it finds a recipe's or a run's method by name and hands the `Method` to the library code it calls
(training, the data check, eval), which never looks a method up itself. The recipe reads the declarations
(method_sections), and a manifest the details records (method_details), which `register` keeps in step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunesmith import method_sections
from tunesmith import run as runs
from tunesmith.records import register_details
from tunesmith.train import distill, dpo, grpo, reward, sft
from tunesmith.train.method import Method

if TYPE_CHECKING:
    from tunesmith.records import EvalReport
    from tunesmith.run import Run

_METHODS: dict[str, Method[Any]] = {}


def register(method: Method[Any]) -> None:
    """Make `method` known by its name (a second registration under one name replaces the first)."""
    _METHODS[method.name] = method
    method_sections.declare(method.declaration())
    if method.details is not None:
        register_details(method.name, method.details)


def get(name: str) -> Method[Any]:
    """The method called `name`; KeyError names the known ones."""
    try:
        return _METHODS[name]
    except KeyError:
        raise KeyError(f"unknown training method {name!r}; known: {', '.join(names())}") from None


def names() -> list[str]:
    return list(_METHODS)


def registered() -> list[Method[Any]]:
    return list(_METHODS.values())


BUILT_IN = (sft.METHOD, dpo.METHOD, grpo.METHOD, distill.METHOD, reward.METHOD)
for _method in BUILT_IN:
    register(_method)


def eval_examples(recipe: Any) -> list[Any]:
    """The held-out examples a run of this recipe is scored on (its method's Method.eval_examples)."""
    return get(recipe.method).eval_examples(recipe)


def held_out_split(recipe: Any, with_context: bool = True) -> tuple[list[Any], list[Any]]:
    """(train, held-out) examples of the one split a run of this recipe trains on (its method's Method.held_out_split)."""
    return get(recipe.method).held_out_split(recipe, with_context)


def held_out_examples(run: Run) -> list[Any]:
    """THE held-out set of a finished run (tunesmith.run.held_out_examples, with the run's own method)."""
    return runs.held_out_examples(run, get(run.recipe.method))


def evaluate(run: Run, max_examples: int | None = None, progress: Any = None) -> EvalReport:
    """`tunesmith eval` of a finished run with its own method (tunesmith.eval.compare.evaluate)."""
    from tunesmith.eval import compare

    return compare.evaluate(run, get(run.recipe.method), max_examples, progress)
