"""Build a retrieval index: read documents, chunk, embed, store chunks + vectors + source lines in LanceDB.

An index folder holds a LanceDB database (table `chunks`, with a full-text index on `text`) and
`tunesmith-index.json` (the IndexMeta record: embedder, chunking, per-file content hashes, content hash).
The record marks the folder as made by tunesmith: a rebuild into it re-embeds only the files whose
bytes changed; a non-empty folder without it is never written to.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError

from tunesmith.atomic import write_text_atomic
from tunesmith.errors import DataError
from tunesmith.rag.chunk import Chunk, NotText, chunk_lines, expand_sources, read_lines
from tunesmith.rag.embed import Embedder, resolve_embedder
from tunesmith.records import Record

if TYPE_CHECKING:
    from tunesmith.config import Recipe
    from tunesmith.run import Run

META_FILE = "tunesmith-index.json"
LOCK_FILE = ".lock"
TABLE = "chunks"
INDEX_VERSION = 1
DEFAULT_CHUNK_CHARS = 800
DEFAULT_OVERLAP_CHARS = 120
EMBED_BATCH = 256  # chunks per embed call: one progress step each
REBUILD = "Rebuild the index into a new folder: tunesmith index build SOURCES --out NEW_INDEX"

Progress = Callable[[int, int], None]
"""progress(chunks_embedded_so_far, chunks_to_embed)."""


class FileEntry(Record):
    label: str = Field(..., description="How hits from this file are shown (file name or folder-relative path).")
    sha256: str = Field(..., description="SHA-256 of the file's bytes when it was embedded.")
    chunks: int = 0


class IndexMeta(Record):
    """tunesmith-index.json: what an index holds and how it was made."""

    schema_version: int = INDEX_VERSION
    embedder: str = Field(..., description="Embedding model name (path-free for the bundled MiniLM).")
    embedder_spec: str | None = Field(None, description="What was asked for: None (bundled), a folder or a hub id.")
    dim: int
    chunk_chars: int
    overlap_chars: int
    files: dict[str, FileEntry] = Field(default_factory=dict, description="Absolute file path -> entry.")
    chunks: int = 0
    content_hash: str = Field(..., description="SHA-256 over the embedder name and the sorted chunk texts.")


@dataclass
class IndexStats:
    """What a build did. Times in seconds."""

    index: str
    files: int
    files_embedded: int
    files_reused: int
    files_removed: int
    chunks: int
    chunks_embedded: int
    content_hash: str
    embedder: str
    seconds: float
    embed_seconds: float
    skipped: list[str] = field(default_factory=list)  # "label: reason" per document or row left out (not text, too deep)


def read_meta(index: Path) -> IndexMeta:
    """The index's record; DataError when `index` is not a tunesmith index."""
    path = Path(index) / META_FILE
    if not path.is_file():
        raise DataError(
            f"{index} is not a tunesmith index (no {META_FILE})", hint="Build one: tunesmith index build SOURCES --out INDEX"
        )
    try:
        meta = IndexMeta.model_validate_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"{path} cannot be read: {exc.strerror or exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(file)'}: {e['msg']}" for e in exc.errors()[:5])
        raise DataError(f"{path} is not a readable index record ({problems})", hint=REBUILD) from None
    except ValueError as exc:  # not UTF-8 text
        raise DataError(f"{path} is not a readable index record ({exc})", hint=REBUILD) from None
    if meta.schema_version > INDEX_VERSION:
        raise DataError(f"{path} has schema_version {meta.schema_version}, newer than this tunesmith reads ({INDEX_VERSION})")
    return meta


def content_hash(index: Path) -> str:
    """The index's content hash: equal for indexes built from the same texts with the same embedder."""
    return read_meta(index).content_hash


def _hash_chunks(embedder: str, texts: list[str]) -> str:
    digest = hashlib.sha256(embedder.encode())
    for text in sorted(texts):
        digest.update(b"\0" + text.encode())
    return digest.hexdigest()


def _chunk_id(label: str, chunk: Chunk) -> str:
    return hashlib.sha256(f"{label}\0{chunk.line}\0{chunk.text}".encode()).hexdigest()[:16]


def _check_target(out: Path) -> IndexMeta | None:
    """The existing index at `out`, or None for a new/empty folder; refuses anything else."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder", hint="Choose a new --out folder.")
    if (out / META_FILE).exists():
        return read_meta(out)
    if out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()):
        raise DataError(
            f"{out} is a non-empty folder that tunesmith did not create; nothing was written",
            hint="Choose a new --out folder (an index is only rebuilt in place when tunesmith made it).",
        )
    return None


def connect(index: Path) -> Any:
    """The LanceDB database in an index folder (embedded: files on disk, no server).

    Tables opened from it look for a newer version at most every few seconds, so a long-lived reader (the
    server) follows a rebuild instead of reading a version the rebuild later cleans up.
    """
    import os

    os.environ.setdefault("LANCEDB_LOG", "error")  # keep the "no existing dataset, creating it" notice out of the terminal
    import lancedb

    return lancedb.connect(str(index), read_consistency_interval=timedelta(seconds=2))


@contextmanager
def unreadable_table(index: Path) -> Iterator[None]:
    """LanceDB's errors for a damaged or missing table (ValueError, RuntimeError, OSError) as one DataError."""
    try:
        yield
    except (ValueError, RuntimeError, OSError) as exc:
        detail = str(exc).split(", /")[0]  # drop the Rust source location LanceDB appends
        raise DataError(
            f"{index}: the index's table cannot be read ({detail})",
            hint=REBUILD,
        ) from None


def _open_table(out: Path) -> Any:
    db = connect(out)
    return db, (db.open_table(TABLE) if TABLE in db.list_tables().tables else None)


def build_index(
    sources: list[Path],
    out: Path,
    *,
    embedder: str | Embedder | None = None,
    chunk_chars: int = DEFAULT_CHUNK_CHARS,
    overlap_chars: int = DEFAULT_OVERLAP_CHARS,
    progress: Progress | None = None,
) -> IndexStats:
    """Index every document in `sources` (files or folders) into the folder `out`.

    When `out` is an index tunesmith built, only files whose bytes changed (or that are new) are chunked and
    embedded again; rows of files no longer in `sources` are removed. Changing the embedder or the chunk
    sizes re-embeds everything.
    """
    import shutil

    from filelock import FileLock

    started = time.perf_counter()
    out = Path(out)
    old = _check_target(out)
    files = expand_sources(sources)
    if not files:
        raise DataError(
            f"no documents found in {', '.join(map(str, sources))}", hint="Index .md, .txt, .html, .jsonl or .pdf files."
        )
    model = resolve_embedder(embedder)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(out / LOCK_FILE)):
            old = _check_target(out)  # again, under the lock: another build may have finished meanwhile
            settings = (model.name, chunk_chars, overlap_chars)
            reusable = old is not None and (old.embedder, old.chunk_chars, old.overlap_chars) == settings
            with unreadable_table(out):
                db, table = _open_table(out)
                old_rows = table.to_arrow().to_pylist() if reusable and table is not None else []
            skipped: list[str] = []
            kept, new, entries, embedded = _collect_rows(
                files, old if reusable else None, old_rows, (chunk_chars, overlap_chars), skipped
            )
            rows = kept + new
            if not rows:
                left_out = "".join(f"\n  - {line}" for line in skipped[:10])
                raise DataError(
                    f"no text found in {len(files)} document(s){left_out}",
                    hint="Check the files hold UTF-8 text (scanned PDFs have none).",
                )
            embed_started = time.perf_counter()
            _embed_rows(model, new, progress)
            embed_seconds = time.perf_counter() - embed_started
            _write_table(db, rows)
            meta = IndexMeta(
                embedder=model.name,
                embedder_spec=_spec(embedder),
                dim=len(rows[0]["vector"]),
                chunk_chars=chunk_chars,
                overlap_chars=overlap_chars,
                files=entries,
                chunks=len(rows),
                content_hash=_hash_chunks(model.name, [r["text"] for r in rows]),
            )
            write_text_atomic(out / META_FILE, meta.model_dump_json(indent=2))
    except BaseException:
        if created:  # a failed first build leaves no folder behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    return IndexStats(
        index=str(out),
        files=len(files),
        files_embedded=len(embedded),
        files_reused=len(files) - len(embedded),
        files_removed=len(set(old.files) - set(entries)) if old else 0,
        chunks=len(rows),
        chunks_embedded=len(new),
        content_hash=meta.content_hash,
        embedder=model.name,
        seconds=round(time.perf_counter() - started, 3),
        embed_seconds=round(embed_seconds, 3),
        skipped=skipped,
    )


def _spec(embedder: str | Embedder | None) -> str | None:
    """The embedder as the index records it: a local folder as an absolute path (queries may run from elsewhere)."""
    if not isinstance(embedder, str):
        return None
    path = Path(embedder).expanduser()
    return str(path.resolve()) if path.exists() else embedder


def _collect_rows(
    files: dict[Path, str],
    old: IndexMeta | None,
    old_rows: list[dict[str, Any]],
    sizes: tuple[int, int],
    skipped: list[str],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, FileEntry], set[str]]:
    """(rows kept with their vectors, new rows to embed, file entries, files re-read): unchanged files reuse `old_rows`.

    A file is unchanged when a file with the same label and bytes was indexed, wherever it lay then: an index
    rebuilt after its documents moved (another machine, another checkout) re-embeds nothing. Documents that are not
    text, and JSONL rows nested too deep, are left out and listed in `skipped`. sizes: (chunk_chars, overlap_chars).
    """
    before = {(e.label, e.sha256): p for p, e in old.files.items()} if old else {}
    kept: list[dict[str, Any]] = []
    new: list[dict[str, Any]] = []
    entries: dict[str, FileEntry] = {}
    reread: set[str] = set()
    for path, label in files.items():
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
        previous = before.get((label, digest))
        if previous is not None:
            rows = [{**r, "path": str(path)} for r in old_rows if r["path"] == previous]
            kept += rows
        else:
            problems: list[str] = []
            try:
                lines = read_lines(path, problems)
            except NotText as exc:
                skipped.append(exc.message.replace(str(path), label, 1))
                continue
            skipped += [p.replace(str(path), label, 1) for p in problems]
            chunks = chunk_lines(lines, *sizes)
            rows = [
                {
                    "chunk_id": _chunk_id(label, c),
                    "text": c.text,
                    "source": label,
                    "path": str(path),
                    "line": c.line,
                    "end_line": c.end_line,
                }
                for c in chunks
            ]
            new += rows
            reread.add(str(path))
        entries[str(path)] = FileEntry(label=label, sha256=digest, chunks=len(rows))
    return kept, new, entries, reread


def _embed_rows(model: Embedder, rows: list[dict[str, Any]], progress: Progress | None) -> None:
    """Add a `vector` to each row, EMBED_BATCH chunks per call."""
    total = len(rows)
    if progress:
        progress(0, total)
    for start in range(0, total, EMBED_BATCH):
        batch = rows[start : start + EMBED_BATCH]
        for row, vector in zip(batch, model.encode([r["text"] for r in batch]), strict=True):
            row["vector"] = [float(x) for x in vector]
        if progress:
            progress(min(start + EMBED_BATCH, total), total)


def _write_table(db: Any, rows: list[dict[str, Any]]) -> None:
    """Replace the chunks table with `rows` and (re)build its full-text index."""
    import pyarrow as pa
    from lancedb.index import FTS

    dim = len(rows[0]["vector"])
    schema = pa.schema(
        [
            ("chunk_id", pa.string()),
            ("text", pa.string()),
            ("source", pa.string()),
            ("path", pa.string()),
            ("line", pa.int32()),
            ("end_line", pa.int32()),
            ("vector", pa.list_(pa.float32(), dim)),
        ]
    )
    table = db.create_table(TABLE, pa.Table.from_pylist(rows, schema=schema), mode="overwrite")
    table.create_index("text", config=FTS(), replace=True)
    # Every overwrite is a new LanceDB version; drop old ones (kept a few minutes for searches still reading them).
    table.optimize(cleanup_older_than=timedelta(minutes=5))


def manifest_entry(recipe: Recipe) -> dict[str, Any] | None:
    """Manifest.rag for a run trained with retrieval: {index, content_hash, k, embedder, mode}; None without."""
    rag = recipe.rag
    if rag is None:
        return None
    meta = read_meta(Path(rag.index))
    return {"index": rag.index, "content_hash": meta.content_hash, "k": rag.k, "embedder": meta.embedder, "mode": rag.mode}


def changed_since(run: Run) -> str | None:
    """A warning when the run's retrieval index is not the one it trained with; None when unchanged or no RAG."""
    rag = run.recipe.rag
    if rag is None:
        return None
    trained = (run.manifest.rag or {}).get("content_hash")
    try:
        now = content_hash(Path(rag.index))
    except DataError as exc:
        return f"retrieval index {rag.index} cannot be read ({exc.message}): prompts lack the context the adapter trained with"
    if not trained:
        return f"the run records no retrieval index hash; cannot tell whether {rag.index} changed since training"
    if now != trained:
        return (
            f"retrieval index {rag.index} changed since training ({now[:12]} != {trained[:12]}): "
            "retrieved context differs from what the adapter learned to use"
        )
    return None
