"""The optional measurements `tunesmith eval` adds for the release gates, into EvalReport.extra.

forgetting (eval.forgetting or a forgetting gate), hallucination (JSON tasks always; free text with a judge),
judge (eval.judge), graders (eval.graders), and semantic similarity into the summary (free-text references, or
eval.similarity). Latency comes from the one clock (tunesmith.eval.scoring) while eval generates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from tunesmith.config import EvalSection
from tunesmith.eval import hallucination
from tunesmith.eval.forgetting import forgetting_scores, load_probe, probe_side
from tunesmith.eval.graders import grader_items, load_graders, run_graders
from tunesmith.eval.judge import judges_for_graders, open_section, pairwise, unsupported_claims
from tunesmith.eval.similarity import mean_similarity
from tunesmith.records import EvalExtra, Forgetting, GraderScore, Hallucination, JudgeResult

log = logging.getLogger(__name__)


@dataclass
class EvalOutputs:
    """What the eval generated, for the measurements that score it."""

    ids: list[str]
    convs: list[list[dict[str, Any]]]
    refs: list[str]
    outputs: dict[str, list[str]]
    json_mode: bool
    rows: list[dict[str, Any]] | None = None  # each held-out row's own fields (graders read them as item.<field>)


def wants_forgetting(section: EvalSection) -> bool:
    return section.forgetting or any(
        name == "forgetting" or name.startswith(("forgetting_", "text_loss")) for name in section.gates
    )


def measure(
    section: EvalSection,
    data: EvalOutputs,
    sides: dict[str, Any],
    tokenizer: Any,
    max_length: int,
    progress: Any = None,
) -> EvalExtra:
    """Every optional measurement the section asks for, as EvalReport.extra."""
    extra = EvalExtra()
    sources = [hallucination.source_text(c) for c in data.convs]
    prompts = [c[-1]["content"] if c else "" for c in data.convs]
    judge = _judge(section)
    if data.json_mode:
        extra.hallucination = Hallucination(**hallucination.json_hallucination(data.outputs["tuned"], data.refs, sources))
    elif judge is not None:
        claims = unsupported_claims(judge, data.outputs["tuned"], data.refs, sources)
        extra.hallucination = Hallucination(**hallucination.rate(claims), method="claims labelled by the judge")
    if judge is not None:
        n = (section.judge.max_examples if section.judge else 0) or len(prompts)
        extra.judge = JudgeResult(
            **pairwise(judge, prompts[:n], data.refs[:n], data.outputs["base"][:n], data.outputs["tuned"][:n])
        )
    if section.graders:
        items = grader_items(data.ids, prompts, data.refs, data.rows)
        graded = run_graders(load_graders(section.graders), data.outputs, items, judges_for_graders(section.judge, judge))
        extra.graders = {name: {side: GraderScore(**s) for side, s in sides.items()} for name, sides in graded.items()}
    if wants_forgetting(section):
        extra.forgetting = Forgetting(**forgetting(sides, tokenizer, section.batch_size, max_length, progress))
    return extra


def grader_summary(extra: EvalExtra) -> dict[str, dict[str, float]]:
    """side -> {graders.<name>: pass rate}: each grader as the registry metric gates, reports and the studio read."""
    out: dict[str, dict[str, float]] = {}
    for name, sides in extra.graders.items():
        for side, score in sides.items():
            out.setdefault(side, {})[f"graders.{name}"] = score.pass_rate
    return out


def grader_warnings(extra: EvalExtra) -> list[str]:
    """One line per grader and side that could not score some outputs (they count as 0, not passed)."""
    return [
        f"grader {name} could not score {s.failed} {side} output(s), counted as 0: {s.first_error}"
        for name, sides in extra.graders.items()
        for side, s in sides.items()
        if s.failed
    ]


def similarity_summary(section: EvalSection, data: EvalOutputs) -> dict[str, float]:
    """side -> mean semantic similarity to the references; empty for JSON references unless eval.similarity."""
    if data.json_mode and not section.similarity:
        return {}

    return {side: mean_similarity(texts, data.refs) for side, texts in data.outputs.items()}


def forgetting(sides: dict[str, Any], tokenizer: Any, batch_size: int, max_length: int, progress: Any = None) -> dict[str, Any]:
    """The bundled probe and general-text loss on base and tuned; forgetting.forgetting_scores of them."""
    items = load_probe()
    task = progress.add_task("forgetting probe", total=2) if progress else None
    answers: dict[str, list[str]] = {}
    losses: dict[str, float] = {}
    for side in ("base", "tuned"):
        with sides[side].context():  # scoring.Answerer: the base is the run's model with its adapter disabled
            answers[side], losses[side] = probe_side(sides[side].model, tokenizer, items, batch_size, max_length)
        if progress:
            progress.advance(task, 1)
    return forgetting_scores(items, answers["base"], answers["tuned"], losses["base"], losses["tuned"])


def _judge(section: EvalSection) -> Any:
    if section.judge is None:
        return None

    return open_section(section.judge)
