"""A GRPO reward that is an eval grader: the same definition (a graders JSON file) `tunesmith eval` reports.

An imported reinforcement job's project holds `grader_reward.py`, two lines binding `reward` to
`grader_reward(<its graders.json>, <the job's grader name>)`; its recipe names it as a custom reward. Each
completion is scored by tunesmith.eval.graders.scores with the item every eval grader sees (grader_items: the
row's reference, the prompt, an id). As in OpenAI's graders, a completion the grader cannot score (a template
that does not render for it, a python grader that raises) scores 0; the first such error is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.errors import RecipeError

log = logging.getLogger(__name__)

# TRL passes these with the dataset columns; they are not per-completion values.
_NOT_COLUMNS = {"completion_ids", "trainer_state", "log_extra", "log_metric", "environments"}


def _prompt_text(prompt: Any) -> str:
    """The last message of a prompt (what eval's item.input holds), or the prompt text itself."""
    if isinstance(prompt, list) and prompt:
        last = prompt[-1]
        return str(last.get("content") or "") if isinstance(last, dict) else str(last)
    return str(prompt)


def grader_reward(path: str | Path, name: str) -> Callable[..., list[float]]:
    """The TRL reward function scoring completions with grader `name` of the graders file at `path`."""
    from tunesmith.eval.graders import grader_items, load_graders, scores
    from tunesmith.train.rewards import completion_text

    try:
        found = [g for g in load_graders(str(path)) if g.name == name]
    except ValueError as exc:
        raise RecipeError([("grpo.rewards", str(exc))]) from None
    if not found:
        raise RecipeError([("grpo.rewards", f"no grader named `{name}` in {path}")])
    grader, failures = found[0], [0]

    def reward(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        n = len(completions)
        refs = [str(r) for r in columns.get("reference") or [""] * n]
        ids = [str(i) for i in columns.get("id") or range(n)]
        items = grader_items(ids, [_prompt_text(p) for p in prompts], refs)
        extra = {k: v for k, v in columns.items() if k not in _NOT_COLUMNS and isinstance(v, list) and len(v) == n}
        out = []
        for k, completion in enumerate(completions):
            item = {**{key: value[k] for key, value in extra.items()}, **items[k]}
            try:
                out.append(float(scores(grader, [completion_text(completion)], [item])[0]))
            except RecipeError as exc:  # one output the grader cannot score is a 0, as in OpenAI's graders
                if not failures[0]:
                    log.warning("grader %s could not score a completion (scored 0): %s", name, exc.problems[0][1])
                failures[0] += 1
                out.append(0.0)
        return out

    reward.__name__ = name  # TRL logs rewards/<name>/mean
    return reward


REWARD_FILE = "grader_reward.py"


def reward_file_text(graders_file: str, name: str) -> str:
    """The project's reward module: `reward` is grader `name` of `graders_file` (next to it)."""
    return (
        f'"""GRPO reward of this project: grader `{name}` of {graders_file}, the definition `tunesmith eval` also '
        'scores with."""\n\n'
        "from pathlib import Path\n\n"
        "from tunesmith.migrate.reward import grader_reward\n\n"
        f"reward = grader_reward(Path(__file__).with_name({graders_file!r}), {name!r})\n"
    )
