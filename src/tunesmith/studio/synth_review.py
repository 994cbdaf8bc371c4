"""Reviewing a sample of synthetic rows (from `tunesmith data synth`): accept, reject with a reason, or edit.

Decisions are stored as `SynthDecision` rows in SQLite in the studio's own folder
(.studio/synth/<file stem>-<path hash>/review.db), never next to the input file, which is never modified.
`write_accepted` writes the accepted (and edited) rows as a new file, audits it like any other data,
and records the acceptance rate in `SynthOutcome` (acceptance.json beside it).
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunesmith.atomic import write_text_atomic
from tunesmith.errors import DataError

SYNTH_REVIEW_VERSION = 1
_SCHEMA = "CREATE TABLE IF NOT EXISTS decisions (line INTEGER PRIMARY KEY, row TEXT NOT NULL);"


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SynthDecision(_Row):
    schema_version: int = SYNTH_REVIEW_VERSION
    line: int = Field(..., description="1-based line of the row in the synthetic file.")
    verdict: Literal["accept", "reject", "edit"]
    reason: str | None = Field(None, description="Why a row was rejected.")
    row: dict[str, Any] | None = Field(None, description="The edited row (verdict edit).")
    time: float = Field(default_factory=time.time)


class SynthOutcome(_Row):
    """acceptance.json: what a synthetic-data review decided and wrote."""

    schema_version: int = SYNTH_REVIEW_VERSION
    source: str
    sample_size: int
    accepted: int
    edited: int
    rejected: int
    acceptance_rate: float = Field(..., description="(accepted + edited) / decided rows.")
    reasons: dict[str, int] = Field(default_factory=dict, description="Rejection reason -> count.")
    out_file: str
    audit_errors: int
    audit_warnings: int


class SynthReview:
    """A seeded sample of a synthetic file and the decisions taken on it."""

    def __init__(self, source: Path, studio_dir: Path, sample_size: int = 20, seed: int = 0) -> None:
        from tunesmith.data.formats import read_records
        from tunesmith.outputs import claim_dir

        self.source = Path(source).resolve()
        records = {r.line: r.obj for r in read_records(str(self.source)) if isinstance(r.obj, dict)}
        if not records:
            raise DataError(f"{self.source} holds no rows to review")
        self.rows = records
        lines = sorted(random.Random(seed).sample(sorted(records), min(sample_size, len(records))))
        self.sample = lines
        digest = hashlib.sha256(str(self.source).encode()).hexdigest()[:12]
        self.dir = claim_dir(studio_dir / "synth" / f"{self.source.stem}-{digest}", "studio synth review", reuse=True)
        self.conn = sqlite3.connect(self.dir / "review.db", check_same_thread=False, isolation_level=None)
        self.conn.executescript(_SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def decisions(self) -> dict[int, SynthDecision]:
        rows = self.conn.execute("SELECT line, row FROM decisions")
        return {line: SynthDecision.model_validate_json(row) for line, row in rows}

    def next_line(self) -> int | None:
        done = self.decisions()
        return next((line for line in self.sample if line not in done), None)

    def decide(self, line: int, verdict: str, reason: str = "", edited: str = "") -> SynthDecision:
        """Record a decision; an edit must be a JSON object, a rejection needs a reason."""
        if line not in self.sample:
            raise DataError(f"line {line} is not in the review sample")
        row = None
        if verdict == "edit":
            try:
                row = json.loads(edited)
            except json.JSONDecodeError as exc:
                raise DataError(f"the edited row is not valid JSON: {exc}") from None
            if not isinstance(row, dict):
                raise DataError("the edited row must be a JSON object")
        if verdict == "reject" and not reason.strip():
            raise DataError("a rejection needs a reason")
        decision = SynthDecision.model_validate({"line": line, "verdict": verdict, "reason": reason.strip() or None, "row": row})
        self.conn.execute("INSERT OR REPLACE INTO decisions(line, row) VALUES (?, ?)", (line, decision.model_dump_json()))
        return decision

    def write_accepted(self) -> SynthOutcome:
        """Accepted and edited rows -> a new file in the review folder, audited; acceptance.json records the rate."""
        from tunesmith.data.audit import audit
        from tunesmith.data.convert import write_rows

        decided = self.decisions()
        kept = [d.row or self.rows[line] for line, d in sorted(decided.items()) if d.verdict != "reject"]
        if not kept:
            raise DataError("no accepted rows to write yet")
        out = self.dir / f"accepted-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        write_rows(out, kept)
        report = audit([str(out)], tokenizer=None)
        reasons: dict[str, int] = {}
        for d in decided.values():
            if d.verdict == "reject" and d.reason:
                reasons[d.reason] = reasons.get(d.reason, 0) + 1
        verdicts = [d.verdict for d in decided.values()]
        outcome = SynthOutcome(
            source=str(self.source),
            sample_size=len(self.sample),
            accepted=verdicts.count("accept"),
            edited=verdicts.count("edit"),
            rejected=verdicts.count("reject"),
            acceptance_rate=len(kept) / len(decided),
            reasons=reasons,
            out_file=str(out),
            audit_errors=len(report.errors),
            audit_warnings=len(report.warnings),
        )
        write_text_atomic(self.dir / "acceptance.json", outcome.model_dump_json(indent=2))
        return outcome
