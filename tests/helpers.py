"""Helpers shared by the test modules (import as `from helpers import ...`; tests/ is on sys.path)."""

from __future__ import annotations

import json
import random
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
TINY_TOKENIZER = FIXTURES / "tiny-tokenizer"


def chat_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        rows.append(
            {
                "id": f"r{i}",
                "messages": [
                    {"role": "system", "content": "Answer with JSON."},
                    {"role": "user", "content": f"Add {a} and {b}."},
                    {"role": "assistant", "content": json.dumps({"sum": a + b})},
                ],
            }
        )
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
