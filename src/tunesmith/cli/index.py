"""`tunesmith index`: build a retrieval index from documents, query it, measure recall@k and MRR."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from tunesmith.cli.base import app, console, err_console, handle_errors
from tunesmith.tables import Table

index_app = typer.Typer(
    help="Retrieval indexes (LanceDB, hybrid vector + full-text search): build, query, eval.", no_args_is_help=True
)
app.add_typer(index_app, name="index")

MODES = ("hybrid", "vector", "fts")


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        from tunesmith.errors import DataError

        raise DataError(f"--mode must be one of {', '.join(MODES)}, not `{mode}`")
    return mode


@index_app.command("build")
@handle_errors
def build(
    sources: list[Path] = typer.Argument(..., help="Documents or folders (.md .txt .html .jsonl .pdf), read recursively."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Index folder: new, empty, or an index tunesmith built (only changed files are re-embedded)."
    ),
    embedder: str | None = typer.Option(
        None, help="sentence-transformers folder or cached hub id; default: the bundled all-MiniLM-L6-v2."
    ),
    chunk_chars: int = typer.Option(
        800, min=32, help="Largest chunk in characters; chunks end on sentences, headings start new ones."
    ),
    overlap_chars: int = typer.Option(
        120, min=0, help="Characters of trailing sentences repeated at the start of the next chunk."
    ),
) -> None:
    """Chunk, embed and store documents in a LanceDB index (vectors + full-text index + source lines)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from tunesmith.rag.index import build_index

    with Progress(
        TextColumn("[bold]embedding chunks"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task("embed", total=None)
        stats = build_index(
            sources,
            out,
            embedder=embedder,
            chunk_chars=chunk_chars,
            overlap_chars=overlap_chars,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    table = Table(title=f"index {escape(stats.index)}", show_header=False)
    files = f"{stats.files} ({stats.files_embedded} embedded, {stats.files_reused} unchanged, {stats.files_removed} removed)"
    for label, value in (
        ("files", files),
        ("chunks", f"{stats.chunks} ({stats.chunks_embedded} embedded)"),
        ("embedder", stats.embedder),
        ("content hash", stats.content_hash[:16]),
        ("time", f"{stats.seconds:.1f} s ({stats.embed_seconds:.1f} s embedding)"),
    ):
        table.add_row(label, escape(str(value)))
    if stats.skipped:
        table.add_row("left out", f"{len(stats.skipped)} (not UTF-8 text, or JSON rows nested too deep)")
    console.print(table)
    for line in stats.skipped[:20]:
        err_console.print(f"[yellow]left out:[/] {escape(line)}", highlight=False)
    if len(stats.skipped) > 20:
        err_console.print(f"[yellow]... and {len(stats.skipped) - 20} more[/]")


@index_app.command("query")
@handle_errors
def query(
    index: Path = typer.Argument(..., help="Index folder."),
    question: str = typer.Argument(..., help="What to search for."),
    k: int = typer.Option(5, "-k", min=1, help="Passages to show."),
    mode: str = typer.Option("hybrid", help="hybrid (vector + full text, fused by reciprocal rank), vector or fts."),
    as_json: bool = typer.Option(False, "--json", help="Print the passages as JSON lines instead of a table."),
) -> None:
    """Print the best passages for a question, with scores and source file:line."""
    import json
    from dataclasses import asdict

    from tunesmith.rag.retrieve import Retriever

    passages = Retriever.open(index).search(question, k=k, mode=_check_mode(mode))  # type: ignore[arg-type]
    if as_json:
        for p in passages:
            console.print_json(json.dumps(asdict(p)))
        return
    table = Table(title=f"{len(passages)} passage(s) for {escape(question)!r} ({mode})")
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("source")
    table.add_column("text", overflow="fold")
    for rank, p in enumerate(passages, start=1):
        text = p.text if len(p.text) <= 300 else p.text[:297] + "..."
        table.add_row(str(rank), f"{p.score:.4f}", escape(p.where), escape(text))
    console.print(table)


@index_app.command("eval")
@handle_errors
def evaluate(
    index: Path = typer.Argument(..., help="Index folder."),
    file: Path = typer.Argument(
        ..., help="JSONL rows with `question` (or messages) and gold `sources` (chunk ids, files or file:line)."
    ),
    k: int = typer.Option(5, "-k", min=1, help="Cut-off for recall@k and hit rate."),
    out: Path | None = typer.Option(
        None, "--out", help="Also write the figures to X.json and a page to X.html (--out X, X.json or X.html; both new)."
    ),
) -> None:
    """Recall@k, MRR and hit rate of each search mode on labelled questions."""
    from tunesmith.rag.quality import evaluate_index

    paths = _report_paths(out, file) if out is not None else None  # refused before any work
    report = evaluate_index(index, file, k=k)
    table = Table(title=f"retrieval on {report.scored} question(s) ({report.skipped} skipped), k={k}")
    for column in ("mode", f"recall@{k}", "MRR", f"hit@{k}"):
        table.add_column(column, justify="right" if column != "mode" else "left")
    for mode, score in report.modes.items():
        table.add_row(mode, f"{score.recall_at_k:.3f}", f"{score.mrr:.3f}", f"{score.hit_rate:.3f}")
    console.print(table)
    for miss in report.misses[:5]:
        err_console.print(f"[yellow]miss:[/] {escape(miss['question'][:100])} -> gold {escape(', '.join(miss['gold']))}")
    if paths is not None:
        _write_report(*paths, report)


def _report_paths(out: Path, gold: Path) -> tuple[Path, Path]:
    """(JSON report, HTML page) for --out: X.json + X.html, whichever of the two --out names; two distinct new files."""
    from tunesmith.outputs import claim_file

    stem = out.with_suffix("") if out.suffix.lower() in (".json", ".html", ".htm") else out
    report, page = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".html")
    return claim_file(report, inputs=[gold]), claim_file(page, inputs=[gold], what="--out page")


def _write_report(out: Path, page: Path, report: Any) -> None:
    from tunesmith.atomic import write_text_atomic
    from tunesmith.outputs import record_file
    from tunesmith.rag.report import write_html

    write_text_atomic(out, report.model_dump_json(indent=2))
    write_html(page, report)
    record_file(out)
    record_file(page)
    console.print(f"wrote {escape(str(out))} and {escape(str(page))}")
