"""The chat playground: a run (tuned, or its base = the adapter disabled) or a model, streamed as server-sent events.

Models load through `tunesmith.loader.load_target` and generate through `tunesmith.eval.stream.generate_stream`,
so the playground renders prompts with the run's own chat template exactly as eval and serve do.
Retrieved context enters through `tunesmith.rag.prompt.augment` when the run was trained with an index.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunesmith.data.reasoning import TraceStream
from tunesmith.errors import TunesmithError
from tunesmith.eval.stream import generate_stream
from tunesmith.loader import load_target

MAX_LOADED = 2  # models kept in memory at once (least recently used goes first)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str = Field(..., max_length=100_000, description="The message text (characters).")


class ChatRequest(BaseModel):
    """The body of POST /chat/stream, as the chat page sends it."""

    model_config = ConfigDict(extra="forbid")

    k: str = Field(..., max_length=4096, description="The run, as `<folder index>/<relative path>`.")
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=500)
    side: Literal["tuned", "base"] = "tuned"
    rag: bool = False
    max_new_tokens: int = Field(128, ge=1, le=1024, description="Reply budget, in tokens.")


class ModelCache:
    """Loaded models by target path; one lock per process because a model generates one answer at a time."""

    def __init__(self) -> None:
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, target: Path) -> Any:
        key = str(target)
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        loaded = load_target(target)
        self._loaded[key] = loaded
        while len(self._loaded) > MAX_LOADED:
            self._loaded.popitem(last=False)
        return loaded


def rag_available(loaded: Any) -> bool:
    run = getattr(loaded, "run", None)
    return run is not None and getattr(run.recipe, "rag", None) is not None


def _with_rag(loaded: Any, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from tunesmith.rag.prompt import augment, recipe_retriever

    rag = loaded.run.recipe.rag
    retriever = recipe_retriever(loaded.run.recipe)
    if retriever is None:
        return messages, []
    out, passages = augment(messages, retriever, rag.k, rag.template, rag.mode)
    return out, [{"source": p.source, "line": p.line} for p in passages]


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def stream_reply(
    cache: ModelCache,
    target: Path,
    messages: list[dict[str, Any]],
    side: str = "tuned",
    rag: bool = False,
    max_new_tokens: int = 128,
) -> Iterator[str]:
    """SSE: `sources` (when RAG is on), `reasoning` pieces of a trace and `delta` pieces of the answer (split as
    serve splits them), then `done` (finish reason) or `error` (a message). Prompts are rendered in the run's
    thinking mode."""
    try:
        with cache.lock:
            loaded = cache.get(target)
            if side == "base" and not loaded.has_adapter:
                yield _sse("error", "the base side needs an adapter run (this target has no adapter to disable)")
                return
            if rag and rag_available(loaded):
                messages, sources = _with_rag(loaded, messages)
                yield _sse("sources", sources)
            ctx = loaded.model.disable_adapter() if side == "base" else nullcontext()
            with ctx:
                stream = generate_stream(loaded.model, loaded.tokenizer, messages, max_new_tokens, thinking=loaded.thinking)
                split = TraceStream(stream.opened, stream.think)
                try:
                    for delta in stream:
                        for kind, piece in split.feed(delta):
                            yield _sse("reasoning" if kind == "reasoning" else "delta", piece)
                    for kind, piece in split.finish():
                        yield _sse("reasoning" if kind == "reasoning" else "delta", piece)
                finally:
                    stream.cancel()  # a client that went away stops the generation
            yield _sse("done", getattr(stream, "finish_reason", "stop"))
    except TunesmithError as exc:
        yield _sse("error", exc.message)
