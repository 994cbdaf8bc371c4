"""The optional measurements `tunesmith eval` adds for the release gates, into EvalReport.extra.

latency (always: per-request batch wall time while generating), forgetting (eval.forgetting or a forgetting
gate), hallucination (JSON tasks always; free text with a judge), judge (eval.judge), graders (eval.graders),
and semantic similarity into the summary (free-text references, or eval.similarity).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from tunesmith.config import EvalSection

log = logging.getLogger(__name__)


@dataclass
class BatchClock:
    """An on_batch callback that times generate_detailed's batches: each request's latency is its batch's wall time (ms)."""

    then: Callable[[int], None] | None = None
    latencies: list[float] = field(default_factory=list)
    last: float = field(default_factory=time.perf_counter)

    def __call__(self, n: int) -> None:
        now = time.perf_counter()
        self.latencies += [(now - self.last) * 1000.0] * n
        self.last = now
        if self.then is not None:
            self.then(n)

    def summary(self) -> dict[str, float]:
        import numpy as np

        if not self.latencies:
            return {}
        return {"p50_ms": float(np.percentile(self.latencies, 50)), "p95_ms": float(np.percentile(self.latencies, 95))}


def side_model(model: Any, base_model: Any, has_adapter: bool, side: str) -> tuple[Any, Any]:
    """(context, model) answering for `side`: the base is the adapter-disabled model, or a separately loaded base."""
    ctx = model.disable_adapter() if side == "base" and has_adapter else nullcontext()
    target = base_model if side == "base" and base_model is not None else model
    return ctx, target


@dataclass
class EvalOutputs:
    """What the eval generated, for the measurements that score it."""

    ids: list[str]
    convs: list[list[dict[str, Any]]]
    refs: list[str]
    outputs: dict[str, list[str]]
    json_mode: bool


def wants_forgetting(section: EvalSection) -> bool:
    return section.forgetting or any(
        name == "forgetting" or name.startswith(("forgetting_", "text_loss")) for name in section.gates
    )


def measure(
    section: EvalSection,
    data: EvalOutputs,
    sides: Callable[[str], tuple[Any, Any]],
    tokenizer: Any,
    max_length: int,
    progress: Any = None,
) -> dict[str, Any]:
    """Every optional measurement the section asks for; the keys of EvalReport.extra they fill."""
    from tunesmith.eval import hallucination

    extra: dict[str, Any] = {}
    sources = [hallucination.source_text(c) for c in data.convs]
    prompts = [c[-1]["content"] if c else "" for c in data.convs]
    judge = _judge(section)
    if data.json_mode:
        extra["hallucination"] = hallucination.json_hallucination(data.outputs["tuned"], data.refs, sources)
    elif judge is not None:
        from tunesmith.eval.judge import unsupported_claims

        claims = unsupported_claims(judge, data.outputs["tuned"], data.refs, sources)
        extra["hallucination"] = {**hallucination.rate(claims), "method": "claims labelled by the judge"}
    if judge is not None:
        from tunesmith.eval.judge import pairwise

        n = (section.judge.max_examples if section.judge else 0) or len(prompts)
        extra["judge"] = pairwise(judge, prompts[:n], data.refs[:n], data.outputs["base"][:n], data.outputs["tuned"][:n])
    if section.graders:
        from tunesmith.eval.graders import grader_items, load_graders, run_graders

        extra["graders"] = run_graders(
            load_graders(section.graders), data.outputs, grader_items(data.ids, prompts, data.refs), _judge_for(section, judge)
        )
    if wants_forgetting(section):
        extra["forgetting"] = forgetting(sides, tokenizer, section.batch_size, max_length, progress)
    return extra


def similarity_summary(section: EvalSection, data: EvalOutputs) -> dict[str, float]:
    """side -> mean semantic similarity to the references; empty for JSON references unless eval.similarity."""
    if data.json_mode and not section.similarity:
        return {}
    from tunesmith.eval.similarity import mean_similarity

    return {side: mean_similarity(texts, data.refs) for side, texts in data.outputs.items()}


def forgetting(
    sides: Callable[[str], tuple[Any, Any]], tokenizer: Any, batch_size: int, max_length: int, progress: Any = None
) -> dict[str, Any]:
    """The bundled probe and general-text loss on base and tuned; forgetting.forgetting_scores of them."""
    from tunesmith.eval.forgetting import forgetting_scores, load_probe, probe_side

    items = load_probe()
    task = progress.add_task("forgetting probe", total=2) if progress else None
    answers: dict[str, list[str]] = {}
    losses: dict[str, float] = {}
    for side in ("base", "tuned"):
        ctx, target = sides(side)
        with ctx:
            answers[side], losses[side] = probe_side(target, tokenizer, items, batch_size, max_length)
        if progress:
            progress.advance(task, 1)
    return forgetting_scores(items, answers["base"], answers["tuned"], losses["base"], losses["tuned"])


def _judge(section: EvalSection) -> Any:
    if section.judge is None:
        return None
    from tunesmith.eval.judge import open_judge

    j = section.judge
    return open_judge(j.model, j.endpoint_model, j.api_key_env, j.max_new_tokens)


def _judge_for(section: EvalSection, judge: Any) -> Callable[[str], Any]:
    """score_model graders' model: a URL or local spec of its own, else the eval.judge endpoint asked for that model
    name, else the eval.judge itself."""
    from tunesmith.eval.judge import EndpointJudge, open_judge

    cache: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in cache:
            j = section.judge
            if name.startswith(("http://", "https://")) or judge is None:
                cache[name] = open_judge(name)
            elif isinstance(judge, EndpointJudge) and j is not None:
                cache[name] = EndpointJudge(j.model, name, j.api_key_env, j.max_new_tokens)
            else:
                cache[name] = judge
        return cache[name]

    return get
