"""Semantic similarity to free-text references: cosine of sentence embeddings from the bundled all-MiniLM-L6-v2.

Scores in [-1, 1] (in practice 0-1 for text): 1.0 means the same meaning as far as the embedder can tell.
Computed only for non-JSON references or on request (eval.similarity), since it loads an embedder.
The embedder is tunesmith.rag.embed's (the one loader of embedding models; nothing is downloaded).
"""

from __future__ import annotations

from typing import Any


def cosine_similarities(preds: list[str], refs: list[str], embedder: Any = None) -> list[float]:
    """Per pair, the cosine similarity of the two texts' embeddings (vectors are L2-normalised: a dot product)."""
    from tunesmith.rag.embed import resolve_embedder

    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    if not preds:
        return []
    model = resolve_embedder(embedder)
    a, b = model.encode(list(preds)), model.encode(list(refs))
    return [float(x) for x in (a * b).sum(axis=1).clip(-1.0, 1.0)]


def mean_similarity(preds: list[str], refs: list[str], embedder: Any = None) -> float:
    """Mean cosine similarity over the pairs; 0.0 for no data."""
    scores = cosine_similarities(preds, refs, embedder)
    return sum(scores) / len(scores) if scores else 0.0
