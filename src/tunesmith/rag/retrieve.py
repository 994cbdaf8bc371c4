"""Search an index: vector (cosine), full-text (LanceDB BM25) or both fused by reciprocal rank; retrieval metrics.

One Retriever per index path per process (`Retriever.open`), each sharing the process's one copy of the
embedding model, so training, eval, the ladder and the server all search the same way at no reload cost.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from tunesmith.errors import ModelError
from tunesmith.rag.embed import Embedder, resolve_embedder
from tunesmith.rag.index import TABLE, IndexMeta, connect, read_meta, unreadable_table

Mode = Literal["hybrid", "vector", "fts"]
RRF_K = 60  # the usual reciprocal-rank constant: damps the gap between rank 1 and rank 2
CANDIDATES = 5  # each list contributes k x CANDIDATES hits (at least 20) to the fusion


@dataclass
class Passage:
    """A retrieved chunk. `score`: cosine similarity (vector), BM25 (fts) or the RRF sum (hybrid); higher is better."""

    text: str
    source: str  # file label as indexed (file name or folder-relative path)
    line: int  # first source line of the chunk (PDF: page)
    score: float
    chunk_id: str
    end_line: int = 0  # last source line of the chunk

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def _passage(row: dict[str, Any], score: float) -> Passage:
    return Passage(row["text"], row["source"], int(row["line"]), float(score), row["chunk_id"], int(row["end_line"]))


def fts_query(text: str) -> str:
    """The words of `text` only: the full-text parser must never see quotes, operators or markup from a user."""
    return " ".join(re.findall(r"\w+", text))


def rrf(rankings: list[list[Passage]], k: int) -> list[Passage]:
    """Reciprocal-rank fusion: each list adds 1 / (RRF_K + rank) to a chunk's score; the top k by the sum."""
    fused: dict[str, Passage] = {}
    for ranking in rankings:
        for rank, passage in enumerate(ranking, start=1):
            hit = fused.setdefault(passage.chunk_id, Passage(**{**passage.__dict__, "score": 0.0}))
            hit.score += 1.0 / (RRF_K + rank)
    return sorted(fused.values(), key=lambda p: (-p.score, p.chunk_id))[:k]


class Retriever:
    """Search one index. Build with `Retriever.open(path)`."""

    _cache: ClassVar[dict[tuple[str, str | None], Retriever]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, index: Path, meta: IndexMeta, embedder: Embedder, table: Any):
        self.index, self.meta, self.embedder, self.table = index, meta, embedder, table

    @classmethod
    def open(cls, index: Path, embedder: str | Embedder | None = None) -> Retriever:
        """The Retriever for `index`, cached per path (re-opened when the index was rebuilt since).

        embedder: None = the model the index was built with; a spec or object must give vectors of the same model.
        """
        path = Path(index).resolve()
        meta = read_meta(path)
        key = (str(path), embedder if isinstance(embedder, str) or embedder is None else f"object:{id(embedder)}")
        with cls._lock:
            cached = cls._cache.get(key)
            if cached is not None and cached.meta == meta:  # a rebuild since (even to equal content) opens afresh
                return cached
            model = resolve_embedder(embedder if embedder is not None else meta.embedder_spec)
            if model.name != meta.embedder:
                raise ModelError(
                    f"{path} was built with embedder {meta.embedder}, not {model.name}",
                    hint="Query with the index's own embedder (leave embedder empty).",
                )
            with unreadable_table(path):
                table = connect(path).open_table(TABLE)
            cls._cache[key] = retriever = cls(path, meta, model, table)
            return retriever

    def search(self, query: str, k: int = 4, mode: Mode = "hybrid") -> list[Passage]:
        """The k best passages for `query` (fewer when the index is small; none for an empty query)."""
        return self.search_many([query], k, mode)[0]

    def search_many(self, queries: list[str], k: int = 4, mode: Mode = "hybrid") -> list[list[Passage]]:
        """`search` for each query, the query vectors embedded in one batch (what training-set augmentation uses)."""
        if mode not in ("hybrid", "vector", "fts"):
            raise ValueError(f"mode must be hybrid, vector or fts, not {mode!r}")
        asked = [i for i, q in enumerate(queries) if q.strip()] if k >= 1 else []
        vectors = self.embedder.encode([queries[i] for i in asked]) if asked and mode != "fts" else None
        out: list[list[Passage]] = [[] for _ in queries]
        n = max(k * CANDIDATES, 20)
        with unreadable_table(self.index):
            for j, i in enumerate(asked):
                if mode == "vector":
                    out[i] = self._vector(vectors[j], k)  # type: ignore[index]
                elif mode == "fts":
                    out[i] = self._fts(queries[i], k)
                else:
                    out[i] = rrf([self._vector(vectors[j], n), self._fts(queries[i], n)], k)  # type: ignore[index]
        return out

    def _vector(self, vector: Any, n: int) -> list[Passage]:
        rows = self.table.search(vector).distance_type("cosine").limit(n).to_list()
        return [_passage(r, 1.0 - r["_distance"]) for r in rows]

    def _fts(self, query: str, n: int) -> list[Passage]:
        words = fts_query(query)
        if not words:
            return []
        rows = self.table.search(words, query_type="fts").limit(n).to_list()
        return [_passage(r, r["_score"]) for r in rows]


def is_relevant(passage: Passage, gold: str) -> bool:
    """Does `passage` match a gold reference: a chunk id, a source file (label or its tail), or `file:line`?"""
    if gold == passage.chunk_id:
        return True
    source, _, line = gold.rpartition(":") if re.search(r":\d+$", gold) else (gold, "", "")
    same_file = passage.source == source or passage.source.endswith("/" + source.lstrip("./"))
    return same_file and (not line or passage.line <= int(line) <= max(passage.line, passage.end_line))


def recall_at_k(results: list[list[Passage]], gold: list[list[str]], k: int) -> float:
    """Mean over queries of the share of gold references matched by a passage in the top k (0..1)."""
    scores = [
        sum(any(is_relevant(p, g) for p in hits[:k]) for g in refs) / len(refs)
        for hits, refs in zip(results, gold, strict=True)
        if refs
    ]
    return sum(scores) / len(scores) if scores else 0.0


def mrr(results: list[list[Passage]], gold: list[list[str]]) -> float:
    """Mean reciprocal rank of the first relevant passage (0 when none is retrieved), over queries with gold."""
    scores = []
    for hits, refs in zip(results, gold, strict=True):
        if refs:
            rank = next((i for i, p in enumerate(hits, start=1) if any(is_relevant(p, g) for g in refs)), None)
            scores.append(1.0 / rank if rank else 0.0)
    return sum(scores) / len(scores) if scores else 0.0
