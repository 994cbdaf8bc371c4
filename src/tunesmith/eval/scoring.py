"""The one scoring path and the one clock: eval, the ladder, checkpoint selection and retrain all answer prompts
with `answer` and score the outputs with `score`, so a figure means the same thing in every report.

`answer` generates greedily through the one generation function while `Clock` times each batch from its start
to its answers. `score` takes outputs and their references and returns every per-example metric of the registry
that applies (JSON or text references) and the aggregates (means; corpus BLEU), plus `reward` when the method
scores by reward functions (GRPO) instead of, or besides, a reference.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from tunesmith.eval import generate, metrics, registry, tool_metrics
from tunesmith.eval.generate import family_of
from tunesmith.loader import load_base
from tunesmith.records import Latency

log = logging.getLogger(__name__)

Conversation = list[dict[str, Any]]
Reward = Callable[[list[Conversation], list[str]], list[float]]


def score_example(pred: str, ref: str, json_mode: bool, tools: bool = False) -> dict[str, float | None]:
    """Every per-example registry metric for one prediction (None where the reference does not apply).

    Text references: exact_match, token_f1, rouge_l (0-1), bleu (0-100); JSON references add json_valid and
    json_field_accuracy (None when this reference is not a JSON object); tool rows (tools): the tool metrics of
    eval.tool_metrics, on canonical turns (`pred` an output_turn, `ref` a reference_turn).
    """
    return {m.name: m.fn(pred, ref) for m in registry.per_example(json_mode, tools) if m.fn is not None}


@dataclass
class Scores:
    """Per-example scores (one dict per output) and their aggregates (means, corpus BLEU)."""

    per_example: list[dict[str, float | None]]
    aggregate: dict[str, float]
    per_tool: dict[str, dict[str, float]] = field(default_factory=dict)  # tool -> metric -> mean, and n (tool rows)


def score(
    outputs: Sequence[str],
    refs: Sequence[str],
    json_mode: bool,
    reward: Reward | None = None,
    prompts: Sequence[Conversation] = (),
    measured: Sequence[dict[str, float]] = (),
    tools: bool = False,
) -> Scores:
    """Score outputs (final answers: a reasoning trace is not part of them) against their references. Rows without
    any reference (prompt-only data) get no reference metrics; with `reward` (the GRPO rewards of the run), every row
    also gets `reward`; `measured`: per-example figures measured while generating (Answers.trace_rows); tools: the
    outputs and references are tool turns (Answers.tool_outputs, tool_metrics.references), scored per tool too."""
    if len(outputs) != len(refs):
        raise ValueError(f"{len(outputs)} outputs but {len(refs)} references")
    has_refs = any(r.strip() for r in refs)
    rows: list[dict[str, float | None]] = [
        score_example(o, r, json_mode, tools) if has_refs else {} for o, r in zip(outputs, refs)
    ]
    for row, extra in zip(rows, measured):
        row.update(extra)
    if reward is not None:
        try:
            values = reward(list(prompts), list(outputs))
        except KeyError as exc:  # a reward reading a column the held-out rows do not keep
            log.warning("the GRPO rewards were not scored: %s", exc)
            values = []
        for row, value in zip(rows, values):
            row["reward"] = value
    agg = metrics.aggregate(rows)
    for m in registry.per_example(json_mode, tools):
        if has_refs and m.corpus is not None:
            agg[m.name] = m.corpus(list(outputs), list(refs))
    return Scores(rows, agg, tool_metrics.per_tool(rows, refs) if tools else {})


def _percentile(values: list[float], q: float) -> float | None:
    import numpy as np

    return float(np.percentile(values, q)) if values else None


@dataclass
class Clock:
    """An on_batch callback that times each generation batch from the moment it starts (`start`, or the end of the
    previous batch) to its answers; `then` is called after, with the batch size (a progress bar)."""

    batch_size: int
    then: Callable[[int], None] | None = None
    batches: list[tuple[int, float]] = field(default_factory=list)  # (requests, seconds)
    last: float = field(default_factory=time.perf_counter)

    def start(self) -> None:
        self.last = time.perf_counter()

    def __call__(self, n: int) -> None:
        now = time.perf_counter()
        self.batches.append((n, now - self.last))
        self.last = now
        if self.then is not None:
            self.then(n)

    def latency(self) -> Latency:
        """Percentiles of the batch wall times; request latency only where each batch was one request."""
        ms = [s * 1000.0 for _, s in self.batches]
        single = self.batch_size == 1
        return Latency(
            batch_size=self.batch_size,
            requests=sum(n for n, _ in self.batches),
            batches=len(self.batches),
            total_s=sum(s for _, s in self.batches),
            p50_batch_ms=_percentile(ms, 50),
            p95_batch_ms=_percentile(ms, 95),
            p50_request_ms=_percentile(ms, 50) if single else None,
            p95_request_ms=_percentile(ms, 95) if single else None,
        )


@dataclass
class Answers:
    """Greedy completions in input order and the clock's figures."""

    completions: list[Any]
    latency: Latency

    @property
    def texts(self) -> list[str]:
        """The final answers (after any reasoning trace): what every reference metric scores."""
        return [c.answer for c in self.completions]

    def tool_outputs(self, style: str | None) -> list[str]:
        """Each completion as a tool turn (eval.tool_metrics.output_turn): parsed in the family's `style` from its
        text with special tokens, after any trace."""
        return [tool_metrics.completion_turn(c.raw, style, c.opened, c.think) for c in self.completions]

    @property
    def traced(self) -> bool:
        return any(c.reasoning is not None for c in self.completions)

    def trace_rows(self, tokenizer: Any) -> list[dict[str, float]]:
        """Per answer: `trace_tokens` (tokens of its reasoning trace, 0 without one) and `unclosed_traces` (1 when
        the trace was opened and never closed, so there is no answer); their means are the registry's metrics."""
        rows = []
        for c in self.completions:
            n = len(tokenizer(c.reasoning, add_special_tokens=False)["input_ids"]) if c.reasoning else 0
            rows.append({"trace_tokens": float(n), "unclosed_traces": float(not c.closed)})
        return rows


def trace_rows(answers: dict[str, Answers], tokenizer: Any) -> dict[str, list[dict[str, float]]]:
    """Answers.trace_rows for every side when any side reasoned (so base and tuned compare); {} when none did."""
    if not any(a.traced for a in answers.values()):
        return {}
    return {side: a.trace_rows(tokenizer) for side, a in answers.items()}


@dataclass
class Answerer:
    """A loaded model that answers as one side: `adapter_off` answers as the base, the run's adapter disabled;
    `thinking`: the thinking mode its prompts are rendered in (the run's)."""

    model: Any
    tokenizer: Any
    adapter_off: bool = False
    thinking: bool | None = None

    def context(self) -> Any:
        return self.model.disable_adapter() if self.adapter_off else nullcontext()


def run_answerers(run: Any, loaded: Any) -> dict[str, Answerer]:
    """base and tuned for a run loaded with loader.load_run_model: one model in memory for an adapter run (base =
    the same object with its adapter disabled), the base loaded beside a full fine-tune."""
    # Both sides are prompted in the run's thinking mode: the same bytes, so only the weights differ.
    tuned = Answerer(loaded.model, loaded.tokenizer, thinking=loaded.thinking)
    if loaded.has_adapter:
        return {"base": Answerer(loaded.model, loaded.tokenizer, adapter_off=True, thinking=loaded.thinking), "tuned": tuned}
    return {"base": Answerer(load_base(run).eval(), loaded.tokenizer, thinking=loaded.thinking), "tuned": tuned}


def answer(
    model: Any,
    tokenizer: Any,
    prompts: list[Conversation],
    max_new_tokens: int,
    batch_size: int,
    advance: Callable[[int], None] | None = None,
    thinking: bool | None = None,
    tools: Sequence[list[Any] | None] | None = None,
) -> Answers:
    """Greedy answers to `prompts` (the one generation function) in the thinking mode given (the run's), each
    batch timed by the one clock; tools: per prompt, the tools it offers (rendered by the family's template)."""
    clock = Clock(batch_size, advance)
    clock.start()
    done = generate.generate_detailed(
        model, tokenizer, prompts, max_new_tokens, batch_size, on_batch=clock, thinking=thinking, tools=tools
    )
    return Answers(done, clock.latency())


def modes(refs: Sequence[str]) -> tuple[bool, bool]:
    """(json_mode, tool_mode) of a set of references: tool-call turns (any row offers tools), else JSON objects."""
    tools = tool_metrics.tool_mode(refs)
    return metrics.references_are_json(refs) and not tools, tools


def scored_texts(answers: Answers, model: Any, tokenizer: Any, tools: bool) -> list[str]:
    """What `score` takes from a model's answers: the final answers, or in tool mode each completion as a tool turn
    parsed in the model's family format."""
    return answers.tool_outputs(tool_style(model, tokenizer)) if tools else answers.texts


def tool_style(model: Any, tokenizer: Any) -> str | None:
    """The tool-call format a loaded model's family writes (families.tools.STYLES), None when it documents none."""
    return family_of(model, tokenizer).tools


def progress_advance(progress: Any, description: str, total: int) -> Callable[[int], None] | None:
    """A rich progress task's advance callback (None without a progress display)."""
    if progress is None:
        return None
    task = progress.add_task(description, total=total)
    return lambda n: progress.advance(task, n)
