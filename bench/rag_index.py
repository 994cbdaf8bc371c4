"""Retrieval index figures: build time for ~10k chunks, incremental rebuild, query latency p50/p95 per search mode.

    .venv/bin/python bench/rag_index.py [--chunks 10000] [--queries 200] [--embedder SPEC]

Documents are synthetic Markdown (a product-manual vocabulary, headings every few paragraphs), chunked at
400 characters. Embeds with the bundled all-MiniLM-L6-v2 unless --embedder is given; uses the GPU when there is one.
Prints a Markdown table (the figures in docs/rag.md come from here).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

WORDS = [
    "valve",
    "pump",
    "sensor",
    "filter",
    "warranty",
    "invoice",
    "refund",
    "shipping",
    "pallet",
    "firmware",
    "battery",
    "charger",
    "module",
    "cable",
    "torque",
    "pressure",
    "voltage",
    "seal",
    "gasket",
    "bracket",
    "housing",
    "rotor",
    "bearing",
    "coolant",
    "nozzle",
    "thermostat",
    "relay",
    "fuse",
    "calibrate",
    "replace",
    "inspect",
    "tighten",
    "drain",
    "reset",
    "configure",
    "install",
    "measure",
    "clean",
    "order",
    "return",
]
CHUNK_CHARS, OVERLAP = 400, 60


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(8, 16))]
    return f"The {' '.join(words)} unit {rng.randint(1, 9999)}.".capitalize()


def write_docs(folder: Path, chunks: int, rng: random.Random) -> None:
    """Markdown files totalling about `chunks` chunks of CHUNK_CHARS (a section of ~3 chunks per heading)."""
    per_file = 50
    for f in range(max(1, chunks // per_file)):
        parts = []
        for s in range(per_file // 3 + 1):
            parts.append(f"# Section {f}.{s}\n")
            parts.append("\n\n".join(" ".join(sentence(rng) for _ in range(3)) for _ in range(3)))
        (folder / f"manual-{f:04d}.md").write_text("\n\n".join(parts) + "\n", encoding="utf-8")


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--embedder", default=None)
    args = parser.parse_args()

    from tunesmith.rag.embed import load_embedder
    from tunesmith.rag.index import build_index
    from tunesmith.rag.retrieve import Retriever

    rng = random.Random(0)
    t0 = time.perf_counter()
    embedder = load_embedder(args.embedder)
    load_s = time.perf_counter() - t0
    device = str(getattr(embedder.model, "device", "cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        docs, out = Path(tmp) / "docs", Path(tmp) / "index"
        docs.mkdir()
        write_docs(docs, args.chunks, rng)
        cpu = time.process_time()  # CPU seconds (all threads): comparable across machines busy with other work
        first = build_index([docs], out, embedder=embedder, chunk_chars=CHUNK_CHARS, overlap_chars=OVERLAP)
        build_cpu_s = time.process_time() - cpu
        noop = build_index([docs], out, embedder=embedder, chunk_chars=CHUNK_CHARS, overlap_chars=OVERLAP)
        changed = sorted(docs.iterdir())[0]
        changed.write_text(changed.read_text(encoding="utf-8") + "\n# Appendix\n\nA new paragraph.\n", encoding="utf-8")
        one = build_index([docs], out, embedder=embedder, chunk_chars=CHUNK_CHARS, overlap_chars=OVERLAP)
        size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20

        retriever = Retriever.open(out, embedder)
        queries = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) for _ in range(args.queries)]
        latency: dict[str, list[float]] = {}
        for mode in ("vector", "fts", "hybrid"):
            retriever.search(queries[0], k=5, mode=mode)  # warm caches (index files, tokenizer)
            times = []
            for q in queries:
                t = time.perf_counter()
                retriever.search(q, k=5, mode=mode)
                times.append((time.perf_counter() - t) * 1000)
            latency[mode] = times
        t = time.perf_counter()
        retriever.search_many(queries, k=5, mode="hybrid")
        batched_ms = (time.perf_counter() - t) * 1000 / len(queries)

    print(
        f"embedder {embedder.name} on {device} (loaded in {load_s:.1f} s); {first.files} files, {first.chunks} chunks "
        f"of <= {CHUNK_CHARS} chars, index {size_mb:.1f} MiB on disk\n"
    )
    print("| measurement | value |\n|---|---|")
    print(
        f"| full build ({first.chunks} chunks) | {first.seconds:.1f} s ({first.embed_seconds:.1f} s embedding, "
        f"{first.chunks / max(first.embed_seconds, 1e-9):.0f} chunks/s; {build_cpu_s:.0f} CPU-s) |"
    )
    print(f"| rebuild, nothing changed | {noop.seconds:.2f} s ({noop.chunks_embedded} chunks embedded) |")
    print(f"| rebuild, 1 of {one.files} files changed | {one.seconds:.2f} s ({one.chunks_embedded} chunks embedded) |")
    for mode, times in latency.items():
        print(f"| query latency {mode}, k=5 | p50 {percentile(times, 50):.1f} ms, p95 {percentile(times, 95):.1f} ms |")
    print(f"| hybrid, {len(queries)} queries batched (training-set augmentation) | {batched_ms:.1f} ms per query |")


if __name__ == "__main__":
    main()
