"""monitor.json (MonitorReport) and monitor.html: written and read here only.

A report holds one `Signal` per comparison (recent window vs training data, recent vs the earlier window) and per-hour
series for the pictures. `drifted` is what the CLI's exit code follows.
"""

from __future__ import annotations

import html
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from tunesmith import htmlkit
from tunesmith.atomic import write_text_atomic
from tunesmith.errors import RunError
from tunesmith.records import Record

MONITOR_REPORT_VERSION = 3  # 2: `replicas`; 3: `variants`, `reward_model`, HourPoint.reward_mean
REPORT_NAME, HTML_NAME = "monitor.json", "monitor.html"
DRIFT_EXIT = 3
"""Exit code of `tunesmith monitor` when a signal crosses its threshold (1 stays 'the command itself failed')."""


class Signal(Record):
    """One drift signal: the recent window's value, the reference's, the statistic judged and its verdict."""

    name: str = Field(
        ...,
        description="input_embedding, input_length, input_vocabulary, output_length, refusal_rate, "
        "json_valid_rate, down_rate, reward_model, latency_p95, error_rate.",
    )
    kind: Literal["input", "output", "ops"]
    reference: str = Field(..., description="What the recent window is compared with: training or earlier.")
    recent: float | None = None
    baseline: float | None = Field(None, description="The reference's value.")
    statistic: float | None = Field(None, description="What the threshold is applied to (p-value, change, divergence).")
    threshold: float
    rule: str = Field(..., description="When the signal is drift, e.g. 'p < 0.05', '|change| > 0.5'.")
    status: Literal["ok", "drift", "skip"]
    detail: str = ""


class Window(Record):
    start: datetime
    end: datetime
    requests: int


class HourPoint(Record):
    """Per UTC hour: the series monitor.html plots."""

    hour: datetime
    requests: int
    error_rate: float
    latency_p95_s: float | None
    prompt_words: float | None
    output_words: float | None
    refusal_rate: float | None
    down_rate: float | None
    reward_mean: float | None = Field(None, description="Mean reward-model score of the hour's scored answers.")


class ReplicaStats(Record):
    """The recent window's rows written by one replica (a shared log holds several)."""

    replica: str = Field(..., description="serve --replica-id (default hostname:port); '' for rows written without one.")
    requests: int = Field(..., description="Rows: every answer, errors included.")
    answered: int = Field(..., description="Rows with an HTTP status below 400.")
    errors: int
    latency_p95_s: float | None = Field(None, description="p95 latency of the answered requests, seconds.")


class VariantStats(Record):
    """One model's rows answered by one rollout variant (monitor/variants.py computes the figures)."""

    model: str
    variant: str = Field(..., description="primary, canary or shadow.")
    figures: dict[str, float] = Field(
        default_factory=dict,
        description="requests, errors, error_rate, latency_p50_s, latency_p95_s, rated, down_rate, output_words, "
        "refusal_rate, reward_model (mean score), output_drift_p (candidate answers vs primary: MMD p-value).",
    )


class MonitorReport(Record):
    schema_version: int = MONITOR_REPORT_VERSION
    serve_dir: str = Field(..., description="The log read: a serve folder or file, or a URL with its password masked.")
    baseline: str | None = Field(None, description="Run folder whose training data is the reference; None when not given.")
    created: datetime
    recent: Window
    earlier: Window
    json_task: bool = Field(False, description="The training answers are JSON, so json_valid_rate is watched.")
    embedder: str = ""
    signals: list[Signal] = Field(default_factory=list)
    hours: list[HourPoint] = Field(default_factory=list)
    replicas: list[ReplicaStats] = Field(default_factory=list, description="The recent window per replica.")
    reward_model: str | None = Field(None, description="The reward run that scored served answers (monitor.reward_model).")
    variants: list[VariantStats] = Field(
        default_factory=list, description="The recent window per model and rollout variant, when a rollout ran in it."
    )

    @property
    def drifted(self) -> list[Signal]:
        return [s for s in self.signals if s.status == "drift"]


def write_report(path: Path, report: MonitorReport) -> None:
    write_text_atomic(path, report.model_dump_json(indent=1) + "\n")


def read_report(path: str | Path) -> MonitorReport:
    """A monitor.json back as a MonitorReport; RunError when unreadable or newer than this code."""
    path = Path(path)
    try:
        report = MonitorReport.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError) as exc:
        raise RunError(f"{path} is not a readable monitor report: {exc}") from None
    if report.schema_version > MONITOR_REPORT_VERSION:
        raise RunError(
            f"{path} has schema_version {report.schema_version}, newer than this tunesmith reads ({MONITOR_REPORT_VERSION})",
            hint="Upgrade tunesmith to read it.",
        )
    return report


def latest(serve_dir: str | Path) -> MonitorReport | None:
    """The report `tunesmith monitor` last wrote for a serve folder (SERVE_DIR/monitor/monitor.json), if any."""
    path = Path(serve_dir) / "monitor" / REPORT_NAME
    return read_report(path) if path.is_file() else None


_SERIES = [
    ("requests", "requests"),
    ("error_rate", "error rate"),
    ("latency_p95_s", "p95 latency (s)"),
    ("prompt_words", "mean prompt words"),
    ("output_words", "mean answer words"),
    ("refusal_rate", "refusal rate"),
    ("down_rate", "share rated down"),
    ("reward_mean", "mean reward-model score"),
]


def _png(report: MonitorReport) -> bytes:
    """The per-hour series as one PNG, recent window shaded."""
    fig = htmlkit.figure(9, 1.7 * len(_SERIES))
    axes = fig.subplots(len(_SERIES), 1, sharex=True)
    times = [h.hour for h in report.hours]
    for ax, (key, label) in zip(axes, _SERIES):
        values = [getattr(h, key) for h in report.hours]
        ax.plot(times, [float("nan") if v is None else v for v in values], marker=".", lw=1)
        ax.axvspan(report.recent.start, report.recent.end, color="tab:orange", alpha=0.12)
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[-1].set_xlabel("hour (UTC); shaded: recent window")
    fig.tight_layout()
    return htmlkit.png(fig)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


VARIANT_FIGURES = ("requests", "error_rate", "latency_p95_s", "rated", "down_rate", "reward_model", "output_drift_p",
                   "tool_call_valid", "tool_arguments_valid", "tool_calls_unparsable")  # fmt: skip


def variant_table(report: MonitorReport) -> str:
    """The recent window per model and rollout variant (primary, canary, shadow), as an HTML section."""
    if not report.variants:
        return ""
    head = "".join(f"<th>{f}</th>" for f in VARIANT_FIGURES)
    rows = "".join(
        f"<tr><td>{html.escape(v.model)}</td><td>{html.escape(v.variant)}</td>"
        + "".join(f"<td>{_fmt(v.figures.get(f))}</td>" for f in VARIANT_FIGURES)
        + "</tr>"
        for v in report.variants
    )
    return f"<h2>Recent window by rollout variant</h2><table><tr><th>model</th><th>variant</th>{head}</tr>{rows}</table>"


def write_html(path: Path, report: MonitorReport) -> None:
    """monitor.html: the signal table and the per-hour pictures."""
    status_class = {"ok": "ok", "drift": "bad", "skip": "flat"}
    rows = "".join(
        f"<tr><td>{html.escape(s.name)}</td><td>{s.reference}</td><td>{_fmt(s.recent)}</td><td>{_fmt(s.baseline)}</td>"
        f"<td>{_fmt(s.statistic)}</td><td>{html.escape(s.rule)}</td>"
        f"<td class='{status_class[s.status]}'>{s.status}</td><td>{html.escape(s.detail)}</td></tr>"
        for s in report.signals
    )
    verdict = (
        f"<p class='bad'>{len(report.drifted)} signal(s) crossed their threshold</p>"
        if report.drifted
        else "<p class='ok'>no drift</p>"
    )
    picture = htmlkit.img(_png(report), "per-hour signals") if report.hours else ""
    by_replica = "".join(
        f"<tr><td>{html.escape(r.replica or '(unnamed)')}</td><td>{r.requests}</td><td>{r.answered}</td><td>{r.errors}</td>"
        f"<td>{_fmt(r.latency_p95_s)}</td></tr>"
        for r in report.replicas
    )
    body = f"""<p>recent {report.recent.start:%Y-%m-%d %H:%M} to {report.recent.end:%Y-%m-%d %H:%M} UTC ({report.recent.requests} requests) ·
earlier {report.earlier.start:%Y-%m-%d %H:%M} to {report.earlier.end:%Y-%m-%d %H:%M} ({report.earlier.requests}) ·
baseline {html.escape(report.baseline or "none")} · embedder {html.escape(report.embedder)}</p>{verdict}
<table><tr><th>signal</th><th>vs</th><th>recent</th><th>reference</th><th>statistic</th><th>drift when</th><th>status</th>
<th>detail</th></tr>{rows}</table><h2>Recent window by replica</h2>
<table><tr><th>replica</th><th>requests</th><th>answered</th><th>errors</th><th>p95 latency (s)</th></tr>{by_replica}</table>
{variant_table(report)}<h2>By hour</h2>{picture}"""
    htmlkit.write(path, htmlkit.page("tunesmith monitor", body, heading=f"Monitor: {report.serve_dir}"))
