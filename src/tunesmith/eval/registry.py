"""The metric registry: every number tunesmith judges by, declared once with its direction, range and label.

Gates, the ladder's recommendation, checkpoint selection, GRPO's built-in rewards, the terminal tables and the
HTML reports all read a metric's direction and range from here, so "lower is better" is decided in one place.
A metric with `fn` is scored per example from an output and its reference (`tunesmith.eval.scoring`); the others
are measured by a part of eval (latency, forgetting, judge, graders, ...) and only declared here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from tunesmith.eval import metrics as m
from tunesmith.eval import tool_metrics as tm

log = logging.getLogger(__name__)

TEXT, JSON, TOOLS = "text", "json", "tools"
"""What a metric applies to: free-text references, JSON-object references, tool-call turns (eval.tool_metrics)."""
EVAL, LADDER, ROLLOUT = "eval", "ladder", "rollout"
"""What measures a metric: `tunesmith eval` (base vs tuned), `tunesmith ladder` (every rung) and/or `tunesmith rollout`
(a candidate against the served adapter on live traffic)."""
_BOTH, _EVAL, _LADDER, _LIVE = frozenset({EVAL, LADDER}), frozenset({EVAL}), frozenset({LADDER}), frozenset({ROLLOUT})
_TOOLS = frozenset({TOOLS})


@dataclass(frozen=True)
class Metric:
    """One metric: `fn(output, reference)` when it is scored per example; None where the reference does not apply."""

    name: str
    label: str
    higher_is_better: bool = True
    low: float | None = 0.0  # range; None = unbounded on that side
    high: float | None = 1.0
    applies: frozenset[str] = frozenset({TEXT, JSON})
    unit: str = ""
    by: frozenset[str] = _BOTH
    fn: Callable[[str, str], float | None] | None = None
    corpus: Callable[[list[str], list[str]], float] | None = None  # replaces the per-example mean (corpus BLEU)

    def better(self, a: float, b: float) -> bool:
        """Whether `a` beats `b` on this metric."""
        return a > b if self.higher_is_better else a < b

    def fmt(self, value: float | None) -> str:
        """The value as people read it: ms whole, counts whole, 0-1 scores with three decimals."""
        if value is None:
            return "n/a"
        if self.unit == "ms":
            return f"{value:.0f} ms"
        if self.unit == "tokens":
            return f"{value:.0f}"
        if self.high is None or self.high > 1:
            return f"{value:.4g}"
        return f"{value:.3f}"


def _lower(name: str, label: str, **kw: object) -> Metric:
    return Metric(name, label, higher_is_better=False, **kw)  # type: ignore[arg-type]


_ALL = (
    Metric("exact_match", "exact match", fn=m.exact_match),
    Metric("token_f1", "token F1", fn=m.token_f1),
    Metric("rouge_l", "ROUGE-L", fn=m.rouge_l),
    Metric("bleu", "BLEU (0-100)", high=100.0, fn=m.sentence_bleu, corpus=m.corpus_bleu),
    Metric("json_valid", "valid JSON", applies=frozenset({JSON}), fn=lambda out, _ref: m.json_valid(out)),
    Metric("json_field_accuracy", "JSON field accuracy", applies=frozenset({JSON}), fn=m.json_field_accuracy),
    Metric("semantic_similarity", "semantic similarity", low=-1.0, by=_EVAL),
    Metric("reward", "GRPO reward (weighted sum)", low=None, high=None),
    _lower("eval_loss", "reference loss (nats/token)", high=None, unit="nats/token", by=_EVAL),
    _lower("perplexity", "perplexity", low=1.0, high=None, by=_EVAL),
    Metric("win_rate_vs_base", "win rate vs base", by=_EVAL),
    Metric("judge_agreement", "judge agreement (both orders)", by=_EVAL),
    _lower("p50_batch_ms", "median batch latency", high=None, unit="ms"),
    _lower("p95_batch_ms", "95th-percentile batch latency", high=None, unit="ms"),
    _lower("p50_request_ms", "median request latency (batch size 1)", high=None, unit="ms"),
    _lower("p95_request_ms", "95th-percentile request latency (batch size 1)", high=None, unit="ms"),
    _lower("prompt_tokens", "prompt tokens per request", high=None, unit="tokens", by=_LADDER),
    _lower("completion_tokens", "completion tokens per request", high=None, unit="tokens", by=_LADDER),
    _lower("cost_per_1k", "cost per 1,000 requests", high=None, by=_LADDER),
    _lower("forgetting", "forgetting (probe accuracy lost)", low=-1.0, by=_EVAL),
    _lower("text_loss_increase", "general-text loss increase", low=None, high=None, unit="nats/token", by=_EVAL),
    _lower("hallucination_rate", "hallucination rate", by=_EVAL),
    Metric("reward_model", "reward-model score (mean)", low=None, high=None, by=_EVAL),
    Metric("pairwise_accuracy", "pairwise accuracy (held-out preference pairs)", by=_EVAL),
    Metric("reward_margin", "mean reward margin (chosen - rejected)", low=None, high=None, by=_EVAL),
    _lower("calibration_error", "reward calibration error (ECE)", high=0.5, by=_EVAL),
    # live: a rollout's candidate against the primary on the requests since it started (monitor/variants.py)
    _lower("live_error_rate", "candidate error rate", by=_LIVE),
    _lower("live_error_rate_increase", "candidate error rate - primary's", low=-1.0, by=_LIVE),
    _lower("live_latency_p95_ratio", "candidate p95 latency / primary's", high=None, by=_LIVE),
    _lower("live_down_rate_increase", "candidate share rated down - primary's", low=-1.0, by=_LIVE),
    Metric("live_reward_delta", "candidate mean reward-model score - primary's", low=None, high=None, by=_LIVE),
    _lower("live_refusal_rate_increase", "candidate refusal rate - primary's", low=-1.0, by=_LIVE),
    _lower("live_output_length_change", "|candidate answer length / primary's - 1|", high=None, by=_LIVE),
    Metric("live_output_drift_p", "candidate vs primary answers, MMD p-value (low: they differ)", by=_LIVE),
    # requests that offered tools, judged without a reference (monitor/tool_replies.py, by tool_call_valid and
    # tool_arguments_valid below): the primary's share of valid calls minus the candidate's
    _lower("live_tool_call_valid_drop", "primary's share of parsable calls - candidate's", low=-1.0, by=_LIVE),
    _lower("live_tool_arguments_valid_drop", "primary's share of schema-valid calls - candidate's", low=-1.0, by=_LIVE),
    # Reasoning models: measured from each completion's trace (eval.scoring.Answers.trace_rows); answers are scored
    # after the trace. A shorter trace costs less; a trace never closed leaves no answer.
    _lower("trace_tokens", "reasoning trace length (tokens per answer)", high=None, unit="tokens"),
    _lower("unclosed_traces", "share of answers whose trace never closed"),
    # Tool calls (eval.tool_metrics): the answer turn of each row that offers tools, parsed in the family's format;
    # the same functions are GRPO's tool rewards (train.rewards).
    Metric("tool_call_valid", "call format valid", applies=_TOOLS, fn=tm.tool_call_valid),
    Metric("tool_name_match", "right function", applies=_TOOLS, fn=tm.tool_name_match),
    Metric("tool_arguments_match", "arguments exact (as JSON)", applies=_TOOLS, fn=tm.tool_arguments_match),
    Metric("tool_arguments_valid", "arguments schema-valid", applies=_TOOLS, fn=tm.tool_arguments_valid),
    Metric("tool_decision", "called when it should, answered when not", applies=_TOOLS, fn=tm.tool_decision),
    Metric("tool_trajectory_match", "whole turn exact (calls and text)", applies=_TOOLS, fn=tm.tool_trajectory_match),
)
METRICS: dict[str, Metric] = {x.name: x for x in _ALL}
TOOL_METRICS = tuple(x.name for x in _ALL if TOOLS in x.applies)

# Families: one declaration for every member (forgetting_<category>, graders.<name>).
_PREFIXES = {
    "forgetting_": _lower("forgetting_", "forgetting in one probe category", low=-1.0, by=_EVAL),
    "graders.": Metric("graders.", "grader pass rate", by=_EVAL),
    # tool_arguments_match.<function>: a tool metric over the rows whose reference calls that function (per tool)
    **{f"{name}.": replace(METRICS[name], name=f"{name}.", fn=None) for name in TOOL_METRICS},
}

ALIASES = {"p50_latency_ms": "p50_batch_ms", "p95_latency_ms": "p95_batch_ms"}
"""Names earlier recipes used: the wall time of the batch a request was generated in, now named as such."""


def canonical(name: str) -> str:
    """The registry name for `name`: an old alias becomes its new name (logged once per call)."""
    if name in ALIASES:
        log.warning("metric %s is deprecated: it is %s (the wall time of a generation batch)", name, ALIASES[name])
        return ALIASES[name]
    return name


def metric(name: str) -> Metric:
    """The declaration of `name` (a family member included); ValueError naming the known metrics when unknown."""
    name = ALIASES.get(name, name)
    if name in METRICS:
        return METRICS[name]
    for prefix, family in _PREFIXES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return replace(family, name=name, label=f"{family.label} ({name[len(prefix) :]})")
    raise ValueError(
        f"unknown metric {name!r}; known: {', '.join(METRICS)}, forgetting_<category>, graders.<name>, <tool metric>.<function>"
    )


def higher_is_better(name: str) -> bool:
    return metric(name).higher_is_better


def per_example(json_mode: bool, tools: bool = False) -> list[Metric]:
    """The metrics scored from each output and its reference, in declaration order, for this kind of reference
    (tools: tool-call turns, eval.tool_metrics)."""
    kind = TOOLS if tools else JSON if json_mode else TEXT
    return [x for x in _ALL if x.fn is not None and kind in x.applies]
