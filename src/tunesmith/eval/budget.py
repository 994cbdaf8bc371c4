"""The generation budget: `eval.max_new_tokens`, resolved once for eval, the ladder and serve.

`auto` derives the budget from the task's own answers, so a long-answer task is not silently cut at a
demo-sized budget: the longest reference in tokens x 1.25 + 16, capped by data.max_length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunesmith import models
from tunesmith.errors import RunError
from tunesmith.eval.tool_metrics import answer_text
from tunesmith.records import read_eval_report

HEADROOM, EXTRA = 1.25, 16
NO_REFERENCES = 256  # tokens, when `auto` has no reference answers to measure (prompt-only data, serving)


@dataclass(frozen=True)
class Budget:
    """A resolved budget in tokens, and a sentence saying where it came from."""

    tokens: int
    source: str


def resolve_max_new_tokens(recipe: Any, tokenizer: Any, refs: Sequence[str] | None = None) -> Budget:
    """The eval generation budget in tokens: the recipe's number, or `auto` measured on `refs` (in tokens of
    `tokenizer`; None loads the recipe's base tokenizer)."""
    setting = recipe.eval.max_new_tokens
    if setting != "auto":
        return Budget(int(setting), "eval.max_new_tokens")
    cap = recipe.data.max_length
    if tokenizer is None and refs:
        tokenizer = models.load_tokenizer(models.resolve_base(recipe.model.base))

    texts = [answer_text(r) for r in refs or [] if r]  # a tool row's answer as the calls it writes
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts if t]
    if not lengths:
        tokens = min(NO_REFERENCES, cap)
        return Budget(tokens, f"auto: no reference answers to measure, {tokens} (capped by data.max_length {cap})")
    longest = max(lengths)
    wanted = math.ceil(longest * HEADROOM) + EXTRA
    tokens = min(wanted, cap)
    capped = f", capped by data.max_length {cap}" if wanted > cap else ""
    return Budget(tokens, f"auto: longest reference {longest} tokens x {HEADROOM} + {EXTRA}{capped}")


def run_budget(run: Any) -> int:
    """The budget a finished run's eval used (eval/report.json), so serve's golden check asks for the same;
    resolved from the recipe when the run has not been evaluated."""
    try:
        used = read_eval_report(run.dir / "eval" / "report.json").generation.get("max_new_tokens")
    except RunError:
        used = None
    return int(used) if isinstance(used, int) else resolve_max_new_tokens(run.recipe, None).tokens
