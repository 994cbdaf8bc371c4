"""The import report: what was carried over, how, and everything that was not (one list, never dropped silently).

Written once per import as `import-report.json` (this model, with a schema_version) and `import-report.txt`
(`summary_lines`, the text the command prints, wrapped at 80 columns).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from pydantic import Field

from tunesmith.records import Record as _Record

IMPORT_REPORT_VERSION = 1
WIDTH = 80


class Mapped(_Record):
    """One OpenAI setting and the recipe field it became."""

    openai: str = Field(..., description="Field path in the job, e.g. method.supervised.hyperparameters.n_epochs.")
    value: Any = None
    tunesmith: str = Field(..., description="Recipe field, e.g. training.epochs.")
    result: Any = None
    rule: str = Field("", description="How the value was derived.")


class Unmapped(_Record):
    """One thing the import could not carry over."""

    field: str = Field(..., description="Where it was: a job field path, a grader, a data rule.")
    value: Any = None
    why: str
    instead: str = Field(..., description="What tunesmith does instead.")


class RuleHit(_Record):
    """A format rule and the rows it concerns (line numbers are the source file's)."""

    code: str
    severity: str = Field(..., description="error (rows left out), warning (trained differently) or converted.")
    file: str
    count: int
    lines: list[int] = Field(default_factory=list)
    description: str
    tunesmith_does: str


class DataFileReport(_Record):
    split: str = Field(..., description="train or eval.")
    source: str = Field(..., description="The file read (a path, resolved from a file id when the job named one).")
    file_id: str | None = None
    written: str = Field(..., description="The copy in the project, relative to it (same line numbers).")
    rows: int = 0
    left_out: int = 0


class GraderReport(_Record):
    name: str
    type: str
    used_as: list[str] = Field(default_factory=list, description="eval (eval.graders), reward (grpo), or empty.")


class ImportReport(_Record):
    schema_version: int = IMPORT_REPORT_VERSION
    source: str = Field(..., description="The job file, or `flags`.")
    job_id: str | None = None
    openai_method: str
    method: str
    hosted_model: str | None = None
    base_model: str
    recipe: str = "recipe.yaml"
    files: list[DataFileReport] = Field(default_factory=list)
    mapped: list[Mapped] = Field(default_factory=list)
    unmapped: list[Unmapped] = Field(default_factory=list)
    recorded: dict[str, Any] = Field(
        default_factory=dict, description="Job fields that describe the hosted run (id, status, ...): kept, no effect."
    )
    openai_rules: list[RuleHit] = Field(default_factory=list)
    audit: dict[str, Any] = Field(default_factory=dict, description="tunesmith's own data audit (data.audit) by code.")
    audit_errors: int = 0
    graders: list[GraderReport] = Field(default_factory=list)
    reward: list[dict[str, Any]] = Field(default_factory=list, description="grpo.rewards as written.")
    notes: list[str] = Field(default_factory=list)


def _wrap(text: str, indent: str = "", first: str | None = None) -> list[str]:
    lead = indent if first is None else first
    return textwrap.wrap(text, WIDTH, initial_indent=lead, subsequent_indent=indent, break_on_hyphens=False) or [lead]


def _short(value: Any, limit: int = 40) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _lines(hit: RuleHit) -> str:
    shown = ", ".join(map(str, hit.lines[:8]))
    more = f" and {len(hit.lines) - 8} more" if len(hit.lines) > 8 else ""
    return f" (line{'s' if len(hit.lines) > 1 else ''} {shown}{more})" if hit.lines else ""


def summary_lines(report: ImportReport, out_dir: str) -> list[str]:
    """The readable summary: what was written, the mapping, the format findings, what was not carried over."""
    out = _wrap(
        f"imported {report.openai_method} job {report.job_id or ''} from {report.source} as method "
        f"{report.method} on {report.base_model}".replace("  ", " ")
    )
    for f in report.files:
        left = f", {f.left_out} left out (listed below)" if f.left_out else ""
        out += _wrap(f"{f.split}: {f.source} -> {f.written} ({f.rows} rows{left})", "    ", "  ")
    out.append("mapping (also written as comments in recipe.yaml):")
    for m in report.mapped:
        out += _wrap(f"{m.openai} {_short(m.value)} -> {m.tunesmith} {_short(m.result)}", "    ", "  ")
    if report.graders:
        out.append("graders:")
        for g in report.graders:
            out += _wrap(f"{g.name} ({g.type}): {', '.join(g.used_as) or 'not used (see below)'}", "    ", "  ")
    if report.openai_rules:
        out.append("OpenAI format rules:")
        for hit in report.openai_rules:
            where = Path(hit.file).name
            text = f"{hit.severity} {hit.code} x{hit.count} in {where}{_lines(hit)}: {hit.tunesmith_does}"
            out += _wrap(text, "    ", "  ")
    verdict = (
        f"{report.audit_errors} blocking error(s): training refuses them until fixed (tunesmith data fix)"
        if report.audit_errors
        else "no blocking errors"
    )
    out += _wrap(f"tunesmith data audit: {verdict}")
    for code, g in report.audit.items():
        if g["severity"] == "error":
            out += _wrap(f"error {code} x{g['count']}: {g['first'][0]}", "    ", "  ")
    if report.unmapped:
        out.append(f"not carried over ({len(report.unmapped)}):")
        for u in report.unmapped:
            out += _wrap(f"{u.field} = {_short(u.value)}: {u.why}; instead: {u.instead}", "    ", "  ")
    if report.recorded:
        out += _wrap(f"recorded only (the hosted run's own record): {', '.join(report.recorded)}")
    for note in report.notes:
        out += _wrap(note, "  ", "- ")
    out += _wrap(f"wrote {out_dir}/recipe.yaml and import-report.json; next: tunesmith train {out_dir}/recipe.yaml")
    return out
