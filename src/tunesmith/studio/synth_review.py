"""Reviewing a sample of synthetic rows (from `tunesmith data synth`): accept, reject with a reason, or edit.

Decisions are stored as `SynthDecision` rows in SQLite in the studio's own folder
(.studio/synth/<file stem>-<path hash>/review.db), never next to the input file, which is never modified.
`write_accepted` writes the accepted (and edited) rows as a new file, audits it like any other data,
and records the acceptance rate in `SynthOutcome` (acceptance.json beside it).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from tunesmith.atomic import write_text_atomic
from tunesmith.data.convert import write_rows
from tunesmith.data.formats import read_records
from tunesmith.errors import DataError
from tunesmith.outputs import claim_dir
from tunesmith.records import Record
from tunesmith.studio.review import load_row

SYNTH_REVIEW_VERSION = 1
_SCHEMA = "CREATE TABLE IF NOT EXISTS decisions (line INTEGER PRIMARY KEY, row TEXT NOT NULL);"


class SynthDecision(Record):
    schema_version: int = SYNTH_REVIEW_VERSION
    line: int = Field(..., description="1-based line of the row in the synthetic file.")
    verdict: Literal["accept", "reject", "edit"]
    reason: str | None = Field(None, description="Why a row was rejected.")
    row: dict[str, Any] | None = Field(None, description="The edited row (verdict edit).")
    time: float = Field(default_factory=time.time)


class SynthOutcome(Record):
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

    def __init__(self, source: Path, studio_dir: Path, sample_size: int = 20, seed: int = 0, create: bool = True) -> None:
        """`create=False` opens an existing review read-only and writes nothing when there is none yet."""
        self.source = Path(source).resolve()
        records = {r.line: r.obj for r in read_records(str(self.source)) if isinstance(r.obj, dict)}
        if not records:
            raise DataError(f"{self.source} holds no rows to review")
        self.rows = records
        lines = sorted(random.Random(seed).sample(sorted(records), min(sample_size, len(records))))
        self.sample = lines
        digest = hashlib.sha256(str(self.source).encode()).hexdigest()[:12]
        self.dir = studio_dir / "synth" / f"{self.source.stem}-{digest}"
        if create:
            claim_dir(self.dir, "studio synth review", reuse=True)
        elif not (self.dir / "review.db").is_file():  # nothing decided yet: an empty review in memory
            self.conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            self.conn.executescript(_SCHEMA)
            return
        uri = (self.dir / "review.db").resolve().as_uri() + ("" if create else "?mode=ro")
        self.conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        if create:
            self.conn.executescript(_SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def decisions(self) -> dict[int, SynthDecision]:
        rows = self.conn.execute("SELECT line, row FROM decisions")
        return {line: load_row(SynthDecision, row, SYNTH_REVIEW_VERSION, self.dir / "review.db") for line, row in rows}

    def next_line(self) -> int | None:
        done = self.decisions()
        return next((line for line in self.sample if line not in done), None)

    def decide(self, line: int, verdict: str, reason: str = "", edited: str = "") -> SynthDecision:
        """Record a decision; an edit must be a JSON object, a rejection needs a reason."""
        if line not in self.sample:
            raise DataError(f"line {line} is not in the review sample")
        if verdict not in ("accept", "reject", "edit"):
            raise DataError(f"unknown verdict `{verdict}`: accept, reject or edit")
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

        decided = self.decisions()
        kept = [d.row or self.rows[line] for line, d in sorted(decided.items()) if d.verdict != "reject"]
        if not kept:
            raise DataError("no accepted rows to write yet")
        out = write_new(self.dir, "accepted", kept)
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


def write_new(folder: Path, stem: str, rows: list[dict[str, Any]]) -> Path:
    """Write rows to a new `<stem>-<local time>[-n].jsonl` in `folder`, never over an existing file.

    The rows are staged whole in a temp file, then hard-linked to the first free name: a link is never made over an
    existing name (not even a symlink), so two writes in the same second, or at the same moment, give two files.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    staged = write_rows(folder / f".{stem}-{secrets.token_hex(8)}.staged.jsonl", rows)
    try:
        for n in range(1, 1000):
            out = folder / (f"{stem}-{stamp}.jsonl" if n == 1 else f"{stem}-{stamp}-{n}.jsonl")
            try:
                os.link(staged, out)
                return out
            except FileExistsError:
                continue
        raise DataError(f"{folder} already holds 999 {stem} files from {stamp}; try again in a second")
    finally:
        staged.unlink(missing_ok=True)
