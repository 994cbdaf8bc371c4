"""The method registry: every training method tunesmith knows, by name.

A method is one module (train/<name>.py) that defines a `Method` (train/method.py) and adds it to BUILT_IN below,
with its recipe section, rules and preflight checks declared in method_sections.py; docs/methods.md says what it
declares. The data check, the manifest's `details` and `tunesmith train` read this registry; the recipe reads the
declarations (method_sections), which `register` keeps in step.
"""

from __future__ import annotations

from typing import Any

from tunesmith import method_sections
from tunesmith.records import register_details
from tunesmith.train import distill, dpo, grpo, reward, sft
from tunesmith.train.method import Method

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
