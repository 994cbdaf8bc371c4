"""ladder.json: the typed LadderReport, written and read here only.

Release gates and the studio read a ladder through `LadderReport.rung(name)`, `RungResult.value(metric)` and
`RungResult.gates`, never raw dict keys. A ladder.json of schema 1 reads into this shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from tunesmith.records import GateResult, Latency, Record, read_record, write_record

LADDER_REPORT_VERSION = 2

CostBasis = Literal["tokens", "compute"]


class RungResult(Record):
    """One rung measured on the ladder's prompts; `status` "skipped" means it was not run (see `reason`)."""

    name: str = Field(..., description="Rung id: base, base_few_shot, base_rag, tuned, tuned_rag, student.")
    label: str = Field(..., description="Rung name for people, e.g. 'base + RAG'.")
    status: Literal["ok", "skipped"] = "ok"
    reason: str | None = Field(None, description="Why a rung was skipped.")
    n_examples: int = 0
    metrics: dict[str, float] = Field(default_factory=dict, description="Quality: tunesmith.eval.scoring.score's aggregates.")
    per_tool: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Tool rows: the function each reference calls -> each tool metric's mean and n."
    )
    latency: Latency = Field(default_factory=Latency, description="The one clock, as `tunesmith eval` reports it.")
    prompt_tokens: float = Field(0.0, description="Mean prompt tokens per request.")
    completion_tokens: float = Field(0.0, description="Mean completion tokens per request.")
    cost_per_1k: float = Field(0.0, description="Cost of 1,000 requests on the report's cost basis.")
    gates: list[GateResult] = Field(default_factory=list, description="eval.gates on this rung (unmeasured ones skipped).")

    @model_validator(mode="before")
    @classmethod
    def _v1(cls, data: Any) -> Any:
        # Schema 1: p50/p95_latency_ms (the wall time of the batch a request was in), generation_s, meets {target: bool}.
        if isinstance(data, dict) and "p50_latency_ms" in data:
            data = dict(data)
            p50, p95, seconds = data.pop("p50_latency_ms"), data.pop("p95_latency_ms", None), data.pop("generation_s", 0.0)
            data["latency"] = {"p50_batch_ms": p50 or None, "p95_batch_ms": p95 or None, "total_s": seconds}
            data.pop("meets", None)  # its targets are re-read as gates; the verdicts were not kept per rule
        return data

    @property
    def passed(self) -> bool:
        """Every gate checked on this rung passed (skipped ones do not count)."""
        return all(g.passed for g in self.gates)

    def value(self, metric: str) -> float | None:
        """A registry metric as this rung measured it: quality, latency, tokens or cost; None when not measured."""
        if metric in self.metrics:
            return self.metrics[metric]
        if metric in ("prompt_tokens", "completion_tokens", "cost_per_1k"):
            return float(getattr(self, metric))
        return self.latency.values().get(metric)

    def values(self) -> dict[str, float]:
        """Every measured figure by registry name (what the gates read)."""
        out = {**self.metrics, **self.latency.values()}
        out.update({f"{m}.{tool}": v for tool, figures in self.per_tool.items() for m, v in figures.items() if m != "n"})
        return {
            **out,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_per_1k": self.cost_per_1k,
        }


class Recommendation(Record):
    rung: str | None = Field(None, description="The recommended rung; None when no rung passes the gates or none are set.")
    closest: str | None = Field(None, description="When no rung passes: the one that misses the gates by least.")
    sentence: str = Field(..., description="The recommendation and its reason, in one sentence.")
    warning: str | None = Field(None, description="Set when fine-tuning is chosen although RAG alone passed the quality gates.")


class LadderReport(Record):
    """ladder.json: every rung on the same held-out prompts, and which one to ship."""

    schema_version: int = LADDER_REPORT_VERSION
    run: str
    base_model: str
    n_examples: int
    json_mode: bool
    tool_mode: bool = Field(False, description="The held-out rows offer tools: answers are scored as tool-call turns.")
    reference: str = Field("", description="What each held-out prompt's expected answer is, as the method defines it.")
    ids: list[str] = Field(default_factory=list, description="The held-out rows every rung answered, in order.")
    primary_metric: str = Field(
        ..., description="The quality metric the chart plots (the first quality gate, else the mode's first)."
    )
    gates: dict[str, str | float] = Field(default_factory=dict, description="eval.gates: what 'good enough' means.")
    cost_basis: CostBasis
    price: float = Field(..., description="Price per 1,000 tokens (basis tokens) or per machine-hour (basis compute).")
    rungs: list[RungResult]
    recommendation: Recommendation
    generation: dict[str, int | float | bool] = Field(
        default_factory=dict, description="max_new_tokens, batch_size, greedy, few_shot_k."
    )
    rag: dict[str, str | int | None] | None = Field(None, description="The index, k and mode of the RAG rungs.")
    device: str = "cpu"

    @model_validator(mode="before")
    @classmethod
    def _v1(cls, data: Any) -> Any:
        if isinstance(data, dict) and "targets" in data:
            data = {**data, "gates": {**data["targets"], **data.get("gates", {})}}
            data.pop("targets")
        if isinstance(data, dict):
            data = {**data, "schema_version": LADDER_REPORT_VERSION}  # read into this shape (RungResult._v1)
        return data

    def rung(self, name: str) -> RungResult | None:
        return next((r for r in self.rungs if r.name == name), None)

    @property
    def measured(self) -> list[RungResult]:
        return [r for r in self.rungs if r.status == "ok"]

    @property
    def chosen(self) -> RungResult | None:
        """The recommended rung, else the closest one."""
        return self.rung(self.recommendation.rung or self.recommendation.closest or "")


def write_ladder_report(path: Path, report: LadderReport) -> None:
    write_record(path, report)


def read_ladder_report(path: Path) -> LadderReport:
    return read_record(path, LadderReport, LADDER_REPORT_VERSION)
