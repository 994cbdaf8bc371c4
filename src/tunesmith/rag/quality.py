"""Retrieval quality on labelled questions: recall@k and MRR per search mode (`tunesmith index eval`).

An eval row holds a question (`question`, `query`, `prompt`, or chat `messages`: the last user turn) and its
gold references in `sources` (also `gold_chunks`, `chunk_ids` or `source`): chunk ids, source files
(`guide.md`, `docs/guide.md`) or `file:line` positions. Rows without a question or gold are counted, not scored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from tunesmith.data.formats import read_records
from tunesmith.errors import DataError
from tunesmith.rag.prompt import retrieval_query
from tunesmith.rag.retrieve import Mode, Retriever, mrr, recall_at_k
from tunesmith.records import Record

RETRIEVAL_EVAL_VERSION = 1
GOLD_KEYS = ("sources", "gold_chunks", "chunk_ids", "source")


class ModeScore(Record):
    recall_at_k: float = Field(..., description="Mean share of gold references found in the top k (0..1).")
    mrr: float = Field(..., description="Mean reciprocal rank of the first relevant passage (0..1).")
    hit_rate: float = Field(..., description="Share of questions with at least one relevant passage in the top k.")


class RetrievalEval(Record):
    """Retrieval figures for one index and one labelled file."""

    schema_version: int = RETRIEVAL_EVAL_VERSION
    index: str
    file: str
    k: int
    content_hash: str
    scored: int = Field(..., description="Rows with a question and gold references.")
    skipped: int = Field(0, description="Rows without a question or gold references.")
    modes: dict[str, ModeScore]
    misses: list[dict[str, Any]] = Field(
        default_factory=list, description="Up to 20 questions whose gold was not in the first mode's top k."
    )


def _question(obj: dict[str, Any]) -> str:
    for key in ("question", "query", "prompt"):
        value = obj.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return retrieval_query(value)
    return retrieval_query(obj["messages"]) if isinstance(obj.get("messages"), list) else ""


def _gold(obj: dict[str, Any]) -> list[str]:
    for key in GOLD_KEYS:
        value = obj.get(key)
        if isinstance(value, str | int):
            return [str(value)]
        if isinstance(value, list):
            return [str(v) for v in value if isinstance(v, str | int)]
    return []


def load_labelled(path: Path) -> tuple[list[str], list[list[str]], int]:
    """(questions, gold references, rows skipped) from a JSONL file; unreadable rows raise one DataError."""
    questions, gold, skipped, bad = [], [], 0, []
    for rec in read_records(path):
        if rec.error or not isinstance(rec.obj, dict):
            bad.append(f"{rec.where}: {rec.error or 'not a JSON object'}")
            continue
        q, g = _question(rec.obj), _gold(rec.obj)
        if not q.strip() or not g:
            skipped += 1
            continue
        questions.append(q)
        gold.append(g)
    if bad:
        raise DataError(f"{len(bad)} unreadable row(s) in {path}:\n  " + "\n  ".join(bad[:10]))
    if not questions:
        raise DataError(
            f"{path}: no row has both a question and gold references",
            hint=f"Give each row `question` and `sources` (or one of {', '.join(GOLD_KEYS[1:])}).",
        )
    return questions, gold, skipped


def evaluate_index(
    index: Path, path: Path, k: int = 5, modes: tuple[Mode, ...] = ("hybrid", "vector", "fts"), embedder: str | None = None
) -> RetrievalEval:
    """Search every labelled question in each mode and score the top k against its gold references."""
    from tunesmith.rag.retrieve import is_relevant

    retriever = Retriever.open(index, embedder)
    questions, gold, skipped = load_labelled(Path(path))
    scores: dict[str, ModeScore] = {}
    misses: list[dict[str, Any]] = []
    for mode in modes:
        results = retriever.search_many(questions, k=k, mode=mode)
        hits = [any(is_relevant(p, g) for p in r for g in refs) for r, refs in zip(results, gold, strict=True)]
        scores[mode] = ModeScore(
            recall_at_k=round(recall_at_k(results, gold, k), 4),
            mrr=round(mrr(results, gold), 4),
            hit_rate=round(sum(hits) / len(hits), 4),
        )
        if mode == modes[0]:
            misses = [
                {"question": q, "gold": g, "got": [p.where for p in r]}
                for q, g, r, hit in zip(questions, gold, results, hits, strict=True)
                if not hit
            ][:20]
    return RetrievalEval(
        index=str(index),
        file=str(path),
        k=k,
        content_hash=retriever.meta.content_hash,
        scored=len(questions),
        skipped=skipped,
        modes=scores,
        misses=misses,
    )
