"""ladder.json: the typed LadderReport, written and read here only.

Release gates and the studio read a ladder through `LadderReport.rung(name)` and `RungResult.value(metric)` /
`RungResult.meets`, never raw dict keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from tunesmith.records import Record, read_record, write_record

LADDER_REPORT_VERSION = 1

CostBasis = Literal["tokens", "compute"]


class RungResult(Record):
    """One rung measured on the ladder's prompts; `status` "skipped" means it was not run (see `reason`)."""

    name: str = Field(..., description="Rung id: base, base_few_shot, base_rag, tuned, tuned_rag, student.")
    label: str = Field(..., description="Rung name for people, e.g. 'base + RAG'.")
    status: Literal["ok", "skipped"] = "ok"
    reason: str | None = Field(None, description="Why a rung was skipped.")
    n_examples: int = 0
    metrics: dict[str, float] = Field(default_factory=dict, description="Quality: the eval metrics (score_example, aggregate).")
    p50_latency_ms: float = Field(
        0.0, description="Median wall time per request (ms): the time of the batch it was generated in."
    )
    p95_latency_ms: float = Field(0.0, description="95th percentile of the same (ms).")
    prompt_tokens: float = Field(0.0, description="Mean prompt tokens per request.")
    completion_tokens: float = Field(0.0, description="Mean completion tokens per request.")
    generation_s: float = Field(0.0, description="Wall seconds spent generating every request of this rung.")
    cost_per_1k: float = Field(0.0, description="Cost of 1,000 requests on the report's cost basis.")
    meets: dict[str, bool] = Field(default_factory=dict, description="Target name -> met by this rung.")

    def value(self, metric: str) -> float | None:
        """A quality metric, or one of p50_latency_ms, p95_latency_ms, prompt_tokens, completion_tokens, cost_per_1k."""
        if metric in self.metrics:
            return self.metrics[metric]
        if metric in ("p50_latency_ms", "p95_latency_ms", "prompt_tokens", "completion_tokens", "cost_per_1k"):
            return float(getattr(self, metric))
        return None


class Recommendation(Record):
    rung: str | None = Field(None, description="The recommended rung; None when no rung meets the targets or none are set.")
    closest: str | None = Field(None, description="When no rung meets the targets: the one that misses them by least.")
    sentence: str = Field(..., description="The recommendation and its reason, in one sentence.")
    warning: str | None = Field(None, description="Set when fine-tuning is chosen although RAG alone met the quality targets.")


class LadderReport(Record):
    """ladder.json: every rung on the same held-out prompts, and which one to ship."""

    schema_version: int = LADDER_REPORT_VERSION
    run: str
    base_model: str
    n_examples: int
    json_mode: bool
    primary_metric: str = Field(
        ..., description="The quality metric the chart plots (the first quality target, else the mode's first)."
    )
    targets: dict[str, float] = Field(default_factory=dict)
    cost_basis: CostBasis
    price: float = Field(..., description="Price per 1,000 tokens (basis tokens) or per machine-hour (basis compute).")
    rungs: list[RungResult]
    recommendation: Recommendation
    generation: dict[str, int | float | bool] = Field(
        default_factory=dict, description="max_new_tokens, batch_size, greedy, few_shot_k."
    )
    rag: dict[str, str | int | None] | None = Field(None, description="The index, k and mode of the RAG rungs.")
    device: str = "cpu"

    def rung(self, name: str) -> RungResult | None:
        return next((r for r in self.rungs if r.name == name), None)

    @property
    def measured(self) -> list[RungResult]:
        return [r for r in self.rungs if r.status == "ok"]


def write_ladder_report(path: Path, report: LadderReport) -> None:
    write_record(path, report)


def read_ladder_report(path: Path) -> LadderReport:
    return read_record(path, LadderReport, LADDER_REPORT_VERSION)
