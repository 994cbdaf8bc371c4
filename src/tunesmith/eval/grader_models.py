"""score_model and label_model graders: their messages, rendered for each output, answered by the LLM judge
(tunesmith.eval.judge: a local run or model, or any OpenAI-compatible endpoint), greedily.

score_model: the first number in the reply, clamped to the grader's range. label_model: the label the reply names
first (whole word, any case; the judge is told the labels, since it cannot be held to them as OpenAI's structured
output holds its own), 1 when it is a passing label, else 0. A reply with no number / no label scores 0 and is
counted with the reply, as is an output whose messages do not render.
"""

from __future__ import annotations

import re
from typing import Any

from tunesmith.errors import RecipeError
from tunesmith.eval.graders import Graded, JudgeFor, LabelModel, ScoreModel, _render, _Unscored

LABEL_INSTRUCTION = "Answer with exactly one of these labels and nothing else: {labels}."
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def messages(grader: ScoreModel | LabelModel, sample: dict[str, Any], item: dict[str, Any]) -> list[dict[str, str]]:
    """The judge's conversation for one output (developer messages sent as system)."""
    conv = [
        {"role": "system" if m.role == "developer" else m.role, "content": _render(m.text(), sample, item)} for m in grader.input
    ]
    if isinstance(grader, LabelModel):
        conv.append({"role": "user", "content": LABEL_INSTRUCTION.format(labels=", ".join(grader.labels))})
    return conv


def label_of(reply: str, labels: list[str]) -> str | None:
    """The label the reply names first (whole word, case-insensitive; the longer label on a tie), None when none."""
    found = []
    for label in labels:
        m = re.search(rf"(?<!\w){re.escape(label)}(?!\w)", reply, re.IGNORECASE)
        if m:
            found.append((m.start(), -len(label), label))
    return min(found)[2] if found else None


def _value(grader: ScoreModel | LabelModel, reply: str) -> tuple[float, str | None]:
    brief = reply.strip().replace("\n", " ")[:80]
    if isinstance(grader, LabelModel):
        label = label_of(reply, grader.labels)
        if label is None:
            return 0.0, f"the judge named none of the labels ({', '.join(grader.labels)}): {brief!r}"
        return float(label in grader.passing_labels), None
    m = _NUMBER.search(reply)
    if m is None:
        return 0.0, f"the judge's reply holds no score: {brief!r}"
    low, high = grader.range
    return min(high, max(low, float(m.group()))), None


def model_grade(
    grader: ScoreModel | LabelModel, samples: list[dict[str, Any]], items: list[dict[str, Any]], judge_for: JudgeFor | None
) -> Graded:
    """Every output's score from one batch of judge requests."""
    if judge_for is None:
        raise RecipeError(
            [
                (
                    f"eval.graders.{grader.name}",
                    f"{grader.type} needs a judge model: set eval.judge, or give the grader's model as a run folder, "
                    "model spec or OpenAI-compatible URL",
                )
            ]
        )
    out = Graded([0.0] * len(samples), [None] * len(samples))
    convs, where = [], []
    for k, (sample, item) in enumerate(zip(samples, items, strict=True)):
        try:
            convs.append(messages(grader, sample, item))
            where.append(k)
        except _Unscored as exc:
            out.errors[k] = str(exc.args[0])
    replies = judge_for(grader.model).complete(convs) if convs else []
    for k, reply in zip(where, replies, strict=True):
        out.scores[k], out.errors[k] = _value(grader, reply)
    return out
