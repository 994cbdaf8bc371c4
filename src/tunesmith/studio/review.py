"""Blind A/B review: rounds of items (one prompt, two answers), verdicts by named reviewers, results, export.

Stored in SQLite next to the run (run_dir/review/review.db); rows are read and written here only,
as `ReviewRound` / `ReviewItem` / `Verdict` (pydantic, schema_version). Answers are stored by side:
`x` is the first system (base, or run X), `y` the second (tuned, or run Y). Which side a reviewer
sees as A is decided per (item, reviewer) by an HMAC of a secret kept in the database, so the
order is random, stable across page loads, and never visible through the page while the round is open.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field

from tunesmith.data.convert import write_rows
from tunesmith.errors import RunError
from tunesmith.outputs import claim_dir, claim_file, record_file
from tunesmith.records import Record, validate_record
from tunesmith.studio.agreement import cohen_kappa, fleiss_kappa, wilson

REVIEW_VERSION = 1
Side = Literal["x", "y", "tie", "bad"]
SHOWN = ("a", "b", "tie", "bad")  # what the page offers: answer A, answer B, tie, both bad

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rounds (id INTEGER PRIMARY KEY, secret TEXT NOT NULL, row TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, round_id INTEGER NOT NULL, row TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS verdicts (item_id INTEGER NOT NULL, reviewer TEXT NOT NULL, row TEXT NOT NULL,
    PRIMARY KEY (item_id, reviewer));
"""


class _Row(Record):
    """A review row: unknown keys are errors; a row newer than REVIEW_VERSION is refused on reading (`_load`)."""


class ReviewRound(_Row):
    schema_version: int = REVIEW_VERSION
    id: int = 0
    name: str
    label_x: str = Field(..., description="What side x is (e.g. base, or a run name); shown only once closed.")
    label_y: str = Field(..., description="What side y is (e.g. tuned).")
    created: float = Field(default_factory=time.time, description="Unix time (s).")
    closed: bool = False


class ReviewItem(_Row):
    schema_version: int = REVIEW_VERSION
    id: int = 0
    round_id: int = 0
    example_id: str
    messages: list[dict[str, str]] = Field(..., description="The prompt conversation (system + user turns).")
    reference: str = ""
    answer_x: str
    answer_y: str

    @property
    def prompt(self) -> str:
        return self.messages[-1]["content"] if self.messages else ""


class Verdict(_Row):
    schema_version: int = REVIEW_VERSION
    item_id: int
    reviewer: str
    choice: Side = Field(..., description="x or y (that side's answer is better), tie, or bad (both bad).")
    correction: str | None = Field(None, description="A corrected answer the reviewer wrote, if any.")
    time: float = Field(default_factory=time.time)


class ReviewStats(_Row):
    """Results of a round. The win rate is y's share of items decided for one side (ties and both-bad excluded)."""

    schema_version: int = REVIEW_VERSION
    reviewers: list[str]
    n_items: int
    min_agree: int = Field(1, description="An item counts only when at least this many reviewers gave its verdict.")
    counted: int
    outcomes: dict[str, int] = Field(..., description="x / y / tie / bad -> items with that counted verdict.")
    win_rate: float | None
    ci_low: float | None
    ci_high: float | None
    kappa: float | None
    kappa_kind: str | None = Field(None, description="cohen (two reviewers) or fleiss (more).")
    disagreements: list[int] = Field(default_factory=list, description="Items whose reviewers gave different verdicts.")


class ExportSummary(_Row):
    """What an export wrote and what the data audit found in it."""

    file: str
    rows: int
    errors: int
    warnings: int
    by_code: dict[str, int] = Field(default_factory=dict, description="Finding code -> count.")


R = TypeVar("R", bound=Record)


def load_row(model: type[R], text: str, version: int, db: Path) -> R:
    """A row stored as JSON in database `db`; RunError when it is damaged or was written by a newer tunesmith
    (its schema_version above `version`), never a row read as if it were current."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunError(f"{db}: a damaged {model.__name__} row ({exc})") from None
    return validate_record(data, model, version, f"{db} ({model.__name__} row)")


def db_path(run_dir: Path) -> Path:
    return Path(run_dir) / "review" / "review.db"


class ReviewStore:
    """The review database of one run; open with `ReviewStore.open(run_dir)`."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path, self.conn = path, conn

    @classmethod
    def open(cls, run_dir: Path, create: bool = True) -> ReviewStore:
        path = db_path(run_dir)
        if not create:  # an existing review only: nothing is created or changed by opening it
            if not path.is_file():
                raise RunError(f"{run_dir} has no review yet ({path})", hint="Start a review round in `tunesmith studio`.")
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=5000")
            try:
                tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            except sqlite3.DatabaseError as exc:
                tables = {str(exc)}
            if not {"rounds", "items", "verdicts"} <= tables:
                conn.close()
                raise RunError(f"{path} is not a tunesmith review database", hint="Move it aside to start a new review.")
            return cls(path, conn)
        claim_dir(path.parent, "studio review", reuse=True, what="review folder")
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")  # one fsync per verdict, readers never blocked
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(_SCHEMA)
        return cls(path, conn)

    def close(self) -> None:
        self.conn.close()

    def _load(self, model: type[R], text: str) -> R:
        return load_row(model, text, REVIEW_VERSION, self.path)

    # rounds and items
    def create_round(self, name: str, label_x: str, label_y: str, items: list[ReviewItem]) -> ReviewRound:
        if not items:
            raise RunError("a review round needs at least one item (no predictions to review)")
        rnd = ReviewRound(name=name, label_x=label_x, label_y=label_y)
        with self.conn:
            cur = self.conn.execute("INSERT INTO rounds(secret, row) VALUES (?, ?)", (secrets.token_hex(16), "{}"))
            rnd.id = int(cur.lastrowid or 0)
            self._save_round(rnd)
            for item in items:
                item.round_id = rnd.id
                cur = self.conn.execute("INSERT INTO items(round_id, row) VALUES (?, ?)", (rnd.id, "{}"))
                item.id = int(cur.lastrowid or 0)
                self.conn.execute("UPDATE items SET row=? WHERE id=?", (item.model_dump_json(), item.id))
        return rnd

    def _save_round(self, rnd: ReviewRound) -> None:
        self.conn.execute("UPDATE rounds SET row=? WHERE id=?", (rnd.model_dump_json(), rnd.id))

    def rounds(self) -> list[ReviewRound]:
        return [self._load(ReviewRound, r) for (r,) in self.conn.execute("SELECT row FROM rounds ORDER BY id")]

    def round(self, round_id: int) -> ReviewRound:
        row = self.conn.execute("SELECT row FROM rounds WHERE id=?", (round_id,)).fetchone()
        if row is None:
            raise RunError(f"no review round {round_id} in {self.path}")
        return self._load(ReviewRound, row[0])

    def close_round(self, round_id: int) -> ReviewRound:
        rnd = self.round(round_id)
        rnd.closed = True
        self._save_round(rnd)
        return rnd

    def items(self, round_id: int) -> list[ReviewItem]:
        rows = self.conn.execute("SELECT row FROM items WHERE round_id=? ORDER BY id", (round_id,))
        return [self._load(ReviewItem, r) for (r,) in rows]

    # blind presentation
    def swapped(self, round_id: int, item_id: int, reviewer: str) -> bool:
        """True when this reviewer sees side y as answer A for this item."""
        (secret,) = self.conn.execute("SELECT secret FROM rounds WHERE id=?", (round_id,)).fetchone()
        digest = hmac.new(secret.encode(), f"{item_id}:{reviewer}".encode(), hashlib.sha256).digest()
        return bool(digest[0] & 1)

    def shown(self, item: ReviewItem, reviewer: str) -> tuple[str, str]:
        """(answer A, answer B) as this reviewer sees them."""
        if self.swapped(item.round_id, item.id, reviewer):
            return item.answer_y, item.answer_x
        return item.answer_x, item.answer_y

    def record(self, item: ReviewItem, reviewer: str, shown_choice: str, correction: str | None = None) -> Verdict:
        """Store a verdict given as the page showed it (a, b, tie, bad); a repeat by the same reviewer replaces it."""
        reviewer = reviewer.strip()
        if not reviewer or shown_choice not in SHOWN:
            raise RunError(f"a verdict needs a reviewer name and one of {', '.join(SHOWN)}")
        if self.round(item.round_id).closed:
            raise RunError("this review round is closed")
        side: Side = {"tie": "tie", "bad": "bad"}.get(shown_choice, "x")  # type: ignore[assignment]
        if shown_choice in ("a", "b"):
            first_is_y = self.swapped(item.round_id, item.id, reviewer)
            side = "y" if (shown_choice == "a") == first_is_y else "x"
        verdict = Verdict(item_id=item.id, reviewer=reviewer, choice=side, correction=(correction or "").strip() or None)
        self.conn.execute(
            "INSERT OR REPLACE INTO verdicts(item_id, reviewer, row) VALUES (?, ?, ?)",
            (item.id, reviewer, verdict.model_dump_json()),
        )
        return verdict

    def verdicts(self, round_id: int) -> list[Verdict]:
        rows = self.conn.execute(
            "SELECT v.row FROM verdicts v JOIN items i ON i.id = v.item_id WHERE i.round_id=? ORDER BY v.item_id, v.reviewer",
            (round_id,),
        )
        return [self._load(Verdict, r) for (r,) in rows]

    def next_item(self, round_id: int, reviewer: str) -> tuple[ReviewItem | None, int, int]:
        """The first item this reviewer has not judged yet, with (done, total)."""
        who = reviewer.strip()
        (total,) = self.conn.execute("SELECT COUNT(*) FROM items WHERE round_id=?", (round_id,)).fetchone()
        (done,) = self.conn.execute(
            "SELECT COUNT(*) FROM verdicts v JOIN items i ON i.id = v.item_id WHERE i.round_id=? AND v.reviewer=?",
            (round_id, who),
        ).fetchone()
        row = self.conn.execute(
            "SELECT row FROM items WHERE round_id=? AND id NOT IN (SELECT item_id FROM verdicts WHERE reviewer=?) "
            "ORDER BY id LIMIT 1",
            (round_id, who),
        ).fetchone()
        return (self._load(ReviewItem, row[0]) if row else None), int(done), int(total)

    def item(self, round_id: int, item_id: int) -> ReviewItem:
        row = self.conn.execute("SELECT row FROM items WHERE round_id=? AND id=?", (round_id, item_id)).fetchone()
        if row is None:
            raise RunError(f"no item {item_id} in review round {round_id}")
        return self._load(ReviewItem, row[0])


def item_outcome(choices: list[str], min_agree: int = 1) -> str | None:
    """The verdict most reviewers gave an item; None when tied between verdicts or fewer than min_agree agree."""
    if not choices:
        return None
    ranked = Counter(choices).most_common()
    top, count = ranked[0]
    if len(ranked) > 1 and ranked[1][1] == count:
        return None
    return top if count >= min_agree else None


def compute_stats(items: list[ReviewItem], verdicts: list[Verdict], min_agree: int = 1) -> ReviewStats:
    """Win rate of side y with its Wilson 95% interval, reviewer agreement, and the items they disagree on."""
    by_item: dict[int, dict[str, str]] = {}
    for v in verdicts:
        by_item.setdefault(v.item_id, {})[v.reviewer] = v.choice
    reviewers = sorted({v.reviewer for v in verdicts})
    outcomes: Counter[str] = Counter()
    for votes in by_item.values():
        out = item_outcome(list(votes.values()), min_agree)
        if out is not None:
            outcomes[out] += 1
    decided = outcomes["x"] + outcomes["y"]
    lo, hi = wilson(outcomes["y"], decided) if decided else (None, None)
    kappa, kind = None, None
    if len(reviewers) == 2:
        both = [votes for votes in by_item.values() if len(votes) == 2]
        kappa, kind = cohen_kappa([v[reviewers[0]] for v in both], [v[reviewers[1]] for v in both]), "cohen"
    elif len(reviewers) > 2:
        full = [list(votes.values()) for votes in by_item.values() if len(votes) == len(reviewers)]
        kappa, kind = fleiss_kappa(full), "fleiss"
    return ReviewStats(
        reviewers=reviewers,
        n_items=len(items),
        min_agree=min_agree,
        counted=sum(outcomes.values()),
        outcomes={k: outcomes[k] for k in ("x", "y", "tie", "bad")},
        win_rate=outcomes["y"] / decided if decided else None,
        ci_low=lo,
        ci_high=hi,
        kappa=kappa,
        kappa_kind=kind,
        disagreements=sorted(i for i, votes in by_item.items() if len(set(votes.values())) > 1),
    )


def export_rows(items: list[ReviewItem], verdicts: list[Verdict], to: str, min_agree: int = 1) -> list[dict[str, object]]:
    """Corrections -> SFT rows (messages); counted preferences (x or y) -> DPO rows in OpenAI's preference shape."""
    by_id = {i.id: i for i in items}
    if to == "sft":
        return [
            {
                "id": f"review-{v.item_id}-{v.reviewer}",
                "messages": [*by_id[v.item_id].messages, {"role": "assistant", "content": v.correction}],
            }
            for v in verdicts
            if v.correction and v.item_id in by_id
        ]
    if to != "dpo":
        raise RunError(f"unknown export kind `{to}`", hint="Use --to sft or --to dpo.")
    votes: dict[int, list[str]] = {}
    for v in verdicts:
        votes.setdefault(v.item_id, []).append(v.choice)
    rows: list[dict[str, object]] = []
    for item_id, choices in votes.items():
        out, item = item_outcome(choices, min_agree), by_id.get(item_id)
        if item is None or out not in ("x", "y") or item.answer_x.strip() == item.answer_y.strip():
            continue
        good, bad = (item.answer_y, item.answer_x) if out == "y" else (item.answer_x, item.answer_y)
        rows.append(
            {
                "input": {"messages": item.messages},
                "preferred_output": [{"role": "assistant", "content": good}],
                "non_preferred_output": [{"role": "assistant", "content": bad}],
            }
        )
    return rows


def write_export(rows: list[dict[str, object]], out: Path) -> ExportSummary:
    """Write rows to a new file (never over an existing one) and audit it like any other data; returns the audit summary."""
    from tunesmith.data.audit import audit

    if not rows:
        raise RunError("nothing to export: no corrections (sft) or no counted preferences (dpo) yet")
    out = claim_file(out)
    write_rows(out, rows)
    record_file(out)
    report = audit([str(out)], tokenizer=None)
    return ExportSummary(
        file=str(out),
        rows=len(rows),
        errors=len(report.errors),
        warnings=len(report.warnings),
        by_code={code: g["count"] for code, g in report.by_code().items()},
    )


def items_from_predictions(
    rows: list[dict[str, object]], conversations: dict[str, list[dict[str, str]]], other: dict[str, str] | None = None
) -> list[ReviewItem]:
    """Items from eval/predictions.jsonl rows: x = base, y = tuned; or, with `other` (id -> answer), x = this run, y = other."""
    items = []
    for r in rows:
        ex_id = str(r.get("id"))
        if other is not None and ex_id not in other:
            continue
        messages = conversations.get(ex_id) or [{"role": "user", "content": str(r.get("prompt", ""))}]
        x, y = (str(r.get("tuned", "")), other[ex_id]) if other is not None else (str(r.get("base", "")), str(r.get("tuned", "")))
        items.append(
            ReviewItem(example_id=ex_id, messages=messages, reference=str(r.get("reference", "")), answer_x=x, answer_y=y)
        )
    return items
