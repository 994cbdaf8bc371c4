"""What every grader shares: its templates (Jinja2, sandboxed), the "cannot score this output" signal and the
scores it gives (graders.py defines the grader types; grader_models.py grades with a judge model)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

JudgeFor = Callable[[str], Any]  # model name -> a judge.Judge


@functools.lru_cache(maxsize=256)
def jinja_template(text: str) -> Any:
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment  # a grader's template may not reach Python internals

    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)  # noqa: S701 - text, not HTML
    return env.from_string(text)


class Unscored(Exception):
    """This output cannot be scored by this grader: args[0] says why."""


def render(template: str, sample: dict[str, Any], item: dict[str, Any]) -> str:
    try:
        return str(jinja_template(template).render(sample=sample, item=item))
    except Exception as exc:  # noqa: BLE001 - any failure of one output's rendering scores that output 0
        keys = ", ".join(sorted(item))
        raise Unscored(f"template {template!r}: {exc} (item has {keys}; sample has output_text, output_json)") from None


@dataclass
class Graded:
    """One grader's scores of a list of outputs; errors[i] says why output i scored 0 unjudged (None: it was scored)."""

    scores: list[float]
    errors: list[str | None]

    @property
    def failed(self) -> int:
        return sum(e is not None for e in self.errors)

    @property
    def first_error(self) -> str | None:
        return next((e for e in self.errors if e is not None), None)
