"""Benchmark: audit 100,000 chat rows (format, tokens with the real tokenizer, duplicates) and print the wall time.

Usage: python bench/audit_100k.py [--rows N] [--model SPEC] [--no-tokens]
The model defaults to the catalog's smollm2-135m-instruct (only its tokenizer is loaded);
when it is not available the committed tiny test tokenizer is used and the script says so.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = [
    "order",
    "refund",
    "parcel",
    "invoice",
    "charger",
    "cable",
    "screen",
    "battery",
    "voucher",
    "address",
    "delivery",
    "warranty",
    "account",
    "password",
    "upgrade",
    "cancel",
    "shipping",
    "receipt",
    "discount",
    "coupon",
    "store",
    "manager",
    "weekend",
]


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """Realistic-looking support rows: a system prompt, a user message, a JSON answer; a few bad lines."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
        answer = {"intent": rng.choice(["refund", "track", "cancel", "other"]), "ticket": i, "note": words[:60]}
        rows.append(
            {
                "id": i,
                "messages": [
                    {"role": "system", "content": "Extract the intent of the message as JSON."},
                    {"role": "user", "content": f"Customer {i}: {words}"},
                    {"role": "assistant", "content": json.dumps(answer)},
                ],
            }
        )
    return rows


def tokenizer_for(spec: str | None):
    from tunesmith import models

    try:
        path = models.resolve_base(spec or "smollm2-135m-instruct")
        return models.load_tokenizer(path), spec or "smollm2-135m-instruct"
    except Exception as exc:  # no catalog package here: fall back to the tiny tokenizer, and say so
        print(f"note: {exc}; using the tiny test tokenizer", file=sys.stderr)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(ROOT / "tests" / "fixtures" / "tiny-tokenizer"), "tiny test tokenizer"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--model", default=None)
    parser.add_argument("--no-tokens", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tunesmith.data.audit import audit

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.jsonl"
        rows = make_rows(args.rows)
        lines = [json.dumps(r) for r in rows]
        lines[len(lines) // 2] = '{"messages": [ broken'  # one bad line: reported, the rest audited
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tokenizer, name = (None, "none") if args.no_tokens else tokenizer_for(args.model)
        stages: dict[str, float] = {}
        last = [time.perf_counter(), None]

        def on_stage(stage: str) -> None:
            now = time.perf_counter()
            if last[1] is not None:
                stages[last[1]] = now - last[0]
            last[:] = [now, stage]

        start = time.perf_counter()
        report = audit([str(path)], tokenizer=tokenizer, max_length=1024, on_stage=on_stage)
        wall = time.perf_counter() - start
        stages[last[1]] = time.perf_counter() - last[0]
    print(f"rows: {args.rows:,}  tokenizer: {name}  cpu cores: {os.cpu_count()}")
    print(f"audit wall time: {wall:.1f} s  ({args.rows / wall:,.0f} rows/s)")
    print("stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in stages.items()))
    print(
        f"findings: {len(report.errors)} errors, {len(report.warnings)} warnings; by code: "
        + ", ".join(f"{c}={g['count']}" for c, g in report.by_code().items())
    )


if __name__ == "__main__":
    main()
