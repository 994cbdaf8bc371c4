"""Retrieval for served requests, and the promise behind it: a server that offers `"rag": true` can search.

Every index a server may search (`--index`, and the `rag.index` of each served run's recipe) is opened and
searched once before the server reports ready; a missing or broken one keeps it from serving at all, with
the reason on /health. An index that breaks later answers the requests that need it with a 503 naming it
(and /health turns not-ready until a search succeeds again), never with a 500.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tunesmith.errors import RunError, TunesmithError
from tunesmith.serve.schemas import ApiError

log = logging.getLogger(__name__)


def _index_of(served: Any, default: str | None) -> tuple[str | None, str | None]:
    """(index path, embedder spec) a served model searches when retrieval is on (None: no index)."""
    if served.rag is not None:
        return served.rag.index, served.rag.embedder
    return default, None


def check_index(index: str, embedder: str | None = None) -> None:
    """Open `index` and run one search; RunError naming the index and the reason when it cannot serve."""
    from tunesmith.rag.retrieve import Retriever

    try:
        Retriever.open(Path(index), embedder).search("health check", k=1)
    except TunesmithError as exc:
        raise RunError(f"the retrieval index {index} cannot be searched: {exc.message}", hint=exc.hint) from None
    except Exception as exc:  # lancedb and the embedder raise their own types for damaged files
        raise RunError(f"the retrieval index {index} cannot be searched: {type(exc).__name__}: {exc}") from None


def check_indexes(models: list[Any], default: str | None) -> None:
    """check_index for every index these served models (and --index) may search."""
    seen: set[tuple[str, str | None]] = set()
    if default is not None:
        seen.add((default, None))
    for served in models:
        index, embedder = _index_of(served, default)
        if index is not None:
            seen.add((index, embedder))
    for index, embedder in sorted(seen, key=str):
        check_index(index, embedder)


def retrieve(state: Any, call: Any, flag: bool | None) -> None:
    """Put retrieved passages into call.conversation when asked (or when the adapter's recipe trained with them)."""
    from tunesmith.rag.prompt import augment
    from tunesmith.rag.retrieve import Retriever

    section = call.served.rag
    if not (flag if flag is not None else section is not None):
        return
    index, embedder = _index_of(call.served, state.settings.index)
    if index is None:
        raise ApiError(400, "retrieval was requested but the server has no index (start it with --index)", param="rag")
    try:
        retriever = Retriever.open(Path(index), embedder)
        if section is not None:
            call.conversation, call.passages = augment(call.conversation, retriever, section.k, section.template, section.mode)
        else:
            call.conversation, call.passages = augment(call.conversation, retriever)
    except Exception as exc:
        reason = exc.message if isinstance(exc, TunesmithError) else f"{type(exc).__name__}: {exc}"
        state.retrieval_problem = f"the retrieval index {index} cannot be searched: {reason}"
        log.error("%s", state.retrieval_problem)
        raise ApiError(
            503, state.retrieval_problem, "server_error", param="rag", code="retrieval_unavailable", headers={"Retry-After": "30"}
        ) from None
    state.retrieval_problem = None
    state.metrics.retrieval_requests.labels(call.model).inc()
    state.metrics.retrieval_hits.labels(call.model).inc(len(call.passages))
